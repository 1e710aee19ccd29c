"""Complex reduction (docs/method.md §4): per epoch, a nested subset of training samples that
covers the epoch's normalised point cloud within a radius (k-center greedy, Gonzalez).

Epochs are visited last to first; the last epoch starts from ``init_size`` random samples, every
earlier epoch from the next epoch's selection, so a sample kept late is kept earlier too. The radius
of epoch ``t`` is ``r0 * (c_t / c_0) ** beta * (d_t / d_0) ** alpha`` where ``c_t`` is the covering
radius after ``init_size + 100`` greedy centres, ``d_t`` the TwoNN intrinsic dimension, and "0" the
last epoch. Distances are Euclidean, computed in float32 with torch on the given device; nothing
ever builds an ``N x N`` matrix.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch

from timevis_cli.errors import InputError

__all__ = [
    "BLOCK_ELEMENTS",
    "SPREAD_EXTRA_CENTERS",
    "ReductionParams",
    "covering_radius_after",
    "k_center_greedy",
    "normalize_epoch",
    "select_epochs",
    "twonn_dimension",
]

logger = logging.getLogger(__name__)

#: Most pairwise distances held at once by the blocked computations (64 MiB of float32).
BLOCK_ELEMENTS = 1 << 24
#: Greedy centres added to the ``init_size`` random start to measure an epoch's spread ``c_t``.
SPREAD_EXTRA_CENTERS = 100
# Squared distances below this fraction of 2 max |x|^2 are float32 round-off: counted as 0.
_SQ_RESOLUTION = 8 * float(torch.finfo(torch.float32).eps)

FeatureMatrix = np.ndarray | torch.Tensor
Device = torch.device | str


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class ReductionParams:
    """Parameters of the complex reduction; invalid values raise InputError on construction.

    ``r0``: covering radius of the last epoch, on features scaled to max L2 norm 1.
    ``alpha``, ``beta``: exponents of the dimension ratio ``d_t/d_0`` and spread ratio ``c_t/c_0``.
    ``init_size``: random samples the last epoch starts from. ``coverage``: fraction of samples
    that must lie within the radius (1.0 = all of them).
    """

    r0: float = 0.25
    alpha: float = 0.0
    beta: float = 1.0
    init_size: int = 300
    coverage: float = 1.0

    def __post_init__(self) -> None:
        if not (_is_real(self.r0) and self.r0 > 0):
            raise InputError(
                f"r0={self.r0!r} must be a finite number > 0 (a radius on features scaled to "
                "max norm 1); the default is 0.25"
            )
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (_is_real(value) and value >= 0):
                raise InputError(
                    f"{name}={value!r} must be a finite number >= 0; use 0 to ignore "
                    f"{'the intrinsic dimension' if name == 'alpha' else 'the spread'}"
                )
        if not (_is_int(self.init_size) and self.init_size >= 1):
            raise InputError(
                f"init_size={self.init_size!r} must be an integer >= 1; the default is 300"
            )
        _check_coverage(self.coverage)


def _check_coverage(coverage: float) -> None:
    if not (_is_real(coverage) and 0 < coverage <= 1):
        raise InputError(
            f"coverage={coverage!r} must be a number in (0, 1]; use 1.0 to cover every sample"
        )


def normalize_epoch(features: np.ndarray) -> np.ndarray:
    """Scale an epoch so its largest row has L2 norm 1.

    features: array of shape (n_samples, n_features). Returns a new float32 array of the same
    shape; the input is not modified.
    """
    matrix = np.asarray(features)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InputError(
            f"features of shape {matrix.shape} must be a non-empty 2-D array (n_samples, n_features)"
        )
    matrix = matrix.astype(np.float32, copy=True)
    if not np.isfinite(matrix).all():
        raise InputError("features contain NaN or infinite values; check the recorded epoch")
    max_norm = float(np.linalg.norm(matrix, axis=1).max())
    if max_norm == 0.0:
        raise InputError("every feature vector is zero, so the epoch cannot be normalised")
    matrix /= max_norm
    return matrix


def _as_matrix(features: FeatureMatrix, device: Device) -> torch.Tensor:
    """Validate a (n, d) feature matrix and return it as float32 on ``device``."""
    if isinstance(features, torch.Tensor):
        matrix = features.detach().to(device=device, dtype=torch.float32)
    else:
        matrix = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(device)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InputError(
            f"features of shape {tuple(matrix.shape)} must be a non-empty 2-D array "
            "(n_samples, n_features)"
        )
    if not bool(torch.isfinite(matrix).all()):
        raise InputError("features contain NaN or infinite values; check the recorded epoch")
    return matrix


def _check_indices(indices: np.ndarray, n_samples: int, name: str) -> np.ndarray:
    """Return ``indices`` as a 1-D int64 array of distinct positions in [0, n_samples)."""
    array = np.asarray(indices)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise InputError(
            f"{name} must be a 1-D integer array of row positions, got dtype {array.dtype} "
            f"and shape {array.shape}"
        )
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= n_samples):
        raise InputError(
            f"{name} holds positions from {array.min()} to {array.max()}, outside [0, {n_samples})"
        )
    if np.unique(array).size != array.size:
        raise InputError(f"{name} holds repeated positions; pass each position once")
    return array


def _exact_distances(
    points: torch.Tensor, first: torch.Tensor, second: torch.Tensor
) -> torch.Tensor:
    """Euclidean distances between rows ``first[i]`` and ``second[i]`` of points, shape (m,).

    Computed from differences in row blocks, so identical rows give exactly 0.
    """
    distances = torch.empty(first.shape[0], dtype=points.dtype, device=points.device)
    rows = max(1, BLOCK_ELEMENTS // points.shape[1])
    for start in range(0, first.shape[0], rows):
        stop = min(start + rows, first.shape[0])
        diff = points[first[start:stop]] - points[second[start:stop]]
        distances[start:stop] = torch.linalg.vector_norm(diff, dim=1)
    return distances


@torch.no_grad()
def _min_distances(points: torch.Tensor, centers: np.ndarray) -> torch.Tensor:
    """Distance of every row of ``points`` (n, d) to its nearest centre, shape (n,).

    The nearest centre is found from blocked squared distances (matrix products, never (n, n));
    the distance to it is then recomputed exactly. +inf everywhere when there is no centre.
    """
    n_points = points.shape[0]
    if centers.size == 0:
        return torch.full((n_points,), math.inf, dtype=points.dtype, device=points.device)
    center_index = torch.from_numpy(centers).to(points.device)
    center_points = points[center_index]
    sq_norms = (points * points).sum(dim=1)
    center_sq = sq_norms[center_index]
    nearest = torch.empty(n_points, dtype=torch.int64, device=points.device)
    rows = max(1, BLOCK_ELEMENTS // center_points.shape[0])
    for start in range(0, n_points, rows):
        stop = min(start + rows, n_points)
        block = torch.addmm(center_sq[None, :], points[start:stop], center_points.T, alpha=-2.0)
        block += sq_norms[start:stop, None]
        nearest[start:stop] = center_index[block.argmin(dim=1)]
    all_rows = torch.arange(n_points, device=points.device)
    distances = _exact_distances(points, all_rows, nearest)
    distances[center_index] = 0.0
    return distances


@torch.no_grad()
def _greedy(
    features: torch.Tensor,
    initial: np.ndarray,
    radius: float,
    coverage: float,
    max_centers: int,
) -> tuple[np.ndarray, torch.Tensor]:
    """Gonzalez greedy from ``initial`` until the covering radius is below ``radius``.

    features: float32 tensor (n, d). Returns the selected row positions (initial first, then in the
    order added) and the final distances to the nearest centre, shape (n,).
    """
    # Distances do not change under translation; centring reduces float32 cancellation.
    points = features - features.mean(dim=0)
    sq_norms = (points * points).sum(dim=1)
    min_sq = _min_distances(points, initial).square_()
    n_points = points.shape[0]
    kth = min(n_points, max(1, math.ceil(coverage * n_points)))
    radius_sq = radius * radius
    round_off = _SQ_RESOLUTION * 2.0 * float(sq_norms.max())
    selected = initial.tolist()
    while len(selected) < max_centers:
        farthest_sq, farthest = min_sq.max(dim=0)
        cover_sq = farthest_sq if kth == n_points else min_sq.kthvalue(kth).values
        cover_value, farthest_value, farthest_index = torch.stack(
            [cover_sq.double(), farthest_sq.double(), farthest.double()]
        ).tolist()
        if cover_value < radius_sq or farthest_value == 0.0:
            break
        index = int(farthest_index)
        selected.append(index)
        # The one pass over the points per centre: |x|^2 - 2 x.c + |c|^2, a matrix-vector product.
        sq_dist = torch.addmv(sq_norms, points, points[index], alpha=-2.0).add_(sq_norms[index])
        sq_dist.masked_fill_(sq_dist <= round_off, 0.0)
        torch.minimum(min_sq, sq_dist, out=min_sq)
    return np.asarray(selected, dtype=np.int64), min_sq.sqrt_()


def k_center_greedy(
    features: FeatureMatrix,
    initial: np.ndarray,
    radius: float,
    coverage: float = 1.0,
    device: Device = "cpu",
    max_centers: int | None = None,
) -> np.ndarray:
    """Select centres so that the covering radius of ``features`` falls below ``radius``.

    features: (n_samples, n_features), used as given (see normalize_epoch). initial: int64 row
    positions to start from (may be empty). The covering radius is the ``coverage`` quantile of the
    distances to the nearest centre: the ``ceil(coverage * n)``-th smallest, so 1.0 is the maximum.
    Stops early after ``max_centers`` centres in all (initial included). Returns int64 row positions,
    shape (n_selected,): ``initial`` first, then the greedy centres in the order added.
    """
    matrix = _as_matrix(features, device)
    n_samples = matrix.shape[0]
    start = _check_indices(initial, n_samples, "initial")
    if not (_is_real(radius) and radius >= 0):
        raise InputError(f"radius={radius!r} must be a finite number >= 0")
    _check_coverage(coverage)
    if max_centers is None:
        max_centers = n_samples
    elif not (_is_int(max_centers) and max_centers >= 1):
        raise InputError(f"max_centers={max_centers!r} must be an integer >= 1 or None")
    selected, _ = _greedy(matrix, start, float(radius), float(coverage), int(max_centers))
    return selected


def _spread(features: torch.Tensor, initial: np.ndarray, n_centers: int) -> float:
    """Covering radius (max min-distance) after ``n_centers`` greedy centres from ``initial``."""
    _, min_dist = _greedy(features, initial, 0.0, 1.0, max(n_centers, initial.size))
    return float(min_dist.max())


def covering_radius_after(
    features: FeatureMatrix,
    initial: np.ndarray,
    n_centers: int,
    device: Device = "cpu",
) -> float:
    """Covering radius (max distance to the nearest centre) after ``n_centers`` centres in all.

    features: (n_samples, n_features). initial: int64 row positions the greedy starts from; it adds
    ``n_centers - len(initial)`` centres (none if initial is larger). This is ``c_t`` of docs/method.md §4
    with ``n_centers = init_size + 100``.
    """
    matrix = _as_matrix(features, device)
    start = _check_indices(initial, matrix.shape[0], "initial")
    if not (_is_int(n_centers) and n_centers >= 1):
        raise InputError(f"n_centers={n_centers!r} must be an integer >= 1")
    return _spread(matrix, start, int(n_centers))


@torch.no_grad()
def _two_nearest(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact first and second nearest-neighbour distances, self excluded, shapes (n,) and (n,).

    Candidates come from blocked squared distances (no (n, n) matrix); the two distances are then
    recomputed directly so that duplicates give exactly 0.
    """
    points = points - points.mean(dim=0)
    n_points = points.shape[0]
    sq_norms = (points * points).sum(dim=1)
    neighbors = torch.empty((n_points, 2), dtype=torch.int64, device=points.device)
    rows = max(1, BLOCK_ELEMENTS // n_points)
    for start in range(0, n_points, rows):
        stop = min(start + rows, n_points)
        block = torch.addmm(sq_norms[None, :], points[start:stop], points.T, alpha=-2.0)
        block += sq_norms[start:stop, None]
        local = torch.arange(stop - start, device=points.device)
        block[local, local + start] = math.inf
        neighbors[start:stop] = block.topk(2, dim=1, largest=False).indices
    all_rows = torch.arange(n_points, device=points.device)
    first = _exact_distances(points, all_rows, neighbors[:, 0])
    second = _exact_distances(points, all_rows, neighbors[:, 1])
    return torch.minimum(first, second), torch.maximum(first, second)


def twonn_dimension(features: FeatureMatrix, device: Device = "cpu") -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of a point cloud.

    features: (n_samples, n_features). With ``mu = r2 / r1`` from each point's two nearest
    neighbours (points with a duplicate, r1 = 0, are dropped) and the empirical ``F = i / m`` of the
    sorted ``mu``, the dimension is the least-squares slope through the origin of ``-log(1 - F)``
    on ``log mu``, the last point (F = 1) left out.
    """
    matrix = _as_matrix(features, device)
    if matrix.shape[0] < 3:
        raise InputError(f"TwoNN needs at least 3 samples, got {matrix.shape[0]}")
    first, second = _two_nearest(matrix)
    r1 = first.double().cpu().numpy()
    r2 = second.double().cpu().numpy()
    kept = r1 > 0
    mu = np.sort(r2[kept] / r1[kept])
    if mu.size < 3:
        raise InputError(
            f"TwoNN needs at least 3 samples without a duplicate, got {mu.size}; "
            "deduplicate the features"
        )
    empirical = np.arange(1, mu.size + 1, dtype=np.float64) / mu.size
    log_mu = np.log(mu[:-1])
    target = -np.log1p(-empirical[:-1])
    denominator = float(log_mu @ log_mu)
    if denominator == 0.0:
        raise InputError(
            "TwoNN is undefined here: every sample's two nearest neighbours are equally far"
        )
    return float(log_mu @ target) / denominator


def _load_epoch(
    epoch_feature_loader: Callable[[int], np.ndarray], epoch: int, n_samples: int, device: Device
) -> torch.Tensor:
    """Load one epoch, check it has one row per sample, normalise it, move it to ``device``."""
    features = np.asarray(epoch_feature_loader(epoch))
    if features.ndim != 2 or features.shape[0] != n_samples:
        raise InputError(
            f"epoch {epoch}: features of shape {features.shape} must be (n_samples={n_samples}, "
            "n_features), rows in sample_ids order"
        )
    try:
        normalised = normalize_epoch(features)
    except InputError as error:
        raise InputError(f"epoch {epoch}: {error}") from error
    return torch.from_numpy(normalised).to(device)


def _ratio_power(value: float, reference: float, exponent: float) -> float:
    """``(value / reference) ** exponent``; 1 when the exponent is 0 or the reference is 0."""
    if exponent == 0 or reference == 0:
        return 1.0
    return (value / reference) ** exponent


def _check_sample_ids(sample_ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(sample_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(
            f"sample_ids must be a non-empty 1-D integer array, got dtype {ids.dtype} and "
            f"shape {ids.shape}"
        )
    if np.unique(ids).size != ids.size:
        raise InputError("sample_ids holds repeated ids; each tracked sample needs its own id")
    return ids.astype(np.int64)


def _check_epochs(epochs: Sequence[int]) -> list[int]:
    """Return the epochs, last first; they must be distinct integers, at least one."""
    values = list(epochs)
    if not values or not all(_is_int(epoch) for epoch in values):
        raise InputError(f"epochs={values!r} must be a non-empty sequence of integers")
    if len(set(values)) != len(values):
        raise InputError(f"epochs={values!r} holds repeated epochs; list each epoch once")
    return sorted((int(epoch) for epoch in values), reverse=True)


def select_epochs(
    epoch_feature_loader: Callable[[int], np.ndarray],
    epochs: Sequence[int],
    sample_ids: np.ndarray,
    *,
    r0: float = 0.25,
    alpha: float = 0.0,
    beta: float = 1.0,
    init_size: int = 300,
    coverage: float = 1.0,
    rng: np.random.Generator,
    device: Device = "cpu",
) -> dict[int, np.ndarray]:
    """Reduce every epoch to a nested subset of samples covering it within ``r_t``.

    epoch_feature_loader(epoch) returns that epoch's features, shape (n_samples, n_features), rows
    in ``sample_ids`` order; it is called once per epoch, last epoch first, and only one epoch is
    held at a time. sample_ids: int64 (n_samples,). Returns {epoch: int64 sample ids of shape
    (n_selected_t,)}; the ids of a later epoch are always contained in those of an earlier one.
    """
    params = ReductionParams(r0=r0, alpha=alpha, beta=beta, init_size=init_size, coverage=coverage)
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng={rng!r} must be a numpy Generator, e.g. np.random.default_rng(seed)")
    ids = _check_sample_ids(sample_ids)
    order = _check_epochs(epochs)
    n_samples = ids.size
    began = time.perf_counter()
    start = np.sort(rng.choice(n_samples, size=min(params.init_size, n_samples), replace=False))
    if start.size == n_samples:
        logger.info(
            "reduction: init_size=%d >= %d samples, keeping every sample in all %d epochs",
            params.init_size,
            n_samples,
            len(order),
        )
        return {epoch: ids.copy() for epoch in order}

    selections: dict[int, np.ndarray] = {}
    selected = start
    spread_0 = dimension_0 = math.nan
    for epoch in order:
        features = _load_epoch(epoch_feature_loader, epoch, n_samples, device)
        spread = _spread(features, start, start.size + SPREAD_EXTRA_CENTERS)
        dimension = twonn_dimension(features, device) if params.alpha != 0 else math.nan
        if epoch == order[0]:
            spread_0, dimension_0 = spread, dimension
        radius = (
            params.r0
            * _ratio_power(spread, spread_0, params.beta)
            * _ratio_power(dimension, dimension_0, params.alpha)
        )
        selected, _ = _greedy(features, selected, radius, params.coverage, n_samples)
        selections[epoch] = ids[selected]
        logger.debug(
            "reduction: epoch %d keeps %d of %d samples (radius %.4g, spread c_t %.4g, "
            "dimension d_t %.4g)",
            epoch,
            selected.size,
            n_samples,
            radius,
            spread,
            dimension,
        )
        del features

    sizes = np.array([selections[epoch].size for epoch in order])
    logger.info(
        "reduction (r0=%g, alpha=%g, beta=%g, init_size=%d, coverage=%g): %d epochs of %d "
        "samples, kept %d-%d per epoch (mean %.0f) in %.1f s",
        params.r0,
        params.alpha,
        params.beta,
        params.init_size,
        params.coverage,
        len(order),
        n_samples,
        sizes.min(),
        sizes.max(),
        sizes.mean(),
        time.perf_counter() - began,
    )
    return selections
