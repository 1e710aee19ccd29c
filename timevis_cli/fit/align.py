"""Alignment of consecutive epochs' layouts: the drift that carries no information, removed.

Each epoch's 2-D layout is free to translate, rotate and scale as a whole from one epoch to the
next: the layout optimisation and the spatial metrics are blind to it, and nothing in the network
moves with it. :func:`align_layout` takes it out after the refinement. Epoch by epoch, in time
order, the block of an epoch (its tracked samples and boundary points) is mapped onto its
predecessor's already-aligned block by the similarity transform that best carries its tracked
samples onto theirs (weighted least squares: :func:`similarity`); the first epoch is the
reference. A transform is a rotation (never a reflection), a uniform scale and a translation,
so every distance within an epoch is kept up to one factor: the per-epoch spatial metrics do not
change.

The scale. Least squares (Umeyama) fits the scale as ``trace(D S) / var(source)``: when the
samples also move relative to each other, that estimate is shrunk towards 0 by their correlation
between the two epochs, and chained over the epochs the cloud would shrink geometrically (a
correlation of 0.9 per step leaves 0.9^50 = 0.5% of the size after 50 epochs). The scale here is
the ratio of the two clouds' weighted root-mean-square spreads (Horn's symmetric estimate), which
equals the least-squares one for an exact similarity and keeps a cloud's size when its samples
shuffle; rotation and translation are Umeyama's.

    >>> rng = np.random.default_rng(0)
    >>> source = rng.normal(size=(50, 2))
    >>> moved = Similarity.from_parts(30.0, 2.0, (5.0, -1.0)).apply(source)
    >>> found = similarity(source, moved)
    >>> round(found.angle_degrees, 6), round(found.scale, 6), np.round(found.translation, 6).tolist()
    (30.0, 2.0, [5.0, -1.0])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from timevis_cli.errors import InputError

log = logging.getLogger(__name__)

#: ``refine.align`` modes: what of the drift is removed
MODES = ("similarity", "rigid", "none")

# a cloud whose RMS spread is below this fraction of its distance from the origin (or below the
# smallest normal float) has no shape to align: its transform is the identity
_DEGENERATE_SPREAD = 1e-9


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation`` of 2-D points (rotation: det +1)."""

    rotation: np.ndarray  # float64 [2, 2]
    scale: float
    translation: np.ndarray  # float64 [2]

    @classmethod
    def identity(cls) -> Similarity:
        return cls(np.eye(2), 1.0, np.zeros(2))

    @classmethod
    def from_parts(
        cls, angle_degrees: float, scale: float, translation: Sequence[float]
    ) -> Similarity:
        """The transform rotating by ``angle_degrees`` (counter-clockwise), scaling by ``scale``
        and translating by ``translation``."""
        theta = math.radians(angle_degrees)
        rotation = np.array(
            [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        )
        return cls(rotation, float(scale), np.asarray(translation, dtype=np.float64).reshape(2))

    @property
    def angle_degrees(self) -> float:
        """The rotation's angle in (-180, 180], counter-clockwise."""
        return math.degrees(math.atan2(self.rotation[1, 0], self.rotation[0, 0]))

    @property
    def is_identity(self) -> bool:
        return bool(
            np.array_equal(self.rotation, np.eye(2))
            and self.scale == 1.0
            and not self.translation.any()
        )

    def apply(self, points: np.ndarray) -> np.ndarray:
        """The transformed points [n, 2], in ``points``' dtype (computed in float64)."""
        points = np.asarray(points)
        moved = self.scale * (points.astype(np.float64) @ self.rotation.T) + self.translation
        return moved.astype(points.dtype if points.dtype.kind == "f" else np.float64)

    def to_dict(self) -> dict[str, float | list[float]]:
        """Plain JSON values: rotation in degrees, scale, translation [x, y]."""
        return {
            "rotation_degrees": round(self.angle_degrees, 6),
            "scale": round(self.scale, 6),
            "translation": [round(float(v), 6) for v in self.translation],
        }


def similarity(
    source: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    scale: bool = True,
) -> Similarity:
    """The similarity transform carrying ``source`` [n, 2] onto ``target`` [n, 2] (row i onto
    row i) in weighted least squares: Umeyama's rotation (det +1: a mirrored target gives the best
    proper rotation, never a reflection) and translation; the scale is the ratio of the clouds'
    weighted RMS spreads about their weighted means (1 with ``scale=False``: a rigid transform).

    ``weights`` [n] >= 0 (None: all 1). Fewer than 2 points of positive weight, or a source or
    target cloud without spread (all its points equal), have no shape to align: the identity.
    """
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or y.shape != x.shape:
        raise InputError(
            f"alignment needs two point sets of the same shape [n, 2]; got {x.shape} and {y.shape}"
        )
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(x),):
        raise InputError(
            f"alignment weights of shape {w.shape} given for {len(x)} points; pass [n]"
        )
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise InputError("alignment weights must be finite and >= 0")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("alignment points hold NaN or inf; align only finite positions")
    if np.count_nonzero(w) < 2:
        return Similarity.identity()
    w = w / w.sum()
    mean_x, mean_y = w @ x, w @ y
    dx, dy = x - mean_x, y - mean_y
    var_x, var_y = float(w @ (dx**2).sum(axis=1)), float(w @ (dy**2).sum(axis=1))
    if _no_spread(var_x, mean_x) or _no_spread(var_y, mean_y):
        return Similarity.identity()
    covariance = (dy * w[:, None]).T @ dx  # sum_i w_i dy_i dx_i^T, [2, 2]
    u, _, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ sign @ vt
    factor = math.sqrt(var_y / var_x) if scale else 1.0
    translation = mean_y - factor * rotation @ mean_x
    return Similarity(rotation, factor, translation)


def _no_spread(variance: float, mean: np.ndarray) -> bool:
    size = max(1.0, float(np.abs(mean).max()))
    return not variance > (_DEGENERATE_SPREAD * size) ** 2


def align_layout(
    positions: np.ndarray,
    offsets: np.ndarray,
    n_tracked: int,
    mode: str = "similarity",
    weights: np.ndarray | None = None,
) -> list[Similarity]:
    """Align every epoch's block of ``positions`` to its predecessor's, IN PLACE; the transforms.

    ``positions`` [V, 2] (float), epoch i's block being rows ``offsets[i]:offsets[i + 1]`` with
    its ``n_tracked`` tracked samples first (sample n at row ``offsets[i] + n`` at every epoch).
    Epoch 0 is the reference (identity); epoch i's block is moved as a whole by the transform
    (:func:`similarity`, ``scale`` unless ``mode`` is ``"rigid"``) carrying its tracked samples
    onto epoch i - 1's already-aligned ones, ``weights`` [n_tracked] weighting the samples. The
    transform of epoch i maps its original positions into epoch 0's frame. ``mode`` ``"none"``
    changes nothing (all identities).
    """
    if mode not in MODES:
        raise InputError(f"alignment mode {mode!r} is not one of {', '.join(MODES)}")
    offsets = np.asarray(offsets, dtype=np.int64)
    n_epochs = len(offsets) - 1
    if (
        n_epochs < 0
        or positions.ndim != 2
        or positions.shape[1] != 2
        or offsets[-1] > len(positions)
    ):
        raise InputError(
            f"positions of shape {positions.shape} do not hold the {n_epochs} epochs' blocks "
            f"ending at row {int(offsets[-1]) if len(offsets) else 0}"
        )
    if n_tracked < 0 or np.any(np.diff(offsets) < n_tracked):
        raise InputError(f"an epoch's block is shorter than its {n_tracked} tracked samples")
    transforms = [Similarity.identity() for _ in range(n_epochs)]
    if mode == "none":
        return transforms
    for i in range(1, n_epochs):
        start, previous = offsets[i], offsets[i - 1]
        transform = similarity(
            positions[start : start + n_tracked],
            positions[previous : previous + n_tracked],
            weights,
            scale=mode == "similarity",
        )
        block = slice(start, offsets[i + 1])
        positions[block] = transform.apply(positions[block])
        transforms[i] = transform
    return transforms


def largest(transforms: Sequence[Similarity]) -> dict[str, float]:
    """The largest rotation (degrees, absolute), scale change (the factor furthest from 1, either
    way) and translation (length) among ``transforms``."""
    if not transforms:
        return {"rotation_degrees": 0.0, "scale": 1.0, "translation": 0.0}
    rotation = max(abs(t.angle_degrees) for t in transforms)
    scale = max(
        (t.scale for t in transforms), key=lambda s: abs(math.log(s)) if s > 0 else math.inf
    )
    translation = max(float(np.linalg.norm(t.translation)) for t in transforms)
    return {"rotation_degrees": rotation, "scale": scale, "translation": translation}
