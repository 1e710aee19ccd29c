"""What ``timevis render`` computes: per-epoch frames of the fitted map (METHOD.md section 6).

A :class:`FrameBuilder` is picklable: render workers receive it once and build their frames from
the run store and the fit themselves (the grid is decoded once per worker when the canvas bounds
are global). :func:`plan_render` resolves epochs, bounds and the sample subset once, in the parent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from timevis_callback.reader import Run, open_run
from timevis_cli.config import RenderConfig
from timevis_cli.errors import InputError
from timevis_cli.fit_io import LoadedFit, load_fit
from timevis_cli.landscape import (
    Bounds,
    canvas_bounds,
    classify_grid,
    decode_grid,
    landscape_image,
    palette,
)
from timevis_cli.ranges import parse_range
from timevis_cli.render import EpochFrame

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "both")
BOUNDS = ("global", "per-epoch")


@dataclass(frozen=True)
class RenderPlan:
    """Resolved once in the parent process: which epochs, which canvas, which samples."""

    run_dir: Path
    epochs: list[int]
    bounds: dict[int, Bounds]  # epoch -> canvas (all equal when global)
    train_rows: np.ndarray  # rows within the train split that are drawn
    test_rows: np.ndarray  # rows within the test split that are drawn (empty: none)
    resolution: int
    global_bounds: bool
    class_names: list[str] = field(default_factory=list)


def plan_render(run: Run, fit: LoadedFit, settings: RenderConfig) -> RenderPlan:
    """Epochs (must be fitted), canvas bounds, and a fixed subsample of at most max_points."""
    if settings.split not in SPLITS:
        raise InputError(f"split={settings.split!r} must be one of {', '.join(SPLITS)}")
    if settings.bounds not in BOUNDS:
        raise InputError(f"bounds={settings.bounds!r} must be one of {', '.join(BOUNDS)}")
    epochs = parse_range(settings.epochs, fit.epochs)
    n_train = int(run.samples.mask("train").sum())
    n_test = int(run.samples.mask("test").sum()) if settings.split != "train" else 0
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
    positions = {epoch: fit.embedding(epoch)["train"] for epoch in epochs}
    if settings.bounds == "global":
        shared = canvas_bounds(list(positions.values()))
        bounds = dict.fromkeys(epochs, shared)
    else:
        bounds = {epoch: canvas_bounds(points) for epoch, points in positions.items()}
    return RenderPlan(
        run_dir=run.path,
        epochs=epochs,
        bounds=bounds,
        train_rows=train_rows,
        test_rows=test_rows,
        resolution=settings.resolution,
        global_bounds=settings.bounds == "global",
        class_names=run.class_names,
    )


class FrameBuilder:
    """Builds the :class:`EpochFrame` of one epoch; picklable (opens the store lazily)."""

    def __init__(self, plan: RenderPlan):
        self.plan = plan
        self._run: Run | None = None
        self._fit: LoadedFit | None = None
        self._decoded: dict[Bounds, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"plan": self.plan}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["plan"])

    def _open(self) -> tuple[Run, LoadedFit]:
        if self._run is None or self._fit is None:
            torch.set_num_threads(1)  # one worker per core: no oversubscription
            self._run = open_run(self.plan.run_dir)
            self._fit = load_fit(self._run)
        return self._run, self._fit

    def decoded(self, bounds: Bounds) -> np.ndarray:
        """The grid of ``bounds`` decoded to feature space, once per canvas."""
        if bounds not in self._decoded:
            if self.plan.global_bounds:
                self._decoded.clear()
            _, fit = self._open()
            self._decoded[bounds] = decode_grid(
                fit.model.inverse_transform, bounds, self.plan.resolution
            )
        return self._decoded[bounds]

    def background(self, epoch: int) -> np.ndarray:
        """uint8 [R, R, 3]: the epoch's head applied to the decoded grid."""
        run, _ = self._open()
        bounds = self.plan.bounds[epoch]
        classes, margins = classify_grid(self.decoded(bounds), run.head(epoch))
        return landscape_image(classes, margins, palette(run.num_classes))

    def __call__(self, epoch: int) -> EpochFrame:
        run, fit = self._open()
        emb = fit.embedding(epoch)
        preds = run.logits(epoch).argmax(axis=1)
        train, test = run.samples.mask("train"), run.samples.mask("test")
        tr, te = self.plan.train_rows, self.plan.test_rows
        test_args = {}
        if len(te):
            test_args = dict(
                test_points=emb["test"][te],
                test_labels=run.samples.label[test][te],
                test_preds=preds[test][te],
            )
        return EpochFrame(
            epoch=epoch,
            background=self.background(epoch),
            bounds=self.plan.bounds[epoch],
            train_points=emb["train"][tr],
            train_labels=run.samples.label[train][tr],
            train_preds=preds[train][tr],
            metrics=_title_metrics(run.epoch_info(epoch).metrics),
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


def export_viewer(
    run: Run, fit: LoadedFit, plan: RenderPlan, out_path: Path, track_rows: list[int]
) -> Path:
    """Write the self-contained interactive page of the rendered epochs (trails: track_rows)."""
    from timevis_cli.render import title_text
    from timevis_cli.viewer import write_viewer

    if not plan.global_bounds:
        log.info("the HTML page uses one canvas for all epochs (--bounds per-epoch is for PNGs)")
        shared = canvas_bounds([fit.embedding(e)["train"] for e in plan.epochs])
        plan = replace(plan, bounds=dict.fromkeys(plan.epochs, shared), global_bounds=True)
    builder = FrameBuilder(plan)
    train, test = run.samples.mask("train"), run.samples.mask("test")
    tr, te = plan.train_rows, plan.test_rows
    positions, predictions, backgrounds, titles = [], [], [], []
    for epoch in plan.epochs:
        emb = fit.embedding(epoch)
        preds = run.logits(epoch).argmax(axis=1)
        positions.append(np.concatenate([emb["train"][tr], emb["test"][te]]))
        predictions.append(np.concatenate([preds[train][tr], preds[test][te]]))
        backgrounds.append(builder.background(epoch))
        titles.append(title_text(epoch, _title_metrics(run.epoch_info(epoch).metrics)))
    thumbnails = run.thumbnails()
    if thumbnails is not None:
        thumbnails = np.concatenate([thumbnails[train][tr], thumbnails[test][te]])
    return write_viewer(
        out_path,
        epochs=plan.epochs,
        backgrounds=backgrounds,
        bounds=plan.bounds[plan.epochs[0]],
        positions=np.stack(positions),
        labels=np.concatenate([run.samples.label[train][tr], run.samples.label[test][te]]),
        predictions=np.stack(predictions),
        ids=np.concatenate([run.samples.id[train][tr], run.samples.id[test][te]]),
        splits=np.concatenate([np.zeros(len(tr), np.uint8), np.ones(len(te), np.uint8)]),
        class_names=run.class_names,
        thumbnails=thumbnails,
        titles=titles,
        track=track_rows,
        max_points=max(len(tr) + len(te), 1),
    )
