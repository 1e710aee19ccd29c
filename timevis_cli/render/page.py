"""``render/index.html`` of a run: the rendered epochs' data gathered for :mod:`.viewer`.

:func:`export_viewer` reads the plan's samples at every rendered epoch (positions, predictions,
labels, ids, thumbnails), draws each epoch's landscape on the epoch's own canvas
(``plan.bounds``: the page's camera follows them; ``--bounds global`` keeps one fixed canvas),
and adds what the page analyses:

- each epoch's landscape agreement (the PNG pass's, :meth:`GridLandscapes.agreement`);
- the per-sample training dynamics of the page's samples over the rendered epochs (epoch 0
  left out when later ones are rendered, as ``timevis dynamics`` does): confidence,
  variability, correctness, forgetting events, data-map region and suspect-label score;
- with ``neighbors`` = k > 0 and at most :data:`HTML_NEIGHBORS_MAX_SAMPLES` samples: each
  sample's k nearest samples in feature space at each epoch (exact kNN among the page's samples,
  drawn on hover) and its kNN preservation there (:func:`neighbor_preservation`). Each costs
  the page ``2 k + 1`` bytes per (epoch, sample) (``4 k + 1`` beyond 65 535 samples); above the
  sample count both are left out, with one logged line.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from timevis_callback.reader import Run
from timevis_cli.errors import InputError
from timevis_cli.render.landscape import (
    Bounds,
    canvas_bounds,
    fade_weights,
    landscape_image,
    palette,
)
from timevis_cli.render.playback import (
    GridLandscapes,
    RenderPlan,
    _recorded_points,
    _title_metrics,
)

if TYPE_CHECKING:
    import torch

    from timevis_cli.fit.io import LoadedFit
    from timevis_cli.fit.neighbors import KNNBackend

__all__ = [
    "HTML_NEIGHBORS",
    "HTML_NEIGHBORS_MAX_SAMPLES",
    "export_viewer",
    "neighbor_preservation",
]

log = logging.getLogger(__name__)

#: Neighbours per sample the page draws on hover (``render.html_neighbors``; 0: none).
HTML_NEIGHBORS = 5
#: Pages of more samples than this carry no neighbours and no kNN preservation (their size and
#: the exact kNN's time grow with it): 5 000 samples x 200 epochs x k = 5 is 13 MB of base64.
HTML_NEIGHBORS_MAX_SAMPLES = 5000


def neighbor_preservation(
    features: np.ndarray, points: np.ndarray, k: int, backend: KNNBackend | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's neighbours and kNN preservation of n samples.

    features: (n, D) the samples' features; points: (n, 2) their 2-D positions. Returns the k
    nearest other samples in feature space (int64 (n, k) row indices, exact Euclidean kNN,
    nearest first; -1 where fewer exist) and each sample's kNN preservation: the share of those
    k that are also among its k nearest in 2-D (float (n,), NaN where its features or position
    are not finite). Rows with non-finite features or positions take part in neither search.
    """
    from timevis_cli.fit.neighbors import resolve_backend

    features = np.asarray(features, dtype=np.float32)
    points = np.asarray(points, dtype=np.float32)
    n = len(features)
    if features.ndim != 2 or points.shape != (n, 2):
        raise InputError(
            f"features {features.shape} and points {points.shape} must be (n, D) and (n, 2)"
        )
    if not (isinstance(k, int) and k >= 1):
        raise InputError(f"k={k!r} neighbours must be a positive integer")
    high = np.full((n, k), -1, dtype=np.int64)
    kept = np.full(n, np.nan)
    valid = np.flatnonzero(np.isfinite(features).all(axis=1) & np.isfinite(points).all(axis=1))
    k_eff = min(k, len(valid) - 1)
    if k_eff < 1:
        return high, kept
    backend = backend or resolve_backend("auto")
    near_high, _ = backend.query(features[valid], k=k_eff)
    near_low, _ = backend.query(points[valid], k=k_eff)
    high[valid, :k_eff] = valid[near_high]
    shared = (near_high[:, :, None] == near_low[:, None, :]).any(axis=2).sum(axis=1)
    kept[valid] = shared / k_eff
    return high, kept


def _union(boxes: list[Bounds]) -> Bounds:
    return Bounds(
        min(b.xmin for b in boxes), max(b.xmax for b in boxes),
        min(b.ymin for b in boxes), max(b.ymax for b in boxes),
    )  # fmt: skip


def _measures(run: Run, epochs: list[int], rows: tuple[np.ndarray, np.ndarray]) -> dict:
    """The dynamics of the page's rows (train rows, test rows) over ``epochs`` (epoch 0 left out
    when later ones are there)."""
    from timevis_cli.dynamics.measures import dynamics_from_logits

    chosen = [e for e in epochs if e != 0] or epochs
    train, test = run.samples.mask("train"), run.samples.mask("test")
    tr, te = rows

    def logits():
        for epoch in chosen:
            every = run.logits(epoch)
            yield np.concatenate([every[train][tr], every[test][te]])

    labels = np.concatenate([run.samples.label[train][tr], run.samples.label[test][te]])
    dynamics = dynamics_from_logits(logits(), labels, chosen, class_names=run.class_names)
    return {
        "confidence": dynamics.confidence,
        "variability": dynamics.variability,
        "correctness": dynamics.correctness,
        "forgetting": dynamics.forgetting,
        "suspect": dynamics.suspect,
        "region": dynamics.region,
    }


def export_viewer(
    run: Run,
    fit: LoadedFit,
    plan: RenderPlan,
    out_path: Path,
    track_rows: list[int],
    device: torch.device,
    landscapes: GridLandscapes | None = None,
    neighbors: int = HTML_NEIGHBORS,
    exact_boundaries: dict[int, np.ndarray] | None = None,
) -> Path:
    """Write the self-contained interactive page of the rendered epochs (selected at the
    start: track_rows).

    The backgrounds are computed on ``device``, each on its epoch's canvas; ``landscapes``
    (those of the PNGs) is reused when the canvases are the same, so the grid is not decoded
    again, and its agreements are reused. ``--bounds global`` with epochs lying far from the
    rest draws every epoch on one canvas covering them all (a fixed camera). ``neighbors``: k
    for the neighbours and kNN preservation (0: none; see the module docstring for the size
    rule). exact_boundaries: epoch -> the exact class boundaries' segments (S, 4) drawn over
    the backgrounds as vector paths (``render --exact``).
    """
    from timevis_cli.render.frames import title_text
    from timevis_cli.render.viewer import write_viewer

    if not (isinstance(neighbors, int) and 0 <= neighbors <= 32):
        raise InputError(f"html_neighbors={neighbors!r} must be an integer in 0..32 (0: off)")
    agreements = dict(landscapes.agreements) if landscapes is not None else {}
    if plan.global_bounds and plan.epochs_apart:
        log.info(
            "the HTML page keeps one fixed canvas covering every epoch with --bounds global "
            "(the PNGs give epochs far from the rest their own)"
        )
        shared = canvas_bounds([fit.embedding(e)["train"] for e in plan.epochs])
        plan = replace(plan, bounds=dict.fromkeys(plan.epochs, shared), epochs_apart=[])
        landscapes = None
    if landscapes is None:
        landscapes = GridLandscapes(run, fit, plan, device)
    colours = palette(run.num_classes)
    train, test = run.samples.mask("train"), run.samples.mask("test")
    tr, te = plan.train_rows, plan.test_rows
    n_rows = len(tr) + len(te)
    if neighbors and n_rows > HTML_NEIGHBORS_MAX_SAMPLES:
        log.info(
            "index.html: %d samples exceed %d, so the page draws no neighbours and shows no kNN "
            "preservation (render.html_neighbors applies up to that many samples)",
            n_rows, HTML_NEIGHBORS_MAX_SAMPLES,
        )  # fmt: skip
        neighbors = 0
    backend = None
    if neighbors:
        from timevis_cli.fit.neighbors import resolve_backend

        backend = resolve_backend(
            "auto", "cuda" if getattr(device, "type", "") == "cuda" else "cpu"
        )
    positions, predictions, backgrounds, titles = [], [], [], []
    high, kept = [], []
    for epoch in plan.epochs:
        emb = fit.embedding(epoch)
        preds = run.logits(epoch).argmax(axis=1)
        points = np.concatenate([emb["train"][tr], emb["test"][te]])
        positions.append(points)
        predictions.append(np.concatenate([preds[train][tr], preds[test][te]]))
        fade = fade_weights(
            _recorded_points(emb), plan.bounds[epoch], plan.resolution, plan.fade_distance
        )
        backgrounds.append(landscape_image(*landscapes.grid(epoch), colours, fade=fade))
        titles.append(title_text(epoch, _title_metrics(run.epoch_info(epoch).metrics)))
        features = run.features(epoch) if neighbors else None
        if epoch not in agreements:
            agreements[epoch] = landscapes.agreement(epoch)
        if neighbors:
            rows = np.concatenate([features[train][tr], features[test][te]])
            near, share = neighbor_preservation(rows, points, neighbors, backend)
            high.append(near)
            kept.append(share)
    thumbnails = run.thumbnails()
    if thumbnails is not None:
        thumbnails = np.concatenate([thumbnails[train][tr], thumbnails[test][te]])
    epoch_bounds = [plan.bounds[e] for e in plan.epochs]
    fixed = all(b == epoch_bounds[0] for b in epoch_bounds)
    return write_viewer(
        out_path,
        epochs=plan.epochs,
        backgrounds=backgrounds,
        bounds=epoch_bounds[0] if fixed else _union(epoch_bounds),
        epoch_bounds=None if fixed else epoch_bounds,
        positions=np.stack(positions),
        labels=np.concatenate([run.samples.label[train][tr], run.samples.label[test][te]]),
        predictions=np.stack(predictions),
        ids=np.concatenate([run.samples.id[train][tr], run.samples.id[test][te]]),
        splits=np.concatenate([np.zeros(len(tr), np.uint8), np.ones(len(te), np.uint8)]),
        class_names=run.class_names,
        thumbnails=thumbnails,
        titles=titles,
        track=track_rows,
        max_points=max(n_rows, 1),
        agreements=[None if math.isnan(agreements[e]) else agreements[e] for e in plan.epochs],
        measures=_measures(run, plan.epochs, (tr, te)) if n_rows else None,
        neighbors=np.stack(high) if neighbors else None,
        faithfulness=np.stack(kept) if neighbors else None,
        exact_boundaries=(
            None if exact_boundaries is None
            else [exact_boundaries.get(e) for e in plan.epochs]
        ),
    )
