"""One experiment's settings: frozen dataclasses, one per TOML section.

Precedence, lowest first: the dataclass defaults < a preset (``configs/<name>.toml``) < the
config file < ``--set section.key=value`` < command-line flags. Every value is
checked when it arrives, so an error names the key, the value, where it came from and the fix.
``input_dims`` is deliberately absent: it comes from the run store, never from configuration.

>>> config = load_config(preset="fmnist", overrides=["training.lr=0.005"])
>>> config.reduction.r0, config.training.lr, config.training.recon_weight
(0.07, 0.005, 30.0)
>>> Config.from_dict(tomllib.loads(config.to_toml())) == config
True
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timevis_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ComplexConfig",
    "Config",
    "DVIConfig",
    "FIT_METHODS",
    "EvalConfig",
    "FitConfig",
    "KNNConfig",
    "ProjectorConfig",
    "ReductionConfig",
    "RenderConfig",
    "TrainingConfig",
    "available_presets",
    "configs_dir",
    "load_config",
    "preset_path",
]

DEFAULT_FILE = "default.toml"
"""The file in :func:`configs_dir` listing every key with its default; not a preset."""

_RANGE_PATTERN = (
    r"\s*(all|(\d+|(\d+-\d*|-\d+)(:[1-9]\d*)?)(\s*,\s*(\d+|(\d+-\d*|-\d+)(:[1-9]\d*)?))*)\s*"
)
_RANGE_TEXT = "an epoch RANGE such as all, 5, 1-160, 1,5,10-20, 10-, -20 or 0-200:10"
FIT_METHODS = ("timevis", "dvi")
"""``fit.method``: timevis's one model, or the DVI baseline's one model per epoch (docs/dvi.md)."""


# Upper bounds of the integer keys: far above any useful value, low enough that a typo (an extra
# zero, 2e9 for 2e3) is refused at once instead of allocating for minutes and running out of
# memory.
_MAX_NEIGHBOURS = 1000  # kNN sizes: an [n, k] index per epoch
_MAX_EPOCHS = 100_000  # counts of recorded epochs
_MAX_ROWS = 10_000_000  # samples, vertices or edges held at once
_MAX_EDGES = 1_000_000_000  # edges sampled per training epoch
_MAX_STEPS = 1_000_000  # optimisation epochs and steps
_MAX_MEMORY_MB = 1 << 20  # 1 TiB
_MAX_HIDDEN_WEIGHTS = 1 << 28  # the projector's hidden layers: 1 GiB of float32


@dataclass(frozen=True)
class _Rule:
    """A constraint on one value: ``test(value)`` must hold; ``text`` says so to the user."""

    test: Callable[[Any], bool]
    text: str


def _at_least(low: float) -> _Rule:
    return _Rule(lambda value: value >= low, f"must be >= {low}")


def _above(low: float) -> _Rule:
    return _Rule(lambda value: value > low, f"must be > {low}")


def _within(low: float, high: float, *, open_low: bool = False) -> _Rule:
    if open_low:
        return _Rule(lambda value: low < value <= high, f"must be in ({low}, {high}]")
    return _Rule(lambda value: low <= value <= high, f"must be in [{low}, {high}]")


def _one_of(*choices: str) -> _Rule:
    return _Rule(lambda value: value in choices, "must be one of " + ", ".join(choices))


def _matching(pattern: str, what: str) -> _Rule:
    return _Rule(lambda value: re.fullmatch(pattern, value) is not None, f"must be {what}")


def _setting(default: Any, doc: str, rule: _Rule | None = None) -> Any:
    """A dataclass field carrying its one-line documentation and its constraint."""
    return field(default=default, metadata={"doc": doc, "rule": rule})


class _Section:
    """Base of the section dataclasses: coerces ints to floats and validates on construction."""

    def __post_init__(self) -> None:
        section = _SECTION_NAMES[type(self)]
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _checked(section, item.name, getattr(self, item.name), None)
            object.__setattr__(self, item.name, value)
        self._check_together()

    def _check_together(self) -> None:
        """Constraints that involve more than one key of the section."""


@dataclass(frozen=True)
class KNNConfig(_Section):
    """Nearest-neighbour search (``[knn]``)."""

    backend: str = _setting(
        "auto",
        "kNN library: auto (resolved once and logged), faiss-gpu, faiss-cpu, torch, pynndescent",
        _one_of("auto", "faiss-gpu", "faiss-cpu", "torch", "pynndescent"),
    )
    n_neighbors: int = _setting(
        15,
        "nearest neighbours per training vertex in each epoch's spatial fuzzy graph",
        _within(2, _MAX_NEIGHBOURS),
    )
    boundary_neighbors: int = _setting(
        15,
        "nearest boundary points linked to every vertex of an epoch",
        _within(2, _MAX_NEIGHBOURS),
    )


@dataclass(frozen=True)
class ComplexConfig(_Section):
    """The spatio-temporal complex and its edge mixing (``[complex]``)."""

    temporal_neighbors: int = _setting(
        14,
        "nearest other-epoch copies of a sample kept as temporal edges (the copy itself excluded)",
        _within(1, _MAX_NEIGHBOURS),
    )
    temporal_window: int = _setting(
        0,
        "temporal window W in recorded-epoch steps (copies within t ± W/2); 0 = all epochs",
        _Rule(
            lambda value: value == 0 or 2 <= value <= _MAX_EPOCHS,
            f"must be 0 (all epochs) or in [2, {_MAX_EPOCHS}]",
        ),
    )
    rate_spatial: float = _setting(
        5.0,
        "sampling weight per unit membership of spatial edges (also sets their pruning)",
        _above(0),
    )
    rate_boundary: float = _setting(
        5.0,
        "sampling weight per unit membership of boundary edges (also sets their pruning)",
        _above(0),
    )
    rate_temporal: float = _setting(
        5.0,
        "sampling weight per unit membership of temporal edges (also sets their pruning)",
        _above(0),
    )
    prune_offset: float = _setting(
        1e-3, "drop edges whose membership < max membership / rate + prune_offset", _at_least(0)
    )
    boundary_source: str = _setting(
        "auto",
        "boundary points: auto (store's input-space ones, else feature-space), store, feature, none",
        _one_of("auto", "store", "feature", "none"),
    )


@dataclass(frozen=True)
class ReductionConfig(_Section):
    """Complex reduction by k-center greedy per epoch (``[reduction]``)."""

    enabled: bool = _setting(
        True, "reduce each epoch to a covering subset (false: keep all samples)"
    )
    init_size: int = _setting(
        300,
        "random initial centres of the last epoch's selection (later epochs start nested)",
        _within(1, _MAX_ROWS),
    )
    r0: float = _setting(
        0.25, "covering radius of the last epoch (features scaled to norm <= 1)", _above(0)
    )
    alpha: float = _setting(
        0.0, "exponent of the intrinsic-dimension ratio in r_t (0 skips TwoNN)", _at_least(0)
    )
    beta: float = _setting(1.0, "exponent of the covering-radius ratio in r_t", _at_least(0))
    coverage: float = _setting(
        1.0,
        "quantile of the min-distances that must fall below r_t (1.0 = all of them)",
        _within(0, 1, open_low=True),
    )


@dataclass(frozen=True)
class ProjectorConfig(_Section):
    """The encoder/decoder networks (``[projector]``)."""

    hidden: int = _setting(256, "width of the hidden layers", _within(2, 8192))
    depth: int = _setting(
        3,
        "encoder r -> hidden -> (hidden ->) x depth -> 2; the decoder mirrors it",
        _within(1, 32),
    )
    init: str = _setting(
        "random",
        "start from random layers, or pca (last layer of each half fitted to a PCA of all epochs)",
        _one_of("random", "pca"),
    )

    def _check_together(self) -> None:
        weights = 2 * self.depth * self.hidden**2  # the hidden-to-hidden layers of both halves
        if weights > _MAX_HIDDEN_WEIGHTS:
            raise ConfigError(
                f"projector.hidden = {self.hidden} with projector.depth = {self.depth} makes "
                f"{weights:,} hidden-layer weights ({weights * 16 / 2**30:.0f} GiB with the "
                f"optimiser's state); keep 2 x depth x hidden^2 <= {_MAX_HIDDEN_WEIGHTS:,} "
                "(e.g. hidden 1024 with depth 32, or 4096 with depth 8; default 256 with 3)"
            )


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """Fitting the projector on the complex (``[training]``)."""

    batch_size: int = _setting(1000, "sampled edges per optimiser step", _within(1, _MAX_ROWS))
    lr: float = _setting(0.01, "Adam learning rate", _above(0))
    weight_decay: float = _setting(1e-5, "Adam weight decay", _at_least(0))
    lr_step: int = _setting(
        4, "training epochs between learning-rate decays", _within(1, _MAX_STEPS)
    )
    lr_gamma: float = _setting(
        0.1, "learning-rate factor at each decay", _within(0, 1, open_low=True)
    )
    patience: int = _setting(
        3, "training epochs without enough improvement before stopping", _within(1, _MAX_STEPS)
    )
    min_improvement: float = _setting(
        0.01, "relative loss improvement that resets the patience", _at_least(0)
    )
    max_epochs: int = _setting(2, "most training epochs", _within(1, _MAX_STEPS))
    edges_per_epoch_factor: float = _setting(
        0.8, "edges sampled per training epoch: floor(factor * sum(w / max w))", _above(0)
    )
    min_edges_per_epoch: int = _setting(
        100_000, "fewest edges sampled per training epoch (small runs still train enough)",
        _within(0, _MAX_EDGES),
    )
    max_edges_per_epoch: int = _setting(
        150_000,
        "most edges sampled per training epoch when the refinement places every sample (0: no "
        "cap; without refinement there is none)",
        _within(0, _MAX_EDGES),
    )
    negative_rate: int = _setting(5, "negative samples per positive edge", _within(1, 100))
    recon_weight: float = _setting(
        1.0, "weight λ of the reconstruction loss against the UMAP loss", _at_least(0)
    )
    min_dist: float = _setting(
        0.1, "UMAP min_dist used to fit the curve parameters a, b", _at_least(0)
    )
    spread: float = _setting(1.0, "UMAP spread used to fit the curve parameters a, b", _above(0))
    attention_temperature: float = _setting(
        0.01, "temperature of the reconstruction loss's attention softmax", _above(0)
    )

    def _check_together(self) -> None:
        if self.min_dist > self.spread:
            raise ConfigError(
                f"training.min_dist = {self.min_dist} exceeds training.spread = {self.spread}; "
                "min_dist must be <= spread (defaults 0.1 and 1.0)"
            )


@dataclass(frozen=True)
class RefineConfig(_Section):
    """Refining every tracked sample's 2-D position after training (``[refine]``)."""

    enabled: bool = _setting(
        True,
        "after training, move every tracked sample's and boundary point's 2-D position with "
        "UMAP's layout optimisation on each epoch's kNN graph while keeping each sample's "
        "trajectory shaped like its feature-space path, then fit the decoder to the moved "
        "positions (false: the projector's positions as they are)",
    )
    epochs: int = _setting(
        200,
        "optimisation epochs of the layout (its time grows in proportion; more epochs keep more "
        "neighbours and more of time: docs/faithfulness.md)",
        _within(0, _MAX_STEPS),
    )
    learning_rate: float = _setting(
        0.1, "initial step of the layout optimisation (decays linearly to 0)", _above(0)
    )
    negative_rate: int = _setting(
        10,
        "negative samples per sampled edge (umap-learn's 5 keeps fewer neighbours: the stronger "
        "repulsion spreads each epoch's clusters, as t-SNE does; docs/faithfulness.md)",
        _within(0, 100),
    )
    trajectory_weight: float = _setting(
        0.75,
        "the one knob between space and time: strength of the trajectory stress that keeps each "
        "sample's 2-D path shaped like its feature-space path (0: per-epoch layouts only, best "
        "neighbours, worst time; 1: smoother in time, fewer neighbours kept)",
        _at_least(0),
    )
    trajectory_consecutive_weight: float = _setting(
        2.0,
        "the trajectory stress's pairs of consecutive fitted epochs weigh this many times the "
        "other pairs: a sample's step from one epoch to the next follows its step in feature "
        "space more closely, so samples whose neighbourhood changes move and the others stay "
        "(temppv; 1: every pair alike; docs/faithfulness.md)",
        _at_least(0),
    )
    trajectory_scale: float = _setting(
        2.0,
        "size of a sample's 2-D trajectory relative to the projector's (its distances between "
        "epochs, least-squares fitted to the feature-space ones)",
        _above(0),
    )
    trajectory_lags: int = _setting(
        32,
        "epoch lags per sample in the trajectory stress: every lag when the run has at most "
        "this many + 1 epochs, else this many spaced geometrically",
        _within(1, _MAX_EPOCHS),
    )
    memory_mb: int = _setting(
        2048,
        "the refinement's edges and trajectory targets are held in memory (on the fit device) up "
        "to this many MB; past it they go to a scratch file in RUN_DIR, read back once per layout "
        "epoch, so memory stays flat in the number of epochs (0: always the file)",
        _within(0, _MAX_MEMORY_MB),
    )
    epoch_decoder: bool = _setting(
        True,
        "the decoder fitted to the refined positions gets one bias per epoch, so one 2-D point "
        "can decode to different features at different epochs (false: one decoder for all)",
    )
    decoder_steps: int = _setting(
        600, "Adam steps fitting the decoder to the refined positions", _within(0, _MAX_STEPS)
    )
    decoder_batch: int = _setting(2000, "vertices per decoder step", _within(1, _MAX_ROWS))
    decoder_lr: float = _setting(0.01, "Adam learning rate of the decoder fit", _above(0))
    align: str = _setting(
        "none",
        "before the decoder is fitted, move each epoch's refined positions as a whole onto the "
        "previous epoch's (least squares on the tracked samples): similarity (rotation, "
        "translation, uniform scale), rigid (rotation, translation) or none. Aligning removes the "
        "whole cloud's drift between epochs but also what it shows of the features' common "
        "change: temp_g and ppr drop (docs/faithfulness.md)",
        _one_of("similarity", "rigid", "none"),
    )
    cross_prediction_weight: float = _setting(
        0.03,
        "the layout graph's edges joining two tracked samples (train or test) that the model "
        "predicts differently at that epoch keep this fraction of their weight, so the refined "
        "map separates what the model tells apart and the landscape under each sample can be its "
        "prediction (the model's predictions, never the labels; 1: the feature-space graph as it "
        "is; docs/faithfulness.md)",
        _within(0, 1),
    )
    prediction_anchors: int = _setting(
        8,
        "every tracked sample also gets edges in the layout graph to this many nearest samples "
        "(in feature space) that the model predicts alike at that epoch, at the largest weight, "
        "so a sample whose feature neighbours are all predicted otherwise is held by its own "
        "class (0: none)",
        _within(0, 100),
    )
    prediction_weight: float = _setting(
        1.0,
        "weight of the decoder's prediction term: a hinge that asks the classifier head, on the "
        "decoded features at each train sample's position, for the model's own prediction with "
        "a margin of a quarter of the epoch's median margin, so the landscape's colour under a "
        "sample is its prediction (0: reconstruction only)",
        _at_least(0),
    )


@dataclass(frozen=True)
class FitConfig(_Section):
    """What ``timevis fit`` runs on (``[fit]``)."""

    device: str = _setting(
        "auto",
        "torch device: auto (resolved once and logged), cpu, cuda, cuda:<i>",
        _matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:<i>"),
    )
    seed: int = _setting(0, "seed of every random choice of the fit", _within(0, 2**32 - 1))
    epochs: str = _setting(
        "all", "recorded epochs to fit (RANGE)", _matching(_RANGE_PATTERN, _RANGE_TEXT)
    )
    method: str = _setting(
        "timevis",
        "timevis (one model for all epochs, then the refinement) or dvi (the DeepVisualInsight "
        "baseline: one model per epoch, each warm-started from the previous one's, [dvi])",
        _one_of(*FIT_METHODS),
    )


@dataclass(frozen=True)
class DVIConfig(_Section):
    """The DeepVisualInsight baseline, ``fit.method = "dvi"`` (``[dvi]``; docs/dvi.md)."""

    lambda1: float = _setting(
        1.0, "weight of the reconstruction MSE against the UMAP cross-entropy", _at_least(0)
    )
    lambda2: float = _setting(
        1.0,
        "weight of the temporal term: lambda2 x mean neighbour preservation between the epoch "
        "and the previous one x sum of squared weight changes from the previous epoch's model",
        _at_least(0),
    )
    adam_lr: float = _setting(0.01, "Adam learning rate, reset at every epoch", _above(0))
    adam_weight_decay: float = _setting(1e-5, "Adam weight decay", _at_least(0))
    lr_decay_every: int = _setting(
        4, "passes between learning-rate decays (StepLR)", _within(1, _MAX_STEPS)
    )
    lr_decay: float = _setting(
        0.1, "learning-rate factor at each decay", _within(0, 1, open_low=True)
    )
    max_passes: int = _setting(
        5, "most passes over an epoch's sampled edges", _within(1, _MAX_STEPS)
    )
    patience_passes: int = _setting(
        3,
        "stop after this many passes plus one in a row whose loss fell by less than "
        "min_loss_drop",
        _within(0, _MAX_STEPS),
    )
    min_loss_drop: float = _setting(
        0.005, "absolute fall of the pass's mean loss that resets the patience", _at_least(0)
    )
    batch_edges: int = _setting(1000, "sampled edges per optimiser step", _within(1, _MAX_ROWS))
    edges_factor: float = _setting(
        5.0,
        "edges drawn per pass: floor(factor x sum(w / max w)) over the epoch's complex",
        _above(0),
    )


@dataclass(frozen=True)
class RenderConfig(_Section):
    """Landscape frames and animations (``[render]``)."""

    epochs: str = _setting(
        "all", "fitted epochs to draw (RANGE)", _matching(_RANGE_PATTERN, _RANGE_TEXT)
    )
    resolution: int = _setting(200, "landscape grid is resolution x resolution", _within(16, 2048))
    landscape_step: int = _setting(
        2,
        "for a decoder with one bias per epoch (refined fits): decode every Nth grid row and "
        "column and, between them, only the pixels at class borders (1: every pixel)",
        _within(1, 16),
    )
    bounds: str = _setting(
        "follow",
        "canvas bounds: follow (each epoch framed on its train samples and boundary points, "
        "smoothed over the epochs, its train samples' 5-95% extent filling at least 0.6 of the "
        "frame), global (one for all frames but epochs lying far apart) or per-epoch",
        _one_of("global", "per-epoch", "follow"),
    )
    fade_distance: float = _setting(
        0.08,
        "the landscape fades to the background where no train/test sample or boundary point of "
        "the epoch lies within this fraction of the canvas side (gone at 1.5 times it); 0: off",
        _within(0, 1),
    )
    show_agreement: bool = _setting(
        True,
        "draw each epoch's landscape agreement (share of samples whose landscape class at their "
        "own point is the model's prediction: the test samples when the sample lift is on, the "
        "train samples otherwise) in the frame's corner, red below 0.9",
    )
    sample_lift: bool = _setting(
        True,
        "lift the landscape's logits around the train samples the decoder shows in another "
        "class or less surely than the model, just enough that every train sample's own point "
        "has the model's prediction by the model's own margin there (a continuous correction, "
        "zero where the decoder is already as sure); off with --exact",
    )
    split: str = _setting(
        "train", "samples drawn: train, test or both", _one_of("train", "test", "both")
    )
    max_points: int = _setting(
        10000, "most samples drawn per frame (a fixed subset)", _within(1, _MAX_ROWS)
    )
    size_px: int = _setting(800, "frame width and height in pixels", _within(64, 8192))
    dpi: int = _setting(100, "resolution of the PNG frames", _within(10, 1200))
    fps: float = _setting(
        4.0, "frames per second of the GIF and MP4", _within(0, 60, open_low=True)
    )
    gif: bool = _setting(True, "write render/training.gif")
    mp4: bool = _setting(False, "write render/training.mp4 (needs the video extra)")
    html: bool = _setting(False, "write render/index.html (one self-contained file)")
    html_neighbors: int = _setting(
        5,
        "neighbours per sample render/index.html draws on hover (feature space and map) and its "
        "kNN preservation colouring; 0: none; off above 5000 samples",
        _within(0, 32),
    )
    jobs: int = _setting(0, "parallel frame workers; 0 = one per CPU core", _within(0, 1024))
    device: str = _setting(
        "auto",
        "torch device of the grid decode and per-epoch heads (in the parent; workers only draw): "
        "auto (resolved once and logged), cpu, cuda, cuda:<i>",
        _matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:<i>"),
    )


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Faithfulness metrics (``[eval]``)."""

    epochs: str = _setting(
        "all", "fitted epochs to score (RANGE)", _matching(_RANGE_PATTERN, _RANGE_TEXT)
    )
    k: int = _setting(
        15, "neighbours for nnpv and boundary preservation", _within(1, _MAX_NEIGHBOURS)
    )
    temporal_k: int = _setting(5, "nearest other epochs for temp_l", _within(1, _MAX_EPOCHS))


@dataclass(frozen=True)
class Config:
    """Every setting of ``timevis fit``, ``render`` and ``eval``, one attribute per TOML section."""

    knn: KNNConfig = field(default_factory=KNNConfig)
    complex: ComplexConfig = field(default_factory=ComplexConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    dvi: DVIConfig = field(default_factory=DVIConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def defaults(cls) -> Config:
        """The built-in defaults (docs/method.md explains them)."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "a dict") -> Config:
        """A config from ``{section: {key: value}}``; absent keys keep their defaults.

        Unknown keys and bad values raise ConfigError naming ``source``.
        """
        return _build(_from_tables(data, source))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}`` of plain str/int/float/bool (JSON- and torch-safe)."""
        return dataclasses.asdict(self)

    def to_toml(self, header: str | None = None, comments: bool = True) -> str:
        """The config as TOML text that :func:`load_config` reads back to an equal Config.

        header: lines written first as ``#`` comments.
        comments: precede every key with its one-line documentation.
        """
        lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
        for section, values in self.to_dict().items():
            if lines:
                lines.append("")
            lines.append(f"[{section}]")
            for key, value in values.items():
                if comments:
                    lines.append(f"# {_FIELDS[section][key].metadata['doc']}")
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


_SECTION_TYPES: dict[str, type] = {
    item.name: typing.get_type_hints(Config)[item.name] for item in dataclasses.fields(Config)
}
_SECTION_NAMES: dict[type, str] = {cls: name for name, cls in _SECTION_TYPES.items()}
_FIELDS: dict[str, dict[str, dataclasses.Field]] = {
    name: {item.name: item for item in dataclasses.fields(cls)}
    for name, cls in _SECTION_TYPES.items()
}
_TYPES: dict[str, dict[str, type]] = {
    name: {key: typing.get_type_hints(cls)[key] for key in _FIELDS[name]}
    for name, cls in _SECTION_TYPES.items()
}
_TYPE_TEXT = {
    bool: "a boolean (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
}

_Key = tuple[str, str]


def configs_dir() -> Path:
    """The folder holding ``default.toml`` and the preset files.

    A source checkout's ``<repo>/configs`` comes first; otherwise the copy shipped inside the
    installed package (``timevis_cli/configs``).
    """
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "configs" / DEFAULT_FILE).is_file() and (checkout / "pyproject.toml").is_file():
        return checkout / "configs"
    return Path(__file__).resolve().parent / "configs"


def available_presets() -> list[str]:
    """Names of the presets in :func:`configs_dir` (every ``*.toml`` but ``default.toml``)."""
    folder = configs_dir()
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.toml") if path.name != DEFAULT_FILE)


def preset_path(name: str) -> Path:
    """The file of preset ``name``; ConfigError listing the presets when there is none."""
    presets = available_presets()
    if name not in presets:
        close = difflib.get_close_matches(str(name), presets, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        listed = ", ".join(presets) if presets else f"none found in {configs_dir()}"
        raise ConfigError(f"unknown preset {name!r}; {hint}presets: {listed}")
    return configs_dir() / f"{name}.toml"


def load_config(
    config_file: Path | str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """The resolved config: defaults < preset < config file < ``--set`` overrides < flags.

    config_file: a TOML file of ``[section]`` tables (any subset of the keys).
    preset: the name of a preset (:func:`available_presets`).
    overrides: ``--set`` entries, ``section.key=value`` or an unambiguous bare ``key=value``; the
        value is read as a TOML value when it parses as one (``5``, ``0.1``, ``true``, ``"x"``),
        otherwise as a bare string.
    flags: command-line option values by ``section.key`` (or unambiguous bare key); ``None``
        values mean "not given" and are skipped.
    """
    values: dict[_Key, Any] = {}
    if preset is not None:
        path = preset_path(preset)
        values.update(_read_file(path, f"preset {preset!r} ({path})"))
    if config_file is not None:
        path = Path(config_file)
        values.update(_read_file(path, f"config file {path}"))
    for text in overrides:
        key, value = _parse_override(text)
        values[key] = value
    for name, value in (flags or {}).items():
        if value is not None:
            key = _resolve_name(str(name), "command-line flags")
            values[key] = _checked(*key, value, "command-line flags")
    return _build(values)


def _build(values: Mapping[_Key, Any]) -> Config:
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTION_TYPES}
    for (section, key), value in values.items():
        sections[section][key] = value
    return Config(**{name: _SECTION_TYPES[name](**kwargs) for name, kwargs in sections.items()})


def _read_file(path: Path, source: str) -> dict[_Key, Any]:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"{source} {what}")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{source} cannot be read: {error.strerror or error}") from error
    try:
        data = tomllib.loads(_utf8_text(raw, source))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from error
    return _from_tables(data, source)


_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def _utf8_text(raw: bytes, source: str) -> str:
    """The text of a TOML file, which must be UTF-8 (a UTF-8 byte-order mark is dropped); a
    ConfigError saying which encoding it seems to have and how to convert it otherwise."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    found = next((name for bom, name in _BOMS.items() if raw.startswith(bom)), None)
    if found is None and raw.count(0) > len(raw) // 4:  # NUL is never in TOML text
        found = "UTF-32" if raw.count(0) > len(raw) // 2 else "UTF-16"
    seems = f"it looks like {found}" if found else ""
    if not found:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            seems = f"byte {error.start} is 0x{raw[error.start]:02x}"
    raise ConfigError(
        f"{source} is not UTF-8 text ({seems}); TOML files must be UTF-8: re-save it as UTF-8 "
        f"(e.g. iconv -f {found or 'LATIN1'} -t UTF-8 FILE > NEW_FILE)"
    )


def _from_tables(data: Mapping[str, Any], source: str) -> dict[_Key, Any]:
    """Validated ``{(section, key): value}`` from ``{section: {key: value}}``."""
    values: dict[_Key, Any] = {}
    for section, table in data.items():
        if not isinstance(table, Mapping):
            raise ConfigError(_not_a_table(str(section), table, source))
        if section not in _SECTION_TYPES and not table:
            close = difflib.get_close_matches(str(section), list(_SECTION_TYPES), n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise ConfigError(
                f"unknown section [{section}] in {source}; {hint}"
                f"sections: {', '.join(_SECTION_TYPES)}"
            )
        for key, value in table.items():
            name = f"{section}.{key}"
            resolved = _resolve_name(name, source, allow_bare=False)
            values[resolved] = _checked(*resolved, value, source)
    return values


def _not_a_table(name: str, value: Any, source: str) -> str:
    """The message for a top-level ``name = value`` in a file, where sections are expected."""
    if name in _SECTION_TYPES:
        return f"[{name}] in {source} must be a table of keys, got {name} = {_show(value)}"
    owners = _owners(name)
    if owners:
        spelled = " or ".join(f"'{owner}.{name}'" for owner in owners)
        return f"key '{name}' in {source} must be inside a section; did you mean {spelled}?"
    return _unknown(name, source)


def _parse_override(text: str) -> tuple[_Key, Any]:
    name, sep, raw = str(text).partition("=")
    if not sep or not name.strip():
        raise ConfigError(
            f"--set {text!r} must look like section.key=value, e.g. --set training.lr=0.005"
        )
    key = _resolve_name(name.strip(), "--set")
    return key, _checked(*key, _parse_value(raw.strip(), _TYPES[key[0]][key[1]]), "--set")


def _parse_value(raw: str, expected: type) -> Any:
    """A ``--set`` value: TOML when it parses, else the bare text (always the text for strings)."""
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    value = parsed["value"] if list(parsed) == ["value"] else raw
    if expected is str and not isinstance(value, str):
        return raw
    if expected is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # 1e5 on a command line means 100000
    if expected is float and isinstance(value, str):
        try:
            return float(raw)
        except ValueError:
            return raw
    return value


def _owners(key: str) -> list[str]:
    """The sections that have a key named ``key``."""
    return [section for section, keys in _FIELDS.items() if key in keys]


def _resolve_name(name: str, source: str, allow_bare: bool = True) -> _Key:
    """``(section, key)`` for ``section.key`` or an unambiguous bare ``key``."""
    section, dot, key = name.partition(".")
    if dot:
        if section in _FIELDS and key in _FIELDS[section]:
            return section, key
        raise ConfigError(_unknown(name, source))
    owners = _owners(name)
    if allow_bare and len(owners) == 1:
        return owners[0], name
    if allow_bare and len(owners) > 1:
        spelled = " or ".join(f"'{owner}.{name}'" for owner in owners)
        raise ConfigError(
            f"key '{name}' in {source} is ambiguous: it exists as {spelled}; name the section, "
            f"e.g. {owners[0]}.{name}=..."
        )
    raise ConfigError(_unknown(name, source))


def _unknown(name: str, source: str) -> str:
    """'unknown key ... did you mean ...' for a name that is no ``section.key``."""
    section, dot, key = name.rpartition(".")
    owners = _owners(key)
    if len(owners) == 1:
        suggestion: str | None = f"{owners[0]}.{key}"
    elif section in _FIELDS:  # a known section: the key is compared with its keys only
        close = difflib.get_close_matches(key, list(_FIELDS[section]), n=1)
        suggestion = f"{section}.{close[0]}" if close else None
    elif dot:
        every = [f"{s}.{k}" for s, keys in _FIELDS.items() for k in keys]
        close = difflib.get_close_matches(name, every, n=1)
        suggestion = close[0] if close else None
    else:
        bare = {k: s for s, keys in _FIELDS.items() for k in keys}
        close = difflib.get_close_matches(key, list(bare), n=1)
        suggestion = f"{bare[close[0]]}.{close[0]}" if close else None
    if suggestion is not None:
        return f"unknown key '{name}' in {source}; did you mean '{suggestion}'?"
    if section in _FIELDS:
        return f"unknown key '{name}' in {source}; [{section}] has: {', '.join(_FIELDS[section])}"
    return f"unknown key '{name}' in {source}; sections: {', '.join(_FIELDS)}"


def _checked(section: str, key: str, value: Any, source: str | None) -> Any:
    """``value`` coerced to the key's type (int to float) after its type and range checks."""
    expected = _TYPES[section][key]
    item = _FIELDS[section][key]
    where = f" in {source}" if source else ""
    example = f"{section}.{key} = {_toml_value(item.default)}"
    if expected is float and _is_number(value) and abs(value) <= sys.float_info.max:
        value = float(value)
    if not _has_type(value, expected):
        raise ConfigError(
            f"{section}.{key} = {_show(value)}{where} has the wrong type: expected "
            f"{_TYPE_TEXT[expected]}, got {_kind(value)} (e.g. {example})"
        )
    if expected is float and not math.isfinite(value):
        raise ConfigError(
            f"{section}.{key} = {_show(value)}{where} must be a finite number (e.g. {example})"
        )
    rule: _Rule | None = item.metadata["rule"]
    if rule is not None and not rule.test(value):
        problem = "not accepted" if isinstance(value, str) else "out of range"
        raise ConfigError(
            f"{section}.{key} = {_show(value)}{where} is {problem}: it {rule.text} "
            f"(default: {example})"
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value: Any, expected: type) -> bool:
    if expected is bool or expected is str:
        return isinstance(value, expected)
    return _is_number(value) and isinstance(value, expected)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for cls, text in names.items():
        if isinstance(value, cls):
            return text
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _show(value: Any) -> str:
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


def _toml_value(value: Any) -> str:
    """One scalar as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(value, str):
        return '"' + "".join(_toml_char(char) for char in value) + '"'
    raise TypeError(f"{type(value).__name__} is not a TOML scalar")


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char
