"""The spatio-temporal complex: one fuzzy graph over the vertices of all epochs (docs/method.md §3).

Every function here is a pure numpy computation on arrays; nothing reads the store or computes
nearest neighbours (``timevis_cli.fit.neighbors`` does, and hands its results in as arrays:
``knn_indices`` int64 [n, k] and Euclidean ``knn_dists`` float32 [n, k], each row ascending).

Global vertex numbering: the caller lays the epochs out one after another; epoch ``t`` owns the
vertices ``[offset_t, offset_t + n_train_t)`` for its (reduced) training samples, followed by
``[offset_t + n_train_t, offset_t + n_train_t + n_boundary_t)`` for its boundary points.

Graphs are symmetric and stored in COO form with both directions: an undirected edge ``{u, v}``
of membership ``μ`` appears as ``(u, v, μ)`` and ``(v, u, μ)``, as in umap-learn, whose optimiser
(and the reference TimeVis code) samples every stored entry.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from timevis_cli.errors import InputError

__all__ = [
    "DEFAULT_RATES",
    "PRUNE_OFFSET",
    "EdgeKind",
    "EdgeSet",
    "EpochVertices",
    "LocalGraph",
    "boundary_edges",
    "fuzzy_union",
    "membership_strengths",
    "mix_edges",
    "smooth_knn_dist",
    "spatial_edges",
    "temporal_edges",
    "temporal_memberships",
]

logger = logging.getLogger(__name__)

SMOOTH_K_TOLERANCE = 1e-5
"""Tolerance of the σ binary search on ``|Σ μ - log2(k)|`` (umap-learn's value)."""
MIN_K_DIST_SCALE = 1e-3
"""σ is floored at this fraction of the mean kNN distance (umap-learn's value)."""
PRUNE_OFFSET = 1e-3
"""Edges with ``μ < max(μ) / rate + PRUNE_OFFSET`` are dropped by :func:`mix_edges`."""
_FLOAT32_MAX = np.float32(np.finfo(np.float32).max)
_MAX_UNION_VERTICES = 3_037_000_499
"""Largest vertex count whose (row, col) pairs fit one int64 key, ``floor(sqrt(2**63 - 1))``."""


_MIX_CHUNK = 1 << 20  # edges per chunk of mix_edges' float64 arithmetic


class EdgeKind(IntEnum):
    """Which part of the complex an edge comes from (stored as uint8 in :class:`EdgeSet`)."""

    SPATIAL = 0
    BOUNDARY = 1
    TEMPORAL = 2


DEFAULT_RATES: Mapping[str, float] = MappingProxyType(
    {"spatial": 5.0, "boundary": 5.0, "temporal": 100.0}
)
"""The sampling rate of each edge kind (docs/method.md §3, mixing); keys are lower-case kind names."""


@dataclass(frozen=True, eq=False)
class EdgeSet:
    """Weighted directed edges between global vertex ids, each tagged with its :class:`EdgeKind`.

    ``head``, ``tail``: int64 [m]; ``weight``: float32 [m] (the membership ``μ``, or the sampling
    weight ``w`` after :func:`mix_edges`); ``kind``: uint8 [m] (values of :class:`EdgeKind`).
    """

    head: np.ndarray
    tail: np.ndarray
    weight: np.ndarray
    kind: np.ndarray

    def __post_init__(self) -> None:
        arrays = {
            "head": np.asarray(self.head, dtype=np.int64),
            "tail": np.asarray(self.tail, dtype=np.int64),
            "weight": np.asarray(self.weight, dtype=np.float32),
            "kind": np.asarray(self.kind, dtype=np.uint8),
        }
        sizes = {name: array.shape for name, array in arrays.items()}
        if any(array.ndim != 1 for array in arrays.values()) or len(set(sizes.values())) != 1:
            raise InputError(f"EdgeSet arrays must be 1-D of one length, got shapes {sizes}")
        if arrays["kind"].size and int(arrays["kind"].max()) > max(EdgeKind):
            raise InputError(
                f"EdgeSet kind values must be in {[int(k) for k in EdgeKind]}, "
                f"got {sorted(set(np.unique(arrays['kind']).tolist()))}"
            )
        for name, array in arrays.items():
            object.__setattr__(self, name, array)

    @property
    def nbytes(self) -> int:
        """Bytes held by the four arrays."""
        return sum(a.nbytes for a in (self.head, self.tail, self.weight, self.kind))

    def __len__(self) -> int:
        return int(self.head.shape[0])

    @classmethod
    def empty(cls) -> EdgeSet:
        """An edge set with no edges."""
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.float32),
            np.empty(0, np.uint8),
        )

    @classmethod
    def from_coo(
        cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, kind: EdgeKind
    ) -> EdgeSet:
        """Edges ``rows[e] -> cols[e]`` of weight ``vals[e]``, all of one kind; arrays [m]."""
        rows = np.asarray(rows, dtype=np.int64)
        return cls(rows, cols, vals, np.full(rows.shape, int(kind), dtype=np.uint8))

    @staticmethod
    def concat(edge_sets: Sequence[EdgeSet]) -> EdgeSet:
        """Join many edge sets, in order (the parts are left as they are)."""
        return EdgeSet.drain(list(edge_sets))

    @staticmethod
    def drain(edge_sets: list[EdgeSet]) -> EdgeSet:
        """Join many edge sets, in order, emptying ``edge_sets`` as it goes: each part is dropped
        from the list once copied into the preallocated result, so a part nobody else holds is
        freed before the next is copied."""
        if not edge_sets:
            return EdgeSet.empty()
        total = sum(len(e) for e in edge_sets)
        out = {name: np.empty(total, getattr(edge_sets[0], name).dtype) for name in ("head", "tail", "weight", "kind")}
        at = 0
        while edge_sets:
            part = edge_sets.pop(0)
            for name, array in out.items():
                array[at : at + len(part)] = getattr(part, name)
            at += len(part)
            del part
        return EdgeSet(out["head"], out["tail"], out["weight"], out["kind"])

    def select(self, mask: np.ndarray) -> EdgeSet:
        """The edges where the boolean ``mask`` [m] is true, in order."""
        return EdgeSet(self.head[mask], self.tail[mask], self.weight[mask], self.kind[mask])

    def of_kind(self, kind: EdgeKind) -> EdgeSet:
        """The edges of one kind, in order."""
        return self.select(self.kind == int(kind))


class LocalGraph(NamedTuple):
    """One epoch's part of the complex: its edges and the σ, ρ (float32 [n]) of its rows."""

    edges: EdgeSet
    sigma: np.ndarray
    rho: np.ndarray


@dataclass(frozen=True, eq=False)
class EpochVertices:
    """One epoch's training vertices, as temporal edges need them.

    ``sample_ids`` int64 [n] (stable ids, unique within the epoch, any row order),
    ``vertex_ids`` int64 [n] (global vertex ids), ``features`` float [n, D], and the spatial
    ``sigma``, ``rho`` float32 [n] of these vertices (from :func:`spatial_edges`).
    """

    sample_ids: np.ndarray
    vertex_ids: np.ndarray
    features: np.ndarray
    sigma: np.ndarray
    rho: np.ndarray
    _order: np.ndarray = field(init=False, repr=False)
    _sorted_ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sample_ids = np.asarray(self.sample_ids)
        if sample_ids.ndim != 1 or not np.issubdtype(sample_ids.dtype, np.integer):
            raise InputError(
                f"sample_ids must be a 1-D integer array, got {sample_ids.dtype} "
                f"of shape {sample_ids.shape}"
            )
        n = sample_ids.shape[0]
        features = np.asarray(self.features)
        if features.ndim != 2 or features.shape[0] != n:
            raise InputError(f"features must have shape ({n}, D), got {features.shape}")
        if not np.issubdtype(features.dtype, np.floating):
            raise InputError(f"features must be floating point, got {features.dtype}")
        arrays = {
            "vertex_ids": np.asarray(self.vertex_ids, dtype=np.int64),
            "sigma": np.asarray(self.sigma, dtype=np.float32),
            "rho": np.asarray(self.rho, dtype=np.float32),
        }
        for name, array in arrays.items():
            if array.shape != (n,):
                raise InputError(f"{name} must have shape ({n},), got {array.shape}")
        order = np.argsort(sample_ids, kind="stable")
        sorted_ids = sample_ids[order]
        if n > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
            duplicated = np.unique(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]])
            raise InputError(
                f"sample_ids must be unique within an epoch, repeated: {duplicated[:10].tolist()}"
            )
        object.__setattr__(self, "sample_ids", sample_ids.astype(np.int64, copy=False))
        object.__setattr__(self, "features", features)
        for name, array in arrays.items():
            object.__setattr__(self, name, array)
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_sorted_ids", sorted_ids.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def locate(self, sample_ids: np.ndarray) -> np.ndarray:
        """Row of each of ``sample_ids`` [m] in this epoch, -1 where absent; int64 [m]."""
        sample_ids = np.asarray(sample_ids)
        rows = np.full(sample_ids.shape, -1, dtype=np.int64)
        if len(self) == 0:
            return rows
        pos = np.minimum(np.searchsorted(self._sorted_ids, sample_ids), len(self) - 1)
        found = self._sorted_ids[pos] == sample_ids
        rows[found] = self._order[pos[found]]
        return rows


def _check_knn(
    knn_indices: np.ndarray, knn_dists: np.ndarray, n_reference: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a kNN result against ``n_reference`` points; return (int64, float32) views."""
    indices = np.asarray(knn_indices)
    dists = np.asarray(knn_dists)
    if indices.ndim != 2 or indices.shape != dists.shape:
        raise InputError(
            f"knn_indices and knn_dists must be 2-D of the same shape, got {indices.shape} "
            f"and {dists.shape}"
        )
    if indices.shape[1] < 1:
        raise InputError(f"kNN lists need at least one column, got shape {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise InputError(f"knn_indices must be integers, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_reference):
        raise InputError(
            f"knn_indices must lie in [0, {n_reference}), got [{indices.min()}, {indices.max()}]; "
            "missing neighbours (-1) are not supported"
        )
    repeated = np.flatnonzero(np.any(np.diff(np.sort(indices, axis=1), axis=1) == 0, axis=1))
    if repeated.size:
        raise InputError(
            f"knn_indices lists a neighbour twice in {repeated.size} rows (first: row "
            f"{repeated[0]}); each row must hold distinct neighbours"
        )
    dists32 = dists.astype(np.float32, copy=False)
    if not np.all(np.isfinite(dists32)) or (dists32.size and dists32.min() < 0):
        raise InputError("knn_dists must be finite and non-negative")
    if np.any(np.diff(dists32, axis=1) < 0):
        raise InputError("each row of knn_dists must be sorted ascending")
    return indices.astype(np.int64, copy=False), dists32


def _check_offset(vertex_offset: int) -> int:
    if int(vertex_offset) != vertex_offset or vertex_offset < 0:
        raise InputError(f"vertex_offset={vertex_offset!r} must be an integer >= 0")
    return int(vertex_offset)


def _sum_columns(values: np.ndarray) -> np.ndarray:
    """Row sums of ``values`` [n, c] accumulated left to right in its dtype (as umap does)."""
    total = np.zeros(values.shape[0], dtype=values.dtype)
    for j in range(values.shape[1]):
        total += values[:, j]
    return total


def smooth_knn_dist(
    distances: np.ndarray, k: float, n_iter: int = 64, tol: float = SMOOTH_K_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """σ and ρ of each point from its sorted kNN distances [n, c] (umap-learn's semantics).

    ``ρ_i`` is the first positive distance of row ``i`` (0 if none); ``σ_i`` is found by a binary
    search, run on all rows at once in float64 (as umap-learn's parallel kernel runs), so that
    ``Σ_{j≥1} exp(-max(0, d_ij - ρ_i) / σ_i) = log2(k)`` within ``tol`` (column 0, the point
    itself, is skipped); ``σ_i`` is floored at ``1e-3 ·`` the row's mean distance, or the global
    mean distance for a row whose distances are all zero (summed here in float64, where
    umap-learn sums in float32). Returns ``(sigma, rho)``, float32 [n].
    """
    dists = np.asarray(distances, dtype=np.float32)
    if dists.ndim != 2:
        raise InputError(f"distances must be 2-D [n, k], got shape {dists.shape}")
    if not k > 0:
        raise InputError(f"k={k!r} must be > 0")
    if n_iter < 1:
        raise InputError(f"n_iter={n_iter!r} must be >= 1")
    n = dists.shape[0]
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    target = float(np.log2(k))

    positive = dists > 0
    has_positive = positive.any(axis=1)
    first_positive = positive.argmax(axis=1)
    rho = np.where(has_positive, dists[np.arange(n), first_positive], 0).astype(np.float32)

    lo = np.zeros(n, dtype=np.float64)
    hi = np.full(n, _FLOAT32_MAX, dtype=np.float64)
    mid = np.ones(n, dtype=np.float64)
    others = dists[:, 1:]
    active = np.arange(n)
    with np.errstate(over="ignore", under="ignore"):
        for _ in range(n_iter):
            if active.size == 0:
                break
            excess = others[active] - rho[active, None]
            terms = np.where(excess > 0, np.exp(-(excess / mid[active, None])), 1.0)
            psum = _sum_columns(terms)
            searching = np.abs(psum - target) >= tol
            active, psum = active[searching], psum[searching]
            too_many = psum > target
            shrink = active[too_many]
            hi[shrink] = mid[shrink]
            mid[shrink] = (lo[shrink] + hi[shrink]) / 2.0
            grow = active[~too_many]
            lo[grow] = mid[grow]
            unbounded = hi[grow] >= _FLOAT32_MAX
            mid[grow] = np.where(unbounded, mid[grow] * 2.0, (lo[grow] + hi[grow]) / 2.0)
    if active.size:
        logger.debug(
            "sigma search stopped after %d steps for %d of %d points", n_iter, active.size, n
        )

    sigma = mid.astype(np.float32)
    row_mean = _sum_columns(dists) / np.float32(dists.shape[1])
    global_mean = np.float32(dists.mean(dtype=np.float64))
    floor = np.where(
        rho > 0,
        MIN_K_DIST_SCALE * row_mean.astype(np.float64),
        MIN_K_DIST_SCALE * float(global_mean),
    )
    sigma = np.where(sigma < floor, floor, sigma).astype(np.float32)
    return sigma, rho


def _kernel(dists: np.ndarray, sigma: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``exp(-max(0, d - ρ)/σ)`` in float32, 1 where ``d ≤ ρ`` or ``σ = 0``; broadcasts rows."""
    excess = dists.astype(np.float32, copy=False) - rho
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        strength = np.exp(-(excess / sigma))
    return np.where((excess <= 0) | (sigma == 0), np.float32(1.0), strength).astype(np.float32)


def membership_strengths(
    knn_indices: np.ndarray, knn_dists: np.ndarray, sigma: np.ndarray, rho: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed memberships ``μ_ij`` of each row's kNN as COO ``(rows, cols, vals)`` [n·k].

    ``rows`` int64 (the row number), ``cols`` int64 (``knn_indices``), ``vals`` float32:
    ``exp(-max(0, d_ij - ρ_i) / σ_i)``, 1 when ``d_ij ≤ ρ_i`` or ``σ_i = 0``, and 0 where the
    neighbour is the row itself (``knn_indices[i, j] == i``).
    """
    indices = np.asarray(knn_indices, dtype=np.int64)
    dists = np.asarray(knn_dists, dtype=np.float32)
    sigma = np.asarray(sigma, dtype=np.float32)
    rho = np.asarray(rho, dtype=np.float32)
    if indices.ndim != 2 or indices.shape != dists.shape:
        raise InputError(
            f"knn_indices and knn_dists must be 2-D of the same shape, got {indices.shape} "
            f"and {dists.shape}"
        )
    n = indices.shape[0]
    if sigma.shape != (n,) or rho.shape != (n,):
        raise InputError(f"sigma and rho must have shape ({n},), got {sigma.shape}, {rho.shape}")
    rows_of = np.arange(n, dtype=np.int64)[:, None]
    vals = _kernel(dists, sigma[:, None], rho[:, None])
    vals[indices == rows_of] = 0.0
    rows = np.broadcast_to(rows_of, indices.shape).ravel()
    return rows, indices.ravel(), vals.ravel()


def fuzzy_union(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuzzy union ``μ = A + Aᵀ - A∘Aᵀ`` of a directed sparse graph given as COO arrays [m].

    Zero entries are ignored; a repeated ``(row, col)`` pair is an error. Returns the symmetric
    result as COO ``(rows int64, cols int64, vals float32)``, both directions of every edge,
    sorted by ``(row, col)``, zeros removed (umap-learn's ``fuzzy_simplicial_set`` union).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    vals = np.asarray(vals, dtype=np.float32)
    if not (rows.ndim == cols.ndim == vals.ndim == 1) or not (
        rows.shape == cols.shape == vals.shape
    ):
        raise InputError(
            f"rows, cols and vals must be 1-D of one length, got {rows.shape}, {cols.shape}, "
            f"{vals.shape}"
        )
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    if rows.size == 0:
        return rows, cols, vals
    if min(rows.min(), cols.min()) < 0:
        raise InputError("vertex ids must be >= 0")
    n_vertices = int(max(rows.max(), cols.max())) + 1
    if n_vertices > _MAX_UNION_VERTICES:
        raise InputError(
            f"{n_vertices} vertices exceed the {_MAX_UNION_VERTICES} that int64 pair keys allow"
        )
    m = rows.shape[0]
    keys, inverse = np.unique(
        np.concatenate([rows * n_vertices + cols, cols * n_vertices + rows]), return_inverse=True
    )
    forward_slot = inverse[:m]
    if np.bincount(forward_slot, minlength=keys.shape[0]).max() > 1:
        raise InputError("the directed graph repeats a (row, col) pair; merge duplicates first")
    forward = np.zeros(keys.shape[0], dtype=np.float32)
    forward[forward_slot] = vals
    backward = np.zeros(keys.shape[0], dtype=np.float32)
    backward[inverse[m:]] = vals
    union = (forward + backward) - forward * backward
    nonzero = union != 0
    keys = keys[nonzero]
    return keys // n_vertices, keys % n_vertices, union[nonzero]


def spatial_edges(
    knn_indices: np.ndarray, knn_dists: np.ndarray, vertex_offset: int = 0
) -> LocalGraph:
    """Spatial fuzzy simplicial set of one epoch's training points.

    ``knn_indices`` int [n, k] and ``knn_dists`` [n, k]: exact kNN among the epoch's n points,
    self at column 0, rows ascending; ``k`` (the columns) is UMAP's ``n_neighbors``. Vertex
    ``i`` of the epoch becomes global vertex ``vertex_offset + i``. Returns the symmetric
    :attr:`EdgeKind.SPATIAL` edges (weight ``μ``) and σ, ρ float32 [n] of the epoch's points.
    """
    offset = _check_offset(vertex_offset)
    n = np.shape(knn_indices)[0] if np.ndim(knn_indices) == 2 else -1
    indices, dists = _check_knn(knn_indices, knn_dists, n)
    sigma, rho = smooth_knn_dist(dists, float(dists.shape[1]))
    rows, cols, vals = fuzzy_union(*membership_strengths(indices, dists, sigma, rho))
    edges = EdgeSet.from_coo(rows + offset, cols + offset, vals, EdgeKind.SPATIAL)
    logger.debug(
        "spatial edges: %d points, k=%d, %d directed entries", n, dists.shape[1], len(edges)
    )
    return LocalGraph(edges, sigma, rho)


def boundary_edges(
    knn_indices: np.ndarray, knn_dists: np.ndarray, n_train: int, vertex_offset: int = 0
) -> LocalGraph:
    """Edges from every vertex of one epoch to its k nearest boundary points.

    The epoch's vertices are its ``n_train`` training points followed by its ``n_boundary``
    boundary points. ``knn_indices`` int [n_train + n_boundary, k] and ``knn_dists`` (same
    shape, rows ascending) are each vertex's kNN among the boundary points only, indices in
    ``[0, n_boundary)`` (a boundary point finds itself at column 0). Boundary point ``b``
    is epoch vertex ``n_train + b``, global vertex ``vertex_offset + n_train + b``. Memberships
    and the union are umap-learn's on this kNN graph. Returns the symmetric
    :attr:`EdgeKind.BOUNDARY` edges and σ, ρ float32 [n_boundary] of the boundary points.
    """
    offset = _check_offset(vertex_offset)
    if int(n_train) != n_train or n_train < 0:
        raise InputError(f"n_train={n_train!r} must be an integer >= 0")
    n_train = int(n_train)
    n_vertices = np.shape(knn_indices)[0] if np.ndim(knn_indices) == 2 else -1
    n_boundary = n_vertices - n_train
    if n_boundary < 1:
        raise InputError(
            f"knn_indices has {n_vertices} rows; expected n_train={n_train} training rows "
            "followed by one row per boundary point (at least one)"
        )
    indices, dists = _check_knn(knn_indices, knn_dists, n_boundary)
    sigma, rho = smooth_knn_dist(dists, float(dists.shape[1]))
    rows, cols, vals = fuzzy_union(*membership_strengths(indices + n_train, dists, sigma, rho))
    edges = EdgeSet.from_coo(rows + offset, cols + offset, vals, EdgeKind.BOUNDARY)
    logger.debug(
        "boundary edges: %d training + %d boundary vertices, k=%d, %d directed entries",
        n_train,
        n_boundary,
        dists.shape[1],
        len(edges),
    )
    return LocalGraph(edges, sigma[n_train:], rho[n_train:])


def temporal_memberships(
    source: EpochVertices, others: Sequence[EpochVertices], n_neighbors: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed temporal memberships from one epoch's vertices to their copies in other epochs.

    For each sample of ``source``, the candidates are its copies (same sample id) in the epochs
    ``others`` (m epochs, the source's excluded); the true ``n_neighbors`` nearest by Euclidean
    distance are kept (fewer where the sample has fewer copies; ties go to the earlier epoch in
    ``others``) and weighted with the source vertex's spatial σ, ρ. Works on [n, m] distance
    arrays and one [n, D] feature gather per other epoch. Returns COO ``(rows, cols, vals)``:
    global vertex ids int64 and μ float32, one entry per kept pair.
    """
    if int(n_neighbors) != n_neighbors or n_neighbors < 1:
        raise InputError(f"n_neighbors={n_neighbors!r} must be an integer >= 1")
    n, m = len(source), len(others)
    if n == 0 or m == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    dim = source.features.shape[1]
    work_dtype = np.result_type(source.features.dtype, np.float32)
    source_features = source.features.astype(work_dtype, copy=False)
    dists = np.full((n, m), np.inf, dtype=np.float32)
    targets = np.full((n, m), -1, dtype=np.int64)
    for j, other in enumerate(others):
        if other.features.shape[1] != dim:
            raise InputError(
                f"feature dimensions differ between epochs: {dim} and {other.features.shape[1]}"
            )
        rows_in_other = other.locate(source.sample_ids)
        present = rows_in_other >= 0
        found = rows_in_other[present]
        delta = source_features[present] - other.features[found].astype(work_dtype, copy=False)
        dists[present, j] = np.sqrt(np.einsum("ij,ij->i", delta, delta))
        targets[present, j] = other.vertex_ids[found]
    n_keep = min(int(n_neighbors), m)
    nearest = np.argsort(dists, axis=1, kind="stable")[:, :n_keep]
    kept_dists = np.take_along_axis(dists, nearest, axis=1)
    kept_targets = np.take_along_axis(targets, nearest, axis=1)
    vals = _kernel(kept_dists, source.sigma[:, None], source.rho[:, None])
    rows = np.broadcast_to(source.vertex_ids[:, None], kept_targets.shape)
    valid = np.isfinite(kept_dists)
    return rows[valid], kept_targets[valid], vals[valid]


def temporal_edges(
    epochs: Iterable[EpochVertices], n_neighbors: int, window: int | None = None
) -> EdgeSet:
    """Temporal edges between the copies of each training sample across epochs.

    ``epochs``: the epochs in time order (any iterable, read once, lazily). With a ``window``
    W, the copies of a sample at time step ``t`` (its position in ``epochs``) are candidates
    for the steps ``t'`` with ``|t - t'| ≤ W / 2``, and at most ``2·(W // 2) + 1`` epochs are
    held at once; with ``window=None`` every epoch is a candidate (all are held). Each copy
    keeps its ``n_neighbors`` nearest other copies (itself not counted: the reference code's
    ``k`` counted the copy itself), weighted with its own spatial σ, ρ
    (:func:`temporal_memberships`); the directed memberships are joined by :func:`fuzzy_union`.
    Returns the symmetric :attr:`EdgeKind.TEMPORAL` edges.
    """
    if int(n_neighbors) != n_neighbors or n_neighbors < 1:
        raise InputError(f"n_neighbors={n_neighbors!r} must be an integer >= 1")
    if window is not None and (int(window) != window or window < 0):
        raise InputError(f"window={window!r} must be an integer >= 0, or None for all epochs")
    half = None if window is None else int(window) // 2
    held: deque[EpochVertices] = deque()
    first_held = 0
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_sources = 0

    def emit(step: int) -> None:
        reach = len(held) if half is None else half
        lo, hi = max(step - reach, first_held), min(step + reach, first_held + len(held) - 1)
        others = [held[q - first_held] for q in range(lo, hi + 1) if q != step]
        pieces.append(temporal_memberships(held[step - first_held], others, n_neighbors))
        logger.debug(
            "temporal edges: step %d against %d epochs, %d directed entries",
            step,
            len(others),
            pieces[-1][0].shape[0],
        )

    n_read = 0
    for epoch in epochs:
        if not isinstance(epoch, EpochVertices):
            raise InputError(f"epochs must yield EpochVertices, got {type(epoch).__name__}")
        held.append(epoch)
        n_read += 1
        if half is not None:
            while n_sources <= n_read - 1 - half:
                emit(n_sources)
                n_sources += 1
                while first_held < n_sources - half:
                    held.popleft()
                    first_held += 1
    while n_sources < n_read:
        emit(n_sources)
        n_sources += 1
    held.clear()

    if not pieces:
        return EdgeSet.empty()
    rows, cols, vals = fuzzy_union(
        np.concatenate([p[0] for p in pieces]),
        np.concatenate([p[1] for p in pieces]),
        np.concatenate([p[2] for p in pieces]),
    )
    return EdgeSet.from_coo(rows, cols, vals, EdgeKind.TEMPORAL)


def mix_edges(
    edge_set: EdgeSet,
    rates: Mapping[str, float] = DEFAULT_RATES,
    prune_offset: float = PRUNE_OFFSET,
) -> EdgeSet:
    """Prune and weight each edge kind for sampling (docs/method.md §3, mixing).

    Per kind, with ``μ`` the weights of that kind's edges in ``edge_set``: drop the edges with
    ``μ < max(μ) / rate + prune_offset``, then set ``w = μ · rate``. ``rates`` maps lower-case
    kind names (``spatial``, ``boundary``, ``temporal``) to positive rates; each kind present
    needs one. Returns a new :class:`EdgeSet` (order kept) whose ``weight`` is ``w``.

    The reference prunes each epoch's spatial and boundary graph on its own maximum; those
    always hold a membership of 1 (the nearest neighbour, ``d = ρ``), so one maximum per kind
    over all epochs prunes the same edges.
    """
    known = {k.name.lower() for k in EdgeKind}
    unknown = set(rates) - known
    if unknown:
        raise InputError(f"unknown edge kinds in rates: {sorted(unknown)}; known: {sorted(known)}")
    rate_of_kind = np.zeros(len(EdgeKind), dtype=np.float64)
    threshold_of_kind = np.zeros(len(EdgeKind), dtype=np.float64)
    for kind in EdgeKind:
        mask = edge_set.kind == int(kind)
        if not mask.any():
            continue
        name = kind.name.lower()
        if name not in rates:
            raise InputError(f"no rate for the {name} edges; rates given: {dict(rates)}")
        rate = float(rates[name])
        if not rate > 0:
            raise InputError(f"rate {name}={rates[name]!r} must be > 0")
        rate_of_kind[kind] = rate
        threshold_of_kind[kind] = float(edge_set.weight[mask].max()) / rate + prune_offset
    # in chunks, so the float64 temporaries stay small (a 10 000 x 200-epoch complex has 20 M edges)
    keep = np.empty(len(edge_set), dtype=bool)
    for at in range(0, len(edge_set), _MIX_CHUNK):
        chunk = slice(at, at + _MIX_CHUNK)
        keep[chunk] = edge_set.weight[chunk].astype(np.float64) >= threshold_of_kind[edge_set.kind[chunk]]
    kind = edge_set.kind[keep]
    weight = edge_set.weight[keep]
    for at in range(0, len(weight), _MIX_CHUNK):
        chunk = slice(at, at + _MIX_CHUNK)
        weight[chunk] = (weight[chunk].astype(np.float64) * rate_of_kind[kind[chunk]]).astype(np.float32)
    mixed = EdgeSet(edge_set.head[keep], edge_set.tail[keep], weight, kind)
    logger.debug("mixing kept %d of %d edges", len(mixed), len(edge_set))
    return mixed
