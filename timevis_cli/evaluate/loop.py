"""``timevis eval``: the faithfulness metrics of a fit, per epoch and split (docs/method.md §8).

The maths lives in :mod:`timevis_cli.evaluate.metrics`; this module only reads, loops and collects, and
writes ``RUN_DIR/eval/`` (``metrics.json``, ``metrics.md``, ``metrics.png``).

Two passes over the data:

1. **Spatial, one epoch at a time.** Each selected epoch's features are read once (all tracked
   samples, [N, D]); the 2-D positions are the fit's stored embedding (never re-encoded), the
   reconstructions ``ψ(φ(x))`` are decoded once from them. Per split: nnpv(k) (test: neighbours
   among train ∪ test), boundary(k) against that epoch's boundary points from the fit, ppr (the
   head's own prediction on ``x`` against that on ``ψ(φ(x))``) and recon. temppv is accumulated
   in the same pass (kept-neighbour fractions between consecutive epochs and 2-D displacements,
   [n, T - 1] per split), so no epoch is read twice for it. Peak memory: a few [N, D] arrays.
2. **Temporal, one block of samples at a time.** temp_l and temp_g compare a sample only with
   its own other epochs, so they stream over blocks of ``block`` samples: the block's rows of
   every selected epoch are sliced from the epoch files ([T, block, D], the only features held)
   next to their stored positions, scored with the metric functions, and summed per epoch. Peak
   memory is about ``T x block x D`` floats (``block`` defaults to a 64 MiB budget) plus the
   metric functions' own bounded temporaries, never ``T x N x D``. The 2-D positions of the
   selected epochs ([T, N, 2]) are kept from pass 1.

Every metric is reported in the paper's convention (fractions) and in the reference code's
(counts including the sample itself); see :mod:`timevis_cli.evaluate.metrics`. Neighbours come from the
shared exact kNN backend (:func:`timevis_cli.fit.neighbors.resolve_backend`), wrapped in a small cache
so both conventions and temppv reuse the lists nnpv already asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from timevis_callback.reader import FeatureRows, Run, format_epochs
from timevis_cli.errors import InputError
from timevis_cli.evaluate.metrics import (
    HIGHER_IS_BETTER,
    Convention,
    _rowwise_pearson,  # temppv's per-sample correlation, shared so its maths exists once
    boundary_preservation,
    neighbor_kept_fraction,
    nnpv,
    ppr,
    recon_error,
    temporal_global_scores,
    temporal_local_scores,
)
from timevis_cli.fit.io import LoadedFit
from timevis_cli.fit.neighbors import KNNBackend, resolve_backend
from timevis_cli.outputs import replaced_folder
from timevis_cli.ranges import parse_range
from timevis_cli.render.lift import SampleLift
from timevis_cli.render.playback import REGIONS_FILE

__all__ = [
    "CONVENTIONS",
    "EVAL_DIR",
    "EpochScores",
    "EvalResult",
    "JSON_FILE",
    "MARKDOWN_FILE",
    "METRICS",
    "PLOT_FILE",
    "TEMPORAL_BLOCK_ELEMENTS",
    "evaluate",
    "select_eval_epochs",
    "write_eval",
]

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
JSON_FILE = "metrics.json"
MARKDOWN_FILE = "metrics.md"
PLOT_FILE = "metrics.png"
JSON_FORMAT = "timevis-eval"
JSON_VERSION = 1

CONVENTIONS: tuple[Convention, ...] = ("paper", "reference")
SPLITS: tuple[str, ...] = ("train", "test")
SPATIAL = ("nnpv", "boundary", "ppr", "landscape", "recon")
TEMPORAL_PER_EPOCH = ("temp_l", "temp_g", "temp_g_spearman")
METRICS: tuple[str, ...] = (*SPATIAL, *TEMPORAL_PER_EPOCH, "temppv")
"""Every metric name in the results; ``temp_g`` is Kendall's τ, ``temp_g_spearman`` Spearman's ρ."""

TEMPORAL_BLOCK_ELEMENTS = 1 << 24
"""Feature values per temporal block (T x block x D float32: 64 MiB)."""

_CACHE_ENTRIES = 16


class _Reporter(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, steps: int = 1, **info: Any) -> None: ...
    def finish(self) -> None: ...


def _higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER[metric.removesuffix("_spearman")]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EpochScores:
    """The metrics of one epoch and split: ``values[metric][convention]``."""

    epoch: int
    split: str
    values: dict[str, dict[str, float]]


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` computed.

    rows: one :class:`EpochScores` per (epoch, split), epochs ascending, train before test;
        metrics ``nnpv``, ``boundary``, ``ppr``, ``landscape``, ``recon``, ``temp_l``, ``temp_g``,
        ``temp_g_spearman`` (the last three: that epoch's mean over samples).
    temporal: ``temporal[split][metric][convention]`` over all selected epochs: ``temppv``,
        ``temp_l``, ``temp_g``, ``temp_g_spearman``.
    NaN marks a metric that could not be computed; ``notes`` says why.
    """

    run_id: str
    epochs: list[int]
    splits: list[str]
    k: int
    temporal_k: int
    knn_backend: str
    rows: list[EpochScores]
    temporal: dict[str, dict[str, dict[str, float]]]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    #: epoch -> the exact landscape's figures from ``render/regions.json`` (``render --exact``):
    #: linear_regions, class_regions, boundary_length, boundary_fraction, ...; empty without one
    regions: dict[int, dict[str, float]] = field(default_factory=dict)

    def value(
        self, metric: str, split: str, epoch: int | None = None, convention: str = "paper"
    ) -> float:
        """One number: the epoch's value, or the split's average (:attr:`averages`) when
        ``epoch`` is None."""
        if epoch is None:
            return self.averages[split][metric][convention]
        try:
            return self._by_epoch[epoch, split][metric][convention]
        except KeyError:
            raise KeyError(f"no {metric!r} scores for epoch {epoch}, split {split!r}") from None

    def series(self, metric: str, split: str, convention: str = "paper") -> list[float]:
        """The metric's value at every epoch of :attr:`epochs`, for one split."""
        return [self.value(metric, split, epoch, convention) for epoch in self.epochs]

    @cached_property
    def _by_epoch(self) -> dict[tuple[int, str], dict[str, dict[str, float]]]:
        return {(row.epoch, row.split): row.values for row in self.rows}

    @cached_property
    def averages(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per split: nnpv, boundary, ppr, landscape, recon averaged over epochs (NaN epochs left out);
        temppv, temp_l, temp_g, temp_g_spearman over the whole run (:attr:`temporal`)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for split in self.splits:
            out[split] = {
                metric: {c: _nanmean(self.series(metric, split, c)) for c in CONVENTIONS}
                for metric in SPATIAL
            }
            out[split].update(self.temporal[split])
        return out

    @cached_property
    def worst(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """Per split and per-epoch metric: its worst epoch, ``{"value": v, "epoch": e}`` in the
        paper's convention (the lowest where higher is better, the highest where lower is;
        NaN epochs left out, ``epoch`` None when every epoch is NaN). temppv is one number
        for the whole run and has no worst epoch."""
        out: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for split in self.splits:
            out[split] = {}
            for metric in (*SPATIAL, *TEMPORAL_PER_EPOCH):
                series = [
                    (value, epoch)
                    for epoch, value in zip(self.epochs, self.series(metric, split), strict=True)
                    if not math.isnan(value)
                ]
                if not series:
                    out[split][metric] = {"value": float("nan"), "epoch": None}
                    continue
                pick = min if _higher_is_better(metric) else max
                value, epoch = pick(series, key=lambda item: item[0])
                out[split][metric] = {"value": value, "epoch": epoch}
        return out

    def summary_lines(self) -> list[str]:
        """The printed summary: per split, each metric's mean over the epochs and its worst
        epoch, e.g. ``"train: ppr mean 0.962 worst 0.901 (epoch 3), ..."``; temppv and the
        whole-run temporal numbers as they are."""
        lines = []
        for split in self.splits:
            parts = []
            for metric, value in self.averages[split].items():
                worst = self.worst[split].get(metric)
                if worst is None:  # temppv: one number for the run
                    parts.append(f"{metric} {_number(value['paper'], '.3f')}")
                    continue
                text = f"{metric} mean {_number(value['paper'], '.3f')}"
                if worst["epoch"] is not None:
                    text += f" worst {float(worst['value']):.3f} (epoch {worst['epoch']})"
                parts.append(text)
            lines.append(f"{split}: " + ", ".join(parts))
        if self.regions:
            lines.append(_regions_line(self.regions))
        return lines

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; NaN becomes None."""
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "run_id": self.run_id,
            "epochs": list(self.epochs),
            "splits": list(self.splits),
            "k": self.k,
            "temporal_k": self.temporal_k,
            "knn_backend": self.knn_backend,
            "higher_is_better": {m: _higher_is_better(m) for m in METRICS},
            "per_epoch": [
                {"epoch": r.epoch, "split": r.split, **_nan_to_none(r.values)} for r in self.rows
            ],
            "temporal": _nan_to_none(self.temporal),
            "averages": _nan_to_none(self.averages),
            "worst": _nan_to_none(self.worst),
            "notes": list(self.notes),
            "seconds": dict(self.seconds),
            **({"regions": {str(e): v for e, v in self.regions.items()}} if self.regions else {}),
        }

    def to_json(self) -> str:
        """Strict JSON (no NaN literals) of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """The inverse of :meth:`to_dict` (None back to NaN)."""
        if data.get("format") != JSON_FORMAT:
            raise InputError(f"not a timevis eval result (format {data.get('format')!r})")
        if int(data.get("version", 0)) > JSON_VERSION:
            raise InputError(
                f"eval result version {data['version']} is newer than this timevis reads "
                f"({JSON_VERSION}); upgrade with: pip install -U timevis"
            )
        rows = []
        for item in data["per_epoch"]:
            values = {k: v for k, v in item.items() if k not in ("epoch", "split")}
            for metric in SPATIAL:  # a result written before the metric existed
                values.setdefault(metric, dict.fromkeys(CONVENTIONS, None))
            rows.append(EpochScores(int(item["epoch"]), str(item["split"]), _none_to_nan(values)))
        return cls(
            run_id=str(data["run_id"]),
            epochs=[int(e) for e in data["epochs"]],
            splits=list(data["splits"]),
            k=int(data["k"]),
            temporal_k=int(data["temporal_k"]),
            knn_backend=str(data["knn_backend"]),
            rows=rows,
            temporal=_none_to_nan(data["temporal"]),
            notes=list(data.get("notes", [])),
            seconds={k: float(v) for k, v in data.get("seconds", {}).items()},
            regions={int(e): dict(v) for e, v in data.get("regions", {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        return cls.from_dict(json.loads(text))

    # --- reports ------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        names = {
            "nnpv": f"nnpv({self.k})",
            "boundary": f"boundary({self.k})",
            "ppr": "ppr",
            "landscape": "landscape",
            "recon": "recon",
            "temp_l": f"temp_l({self.temporal_k})",
            "temp_g": "temp_g τ",
            "temp_g_spearman": "temp_g ρ",
            "temppv": "temppv",
        }
        return {m: f"{names[m]} {'↑' if _higher_is_better(m) else '↓'}" for m in METRICS}

    def to_markdown(self) -> str:
        """A table per split (rows = epochs), an averages table, how to read them, and notes."""
        headers = self._headers()
        per_epoch = [*SPATIAL, *TEMPORAL_PER_EPOCH]
        lines = [
            "# Faithfulness metrics",
            "",
            f"Run `{self.run_id}`, epochs {format_epochs(self.epochs)}, k = {self.k}, "
            f"temporal k = {self.temporal_k}, kNN backend {self.knn_backend}. "
            "Each cell: the paper's convention, and in brackets the reference code's. "
            "↑ higher is better, ↓ lower is better; n/a: not computable (see notes).",
        ]
        for split in self.splits:
            lines += ["", f"## {split.capitalize()}", ""]
            lines += _table(
                ["epoch", *(headers[m] for m in per_epoch)],
                [
                    [str(epoch), *(self._cell(m, split, epoch) for m in per_epoch)]
                    for epoch in self.epochs
                ],
            )
        lines += ["", "## Averages and worst epochs", ""]
        rows = []
        for split in self.splits:
            rows.append([f"{split} mean", *(self._cell(m, split) for m in METRICS)])
            rows.append([f"{split} worst", *(self._worst_cell(m, split) for m in METRICS)])
        lines += _table(["split", *(headers[m] for m in METRICS)], rows)
        lines += [
            "",
            "Spatial metrics are averaged over every evaluated epoch; temppv, temp_l and temp_g "
            "are over all selected epochs at once. Worst: the epoch with the worst value (paper "
            "convention) and that value; temppv is one number for the whole run.",
            "",
            "## How to read the metrics",
            "",
            _READING_GUIDE.format(k=self.k, temporal_k=self.temporal_k),
        ]
        if self.regions:
            lines += ["", *_regions_table(self.regions)]
        if self.notes:
            lines += ["", "## Notes", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def _cell(self, metric: str, split: str, epoch: int | None = None) -> str:
        paper = self.value(metric, split, epoch, "paper")
        if metric in ("ppr", "landscape", "recon"):
            return _number(paper, ".4g" if metric == "recon" else ".3f")
        reference = self.value(metric, split, epoch, "reference")
        counts = metric in ("nnpv", "boundary", "temp_l")
        return f"{_number(paper, '.3f')} ({_number(reference, '.2f' if counts else '.3f')})"

    def _worst_cell(self, metric: str, split: str) -> str:
        worst = self.worst[split].get(metric)
        if worst is None or worst["epoch"] is None:
            return "n/a"
        return f"{float(worst['value']):.3f} (epoch {worst['epoch']})"

    def plot(self, path: str | os.PathLike) -> Path:
        """``metrics.png``: each per-epoch metric over epochs (train and test lines, paper
        convention) and temppv per split. Drawn with the Agg canvas, never pyplot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        headers = self._headers()
        figure = Figure(figsize=(14, 6.5), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(2, 5).ravel()
        axes[-2].set_visible(False)
        colours = {"train": "tab:blue", "test": "tab:orange"}
        for ax, metric in zip(axes, [*SPATIAL, *TEMPORAL_PER_EPOCH], strict=False):
            for split in self.splits:
                values = np.array(self.series(metric, split), dtype=np.float64)
                ax.plot(self.epochs, values, marker="o", ms=3, color=colours[split], label=split)
            ax.set_title(headers[metric])
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend()
        bars = axes[-1]
        values = [self.temporal[split]["temppv"]["paper"] for split in self.splits]
        bars.bar(self.splits, np.nan_to_num(values), color=[colours[s] for s in self.splits])
        for position, value in enumerate(values):
            label, height = ("n/a", 0.0) if math.isnan(value) else (f"{value:.3f}", value)
            bars.annotate(label, (position, height), ha="center", va="bottom", fontsize=9)
        bars.axhline(0.0, color="black", lw=0.8)
        bars.set_ylim(-1.05, 1.05)
        bars.set_title(f"{headers['temppv']} (whole run)")
        figure.suptitle(f"timevis eval: {self.run_id}")
        target = Path(path)
        figure.savefig(target)
        return target


_READING_GUIDE = (
    "**nnpv({k})**: share of each sample's {k} nearest neighbours in feature space that are also "
    "among its {k} nearest on the map (test samples search train ∪ test); bracket: the count "
    "with {k} neighbours including the sample itself, in [1, {k}]. **boundary({k})**: the same "
    "with the {k} nearest boundary points of the epoch (bracket: the shared count, in [0, {k}]). "
    "**ppr**: share of samples whose predicted class survives the round trip through the map, "
    "ψ(φ(x)). **landscape**: share of samples whose class in the landscape `timevis render` "
    "draws (the decoded prediction with the sample lift made from the train samples) at their "
    "own point is the model's prediction: 1 for train by construction, the test samples' "
    "share measures the picture away from the samples it honours. **recon**: mean distance "
    "between a feature vector and its reconstruction, in "
    "feature units. **temppv**: per sample, the correlation between the share of neighbours kept "
    "from one epoch to the next and the distance moved on the map; more negative is better "
    "(samples whose neighbourhood changes should move). **temp_l({temporal_k})**: share of the "
    "{temporal_k} epochs nearest to a sample's position in feature space that are also nearest "
    "on the map (bracket: the count). **temp_g**: rank correlation, Kendall's τ (Spearman's ρ "
    "beside it), between the distances to the sample's other epochs in feature space and on the "
    "map; the bracket keeps the epoch's own zero distance, as the reference code does. A "
    "perfect map scores 1 everywhere but recon (0) and temppv (-1)."
)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else float("nan")


def _number(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _none_to_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _none_to_nan(v) for k, v in value.items()}
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------- kNN cache


def _digest(values: np.ndarray) -> tuple[Any, ...]:
    arr = np.ascontiguousarray(values)
    return arr.shape, arr.dtype.str, hashlib.blake2b(arr.reshape(-1).view(np.uint8)).digest()


class _NeighborCache:
    """The ``knn`` callable handed to the metrics: one exact backend plus its recent answers.

    nnpv in both conventions, boundary in both, and temppv ask for the same neighbour lists
    several times. A list of k neighbours (sorted by distance) starts with the list of k - 1, so a
    request is served from a remembered answer for the same arrays (keyed by content digest, not
    object identity) whenever that answer is at least as long. Holds the last ``entries`` answers.
    (A float32 backend may order two neighbours whose distances differ by less than its precision
    differently in a shorter, separate search; the prefix of the longer list is the one kept.)
    """

    def __init__(self, backend: KNNBackend, entries: int = _CACHE_ENTRIES) -> None:
        self.backend = backend
        self.entries = entries
        self._answers: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self.hits = 0
        self.searches = 0

    def __call__(self, data: np.ndarray, queries: np.ndarray | None, k: int) -> np.ndarray:
        key = (_digest(data), None if queries is None else _digest(queries))
        known = self._answers.get(key)
        if known is not None and known.shape[1] >= k:
            self._answers.move_to_end(key)
            self.hits += 1
            return known[:, :k]
        indices, _ = self.backend.query(data, queries, k=k)
        self.searches += 1
        self._answers[key] = indices
        self._answers.move_to_end(key)
        while len(self._answers) > self.entries:
            self._answers.popitem(last=False)
        return indices


# --------------------------------------------------------------------------- input checks


def select_eval_epochs(run: Run, fit: LoadedFit, text: str) -> list[int]:
    """The epochs a ``--epochs RANGE`` selects for eval: ``all`` means every fitted epoch;
    otherwise the range is read against the store's epochs and every one must be fitted."""
    if text.strip().lower() in ("", "all"):
        return list(fit.epochs)
    wanted = parse_range(text, run.epochs)
    _check_fitted(fit, wanted)
    return wanted


def _check_fitted(fit: LoadedFit, epochs: list[int]) -> None:
    missing = sorted(set(epochs) - set(fit.epochs))
    if missing:
        raise InputError(
            f"epochs {format_epochs(missing)} are not in the fit (fitted: "
            f"{format_epochs(list(fit.epochs))}); evaluate fitted epochs or refit with: "
            f"timevis fit {fit.path.parent} --epochs <RANGE> --overwrite"
        )


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def _check_request(
    run: Run, fit: LoadedFit, epochs: list[int], k: int, temporal_k: int
) -> tuple[list[int], int, int]:
    k = _check_int("k", k)
    temporal_k = _check_int("temporal_k", temporal_k)
    if not epochs:
        raise InputError(f"no epochs to evaluate; fitted: {format_epochs(list(fit.epochs))}")
    epochs = sorted({int(e) for e in epochs})
    _check_fitted(fit, epochs)
    n_train = int(run.samples.mask("train").sum())
    if k >= n_train:
        raise InputError(
            f"k={k} needs more than {k} training samples (k other points per sample), but the "
            f"run tracks {n_train}; pass --k {max(1, n_train - 1)} or less"
        )
    if len(epochs) >= 3 and temporal_k > len(epochs) - 1:
        raise InputError(
            f"temporal_k={temporal_k} must be <= {len(epochs) - 1} (the other epochs among the "
            f"{len(epochs)} selected); pass --temporal-k {len(epochs) - 1} or select more epochs"
        )
    if len(epochs) >= 3 and temporal_k == len(epochs) - 1:
        log.warning(
            "temp_l(%d) counts all %d other epochs, so every map scores 1 on it; pass "
            "--temporal-k %d or less for a telling value",
            temporal_k,
            temporal_k,
            max(1, (len(epochs) - 1) // 2),
        )
    return epochs, k, temporal_k


def _check_epoch_arrays(
    run: Run, epoch: int, features: np.ndarray, positions: dict[str, np.ndarray], counts: dict
) -> None:
    bad = int((~np.isfinite(features)).any(axis=1).sum())
    if bad:
        raise InputError(
            f"{run.epoch_path(epoch)}: epoch {epoch} has {bad} samples with NaN or inf features; "
            "the metrics need finite features"
        )
    for split, points in positions.items():
        if len(points) != counts[split]:
            raise InputError(
                f"the fit has {len(points)} {split} positions at epoch {epoch} but the store "
                f"tracks {counts[split]} {split} samples; refit with: timevis fit {run.path} "
                "--overwrite"
            )


# --------------------------------------------------------------------------- evaluation


@contextmanager
def _stage(reporter: _Reporter | None, name: str, total: int) -> Iterator[None]:
    if reporter is not None:
        reporter.start(name, total)
    try:
        yield
    finally:
        if reporter is not None:
            reporter.finish()


def evaluate(
    run: Run,
    fit: LoadedFit,
    epochs: list[int],
    k: int = 15,
    temporal_k: int = 5,
    knn_backend: str | KNNBackend = "auto",
    reporter: _Reporter | None = None,
    *,
    block_size: int | None = None,
) -> EvalResult:
    """Score ``fit`` on ``epochs`` of ``run``, for train and test (docs/method.md §8).

    epochs: fitted epoch numbers (``select_eval_epochs`` reads a RANGE). k: neighbours for nnpv,
    boundary and temppv. temporal_k: nearest other epochs for temp_l. knn_backend: a ``--knn``
    name (resolved on the fit's device) or a backend. reporter: progress (``start``/``advance``/
    ``finish``, as :class:`timevis_cli.fit.pipeline.Reporter`). block_size: samples per block of the
    temporal pass (default: :data:`TEMPORAL_BLOCK_ELEMENTS` / (T x D)); it changes memory only.
    Raises InputError for epochs outside the fit, ``k`` >= the training samples, or
    ``temporal_k`` >= the selected epochs.
    """
    epochs, k, temporal_k = _check_request(run, fit, epochs, k, temporal_k)
    if block_size is not None:
        block_size = _check_int("block_size", block_size)
    backend = (
        knn_backend
        if isinstance(knn_backend, KNNBackend)
        else resolve_backend(knn_backend, str(getattr(fit.model, "device", "cpu")))
    )
    knn = _NeighborCache(backend)
    masks = {split: run.samples.mask(split) for split in SPLITS}
    splits = [split for split in SPLITS if masks[split].any()]
    notes: list[str] = []
    if "test" not in splits:
        notes.append("the run tracks no test samples: only the train split is scored")
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    spatial = _SpatialPass(run, fit, epochs, splits, masks, k, knn, notes)
    with _stage(reporter, "spatial metrics", len(epochs)):
        for index, epoch in enumerate(epochs):
            spatial.score_epoch(index, epoch)
            if reporter is not None:
                reporter.advance(epoch=epoch)
    seconds["spatial"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    temporal = {split: spatial.temppv(split) for split in splits}
    if len(epochs) < 3:
        notes.append(f"temppv, temp_l and temp_g need at least 3 epochs; {len(epochs)} selected")
        sums = {split: _temporal_sums(len(epochs)) for split in splits}  # all NaN
    else:
        sums = _temporal_pass(
            run, epochs, splits, masks, spatial.positions, temporal_k, block_size, reporter
        )
    for split in splits:
        for (metric, convention), total in sums[split].items():
            temporal[split].setdefault(metric, {})[convention] = total.overall()
            for epoch, value in zip(epochs, total.per_epoch(), strict=True):
                spatial.rows[epoch, split].setdefault(metric, {})[convention] = value
    seconds["temporal"] = round(time.perf_counter() - started, 3)
    log.info(
        "eval: %d epochs x %d splits, %d kNN searches (%d answered from cache)",
        len(epochs),
        len(splits),
        knn.searches,
        knn.hits,
    )
    rows = [
        EpochScores(epoch, split, spatial.rows[(epoch, split)])
        for epoch in epochs
        for split in splits
    ]
    return EvalResult(
        run_id=run.run_id,
        epochs=epochs,
        splits=splits,
        k=k,
        temporal_k=temporal_k,
        knn_backend=type(backend).__name__,
        rows=rows,
        temporal=temporal,
        notes=notes,
        seconds=seconds,
        regions=read_regions(run.path),
    )


#: ``timevis render --exact`` writes the exact landscapes' figures here (under RUN_DIR).
REGIONS_PATH = Path("render") / REGIONS_FILE


def read_regions(run_dir: str | os.PathLike) -> dict[int, dict[str, float]]:
    """The exact landscapes' figures per rendered epoch from ``RUN_DIR/render/regions.json``
    (written by ``timevis render --exact``; eval reports them, it does not compute them);
    empty when there is none. An unreadable file is a one-line InputError naming it."""
    path = Path(run_dir) / REGIONS_PATH
    if not path.is_file():
        return {}
    try:
        epochs = json.loads(path.read_text(encoding="utf-8"))["epochs"]
        figures = {int(epoch): dict(values) for epoch, values in epochs.items()}
        return dict(sorted(figures.items()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{path} cannot be read ({exc}); rerun timevis render --exact, or delete it"
        ) from exc


def _regions_line(regions: dict[int, dict[str, float]]) -> str:
    """``"exact regions (render --exact, epochs 1-15): linear regions explored 812 -> 3689,
    class regions 9 -> 5, boundary 2.41 -> 1.79 diagonals"``: the first and last rendered
    epochs (with pruning, the linear regions explored near the boundaries)."""
    first, last = regions[min(regions)], regions[max(regions)]

    def change(key: str, fmt: str) -> str:
        return f"{first.get(key, float('nan')):{fmt}} -> {last.get(key, float('nan')):{fmt}}"

    return (
        f"exact regions (render --exact, epochs {min(regions)}-{max(regions)}): linear regions "
        f"explored {change('linear_regions', '.0f')}, class regions {change('class_regions', '.0f')}, "
        f"boundary {change('boundary_fraction', '.3g')} diagonals"
    )


def _regions_table(regions: dict[int, dict[str, float]]) -> list[str]:
    """The markdown section of the exact landscapes' figures over training."""
    lines = [
        "## Exact regions (from render/regions.json)",
        "",
        "| epoch | linear regions explored | class regions | boundary length | boundary / diagonal |",
        "|---:|---:|---:|---:|---:|",
    ]
    for epoch, values in regions.items():
        lines.append(
            f"| {epoch} | {values.get('linear_regions', 'n/a')} | "
            f"{values.get('class_regions', 'n/a')} | {values.get('boundary_length', float('nan')):.4g} | "
            f"{values.get('boundary_fraction', float('nan')):.4g} |"
        )
    return lines


class _SpatialPass:
    """Pass 1: per epoch, the spatial metrics of every split and temppv's running series."""

    def __init__(
        self,
        run: Run,
        fit: LoadedFit,
        epochs: list[int],
        splits: list[str],
        masks: dict[str, np.ndarray],
        k: int,
        knn: _NeighborCache,
        notes: list[str],
    ) -> None:
        self.run, self.fit, self.epochs, self.splits, self.masks = run, fit, epochs, splits, masks
        self.k, self.knn, self.notes = k, knn, notes
        self.counts = {split: int(masks[split].sum()) for split in SPLITS}
        self.positions = {
            split: np.empty((len(epochs), self.counts[split], 2), np.float32) for split in splits
        }
        self.rows: dict[tuple[int, str], dict[str, dict[str, float]]] = {}
        self._previous: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._kept: dict[str, dict[str, list[np.ndarray]]] = {
            split: {c: [] for c in CONVENTIONS} for split in splits
        }
        self._moved: dict[str, list[np.ndarray]] = {split: [] for split in splits}
        self._temppv_ok = {split: self.counts[split] > k for split in splits}
        for split in splits:
            if not self._temppv_ok[split]:
                notes.append(
                    f"temppv ({split}) needs more than k={k} {split} samples for their "
                    f"neighbours, the run tracks {self.counts[split]}"
                )

    def score_epoch(self, index: int, epoch: int) -> None:
        features = self.run.features(epoch)
        stored = self.fit.embedding(epoch)
        high = {split: features[self.masks[split]] for split in self.splits}
        low = {split: np.asarray(stored[split], dtype=np.float32) for split in self.splits}
        _check_epoch_arrays(self.run, epoch, features, low, self.counts)
        del features
        head = self.run.head(epoch)
        boundary_high = np.asarray(stored["boundary_features"], dtype=np.float32)
        boundary_low = np.asarray(stored["boundary"], dtype=np.float32)
        has_boundary = len(boundary_high) >= self.k
        if not has_boundary:
            self.notes.append(
                f"epoch {epoch}: boundary({self.k}) skipped, the fit has {len(boundary_high)} "
                f"boundary points there (needs at least {self.k})"
            )
        lift = None  # the landscape's sample lift, made from the train samples (render.lift)
        for split in self.splits:
            x, y = high[split], low[split]
            reference = (high["train"], low["train"]) if split == "test" else (None, None)
            values: dict[str, dict[str, float]] = {
                "nnpv": {
                    c: nnpv(x, y, self.k, *reference, convention=c, knn=self.knn)
                    for c in CONVENTIONS
                },
                "boundary": {
                    c: boundary_preservation(
                        x, y, boundary_high, boundary_low, self.k, convention=c, knn=self.knn
                    )
                    if has_boundary
                    else float("nan")
                    for c in CONVENTIONS
                },
            }
            recon = self.fit.model.inverse_transform(y, epoch=epoch)
            model_logits, recon_logits = head(x), head(recon)
            if split == "train" and len(y):
                lift = SampleLift.from_logits(y, recon_logits, model_logits)
            predicted = model_logits.argmax(axis=1)
            kept = ppr(predicted, recon_logits.argmax(axis=1))
            shown = recon_logits if lift is None else recon_logits + lift(y)
            error = recon_error(x, recon)
            values["ppr"] = dict.fromkeys(CONVENTIONS, kept)
            values["landscape"] = dict.fromkeys(CONVENTIONS, ppr(predicted, shown.argmax(axis=1)))
            values["recon"] = dict.fromkeys(CONVENTIONS, error)
            self.rows[(epoch, split)] = values
            self.positions[split][index] = y
            self._follow(split, x, y)

    def _follow(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        """temppv's series: neighbours kept since the previous epoch, and distance moved."""
        if not self._temppv_ok[split]:
            return
        if split in self._previous:
            x_before, y_before = self._previous[split]
            for c in CONVENTIONS:
                self._kept[split][c].append(
                    neighbor_kept_fraction(x_before, x, self.k, convention=c, knn=self.knn)
                )
            moved = y.astype(np.float64) - y_before.astype(np.float64)
            self._moved[split].append(np.linalg.norm(moved, axis=1))
        self._previous[split] = (x, y)

    def temppv(self, split: str) -> dict[str, dict[str, float]]:
        """temppv of one split in both conventions (as :func:`timevis_cli.evaluate.metrics.temppv`)."""
        if len(self.epochs) < 3 or not self._temppv_ok[split]:
            return {"temppv": dict.fromkeys(CONVENTIONS, float("nan"))}
        moved = np.stack(self._moved[split], axis=1)
        out = {}
        for c in CONVENTIONS:
            per_sample = _rowwise_pearson(np.stack(self._kept[split][c], axis=1), moved)
            if c == "reference":  # undefined correlations count as 0, as the DVI code does
                out[c] = float(np.nan_to_num(per_sample, nan=0.0).mean())
            else:
                defined = per_sample[~np.isnan(per_sample)]
                out[c] = float(defined.mean()) if defined.size else float("nan")
        return {"temppv": out}


class _EpochSums:
    """Per-epoch sums and counts of (T, block) score arrays, NaN left out."""

    def __init__(self, n_epochs: int) -> None:
        self.sums = np.zeros(n_epochs, np.float64)
        self.counts = np.zeros(n_epochs, np.int64)

    def add(self, scores: np.ndarray) -> None:
        defined = ~np.isnan(scores)
        self.sums += np.where(defined, scores, 0.0).sum(axis=1)
        self.counts += defined.sum(axis=1)

    def per_epoch(self) -> list[float]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return [float(v) for v in np.where(self.counts > 0, self.sums / self.counts, np.nan)]

    def overall(self) -> float:
        total = int(self.counts.sum())
        return float(self.sums.sum() / total) if total else float("nan")


def _temporal_sums(n_epochs: int) -> dict[tuple[str, str], _EpochSums]:
    return {(m, c): _EpochSums(n_epochs) for m in TEMPORAL_PER_EPOCH for c in CONVENTIONS}


def _block_rows(n_epochs: int, dim: int) -> int:
    return max(1, TEMPORAL_BLOCK_ELEMENTS // max(1, n_epochs * dim))


def _temporal_pass(
    run: Run,
    epochs: list[int],
    splits: list[str],
    masks: dict[str, np.ndarray],
    positions: dict[str, np.ndarray],
    temporal_k: int,
    block_size: int | None,
    reporter: _Reporter | None,
) -> dict[str, dict[tuple[str, str], _EpochSums]]:
    """Pass 2: temp_l and temp_g (both rank methods, both conventions) over blocks of samples."""
    step = block_size or _block_rows(len(epochs), run.feature_dim)
    rows_of = {split: np.flatnonzero(masks[split]) for split in splits}
    total = sum(math.ceil(len(rows_of[s]) / step) for s in splits)
    out: dict[str, dict[tuple[str, str], _EpochSums]] = {}
    with _stage(reporter, "temporal metrics", total), run.feature_reader(epochs) as reader:
        for split in splits:
            sums = _temporal_sums(len(epochs))
            rows = rows_of[split]
            for start in range(0, len(rows), step):
                high = _read_rows(reader, rows[start : start + step])
                low = positions[split][:, start : start + step]
                for c in CONVENTIONS:
                    sums["temp_l", c].add(
                        temporal_local_scores(high, low, temporal_k, convention=c)
                    )
                    sums["temp_g", c].add(
                        temporal_global_scores(high, low, "kendall", convention=c)
                    )
                    sums["temp_g_spearman", c].add(
                        temporal_global_scores(high, low, "spearman", convention=c)
                    )
                if reporter is not None:
                    reporter.advance(split=split, samples=min(start + step, len(rows)))
            out[split] = sums
    return out


def _read_rows(reader: FeatureRows, rows: np.ndarray) -> np.ndarray:
    """Features float32 [T, len(rows), D] of the given store rows (ascending) at every epoch of
    the reader, checked finite."""
    out = reader.read(rows)
    if not np.isfinite(out).all():
        raise InputError(
            f"{reader.run.path}: NaN or inf features among store rows {int(rows[0])}-{int(rows[-1])}; "
            "the metrics need finite features"
        )
    return out


# --------------------------------------------------------------------------- output


def write_eval(run_dir: str | os.PathLike, result: EvalResult) -> Path:
    """Write ``RUN_DIR/eval/`` (metrics.json, metrics.md, metrics.png) through a temporary
    folder renamed at the end; the previous eval is replaced as a whole, and kept as it was when
    writing fails (:class:`~timevis_cli.outputs.OutputWriteError`, one line: a full disk, a
    read-only RUN_DIR). Returns the folder."""
    run_dir = Path(run_dir)
    with replaced_folder(run_dir, EVAL_DIR) as tmp:
        (tmp / JSON_FILE).write_text(result.to_json() + "\n", encoding="utf-8")
        (tmp / MARKDOWN_FILE).write_text(result.to_markdown(), encoding="utf-8")
        result.plot(tmp / PLOT_FILE)
    final = run_dir / EVAL_DIR
    return final
