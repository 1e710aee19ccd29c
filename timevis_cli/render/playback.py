"""What ``timevis render`` computes: per-epoch frames of the fitted map (docs/method.md §7).

The work is split between the parent process and the render workers:

- the parent: :func:`plan_render` resolves epochs, bounds and the sample subset once;
  :class:`GridLandscapes` computes every epoch's landscape on one torch device (the GPU when there
  is one): the grid is decoded once per canvas (per epoch, coarse-to-fine, for a refined fit's
  decoder with one bias per epoch) and each epoch's head, rebuilt from the store, gives the
  grid's classes and margins; :func:`frame_inputs` pairs them with the epoch's 2-D
  positions, the landscape's fade away from the epoch's points and the epoch's agreement
  (:meth:`GridLandscapes.agreement`), and streams one small :class:`FrameInput` per epoch to
  the workers; :func:`write_agreement` and :func:`agreement_summary` report the agreements;
- a worker: the picklable :class:`FrameBuilder` reads labels, predictions and metrics from the
  store, colours the grid and hands the frame to the renderer. Workers never decode, never
  evaluate a head and never import torch (so CUDA cannot be initialised in them); this module
  imports torch only inside :class:`GridLandscapes`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from timevis_callback.head import Head
from timevis_callback.reader import Run, open_run
from timevis_cli.config import RenderConfig
from timevis_cli.errors import InputError
from timevis_cli.ranges import parse_range
from timevis_cli.render.frames import AGREEMENT_WARN, EpochFrame
from timevis_cli.render.landscape import (
    Bounds,
    canvas_bounds,
    classify_grid_torch,
    classify_points_torch,
    decode_grid_torch,
    fade_weights,
    follow_canvas_bounds,
    landscape_coarse_to_fine,
    landscape_image,
    palette,
    point_logits,
    shared_canvas_bounds,
)

if TYPE_CHECKING:
    import torch

    from timevis_cli.fit.io import LoadedFit
    from timevis_cli.render.lift import SampleLift

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "both")
BOUNDS = ("global", "per-epoch", "follow")
#: File of ``{epoch: agreement}`` in render/.
AGREEMENT_FILE = "agreement.json"


@dataclass(frozen=True)
class RenderPlan:
    """Resolved once in the parent process: which epochs, which canvas, which samples."""

    run_dir: Path
    epochs: list[int]
    bounds: dict[int, Bounds]  # epoch -> canvas (global: shared, but for epochs_apart)
    train_rows: np.ndarray  # rows within the train split that are drawn
    test_rows: np.ndarray  # rows within the test split that are drawn (empty: none)
    resolution: int
    global_bounds: bool
    class_names: list[str] = field(default_factory=list)
    #: global bounds: epochs lying far from the rest, each on its own canvas (not the shared one)
    epochs_apart: list[int] = field(default_factory=list)
    #: a decoder with per-epoch biases: decode every Nth row and column, then the class borders
    landscape_step: int = 1
    #: the landscape fades to the background beyond this fraction of the canvas side from every
    #: point the epoch recorded (0: no fade)
    fade_distance: float = 0.0
    #: draw each epoch's agreement in its frame's corner
    show_agreement: bool = False
    #: lift the landscape around the train samples it would show in another class
    #: (:mod:`~timevis_cli.render.lift`); the agreement is then the test samples'
    sample_lift: bool = False


def plan_render(run: Run, fit: LoadedFit, settings: RenderConfig, *, exact: bool = False) -> RenderPlan:
    """Epochs (must be fitted), canvas bounds, and a fixed subsample of at most max_points.

    ``settings.sample_lift`` is kept unless ``exact`` (``render --exact`` draws the decoder's
    own piecewise-linear regions, which a lift would not be).

    Bounds: ``follow`` (the default), each epoch's canvas framed on its train samples and
    boundary points, smoothed over the rendered epochs and never so large that the epoch's
    train samples (5-95% extent) fill less than 0.6 of it
    (:func:`~timevis_cli.render.landscape.follow_canvas_bounds`); ``per-epoch``, each epoch's own
    canvas around all its train samples; ``global``, one canvas shared by every epoch except
    those lying far from the rest
    (:func:`~timevis_cli.render.landscape.shared_canvas_bounds`, e.g. the untrained epoch 0 embedded as
    a distant blob): the shared canvas covers every point of the other epochs, and each epoch
    apart is drawn on its own canvas (as with ``per-epoch``) rather than shrinking every other
    frame or being clipped away; they are logged at INFO and kept in ``epochs_apart``.
    """
    if settings.split not in SPLITS:
        raise InputError(f"split={settings.split!r} must be one of {', '.join(SPLITS)}")
    if settings.bounds not in BOUNDS:
        raise InputError(f"bounds={settings.bounds!r} must be one of {', '.join(BOUNDS)}")
    epochs = parse_range(settings.epochs, fit.epochs)
    tracked = {split: int(run.samples.mask(split).sum()) for split in ("train", "test")}
    _check_split(run.path, settings.split, tracked)
    n_train = tracked["train"]
    n_test = tracked["test"] if settings.split != "train" else 0
    train_rows = np.arange(n_train) if settings.split != "test" else np.arange(0)
    test_rows = np.arange(n_test)
    total = len(train_rows) + len(test_rows)
    if total > settings.max_points:
        rng = np.random.default_rng(0)
        keep_train = int(round(settings.max_points * len(train_rows) / total))
        train_rows = np.sort(rng.choice(train_rows, keep_train, replace=False))
        test_rows = np.sort(rng.choice(test_rows, settings.max_points - keep_train, replace=False))
        log.warning(
            "drawing a fixed random subset of %d of %d samples per frame (render.max_points); "
            "raise it with --set render.max_points=N",
            settings.max_points,
            total,
        )
    positions, framing = {}, {}
    for epoch in epochs:
        emb = fit.embedding(epoch)  # only the 2-D arrays are kept
        positions[epoch] = emb["train"]
        samples = emb["train"] if len(emb["train"]) else emb.get("test", emb["train"])
        framing[epoch] = np.concatenate([samples, emb.get("boundary", np.zeros((0, 2)))])
    apart: list[int] = []
    if settings.bounds == "follow":
        core = {e: points if len(points) else framing[e] for e, points in positions.items()}
        bounds = follow_canvas_bounds(framing, core)
    elif settings.bounds == "global":
        shared, apart = shared_canvas_bounds(positions)
        bounds = {
            epoch: canvas_bounds(positions[epoch]) if epoch in apart else shared for epoch in epochs
        }
    else:
        bounds = {epoch: canvas_bounds(points) for epoch, points in positions.items()}
    return RenderPlan(
        run_dir=run.path,
        epochs=epochs,
        bounds=bounds,
        train_rows=train_rows,
        test_rows=test_rows,
        resolution=settings.resolution,
        landscape_step=settings.landscape_step,
        global_bounds=settings.bounds == "global",
        class_names=run.class_names,
        epochs_apart=apart,
        fade_distance=settings.fade_distance,
        show_agreement=settings.show_agreement,
        sample_lift=_sample_lift(settings.sample_lift, exact),
    )


def _sample_lift(wanted: bool, exact: bool) -> bool:
    if wanted and exact:
        log.info("--exact draws the decoder's own regions: the sample lift is off")
    return wanted and not exact


def _check_split(run_dir: Path, split: str, tracked: dict[str, int]) -> None:
    """InputError when ``split`` draws no sample at all (a store without test samples asked
    for ``--split test``); a warning when ``both`` finds one split empty."""
    if split in tracked and tracked[split] == 0:
        other = "test" if split == "train" else "train"
        fix = f"use --split {other}" if tracked[other] else "the store tracks no sample at all"
        raise InputError(
            f'render.split = "{split}", but {run_dir} tracks no {split} samples '
            f"({tracked[other]} {other}); {fix}"
        )
    empty = [name for name, count in tracked.items() if count == 0]
    if split == "both" and empty:
        log.warning("--split both: %s tracks no %s samples", run_dir, empty[0])


#: One epoch's landscape: grid classes (R, R) (``landscape.class_dtype``), margins float32 (R, R).
Grid = tuple[np.ndarray, np.ndarray]


class GridLandscapes:
    """Every planned epoch's landscape, computed in THIS process on ``device``.

    The fit's decoder is used on ``device`` (a copy when the fit was loaded elsewhere; the fit
    itself is left as it is). A decoder shared by every epoch decodes the canvas grid once per
    distinct bounds (once in all with global bounds), and only the latest is kept, on the device
    (float32 (R*R, D)); a decoder with one bias per epoch (a refined fit) decodes each epoch
    (:meth:`grid`). Each epoch's head is rebuilt from the store (``Head.to_torch()``) and applied
    there. ``seconds`` accumulates the time of the ``"decode"`` and ``"heads"`` stages.
    """

    def __init__(self, run: Run, fit: LoadedFit, plan: RenderPlan, device: torch.device):
        import torch

        self.run = run
        self.plan = plan
        self.device = torch.device(device)
        # decode(y, index): the fit's decoder(s) on the device (a DVI fit: each epoch's own)
        self._decode = fit.model.decoder(self.device)
        self._decode_index = fit.model.decode_index
        self._decoded: tuple[Bounds, torch.Tensor] | None = None
        self.seconds = {"decode": 0.0, "heads": 0.0}
        #: epoch -> agreement of the epochs :func:`frame_inputs` has produced
        self.agreements: dict[int, float] = {}
        self._last_head: tuple[int, Head] | None = None
        self._last_lift: tuple[int, SampleLift | None] | None = None
        self._last_model: tuple[int, np.ndarray] | None = None
        self._fit = fit

    def head(self, epoch: int) -> Head:
        """The epoch's head, read from the store once for its grid and its agreement."""
        if self._last_head is None or self._last_head[0] != epoch:
            self._last_head = (epoch, self.run.head(epoch))
        return self._last_head[1]

    def model_logits(self, epoch: int) -> np.ndarray:
        """The model's logits float32 [N, C] for every tracked sample at ``epoch`` (its head on
        the stored features, as ``timevis eval`` computes them), read once per epoch for its
        lift and its agreement."""
        if self._last_model is None or self._last_model[0] != epoch:
            self._last_model = (epoch, self.head(epoch)(self.run.features(epoch)))
        return self._last_model[1]

    def decoded(self, bounds: Bounds) -> torch.Tensor:
        """The grid of ``bounds`` decoded on the device by a decoder shared by every epoch (only
        the latest canvas is kept)."""
        import torch

        if self._decoded is None or self._decoded[0] != bounds:
            self._decoded = None  # free the previous canvas first
            started = time.perf_counter()
            decoded = decode_grid_torch(self._decode, bounds, self.plan.resolution, self.device)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds["decode"] += time.perf_counter() - started
            self._decoded = (bounds, decoded)
        return self._decoded[1]

    def grid(self, epoch: int) -> Grid:
        """The epoch's grid classes and margins (numpy, on the CPU).

        A decoder shared by every epoch decodes each canvas once; a decoder with one bias per
        epoch decodes every epoch, then on every ``plan.landscape_step``-th row and column
        and at class borders only (:func:`~timevis_cli.render.landscape.landscape_coarse_to_fine`).
        """
        lift = self.lift(epoch)
        if self._decode_index(epoch) is not None:
            started = time.perf_counter()
            grid = landscape_coarse_to_fine(
                self._epoch_decode(epoch),
                self.head(epoch),
                self.plan.bounds[epoch],
                self.plan.resolution,
                self.device,
                step=self.plan.landscape_step,
                lift=lift,
            )
            self.seconds["decode"] += time.perf_counter() - started
            return grid
        decoded = self.decoded(self.plan.bounds[epoch])
        started = time.perf_counter()
        grid = classify_grid_torch(decoded, self.head(epoch), lift=lift, bounds=self.plan.bounds[epoch])
        self.seconds["heads"] += time.perf_counter() - started
        return grid

    def _epoch_decode(self, epoch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The epoch's decoder as a torch function of 2-D points."""
        index = self._decode_index(epoch)
        return self._decode if index is None else (lambda y: self._decode(y, index))

    def lift(self, epoch: int) -> SampleLift | None:
        """The epoch's sample lift (:mod:`~timevis_cli.render.lift`) from every tracked train
        sample's position, the landscape's logits there and the model's logits (its head on the
        stored features); None when the plan has no lift or the run tracks no train sample."""
        from timevis_cli.render.lift import SampleLift

        if not self.plan.sample_lift:
            return None
        if self._last_lift is None or self._last_lift[0] != epoch:
            self._last_lift = (epoch, None)
            positions = np.asarray(self._fit.embedding(epoch)["train"], np.float32)
            if len(positions):
                started = time.perf_counter()
                head = self.head(epoch)
                model = self.model_logits(epoch)[self.run.samples.mask("train")]
                decoded = point_logits(self._epoch_decode(epoch), head, positions, self.device)
                lift = SampleLift.from_logits(positions, decoded, model)
                log.debug("epoch %d: %d of %d train samples lifted", epoch, lift.n_lifted, len(positions))
                self._last_lift = (epoch, lift)
                self.seconds["heads"] += time.perf_counter() - started
        return self._last_lift[1]

    def agreement_split(self) -> str:
        """Whose agreement :meth:`agreement` measures: ``"test"`` with the sample lift (every
        train sample agrees by construction) when the run tracks test samples, else ``"train"``
        (without the lift: the decoder's own agreement)."""
        if self.plan.sample_lift and self.run.samples.mask("test").any():
            return "test"
        return "train"

    def agreement(self, epoch: int) -> float:
        """The landscape's agreement with the model at ``epoch``: the share of the
        :meth:`agreement_split` samples (every one tracked) whose landscape class at their own
        2-D position (decoded with the epoch's decoder, classified with its head, on the device,
        lifted when the plan says so) is the model's prediction ``argmax h_t(x)`` (its head on
        their stored features, as ``timevis eval`` computes it). NaN when there are none.
        Without test samples the lift is left out (it would make every train sample agree).
        """
        split = self.agreement_split()
        points = np.asarray(self._fit.embedding(epoch)[split], np.float32)
        if len(points) == 0:
            return float("nan")
        started = time.perf_counter()
        head = self.head(epoch)
        lift = self.lift(epoch) if split == "test" else None
        mapped = classify_points_torch(self._epoch_decode(epoch), head, points, self.device, lift=lift)
        model = self.model_logits(epoch)[self.run.samples.mask(split)].argmax(axis=1)
        self.seconds["heads"] += time.perf_counter() - started
        return float(np.mean(mapped.astype(np.int64) == model))


@dataclass(frozen=True, eq=False)
class ExactRegions:
    """One epoch's exact class regions as a frame draws them: polygons, a list of float64
    (n_i, 2) convex class pieces; classes, int64 (Q,) each piece's class; boundary, float64
    (S, 4) segments ``x0, y0, x1, y1`` between classes."""

    polygons: list[np.ndarray]
    classes: np.ndarray
    boundary: np.ndarray


class ExactLandscapes:
    """Every planned epoch's exact landscape (``render --exact``), computed in this process on
    the CPU from the fit's decoder (``FitModel.decoder_layers``) and the epoch's head
    (:mod:`~timevis_cli.render.exact`); each epoch's SVG is written into ``folder`` and its
    figures kept in ``summaries`` (``render/regions.json``).

    The head of the first planned epoch is checked on construction: a head that is not
    piecewise linear raises ``NotPiecewiseLinearError`` before anything is computed.
    """

    def __init__(self, run: Run, fit: LoadedFit, plan: RenderPlan, folder: Path):
        from timevis_cli.render.exact import cpwl_chain

        self.run = run
        self.fit = fit
        self.plan = plan
        self.folder = Path(folder)
        self.summaries: dict[int, dict[str, float | int]] = {}
        #: epoch -> boundary segments (S, 4) of the epochs computed so far (the HTML overlay)
        self.boundaries: dict[int, np.ndarray] = {}
        first = plan.epochs[0]
        head = run.head(first)
        cpwl_chain(fit.model.decoder_layers(first), head.spec, head.state)

    def regions(self, epoch: int, points: np.ndarray, labels: np.ndarray) -> ExactRegions:
        """The epoch's exact landscape: its SVG written (with ``points`` (n, 2) coloured by
        ``labels`` (n,)), its figures kept; the regions a frame draws."""
        from timevis_cli.render.exact import cpwl_chain, exact_landscape
        from timevis_cli.render.frames import title_text
        from timevis_cli.render.svg import SVG_FILENAME, write_svg

        head = self.run.head(epoch)
        chain = cpwl_chain(self.fit.model.decoder_layers(epoch), head.spec, head.state)
        exact = exact_landscape(chain, self.plan.bounds[epoch])
        self.summaries[epoch] = exact.summary()
        self.boundaries[epoch] = exact.boundary
        write_svg(
            self.folder / SVG_FILENAME.format(epoch=epoch), exact, palette(self.run.num_classes),
            class_names=self.plan.class_names or None, points=points, labels=labels,
            title=title_text(epoch),
        )  # fmt: skip
        log.info(
            "epoch %d: %d linear regions, %d class regions, boundary %.3g of the diagonal "
            "(%.2f s)", epoch, exact.linear_regions, exact.class_regions,
            self.summaries[epoch]["boundary_fraction"], self.summaries[epoch]["seconds"],
        )  # fmt: skip
        return ExactRegions(exact.piece_polygons(), exact.piece_class, exact.boundary)


#: File of the exact landscapes' figures per epoch in render/ (``render --exact``).
REGIONS_FILE = "regions.json"


def write_regions(folder: Path, summaries: dict[int, dict[str, float | int]]) -> Path:
    """``folder/regions.json``: per epoch the linear regions, the class regions (connected
    components per class), the boundary length (canvas units, and as a fraction of the canvas
    diagonal), the slivers dropped and the seconds it took."""
    path = Path(folder) / REGIONS_FILE
    values = {"epochs": {str(epoch): summary for epoch, summary in summaries.items()}}
    path.write_text(json.dumps(values, indent=1) + "\n")
    return path


@dataclass(frozen=True, eq=False)
class FrameInput:
    """The parent's part of one epoch's frame, sent to a render worker.

    classes, margins: the landscape (:data:`Grid`; None with ``exact``); train_points,
    test_points: float32 (n, 2) positions of the plan's drawn train and test rows; fade:
    float32 (R, R) the share of the landscape's colour each pixel keeps
    (:func:`~timevis_cli.render.landscape.fade_weights`; None: no fade); agreement: the epoch's
    agreement (:meth:`GridLandscapes.agreement`); exact: the exact class regions drawn instead
    of the raster landscape (``render --exact``).
    """

    classes: np.ndarray | None
    margins: np.ndarray | None
    train_points: np.ndarray
    test_points: np.ndarray
    fade: np.ndarray | None = None
    agreement: float | None = None
    exact: ExactRegions | None = None


def frame_inputs(
    landscapes: GridLandscapes, fit: LoadedFit, exact: ExactLandscapes | None = None
) -> Iterator[FrameInput]:
    """One :class:`FrameInput` per planned epoch, in order, computed when asked for (so a pool
    draws earlier epochs meanwhile and memory stays bounded however many epochs there are).
    With ``exact`` each epoch's exact regions replace the grid landscape."""
    plan = landscapes.plan
    log.info(
        "landscapes of %d epochs: grid decode and heads on %s", len(plan.epochs), landscapes.device
    )
    run = landscapes.run
    train = run.samples.mask("train")
    for epoch in plan.epochs:
        emb = fit.embedding(epoch)
        train_points = emb["train"][plan.train_rows]
        regions = None
        if exact is None:
            classes, margins = landscapes.grid(epoch)
        else:
            classes = margins = None
            labels = run.samples.label[train][plan.train_rows]
            regions = exact.regions(epoch, train_points, labels)
        agreement = landscapes.agreement(epoch)
        landscapes.agreements[epoch] = agreement
        yield FrameInput(
            exact=regions,
            classes=classes,
            margins=margins,
            train_points=train_points,
            test_points=emb["test"][plan.test_rows],
            fade=None if regions is not None else fade_weights(
                _recorded_points(emb), plan.bounds[epoch], plan.resolution, plan.fade_distance
            ),
            agreement=None if math.isnan(agreement) else agreement,
        )
    warn_low_agreement(landscapes.agreements, run.path, fit.config.fit.method, landscapes.agreement_split())


def _recorded_points(emb: dict[str, np.ndarray]) -> np.ndarray:
    """Every 2-D point of one epoch's embedding: train and test samples, boundary points."""
    parts = [emb[key] for key in ("train", "test", "boundary") if key in emb]
    return np.concatenate([np.asarray(part, np.float64).reshape(-1, 2) for part in parts])


def warn_low_agreement(
    agreements: dict[int, float],
    run_dir: Path | str = "RUN_DIR",
    method: str = "timevis",
    split: str = "train",
) -> list[int]:
    """Log ONE warning naming the epochs whose agreement (of the ``split`` samples:
    :meth:`GridLandscapes.agreement_split`) is below ``AGREEMENT_WARN``, with their values (and
    how to refit ``run_dir`` with the fit's ``method``); those epochs."""
    low = [epoch for epoch, value in agreements.items() if value < AGREEMENT_WARN]
    more = "dvi.max_passes=N" if method == "dvi" else "training.max_epochs=N"
    whose = (
        "test samples whose lifted landscape class"
        if split == "test"
        else "train samples whose landscape class"
    )
    if low:
        shown = ", ".join(f"epoch {epoch} {agreements[epoch]:.3f}" for epoch in low)
        log.warning(
            "the landscape disagrees with the model at %d of %d rendered epochs (agreement < "
            "%.2f: the share of %s at their position is the model's prediction): %s; do not "
            "trust the regions there: refit with more training (e.g. timevis fit %s "
            "--overwrite --set %s) and check timevis eval",
            len(low), len(agreements), AGREEMENT_WARN, whose, shown, run_dir, more,
        )  # fmt: skip
    return low


def write_agreement(folder: Path, agreements: dict[int, float]) -> Path:
    """``folder/agreement.json``: ``{"epoch": agreement}`` (null where no sample was drawn)."""
    path = Path(folder) / AGREEMENT_FILE
    values = {str(e): (None if math.isnan(v) else round(v, 6)) for e, v in agreements.items()}
    path.write_text(json.dumps(values, indent=1) + "\n")
    return path


def agreement_summary(agreements: dict[int, float], split: str = "train") -> str:
    """``"agreement min 0.912 (epoch 3), mean 0.968"`` of the rendered epochs (``"test
    agreement ..."`` when the ``split`` measured is the test samples')."""
    name = "agreement" if split == "train" else f"{split} agreement"
    known = {e: v for e, v in agreements.items() if not math.isnan(v)}
    if not known:
        return f"{name} n/a (no {split} sample)"
    worst = min(known, key=known.__getitem__)
    mean = sum(known.values()) / len(known)
    return f"{name} min {known[worst]:.3f} (epoch {worst}), mean {mean:.3f}"


class FrameBuilder:
    """Builds the :class:`EpochFrame` of one epoch from its :class:`FrameInput`; picklable.

    Runs in the render workers: it opens the store lazily, reads the epoch's labels, predictions
    and metrics, and colours the grid. It never decodes, evaluates a head or imports torch:
    :class:`GridLandscapes` does that once, in the parent.
    """

    def __init__(self, plan: RenderPlan):
        self.plan = plan
        self._run: Run | None = None
        self._palette: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"plan": self.plan}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["plan"])

    def _open(self) -> Run:
        if self._run is None:
            # the process that planned the render has warned of unreadable epochs already
            self._run = open_run(self.plan.run_dir, warn_unreadable=False)
            self._palette = palette(self._run.num_classes)
        return self._run

    def background(
        self, classes: np.ndarray, margins: np.ndarray, fade: np.ndarray | None = None
    ) -> np.ndarray:
        """uint8 [R, R, 3]: a grid's classes and margins in the fixed palette's colours, faded
        to white by ``fade`` (see :class:`FrameInput`)."""
        self._open()
        return landscape_image(classes, margins, self._palette, fade=fade)

    def __call__(self, epoch: int, given: FrameInput) -> EpochFrame:
        run = self._open()
        preds = run.logits(epoch).argmax(axis=1)
        train, test = run.samples.mask("train"), run.samples.mask("test")
        tr, te = self.plan.train_rows, self.plan.test_rows
        test_args = {}
        if len(te):
            test_args = dict(
                test_points=given.test_points,
                test_labels=run.samples.label[test][te],
                test_preds=preds[test][te],
            )
        regions = {}
        if given.exact is None:
            background = self.background(given.classes, given.margins, given.fade)
        else:  # the exact regions are drawn as polygons over a white canvas
            background = np.full((1, 1, 3), 255, np.uint8)
            regions = dict(
                regions=(given.exact.polygons, given.exact.classes), boundary=given.exact.boundary
            )
        return EpochFrame(
            epoch=epoch,
            background=background,
            **regions,
            bounds=self.plan.bounds[epoch],
            train_points=given.train_points,
            train_labels=run.samples.label[train][tr],
            train_preds=preds[train][tr],
            metrics=_title_metrics(run.epoch_info(epoch).metrics),
            agreement=given.agreement if self.plan.show_agreement else None,
            **test_args,
        )


def _title_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The accuracy and loss the trainer logged (validation first), for the frame title."""
    chosen = {}
    for key in sorted(metrics, key=lambda k: (not k.startswith("val"), k)):
        if ("acc" in key or "loss" in key) and len(chosen) < 3:
            chosen[key] = metrics[key]
    return chosen


def parse_track(text: str | None, run: Run, plan: RenderPlan) -> list[int]:
    """Rows (in the viewer's train-then-test order) of ``--track 12,40,test:7``."""
    if not text:
        return []
    train_ids = run.samples.id[run.samples.mask("train")][plan.train_rows]
    test_ids = run.samples.id[run.samples.mask("test")][plan.test_rows]
    rows = []
    for item in text.split(","):
        split, _, value = item.strip().rpartition(":")
        split = split or "train"
        if split not in ("train", "test") or not value.isdigit():
            raise InputError(f"--track {text!r}: cannot read {item!r}; use ids like 12,40,test:7")
        ids = train_ids if split == "train" else test_ids
        found = np.flatnonzero(ids == int(value))
        if len(found) == 0:
            raise InputError(
                f"--track: {split} sample id {value} is not drawn (not tracked, not in --split, "
                "or left out by render.max_points)"
            )
        rows.append(int(found[0]) + (0 if split == "train" else len(train_ids)))
    return rows

