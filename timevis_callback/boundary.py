"""Input-space boundary points (docs/method.md §2), found by a batched bisection.

For class pairs (c1, c2) among the predicted classes, a sample ``a`` predicted c1 and a sample
``b`` predicted c2 are mixed as ``λ·a + (1-λ)·b`` with λ bisected in ``[l_bound, 1]`` until the
min-max normalised logits of c1 and c2 are within ``gap``; the mix's representation is kept. Both
directions (a→b, b→a) are tried. Every bisection step is one batched forward pass over all
candidates still searching, never a Python loop per pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # inputs -> logits, features

MARGIN_EPS = 1e-8
BOUNDARY_MARGIN = 0.1
PREFERENCE_EPS = 1e-4


def margin(logits: np.ndarray) -> np.ndarray:
    """m(z) = (z1 - z2) / (z1 - zC) per row of logits (n, C), z sorted descending; (n,)."""
    z = np.sort(np.asarray(logits, dtype=np.float64) + MARGIN_EPS, axis=1)[:, ::-1]
    return (z[:, 0] - z[:, 1]) / (z[:, 0] - z[:, -1] + MARGIN_EPS)


def select_pairs(
    logits: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose ``n_pairs`` (a, b) sample pairs spread evenly over the predicted class pairs.

    Returns row indices ``a`` and ``b`` (n_pairs,) and the class pairs (n_pairs, 2) with
    ``a`` predicted ``pair[:, 0]`` and ``b`` predicted ``pair[:, 1]``. Samples closer to the
    boundary between the two classes are preferred (probability ∝ 1 / (z[c1] - z[c2] + 1e-4)).
    Empty arrays when fewer than two classes are predicted.
    """
    logits = np.asarray(logits, dtype=np.float64)
    pred = logits.argmax(axis=1)
    classes = np.unique(pred)
    if len(classes) < 2 or n_pairs <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 2), dtype=np.int64)
    c1, c2 = np.triu_indices(len(classes), k=1)
    class_pairs = np.stack([classes[c1], classes[c2]], axis=1)
    class_pairs = class_pairs[rng.permutation(len(class_pairs))]
    # round robin over the shuffled class pairs: every pair gets n_pairs // P or one more
    chosen = class_pairs[np.arange(n_pairs) % len(class_pairs)]
    a = np.empty(n_pairs, dtype=np.int64)
    b = np.empty(n_pairs, dtype=np.int64)
    for ca, cb in class_pairs:
        slots = np.flatnonzero((chosen[:, 0] == ca) & (chosen[:, 1] == cb))
        if len(slots) == 0:
            continue
        a[slots] = _prefer_close(logits, pred, ca, cb, len(slots), rng)
        b[slots] = _prefer_close(logits, pred, cb, ca, len(slots), rng)
    return a, b, chosen.astype(np.int64)


def _prefer_close(
    logits: np.ndarray, pred: np.ndarray, own: int, other: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    rows = np.flatnonzero(pred == own)
    weight = 1.0 / (logits[rows, own] - logits[rows, other] + PREFERENCE_EPS)
    return rng.choice(rows, size=size, replace=True, p=weight / weight.sum())


def _normalised_gap(logits: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    low = logits.amin(dim=1)
    span = (logits.amax(dim=1) - low).clamp_min(1e-12)
    z1 = (logits.gather(1, c1[:, None])[:, 0] - low) / span
    z2 = (logits.gather(1, c2[:, None])[:, 0] - low) / span
    return (z1 - z2).abs()


@dataclass(frozen=True)
class BisectionResult:
    features: torch.Tensor  # (n_found, D) representations of the boundary points
    pair: np.ndarray  # (n_found, 2) int64: [class of the source sample, class of the target]
    attempted: int
    forwarded: int  # samples passed through the model over all bisection steps
    passes: int = 0  # forward calls: ceil(still searching / batch_size) per step


def bisect(
    forward: Forward,
    source: torch.Tensor,
    target: torch.Tensor,
    source_class: np.ndarray,
    target_class: np.ndarray,
    l_bound: float,
    batch_size: int,
    max_steps: int = 8,
    gap: float = BOUNDARY_MARGIN,
) -> BisectionResult:
    """Bisect λ for every (source, target) input pair at once; keep the mixes on the boundary.

    source, target: inputs (n, ...) on the model's device. A mix is kept when its prediction is
    one of the two classes and their normalised logits differ by less than ``gap``.
    """
    n = len(source)
    device = source.device
    c1 = torch.as_tensor(source_class, device=device)
    c2 = torch.as_tensor(target_class, device=device)
    lower = torch.full((n,), float(l_bound), device=device)
    upper = torch.ones(n, device=device)
    found = torch.zeros(n, dtype=torch.bool, device=device)
    kept: torch.Tensor | None = None  # (n, D), rows filled as they are found
    forwarded = passes = 0
    shape = (-1,) + (1,) * (source.ndim - 1)
    for _ in range(max_steps):
        active = torch.nonzero(~found).flatten()
        if len(active) == 0:
            break
        for start in range(0, len(active), batch_size):
            rows = active[start : start + batch_size]
            lam = ((lower[rows] + upper[rows]) / 2).to(source.dtype).reshape(shape)
            mix = lam * source[rows] + (1 - lam) * target[rows]
            logits, feats = forward(mix)
            forwarded += len(rows)
            passes += 1
            logits = logits.float()
            pred = logits.argmax(dim=1)
            ok = ((pred == c1[rows]) | (pred == c2[rows])) & (
                _normalised_gap(logits, c1[rows], c2[rows]) < gap
            )
            still_source = pred == c1[rows]
            mid = (lower[rows] + upper[rows]) / 2
            upper[rows] = torch.where(still_source & ~ok, mid, upper[rows])
            lower[rows] = torch.where(~still_source & ~ok, mid, lower[rows])
            found[rows] = ok
            if kept is None:
                kept = feats.new_zeros((n, feats.shape[1]))
            kept[rows[ok]] = feats[ok]
    done = found.cpu().numpy()
    features = kept[found] if kept is not None else source.new_zeros((0, 0))
    pair = np.stack([source_class[done], target_class[done]], axis=1).astype(np.int64)
    return BisectionResult(
        features=features,
        pair=pair.reshape(-1, 2),
        attempted=n,
        forwarded=forwarded,
        passes=passes,
    )
