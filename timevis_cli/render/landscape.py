"""The decision landscape behind each frame (docs/method.md §7).

A square canvas is laid over the 2-D embedding: by default one per epoch that follows the
epoch's points, smoothed over the epochs (:func:`follow_canvas_bounds`); or one shared by all
epochs but those lying far apart (:func:`shared_canvas_bounds`); or each epoch's own
(:func:`canvas_bounds`). The canvas is sampled as an ``R x R``
grid of pixel centres (:func:`grid_points`), decoded into feature space with the inverse
projection (:func:`decode_grid`; once per canvas for a decoder shared by all epochs) and
classified with one epoch's head (:func:`classify_grid`).
:func:`landscape_image` turns classes and margins into an RGB image with the fixed
:func:`palette`, so a class has the same colour in every frame whether or not it is on the grid,
faded towards the white background where the epoch recorded no point nearby (:func:`fade_weights`).

Everything above is numpy. The last section holds the same decode and classification on a torch
device (:func:`decode_grid_torch`, :func:`classify_grid_torch`, the GPU when there is one), and
:func:`landscape_coarse_to_fine` for a decoder with one bias per epoch (a refined fit), which
decodes every epoch; it is the only torch code here and imports torch when called: drawing a
frame (colours) needs none.

Image convention everywhere: row 0 is the TOP of the canvas (largest y), column 0 its left
(smallest x); that is ``imshow(image, origin="upper", extent=bounds.extent)``.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np

from timevis_cli.errors import InputError

if TYPE_CHECKING:
    import torch

    from timevis_callback.head import Head

__all__ = [
    "BOUNDARY_MARGIN",
    "Bounds",
    "canvas_bounds",
    "class_dtype",
    "classify_grid",
    "classify_grid_torch",
    "decode_grid",
    "decode_grid_torch",
    "classify_points_torch",
    "fade_weights",
    "follow_canvas_bounds",
    "smooth_series",
    "landscape_coarse_to_fine",
    "grid_points",
    "landscape_alpha",
    "landscape_image",
    "palette",
    "shared_canvas_bounds",
]

logger = logging.getLogger(__name__)

#: Grid pixels whose margin is below this are the decision boundary: drawn pure white.
BOUNDARY_MARGIN = 0.15
#: Opacity of the class colour over white just above the boundary and at full confidence.
MIN_ALPHA = 0.3
MAX_ALPHA = 1.0

# matplotlib's "tab10", then the light halves of "tab20" (its even entries are tab10), as RGB.
_TAB10 = (
    (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28),
    (0x94, 0x67, 0xBD), (0x8C, 0x56, 0x4B), (0xE3, 0x77, 0xC2), (0x7F, 0x7F, 0x7F),
    (0xBC, 0xBD, 0x22), (0x17, 0xBE, 0xCF),
)  # fmt: skip
_TAB20_LIGHT = (
    (0xAE, 0xC7, 0xE8), (0xFF, 0xBB, 0x78), (0x98, 0xDF, 0x8A), (0xFF, 0x98, 0x96),
    (0xC5, 0xB0, 0xD5), (0xC4, 0x9C, 0x94), (0xF7, 0xB6, 0xD2), (0xC7, 0xC7, 0xC7),
    (0xDB, 0xDB, 0x8D), (0x9E, 0xDA, 0xE5),
)  # fmt: skip
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_EXTRA_SATURATION = (0.75, 0.55, 0.9)
_EXTRA_VALUE = (0.8, 0.6, 0.7)
#: Grid rows per head call on a torch device: small float64 batches stay in the CPU's cache.
_HEAD_BATCH = 2048

#: Robust box of one epoch's points: these quantiles of x and of y (stray points ignored).
EPOCH_BOX_QUANTILE = 0.01
#: An epoch lies apart when the gap between its robust box and the median box exceeds this many
#: median box sides (on either axis) ...
APART_GAP = 0.5
#: ... or when its robust box is this many times larger than the median box.
APART_SIZE = 4.0

#: Following frames: each epoch's raw canvas is the box of these quantiles of its train samples'
#: and boundary points' x and y (a few stray points do not set the frame) ...
FOLLOW_QUANTILE = 0.01
#: ... padded by this fraction of its longer side on every side, made square.
FOLLOW_PAD = 0.05
#: Centres and log-sides are smoothed over the rendered frames by a Gaussian of this many frames.
FOLLOW_SMOOTHING = 1.5
#: The 5-95% extent of an epoch's train samples always spans at least this much of its frame on
#: both axes (when it is at most 1 / MIN_FILL times longer than wide; else the longer axis
#: fills the square frame) ...
MIN_FILL = 0.6
#: ... the extent measured between these quantiles; that 5-95% box is always inside the frame.
FILL_QUANTILE = 0.05
#: Beyond the fade distance the landscape's colour fades out linearly over this fraction of it.
FADE_RAMP = 0.5


@dataclass(frozen=True)
class Bounds:
    """An axis-aligned canvas rectangle in embedding coordinates."""

    xmin: float
    xmax: float
    ymin: float
    ymax: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)``, as matplotlib's ``imshow(extent=...)`` takes it."""
        return (self.xmin, self.xmax, self.ymin, self.ymax)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_positive_int(name: str, value: object) -> int:
    if not _is_int(value) or value < 1:
        raise InputError(f"{name}={value!r} must be a positive integer")
    return int(value)


def canvas_bounds(points_per_epoch: Iterable[np.ndarray] | np.ndarray, pad: float = 0.1) -> Bounds:
    """The square canvas around all given 2-D points, padded on every side.

    points_per_epoch: arrays of shape (n_t, 2), one per epoch (global bounds over all of them);
    a single (n, 2) array or a one-element list gives one epoch's bounds. The side is the larger
    of the x and y spans times ``1 + 2 * pad`` (``pad`` of the span on each side), centred on the
    points' bounding box. All points identical: a side of 1.
    """
    if not (isinstance(pad, (int, float)) and math.isfinite(pad) and pad >= 0):
        raise InputError(f"pad={pad!r} must be a finite number >= 0")
    if isinstance(points_per_epoch, np.ndarray) and points_per_epoch.ndim == 2:
        points_per_epoch = [points_per_epoch]
    low = np.full(2, np.inf)
    high = np.full(2, -np.inf)
    for t, points in enumerate(points_per_epoch):
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f"epoch {t}: points of shape {points.shape} must be (n, 2)")
        if len(points) == 0:
            continue
        if not np.isfinite(points).all():
            raise InputError(f"epoch {t}: the 2-D points contain NaN or infinity")
        low = np.minimum(low, points.min(axis=0))
        high = np.maximum(high, points.max(axis=0))
    if not np.isfinite(low).all():
        raise InputError("no 2-D points were given: cannot place the canvas")
    center = (low + high) / 2.0
    span = float((high - low).max())
    half = (span if span > 0 else 1.0) * (1.0 + 2.0 * pad) / 2.0
    return Bounds(
        xmin=float(center[0] - half),
        xmax=float(center[0] + half),
        ymin=float(center[1] - half),
        ymax=float(center[1] + half),
    )


def _epoch_box(points: np.ndarray, t: object) -> np.ndarray | None:
    """``[xlo, ylo, xhi, yhi]``: the robust box of one epoch's points (None when empty)."""
    return _quantile_box(points, t, EPOCH_BOX_QUANTILE)


def shared_canvas_bounds(
    points_by_epoch: Mapping[int, np.ndarray], pad: float = 0.1
) -> tuple[Bounds, list[int]]:
    """One canvas for all epochs but those lying far apart: ``(bounds, epochs left out)``.

    Each epoch gets a robust box (the :data:`EPOCH_BOX_QUANTILE` and ``1 -`` that quantiles of
    its x and y); the median box is the per-side median of those boxes, its side the larger of
    its spans. An epoch lies apart when the gap between its box and the median box exceeds
    :data:`APART_GAP` median sides on either axis, or its box's larger span is over
    :data:`APART_SIZE` times the median side. Typical case: epoch 0 of an untrained network,
    whose samples all have nearly the same features, embedded as a blob far from every trained
    epoch; covering it would shrink every other frame to a fraction of the canvas.

    The shared bounds are :func:`canvas_bounds` over ALL points of the epochs kept, so an
    ordinary run (no epoch apart) gets exactly the bounds covering every point. Epochs apart are
    returned (sorted) and logged at INFO; the caller gives them their own canvas. With fewer
    than 3 epochs, or a degenerate median box, no epoch is left out.
    """
    epochs = list(points_by_epoch)
    boxes = {t: _epoch_box(points_by_epoch[t], t) for t in epochs}
    present = {t: box for t, box in boxes.items() if box is not None}
    apart: list[int] = []
    if len(present) >= 3:
        stacked = np.stack(list(present.values()))
        median = np.median(stacked, axis=0)
        side = float((median[2:] - median[:2]).max())
        if side > 0 and math.isfinite(side):
            for t, box in present.items():
                gap = np.maximum(median[:2] - box[2:], box[:2] - median[2:]).max()
                span = float((box[2:] - box[:2]).max())
                if gap > APART_GAP * side or span > APART_SIZE * side:
                    apart.append(t)
        if len(apart) * 2 >= len(present):  # no bulk to speak of: keep them all
            apart = []
    kept = [points_by_epoch[t] for t in epochs if t not in apart]
    if apart:
        logger.info(
            "epoch(s) %s lie far from the other epochs' points: left out of the shared canvas "
            "bounds, each drawn on its own canvas",
            ", ".join(str(t) for t in sorted(apart)),
        )
    return canvas_bounds(kept, pad=pad), sorted(apart)


def smooth_series(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``values`` (n,) or (n, k) along axis 0; float64 of the same shape.

    Each value becomes the value at its own sample of the straight line fitted to the series
    with Gaussian weights of standard deviation ``sigma`` samples around it (local linear
    regression): centred, so it does not lag; inside the series this is the plain Gaussian
    average, and at the ends a steady trend is not pulled back, so a straight line, however
    steep, comes back unchanged while noise is smoothed everywhere. ``sigma = 0`` (or fewer
    than 3 values) returns the values.

    >>> smooth_series(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 1.5).round(6).tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0]
    >>> smooth_series(np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]), 1.5).round(2).tolist()
    [0.25, 0.42, 0.48, 0.49, 0.48, 0.42, 0.25]
    """
    values = np.asarray(values, dtype=np.float64)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise InputError(f"sigma={sigma!r} must be a finite number >= 0")
    n = len(values)
    if sigma == 0 or n < 3:
        return values.copy()
    flat = values.reshape(n, -1)
    s0, s1, s2 = np.zeros(n), np.zeros(n), np.zeros(n)
    t0, t1 = np.zeros_like(flat), np.zeros_like(flat)
    radius = min(int(math.ceil(4 * sigma)), n - 1)
    for offset in range(-radius, radius + 1):  # frame i + offset seen from frame i
        weight = math.exp(-0.5 * (offset / sigma) ** 2)
        lo, hi = max(0, -offset), min(n, n - offset)
        seen = flat[lo + offset : hi + offset]
        s0[lo:hi] += weight
        s1[lo:hi] += weight * offset
        s2[lo:hi] += weight * offset**2
        t0[lo:hi] += weight * seen
        t1[lo:hi] += weight * offset * seen
    out = (s2[:, None] * t0 - s1[:, None] * t1) / (s0 * s2 - s1**2)[:, None]
    return out.reshape(values.shape)


def follow_canvas_bounds(
    frame_points: Mapping[int, np.ndarray],
    core_points: Mapping[int, np.ndarray] | None = None,
    smoothing: float = FOLLOW_SMOOTHING,
    pad: float = FOLLOW_PAD,
    min_fill: float = MIN_FILL,
) -> dict[int, Bounds]:
    """Square canvases that follow each epoch's points and glide between epochs.

    frame_points: epoch -> (n, 2) points that set the frame (an epoch's train samples and
    boundary points), in the order the frames are shown. core_points: epoch -> (n, 2) points
    that must fill the frame (its train samples; ``frame_points`` when omitted).

    1. Raw: the box of the :data:`FOLLOW_QUANTILE` and ``1 -`` that quantiles of the epoch's
       frame points, padded by ``pad`` of its longer side on each side, made square.
    2. Smoothed: centres and log-sides by :func:`smooth_series` over the frames (``smoothing``
       frames), so playback glides instead of jumping and a steady drift is followed exactly.
    3. Clamped, per epoch, to its core points' 5-95% box (:data:`FILL_QUANTILE`): the side at
       least the box's longer side and at most its shorter side divided by ``min_fill``, so the
       box spans at least ``min_fill`` of the frame on both axes (when the box is more than
       ``1 / min_fill`` times longer than wide, the side is its longer side: a square frame
       cannot do better); the centre moved as little as needed for the box to lie inside the
       frame. Smoothing gives way wherever it would break either.

    >>> rng = np.random.default_rng(0)
    >>> blob = rng.normal(size=(500, 2))
    >>> frames = follow_canvas_bounds({t: blob + [10.0 * t, 0.0] for t in range(5)})
    >>> len({round(b.xmin - 10.0 * t, 6) for t, b in frames.items()})  # the drift followed exactly
    1
    >>> extent = np.subtract(*np.quantile(blob, [0.95, 0.05], axis=0))
    >>> bool((extent / (frames[0].xmax - frames[0].xmin) >= 0.6).all())
    True
    """
    epochs = list(frame_points)
    if not epochs:
        raise InputError("no epochs were given: cannot place the canvas")
    core_points = frame_points if core_points is None else core_points
    if not (0 < min_fill <= 1):
        raise InputError(f"min_fill={min_fill!r} must be in (0, 1]")
    if not (isinstance(pad, (int, float)) and math.isfinite(pad) and pad >= 0):
        raise InputError(f"pad={pad!r} must be a finite number >= 0")
    centres, sides, cores = [], [], []
    for t in epochs:
        core = _quantile_box(core_points[t], t, FILL_QUANTILE)
        box = _quantile_box(frame_points[t], t, FOLLOW_QUANTILE)
        if box is None:
            box = core
        if core is None:
            core = box
        if box is None:
            raise InputError(f"epoch {t} has no 2-D points: cannot place its canvas")
        span = float((box[2:] - box[:2]).max())
        centres.append((box[:2] + box[2:]) / 2.0)
        sides.append((span if span > 0 else 1.0) * (1.0 + 2.0 * pad))
        cores.append(core)
    smooth_centres = smooth_series(np.stack(centres), smoothing)
    smooth_sides = np.exp(smooth_series(np.log(sides), smoothing))
    out = {}
    for i, t in enumerate(epochs):
        core = cores[i]
        extent = core[2:] - core[:2]
        longer, shorter = float(extent.max()), float(extent.min())
        side = float(smooth_sides[i])
        if longer > 0:
            # a hair inside the limit, so the fill is at least min_fill however it is rounded
            side = min(max(side, longer), max(longer, shorter / min_fill * (1 - 1e-6)))
        half = side / 2.0
        centre = np.clip(smooth_centres[i], core[2:] - half, core[:2] + half)
        out[t] = Bounds(
            xmin=float(centre[0] - half),
            xmax=float(centre[0] + half),
            ymin=float(centre[1] - half),
            ymax=float(centre[1] + half),
        )
    return out


def _quantile_box(points: np.ndarray, t: object, quantile: float) -> np.ndarray | None:
    """``[xlo, ylo, xhi, yhi]``: the ``quantile`` and ``1 - quantile`` quantiles of x and y of
    one epoch's points (None when empty)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"epoch {t}: points of shape {points.shape} must be (n, 2)")
    if len(points) == 0:
        return None
    if not np.isfinite(points).all():
        raise InputError(f"epoch {t}: the 2-D points contain NaN or infinity")
    low, high = np.quantile(points, [quantile, 1.0 - quantile], axis=0)
    return np.concatenate([low, high])


def fade_weights(
    points: np.ndarray, bounds: Bounds, resolution: int, distance: float
) -> np.ndarray | None:
    """How much of the landscape's colour each pixel keeps, float32 (R, R) in [0, 1]; None
    when ``distance`` is 0 (no fade).

    points: (n, 2) every 2-D point the epoch recorded (train and test samples, boundary
    points). distance: a fraction of the canvas's longer side. A pixel whose centre has a point
    within ``distance`` keeps its colour (1); beyond, the weight falls linearly to 0 (the
    background) at ``(1 + FADE_RAMP) * distance``. Distances are measured on the pixel grid
    (a Euclidean distance transform; exact to half a pixel), points outside the canvas
    included. No point at all: every pixel is 0.
    """
    resolution = _check_positive_int("resolution", resolution)
    if not (isinstance(distance, (int, float)) and math.isfinite(distance) and distance >= 0):
        raise InputError(f"fade distance={distance!r} must be a finite number >= 0")
    if distance == 0:
        return None
    from scipy.ndimage import distance_transform_edt

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    width, height = bounds.xmax - bounds.xmin, bounds.ymax - bounds.ymin
    reach = (1.0 + FADE_RAMP) * distance * max(width, height)
    step_x, step_y = width / resolution, height / resolution
    margin = int(math.ceil(reach / min(step_x, step_y))) + 1
    size = resolution + 2 * margin
    col = np.floor((points[:, 0] - bounds.xmin) / step_x).astype(np.int64) + margin
    row = np.floor((bounds.ymax - points[:, 1]) / step_y).astype(np.int64) + margin
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    if not inside.any():
        return np.zeros((resolution, resolution), np.float32)
    empty = np.ones((size, size), bool)
    empty[row[inside], col[inside]] = False
    away = distance_transform_edt(empty, sampling=(step_y, step_x))
    away = away[margin : margin + resolution, margin : margin + resolution]
    near = distance * max(width, height)
    weights = np.clip((reach - away) / (reach - near), 0.0, 1.0)
    return weights.astype(np.float32)


def grid_points(bounds: Bounds, resolution: int) -> np.ndarray:
    """Pixel centres of an ``R x R`` image over ``bounds``, row-major; float32 (R*R, 2).

    Row 0 is the top of the image (y near ``ymax``), column 0 the left (x near ``xmin``), so
    ``grid_points(b, R).reshape(R, R, 2)[i, j]`` is the centre of image pixel ``(i, j)``.
    """
    resolution = _check_positive_int("resolution", resolution)
    if not (bounds.xmax > bounds.xmin and bounds.ymax > bounds.ymin):
        raise InputError(f"{bounds} is empty: max must exceed min on both axes")
    steps = (np.arange(resolution) + 0.5) / resolution
    xs = bounds.xmin + steps * (bounds.xmax - bounds.xmin)
    ys = bounds.ymax - steps * (bounds.ymax - bounds.ymin)
    gx, gy = np.meshgrid(xs, ys)  # (R, R): x varies along columns, y along rows
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def _as_numpy(values: object) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def decode_grid(
    decode: Callable[[np.ndarray], np.ndarray],
    bounds: Bounds,
    resolution: int,
    batch_size: int = 4096,
) -> np.ndarray:
    """Decode the canvas grid to feature space; float32 (R*R, D) in :func:`grid_points` order.

    decode: the inverse projection, 2-D points float32 (n, 2) -> features (n, D) (numpy or a
    torch tensor). With global bounds this is done once for all epochs.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    grid = grid_points(bounds, resolution)
    parts = []
    for start in range(0, len(grid), batch_size):
        batch = grid[start : start + batch_size]
        out = _as_numpy(decode(batch))
        if out.ndim != 2 or len(out) != len(batch):
            raise InputError(
                f"decode returned shape {out.shape} for {len(batch)} points; expected (n, D)"
            )
        parts.append(out.astype(np.float32, copy=False))
    decoded = np.concatenate(parts, axis=0)
    if not np.isfinite(decoded).all():
        raise InputError("the decoded grid contains NaN or infinity; check the fitted projector")
    logger.debug("decoded a %dx%d grid to %d features", resolution, resolution, decoded.shape[1])
    return decoded


def classify_grid(
    decoded: np.ndarray,
    head: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one epoch's head to a decoded grid.

    decoded: features (R*R, D) from :func:`decode_grid` (or (R, R, D)). head: features (n, D) ->
    logits (n, C). Returns the predicted class, int64 (R, R), and the margin
    ``(z1 - z2) / (z1 - zC)`` of docs/method.md §2, float32 (R, R) in [0, 1].
    """
    from timevis_callback.boundary import margin  # imports torch: not needed to draw a frame

    batch_size = _check_positive_int("batch_size", batch_size)
    decoded = np.asarray(decoded)
    if decoded.ndim == 3 and decoded.shape[0] == decoded.shape[1]:
        decoded = decoded.reshape(-1, decoded.shape[2])
    resolution = math.isqrt(len(decoded)) if decoded.ndim == 2 else 0
    if decoded.ndim != 2 or resolution < 1 or resolution * resolution != len(decoded):
        raise InputError(
            f"decoded grid of shape {decoded.shape} must be (R*R, D) or (R, R, D) for a square grid"
        )
    classes = np.empty(len(decoded), dtype=np.int64)
    margins = np.empty(len(decoded), dtype=np.float32)
    for start in range(0, len(decoded), batch_size):
        logits = _as_numpy(head(decoded[start : start + batch_size]))
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise InputError(f"head returned logits of shape {logits.shape}; expected (n, C>=2)")
        classes[start : start + len(logits)] = logits.argmax(axis=1)
        margins[start : start + len(logits)] = margin(logits)
    shape = (resolution, resolution)
    return classes.reshape(shape), margins.reshape(shape)


def palette(num_classes: int) -> np.ndarray:
    """Fixed class colours, uint8 (C, 3), indexed by class id.

    Classes 0-9 take matplotlib's tab10, 10-19 the light colours of tab20 (in tab10's order), and
    further classes walk the hue circle by the golden ratio with cycling saturation and value.
    ``palette(n)[i]`` does not depend on ``n``, so a class never changes colour.
    """
    num_classes = _check_positive_int("num_classes", num_classes)
    colours = list(_TAB10 + _TAB20_LIGHT)[:num_classes]
    for k in range(len(colours), num_classes):
        extra = k - len(_TAB10) - len(_TAB20_LIGHT)
        hue = (0.05 + extra * _GOLDEN) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, _EXTRA_SATURATION[extra % 3], _EXTRA_VALUE[(extra // 3) % 3])
        colours.append(tuple(round(255 * c) for c in rgb))
    return np.asarray(colours, dtype=np.uint8).reshape(num_classes, 3)


def landscape_alpha(margins: np.ndarray, boundary_margin: float = BOUNDARY_MARGIN) -> np.ndarray:
    """Opacity of the class colour over white, float32 of the margins' shape, in [0, 1].

    0 (pure white) where ``margin < boundary_margin``; above it rises as the square root of the
    margin's position between ``boundary_margin`` and 1, from ``MIN_ALPHA`` to ``MAX_ALPHA``.
    The jump at the boundary keeps it a visible white line; the square root keeps most of a
    confident region saturated while low-confidence zones near it fade.
    """
    m = np.asarray(margins, dtype=np.float32)
    ramp = np.sqrt(np.clip((m - boundary_margin) / (1.0 - boundary_margin), 0.0, 1.0))
    alpha = MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * ramp
    return np.where(m < boundary_margin, np.float32(0.0), alpha).astype(np.float32)


def landscape_image(
    classes: np.ndarray,
    margin: np.ndarray,
    palette: np.ndarray,
    boundary_margin: float = BOUNDARY_MARGIN,
    fade: np.ndarray | None = None,
) -> np.ndarray:
    """The landscape as RGB uint8 (R, R, 3): ``white + alpha * (colour[class] - white)``.

    classes: int (R, R) from :func:`classify_grid`; margin: float (R, R) in [0, 1]; palette:
    uint8 (C, 3) from :func:`palette`, indexed by class id. ``alpha`` is
    :func:`landscape_alpha`: pixels with ``margin < boundary_margin`` are pure white; times
    ``fade`` (float (R, R) in [0, 1], :func:`fade_weights`) when given, so the colour fades to
    the white background where the epoch recorded no point nearby.
    """
    classes = np.asarray(classes)
    margins = np.asarray(margin)
    colours = np.asarray(palette)
    if classes.ndim != 2 or margins.shape != classes.shape:
        raise InputError(
            f"classes {classes.shape} and margins {margins.shape} must be the same (R, R) shape"
        )
    if colours.ndim != 2 or colours.shape[1] != 3:
        raise InputError(f"palette of shape {colours.shape} must be (C, 3)")
    if classes.size and (classes.min() < 0 or classes.max() >= len(colours)):
        raise InputError(
            f"class ids {classes.min()}..{classes.max()} fall outside the palette of "
            f"{len(colours)} colours; build it with palette(num_classes)"
        )
    if not 0.0 <= boundary_margin < 1.0:
        raise InputError(f"boundary_margin={boundary_margin!r} must be in [0, 1)")
    alpha = landscape_alpha(margins, boundary_margin)
    if fade is not None:
        fade = np.asarray(fade, dtype=np.float32)
        if fade.shape != classes.shape:
            raise InputError(f"fade {fade.shape} must have the classes' shape {classes.shape}")
        alpha = alpha * np.clip(fade, 0.0, 1.0)
    alpha = alpha[..., None]
    rgb = colours.astype(np.float32)[classes]
    image = 255.0 + alpha * (rgb - 255.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --- on a torch device -----------------------------------------------------------------------
# The only torch code of this module (torch is imported inside the functions). Same grid order,
# checks and results as decode_grid / classify_grid; used by ``timevis render`` once, in the
# parent process, so worker processes never touch the device.


def class_dtype(num_classes: int) -> np.dtype:
    """The smallest integer dtype holding class ids ``0 .. num_classes - 1`` (uint8 up to 256)."""
    num_classes = _check_positive_int("num_classes", num_classes)
    if num_classes <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16) if num_classes <= 2**15 else np.dtype(np.int32)


def decode_grid_torch(
    decode: Callable[[torch.Tensor], torch.Tensor],
    bounds: Bounds,
    resolution: int,
    device: torch.device | str,
    batch_size: int = 16384,
) -> torch.Tensor:
    """Decode the canvas grid on ``device``; float32 tensor (R*R, D) left on that device.

    decode: the inverse projection as a torch function, points (n, 2) -> features (n, D), whose
    parameters are on ``device`` (e.g. ``Projector.decode``). Rows are in :func:`grid_points`
    order, as :func:`decode_grid` returns them; no gradients are tracked.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    decoded = _decode_points(decode, grid_points(bounds, resolution), device, batch_size)
    logger.debug(
        "decoded a %dx%d grid to %d features on %s", resolution, resolution, decoded.shape[1],
        decoded.device,
    )  # fmt: skip
    return decoded


def classify_grid_torch(
    decoded: torch.Tensor,
    head: Head,
    batch_size: int = _HEAD_BATCH,
    *,
    lift: Callable[[np.ndarray], np.ndarray] | None = None,
    bounds: Bounds | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one epoch's head to a decoded grid on the grid's device; the results on the CPU.

    decoded: float tensor (R*R, D) from :func:`decode_grid_torch`. head: the epoch's declarative
    head (``Run.head(epoch)``), rebuilt with ``Head.to_torch()`` on the grid's device. As in
    :func:`classify_grid` (and the numpy ``Head``) the logits are computed in float64 and rounded
    to float32, moved to the CPU once, and classified as :func:`classify_grid` does (argmax and
    ``timevis_callback.boundary.margin``, the one definition of the margin). Returns the
    predicted class, (R, R) of :func:`class_dtype`, and the margin, float32 (R, R) in [0, 1].
    batch_size: grid rows per head call; small float64 batches (8 MiB at D = 512) stay in the
    CPU's cache, which makes the CPU path about 1.5x faster than 8192-row batches.
    lift: added to the logits at the grid's points (``bounds``' :func:`grid_points`), e.g. a
    :class:`~timevis_cli.render.lift.SampleLift`; None: the head's logits as they are.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    resolution = math.isqrt(len(decoded)) if decoded.ndim == 2 else 0
    if decoded.ndim != 2 or resolution < 1 or resolution * resolution != len(decoded):
        raise InputError(
            f"decoded grid of shape {tuple(decoded.shape)} must be (R*R, D) for a square grid"
        )
    logits = _head_logits(decoded, head, batch_size)  # one transfer per epoch: (R*R, C)
    if lift is not None:
        if bounds is None:
            raise InputError("a lifted grid needs its bounds, to place the lift")
        logits = _lifted(logits, grid_points(bounds, resolution), lift)
    classes, margins = _classes_margins(logits)
    shape = (resolution, resolution)
    return classes.reshape(shape), margins.reshape(shape)


def classify_points_torch(
    decode: Callable[[torch.Tensor], torch.Tensor],
    head: Head,
    points: np.ndarray,
    device: torch.device | str,
    batch_size: int = 16384,
    *,
    lift: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The landscape's class at given 2-D points (n, 2): decoded on ``device`` and classified
    with one epoch's head (plus ``lift`` at the points, when given), as
    :func:`classify_grid_torch` does a grid; (n,) of :func:`class_dtype`."""
    batch_size = _check_positive_int("batch_size", batch_size)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros(0, np.uint8)
    return _classes_margins(point_logits(decode, head, points, device, batch_size, lift=lift))[0]


def point_logits(
    decode: Callable[[torch.Tensor], torch.Tensor],
    head: Head,
    points: np.ndarray,
    device: torch.device | str,
    batch_size: int = 16384,
    *,
    lift: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The landscape's logits float32 (n, C) at 2-D points (n, 2): the head on the decoded
    features there, plus ``lift`` at the points when given."""
    batch_size = _check_positive_int("batch_size", batch_size)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    logits = _head_logits(_decode_points(decode, points, device, batch_size), head, _HEAD_BATCH)
    return logits if lift is None else _lifted(logits, points, lift)


def _lifted(logits: np.ndarray, points: np.ndarray, lift: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``logits`` (n, C) plus ``lift`` at the points (n, 2), float32."""
    extra = np.asarray(lift(points), np.float32)
    if extra.shape != logits.shape:
        raise InputError(f"the lift gave shape {extra.shape} for logits of shape {logits.shape}")
    return logits + extra


def _classes_margins(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of logits (n, C): the class (:func:`class_dtype`) and the margin float32."""
    from timevis_callback.boundary import margin

    return logits.argmax(axis=1).astype(class_dtype(logits.shape[1])), margin(logits).astype(np.float32)


def _head_logits(decoded: torch.Tensor, head: Head, batch_size: int) -> np.ndarray:
    """Logits float32 (n, C) of one epoch's head on decoded features (n, D), on their device:
    float64 batches rounded to float32, moved to the CPU once (as :func:`classify_grid`)."""
    import torch

    module = head.to_torch().to(device=decoded.device, dtype=torch.float64)
    parts = []
    with torch.no_grad():
        for start in range(0, len(decoded), batch_size):
            logits = module(decoded[start : start + batch_size].double()).float()
            if logits.ndim != 2 or logits.shape[1] < 2:
                raise InputError(
                    f"head returned logits of shape {tuple(logits.shape)}; expected (n, C>=2)"
                )
            parts.append(logits)
    if not parts:
        return np.zeros((0, 2), np.float32)
    return torch.cat(parts).cpu().numpy()


def _decode_points(
    decode: Callable[[torch.Tensor], torch.Tensor],
    points: np.ndarray,
    device: torch.device | str,
    batch_size: int,
) -> torch.Tensor:
    """``decode`` of 2-D points float32 (n, 2) in batches on ``device``: float32 (n, D) there."""
    import torch

    grid = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    parts = []
    with torch.no_grad():
        for start in range(0, len(grid), batch_size):
            batch = grid[start : start + batch_size]
            out = decode(batch)
            if out.ndim != 2 or len(out) != len(batch):
                raise InputError(
                    f"decode returned shape {tuple(out.shape)} for {len(batch)} points; "
                    "expected (n, D)"
                )
            parts.append(out.float())
    decoded = torch.cat(parts)
    if not bool(torch.isfinite(decoded).all()):
        raise InputError("the decoded grid contains NaN or infinity; check the fitted projector")
    return decoded


def landscape_coarse_to_fine(
    decode: Callable[[torch.Tensor], torch.Tensor],
    head: Head,
    bounds: Bounds,
    resolution: int,
    device: torch.device | str,
    step: int = 2,
    batch_size: int = 16384,
    *,
    lift: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's landscape (classes, margins; as :func:`classify_grid_torch`) from fewer
    decoded points: every ``step``-th row and column of the grid (and the last) is decoded and
    classified; every other pixel takes the class of the (up to four) decoded pixels around it
    when they agree, with their margins interpolated bilinearly, and is decoded itself where they
    do not (near class borders). For a decoder that differs per epoch, where the canvas cannot be
    decoded once for all epochs: about ``1 / step²`` of the decodes plus the borders. A class
    region narrower than ``step`` pixels that falls between decoded pixels of one other class is
    not drawn. ``lift``: added to the logits at each decoded point (as
    :func:`classify_grid_torch`).
    """
    resolution = _check_positive_int("resolution", resolution)
    step = _check_positive_int("step", step)
    grid = grid_points(bounds, resolution).reshape(resolution, resolution, 2)
    lattice = np.unique(np.r_[np.arange(0, resolution, step), resolution - 1])
    coarse = grid[np.ix_(lattice, lattice)].reshape(-1, 2)
    coarse_classes, coarse_margins = _classes_margins(
        point_logits(decode, head, coarse, device, batch_size, lift=lift)
    )
    size = len(lattice)
    coarse_classes = coarse_classes.reshape(size, size)
    coarse_margins = coarse_margins.reshape(size, size)
    # for every pixel index, the decoded index at or before it, the next one, and the weight
    index = np.arange(resolution)
    lo = np.searchsorted(lattice, index, side="right") - 1
    on = lattice[lo] == index
    hi = np.where(on, lo, np.minimum(lo + 1, size - 1))
    span = np.maximum(lattice[hi] - lattice[lo], 1)
    weight = np.where(on, 0.0, (index - lattice[lo]) / span).astype(np.float32)
    corners = [(a, b) for a in (lo, hi) for b in (lo, hi)]
    classes = coarse_classes[np.ix_(lo, lo)]
    agree = np.ones((resolution, resolution), bool)
    for a, b in corners[1:]:
        agree &= coarse_classes[np.ix_(a, b)] == classes
    wr, wc = weight[:, None], weight[None, :]
    margins = (
        (1 - wr) * (1 - wc) * coarse_margins[np.ix_(lo, lo)]
        + (1 - wr) * wc * coarse_margins[np.ix_(lo, hi)]
        + wr * (1 - wc) * coarse_margins[np.ix_(hi, lo)]
        + wr * wc * coarse_margins[np.ix_(hi, hi)]
    ).astype(np.float32)
    border = ~agree
    if border.any():
        classes[border], margins[border] = _classes_margins(
            point_logits(decode, head, grid[border], device, batch_size, lift=lift)
        )
    logger.debug(
        "landscape %dx%d: %d decoded on the lattice, %d at class borders",
        resolution, resolution, len(coarse), int(border.sum()),
    )  # fmt: skip
    return classes, margins
