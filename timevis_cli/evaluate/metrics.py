"""Faithfulness metrics of a time-travelling visualization (docs/method.md §8).

Every metric is a pure function of arrays; the evaluator only loops over epochs and splits and
collects. ``HIGHER_IS_BETTER`` says which way each one points.

Two conventions are reported so numbers can be set beside published ones:

- ``"paper"`` (default): fractions in [0, 1], neighbours exclude the sample itself.
- ``"reference"``: what the published TimeVis/DVI evaluation code returns. nnpv: the mean
  number of shared neighbours when both lists hold k neighbours *including the sample itself*
  (so the value lies in [1, k] and equals ``1 + (k - 1) * nnpv(k - 1)``); boundary and temp_l:
  the mean integer count of shared neighbours (``k`` times the paper value); temppv: neighbour
  lists of k including the sample itself, undefined correlations counted as 0; temp_g: the
  sample's zero distance to its own epoch kept in both distance vectors.

Spatial metrics (nnpv, boundary) need exact kNN; they take an optional ``knn`` callable
``knn(data, queries, k) -> indices`` (int64 [m, k], sorted by distance; with ``queries=None``
the neighbours of every row of ``data`` among the *other* rows). Without one, a blocked exact
brute force in this module is used (memory bounded: never a full n x n matrix).

Temporal metrics (temp_l, temp_g) only compare a sample with itself across epochs, so they
stream over samples: ``temporal_local_scores`` / ``temporal_global_scores`` read
``seq[:, start:stop]`` blocks of ``block_size`` samples (a NumPy array, a memmap or an h5py
dataset of shape [T, N, D] all work) and return one value per (epoch, sample). A caller holding
its own blocks may call them per block and concatenate along axis 1: the result is identical.
temppv streams over epochs instead (it needs every sample of one epoch for the kNN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import rankdata

from timevis_cli.errors import InputError

__all__ = [
    "HIGHER_IS_BETTER",
    "KnnFn",
    "Convention",
    "nnpv_counts",
    "nnpv",
    "boundary_counts",
    "boundary_preservation",
    "ppr",
    "recon_error",
    "neighbor_kept_fraction",
    "temppv_per_sample",
    "temppv",
    "temporal_local_scores",
    "temporal_local",
    "temporal_global_scores",
    "temporal_global",
]

HIGHER_IS_BETTER: dict[str, bool] = {
    "nnpv": True,
    "boundary": True,
    "ppr": True,
    "landscape": True,
    "recon": False,
    "temppv": False,
    "temp_l": True,
    "temp_g": True,
}

KnnFn = Callable[[np.ndarray, np.ndarray | None, int], np.ndarray]
Convention = Literal["paper", "reference"]
RankMethod = Literal["kendall", "spearman"]

_CONVENTIONS = ("paper", "reference")
_RANK_METHODS = ("kendall", "spearman")
# Elements of the largest temporary a block may build (float64: 64 MiB).
_BLOCK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- validation helpers


def _check_convention(convention: str) -> None:
    if convention not in _CONVENTIONS:
        raise InputError(f"convention={convention!r} must be one of {_CONVENTIONS}")


def _as_matrix(name: str, values: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Return ``values`` as an array of ``ndim`` axes with only finite numbers."""
    arr = np.asarray(values)
    if arr.ndim != ndim:
        raise InputError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name} has {bad} non-finite values (NaN or inf); drop or fix them first")
    return arr


def _check_k(name: str, k: int, limit: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"{name}={k!r} must be an integer >= 1")
    if k > limit:
        raise InputError(f"{name}={k} must be <= {limit} ({what})")


def _check_rows(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise InputError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}; they must match")


def _check_cols(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"{name_a} has {a.shape[1]} columns but {name_b} has {b.shape[1]}; they must match"
        )


def _mean_ignoring_nan(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


# --------------------------------------------------------------------------- exact kNN


def _exact_knn(data: np.ndarray, queries: np.ndarray | None, k: int) -> np.ndarray:
    """Exact Euclidean kNN by blocked brute force in float64.

    data: (n, d); queries: (m, d) or None. Returns int64 (m, k): the rows of ``data`` nearest to
    each query, sorted by distance (ties by index). ``queries=None`` means the rows of ``data``
    themselves, each one's own row excluded by index.
    """
    ref = np.asarray(data, dtype=np.float64)
    centre = ref.mean(axis=0) if len(ref) else np.zeros(ref.shape[1])
    ref = ref - centre
    exclude_self = queries is None
    points = ref if exclude_self else np.asarray(queries, dtype=np.float64) - centre
    out = np.empty((len(points), k), dtype=np.int64)
    if k == 0 or len(points) == 0:
        return out
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    rows = max(1, _BLOCK_ELEMENTS // max(len(ref), 1))
    for start in range(0, len(points), rows):
        block = points[start : start + rows]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + ref_sq[None, :] - 2.0 * (block @ ref.T)
        if exclude_self:
            local = np.arange(len(block))
            d2[local, start + local] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        part_d2 = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, part_d2), axis=1)
        out[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
    return out


def _checked_indices(indices: np.ndarray, rows: int, k: int) -> np.ndarray:
    arr = np.asarray(indices, dtype=np.int64)
    if arr.shape != (rows, k):
        raise InputError(f"the knn function returned shape {arr.shape}, expected {(rows, k)}")
    return arr


def _knn_among_others(points: np.ndarray, k: int, knn: KnnFn | None) -> np.ndarray:
    """(n, d) -> int64 (n, k): each point's k nearest other points."""
    if k == 0:
        return np.empty((len(points), 0), dtype=np.int64)
    return _checked_indices((knn or _exact_knn)(points, None, k), len(points), k)


def _knn_with_reference(
    samples: np.ndarray, reference: np.ndarray, k: int, knn: KnnFn | None
) -> np.ndarray:
    """Neighbours of each sample among ``reference ∪ samples``, self excluded by index.

    samples: (n, d), reference: (r, d). Returns int64 (n, k) indexing the stacked array
    ``[reference; samples]`` (the sample i itself is row ``r + i``).
    """
    n = len(samples)
    if k == 0:
        return np.empty((n, 0), dtype=np.int64)
    search = np.concatenate([reference, samples])
    found = _checked_indices((knn or _exact_knn)(search, samples, k + 1), n, k + 1)
    keep = found != (len(reference) + np.arange(n))[:, None]
    keep[keep.all(axis=1), -1] = False
    return found[keep].reshape(n, k)


def _overlap_counts(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per row, how many indices two neighbour lists share: (n, k1), (n, k2) -> int64 (n,)."""
    n, k1 = first.shape
    k2 = second.shape[1]
    out = np.zeros(n, dtype=np.int64)
    if k1 == 0 or k2 == 0:
        return out
    rows = max(1, _BLOCK_ELEMENTS // (k1 * k2))
    for start in range(0, n, rows):
        a = first[start : start + rows]
        b = second[start : start + rows]
        out[start : start + len(a)] = np.count_nonzero(a[:, :, None] == b[:, None, :], axis=(1, 2))
    return out


# --------------------------------------------------------------------------- spatial metrics


def nnpv_counts(
    high: np.ndarray,
    low: np.ndarray,
    k: int = 15,
    high_ref: np.ndarray | None = None,
    low_ref: np.ndarray | None = None,
    *,
    include_self: bool = False,
    knn: KnnFn | None = None,
) -> np.ndarray:
    """Per sample, how many of its k nearest neighbours in high-D are among its k in 2-D.

    high: (n, D) samples, low: (n, d) their projections. With ``high_ref``/``low_ref`` ((r, D),
    (r, d), e.g. the training set when scoring test samples) neighbours are searched among
    ``ref ∪ samples``. ``include_self=False``: k neighbours excluding the sample (paper).
    ``include_self=True``: k neighbours counting the sample itself, as the reference code, so
    every count is ``1 + shared(k - 1 others)``. Returns int64 (n,), values in [0, k].

    >>> high = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    >>> low = np.array([[15.0, 0], [1, 0], [3, 0], [7, 0], [0, 0]])
    >>> nnpv_counts(high, low, k=1).tolist()
    [0, 0, 1, 1, 0]
    >>> nnpv_counts(high, low, k=2, include_self=True).tolist()
    [1, 1, 2, 2, 1]
    """
    high = _as_matrix("high", high)
    low = _as_matrix("low", low)
    _check_rows("high", high, "low", low)
    if (high_ref is None) != (low_ref is None):
        raise InputError("pass both high_ref and low_ref, or neither")
    n_others = len(high) - 1
    if high_ref is not None and low_ref is not None:
        high_ref = _as_matrix("high_ref", high_ref)
        low_ref = _as_matrix("low_ref", low_ref)
        _check_rows("high_ref", high_ref, "low_ref", low_ref)
        _check_cols("high_ref", high_ref, "high", high)
        _check_cols("low_ref", low_ref, "low", low)
        n_others += len(high_ref)
    if include_self:
        _check_k("k", k, n_others + 1, "the sample and the points searched")
    else:
        _check_k("k", k, n_others, "the other points searched")
    others = k - 1 if include_self else k
    if high_ref is not None and low_ref is not None:
        high_nn = _knn_with_reference(high, high_ref, others, knn)
        low_nn = _knn_with_reference(low, low_ref, others, knn)
    else:
        high_nn = _knn_among_others(high, others, knn)
        low_nn = _knn_among_others(low, others, knn)
    return _overlap_counts(high_nn, low_nn) + int(include_self)


def nnpv(
    high: np.ndarray,
    low: np.ndarray,
    k: int = 15,
    high_ref: np.ndarray | None = None,
    low_ref: np.ndarray | None = None,
    *,
    convention: Convention = "paper",
    knn: KnnFn | None = None,
) -> float:
    """Neighbour preservation: mean over samples of ``|kNN_high(i) ∩ kNN_low(i)| / k``.

    Shapes and ``*_ref`` as in :func:`nnpv_counts`. ``convention="reference"`` returns the mean
    count with k neighbours including the sample itself (in [1, k]). higher_is_better: True.

    >>> high = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    >>> low = np.array([[15.0, 0], [1, 0], [3, 0], [7, 0], [0, 0]])
    >>> nnpv(high, low, k=1)
    0.4
    >>> nnpv(high, low, k=2, convention="reference")
    1.4
    """
    _check_convention(convention)
    reference = convention == "reference"
    counts = nnpv_counts(high, low, k, high_ref, low_ref, include_self=reference, knn=knn)
    return float(counts.mean()) if reference else float(counts.mean() / k)


def boundary_counts(
    high: np.ndarray,
    low: np.ndarray,
    boundary_high: np.ndarray,
    boundary_low: np.ndarray,
    k: int = 15,
    *,
    knn: KnnFn | None = None,
) -> np.ndarray:
    """Per sample, how many of its k nearest boundary points in high-D are among its k in 2-D.

    high: (n, D), low: (n, d), boundary_high: (b, D), boundary_low: (b, d). Returns int64 (n,).

    >>> high = np.array([[0.0], [10.0]])
    >>> low = np.array([[0.0, 0.0], [10.0, 0.0]])
    >>> bh = np.array([[1.0], [2.0], [9.0]])
    >>> bl = np.array([[1.0, 0.0], [9.0, 0.0], [2.0, 0.0]])
    >>> boundary_counts(high, low, bh, bl, k=2).tolist()
    [1, 2]
    """
    high = _as_matrix("high", high)
    low = _as_matrix("low", low)
    boundary_high = _as_matrix("boundary_high", boundary_high)
    boundary_low = _as_matrix("boundary_low", boundary_low)
    _check_rows("high", high, "low", low)
    _check_rows("boundary_high", boundary_high, "boundary_low", boundary_low)
    _check_cols("boundary_high", boundary_high, "high", high)
    _check_cols("boundary_low", boundary_low, "low", low)
    _check_k("k", k, len(boundary_high), "the number of boundary points")
    search = knn or _exact_knn
    high_nn = _checked_indices(search(boundary_high, high, k), len(high), k)
    low_nn = _checked_indices(search(boundary_low, low, k), len(low), k)
    return _overlap_counts(high_nn, low_nn)


def boundary_preservation(
    high: np.ndarray,
    low: np.ndarray,
    boundary_high: np.ndarray,
    boundary_low: np.ndarray,
    k: int = 15,
    *,
    convention: Convention = "paper",
    knn: KnnFn | None = None,
) -> float:
    """Boundary neighbour preservation: as nnpv, neighbours are the k nearest boundary points.

    Shapes as in :func:`boundary_counts`. Paper: mean fraction in [0, 1]; reference: mean count
    in [0, k]. higher_is_better: True.

    >>> high = np.array([[0.0], [10.0]])
    >>> low = np.array([[0.0, 0.0], [10.0, 0.0]])
    >>> bh = np.array([[1.0], [2.0], [9.0]])
    >>> bl = np.array([[1.0, 0.0], [9.0, 0.0], [2.0, 0.0]])
    >>> boundary_preservation(high, low, bh, bl, k=2)
    0.75
    """
    _check_convention(convention)
    counts = boundary_counts(high, low, boundary_high, boundary_low, k, knn=knn)
    return float(counts.mean()) if convention == "reference" else float(counts.mean() / k)


def ppr(pred_high: np.ndarray, pred_recon: np.ndarray) -> float:
    """Prediction preservation: fraction of samples whose class is kept through ψ(φ(x)).

    pred_high: (n,) int, ``argmax h_t(x)``; pred_recon: (n,) int, ``argmax h_t(ψ(φ(x)))``.
    higher_is_better: True.

    >>> ppr(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    0.75
    """
    pred_high = np.asarray(pred_high)
    pred_recon = np.asarray(pred_recon)
    for name, arr in (("pred_high", pred_high), ("pred_recon", pred_recon)):
        if arr.ndim != 1:
            raise InputError(
                f"{name} must be 1-D class labels, got shape {arr.shape}; pass logits.argmax(1)"
            )
    if pred_high.shape != pred_recon.shape or len(pred_high) == 0:
        raise InputError(
            f"pred_high {pred_high.shape} and pred_recon {pred_recon.shape} must be the same "
            "non-empty shape"
        )
    return float(np.mean(pred_high == pred_recon))


def recon_error(x: np.ndarray, x_recon: np.ndarray) -> float:
    """Reconstruction error: mean over samples of ``‖x - ψ(φ(x))‖`` (Euclidean, feature units).

    x, x_recon: (n, D). higher_is_better: False.

    >>> recon_error(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0], [1.0, 1.0]]))
    2.5
    """
    x = _as_matrix("x", x)
    x_recon = _as_matrix("x_recon", x_recon)
    if x.shape != x_recon.shape or len(x) == 0:
        raise InputError(
            f"x {x.shape} and x_recon {x_recon.shape} must be the same non-empty shape"
        )
    diff = x.astype(np.float64) - x_recon.astype(np.float64)
    return float(np.linalg.norm(diff, axis=1).mean())


# --------------------------------------------------------------------------- temppv (DVI)


def _rowwise_pearson(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair: (n, m), (n, m) -> (n,), NaN where a row is constant."""
    a = first - first.mean(axis=1, keepdims=True)
    b = second - second.mean(axis=1, keepdims=True)
    constant = (first == first[:, :1]).all(axis=1) | (second == second[:, :1]).all(axis=1)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (a * b).sum(axis=1) / denom
    corr = np.clip(corr, -1.0, 1.0)
    corr[constant | (denom == 0)] = np.nan
    return corr


def neighbor_kept_fraction(
    high_prev: np.ndarray,
    high_next: np.ndarray,
    k: int = 15,
    *,
    convention: Convention = "paper",
    knn: KnnFn | None = None,
) -> np.ndarray:
    """Per sample, the fraction of its k nearest high-D neighbours kept from one epoch to the next.

    high_prev, high_next: (n, D), rows are the same samples. Paper: k others, self excluded;
    reference: k including the sample itself (``(1 + shared(k - 1)) / k``). Returns (n,) in [0, 1].

    >>> prev = np.array([[0.0], [1.0], [5.0], [6.0]])
    >>> nxt = np.array([[0.0], [5.5], [1.0], [6.0]])
    >>> neighbor_kept_fraction(prev, nxt, k=1).tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    _check_convention(convention)
    high_prev = _as_matrix("high_prev", high_prev)
    high_next = _as_matrix("high_next", high_next)
    _check_rows("high_prev", high_prev, "high_next", high_next)
    _check_cols("high_prev", high_prev, "high_next", high_next)
    reference = convention == "reference"
    _check_k("k", k, len(high_prev) - int(not reference), "the number of points")
    others = k - 1 if reference else k
    shared = _overlap_counts(
        _knn_among_others(high_prev, others, knn), _knn_among_others(high_next, others, knn)
    )
    return (shared + int(reference)) / k


def temppv_per_sample(
    high_seq: np.ndarray | Sequence[np.ndarray],
    low_seq: np.ndarray | Sequence[np.ndarray],
    k: int = 15,
    *,
    convention: Convention = "paper",
    knn: KnnFn | None = None,
) -> np.ndarray:
    """Per sample, Pearson correlation between neighbours kept and 2-D displacement over time.

    high_seq: (T, n, D), low_seq: (T, n, d), or sequences of T per-epoch arrays (read one epoch
    at a time). For each consecutive pair (t, t+1): the kept fraction from
    :func:`neighbor_kept_fraction` and ``‖y_i^{t+1} - y_i^t‖``; the correlation is over the
    T - 1 pairs. Returns (n,); NaN where either series is constant (correlation undefined).

    >>> high = np.array([[[0.0], [1.0], [5.0], [6.0]], [[0.0], [1.0], [5.0], [6.0]],
    ...                  [[0.0], [5.5], [1.0], [6.0]]])
    >>> low = np.array([[[0.0, 0.0]] * 4, [[0.0, 0.0]] * 4, [[1.0, 0.0]] * 4])
    >>> temppv_per_sample(high, low, k=1).tolist()
    [-1.0, -1.0, -1.0, -1.0]
    """
    _check_convention(convention)
    n_epochs = len(high_seq)
    if len(low_seq) != n_epochs:
        raise InputError(f"high_seq has {n_epochs} epochs but low_seq has {len(low_seq)}")
    if n_epochs < 3:
        raise InputError(f"temppv needs at least 3 epochs (2 consecutive pairs), got {n_epochs}")
    reference = convention == "reference"
    kept: list[np.ndarray] = []
    moved: list[np.ndarray] = []
    prev_nn = prev_low = None
    for t in range(n_epochs):
        high = _as_matrix(f"high_seq[{t}]", high_seq[t])
        low = _as_matrix(f"low_seq[{t}]", low_seq[t])
        _check_rows(f"high_seq[{t}]", high, f"low_seq[{t}]", low)
        if prev_low is not None:
            _check_rows(f"low_seq[{t}]", low, f"low_seq[{t - 1}]", prev_low)
            _check_cols(f"low_seq[{t}]", low, f"low_seq[{t - 1}]", prev_low)
        _check_k("k", k, len(high) - int(not reference), "the number of points")
        nn = _knn_among_others(high, k - 1 if reference else k, knn)
        if prev_nn is not None and prev_low is not None:
            kept.append((_overlap_counts(prev_nn, nn) + int(reference)) / k)
            moved.append(np.linalg.norm(low.astype(np.float64) - prev_low, axis=1))
        prev_nn, prev_low = nn, low.astype(np.float64)
    return _rowwise_pearson(np.stack(kept, axis=1), np.stack(moved, axis=1))


def temppv(
    high_seq: np.ndarray | Sequence[np.ndarray],
    low_seq: np.ndarray | Sequence[np.ndarray],
    k: int = 15,
    *,
    convention: Convention = "paper",
    knn: KnnFn | None = None,
) -> float:
    """DVI's temporal preservation: mean over samples of :func:`temppv_per_sample`.

    Shapes as there. Paper: samples with an undefined (NaN) correlation are left out of the
    mean (NaN if all are); reference: they count as 0, as the DVI code does.
    higher_is_better: False (more negative is better: samples that lose neighbours move more).

    >>> high = np.array([[[0.0], [1.0], [5.0], [6.0]], [[0.0], [1.0], [5.0], [6.0]],
    ...                  [[0.0], [5.5], [1.0], [6.0]]])
    >>> low = np.array([[[0.0, 0.0]] * 4, [[0.0, 0.0]] * 4, [[1.0, 0.0]] * 4])
    >>> temppv(high, low, k=1)
    -1.0
    """
    per_sample = temppv_per_sample(high_seq, low_seq, k, convention=convention, knn=knn)
    if convention == "reference":
        return float(np.nan_to_num(per_sample, nan=0.0).mean())
    return _mean_ignoring_nan(per_sample)


# --------------------------------------------------------------------------- temp_l / temp_g


def _check_sequences(high_seq: np.ndarray, low_seq: np.ndarray) -> tuple[int, int]:
    """Validate the shapes of (T, N, D) / (T, N, d) sequences; return (T, N)."""
    high_shape = tuple(high_seq.shape)
    low_shape = tuple(low_seq.shape)
    if len(high_shape) != 3 or len(low_shape) != 3:
        raise InputError(
            f"high_seq {high_shape} and low_seq {low_shape} must both be (epochs, samples, dim)"
        )
    if high_shape[:2] != low_shape[:2]:
        raise InputError(
            f"high_seq {high_shape} and low_seq {low_shape} must have the same epochs and samples"
        )
    return high_shape[0], high_shape[1]


def _block_size(block_size: int | None, n_epochs: int, dim: int) -> int:
    """Samples per block: the given size, or one whose (T, B, D) and (B, T, T) arrays stay small."""
    if block_size is None:
        return max(1, _BLOCK_ELEMENTS // max(1, n_epochs * max(n_epochs, dim)))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise InputError(f"block_size={block_size!r} must be an integer >= 1")
    if block_size < 1:
        raise InputError(f"block_size={block_size} must be >= 1")
    return int(block_size)


def _trajectory_distances(block: np.ndarray) -> np.ndarray:
    """Distances between the epochs of each sample: (T, B, D) -> float64 (B, T, T).

    Summed squared differences (no Gram matrix), so duplicated positions are exactly 0 apart and
    ties are real ties, matching ``scipy.spatial.distance.cdist``.
    """
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(block.astype(np.float64), 1, 0)))
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").numpy()


def _read_block(name: str, seq: np.ndarray, start: int, stop: int) -> np.ndarray:
    return _as_matrix(f"{name}[:, {start}:{stop}]", np.asarray(seq[:, start:stop]), ndim=3)


def temporal_local_scores(
    high_seq: np.ndarray,
    low_seq: np.ndarray,
    k: int = 5,
    *,
    convention: Convention = "paper",
    block_size: int | None = None,
) -> np.ndarray:
    """temp_l per (epoch, sample): overlap of the k nearest other epochs in high-D and in 2-D.

    high_seq: (T, N, D), low_seq: (T, N, d) (arrays, memmaps or h5py datasets; read in blocks of
    ``block_size`` samples). For sample i at epoch t, the k epochs t' != t nearest to x_i^t and
    to y_i^t (ties broken by epoch order) are compared. Returns float64 (T, N): the shared
    fraction (paper) or count (reference, ``k`` times the fraction).

    >>> rng = np.random.default_rng(0)
    >>> seq = rng.normal(size=(6, 3, 2))
    >>> scores = temporal_local_scores(seq, 2.0 * seq + 1.0, k=2)
    >>> scores.shape, float(scores.min())
    ((6, 3), 1.0)
    """
    _check_convention(convention)
    n_epochs, n_samples = _check_sequences(high_seq, low_seq)
    _check_k("k", k, n_epochs - 1, "the number of other epochs")
    step = _block_size(block_size, n_epochs, max(high_seq.shape[2], low_seq.shape[2]))
    scale = 1.0 if convention == "reference" else 1.0 / k
    out = np.empty((n_epochs, n_samples), dtype=np.float64)
    diag = np.arange(n_epochs)
    for start in range(0, n_samples, step):
        stop = min(start + step, n_samples)
        nearest = []
        for name, seq in (("high_seq", high_seq), ("low_seq", low_seq)):
            dist = _trajectory_distances(_read_block(name, seq, start, stop))
            dist[:, diag, diag] = np.inf
            nearest.append(np.argsort(dist, axis=2, kind="stable")[:, :, :k])
        shared = np.count_nonzero(nearest[0][..., :, None] == nearest[1][..., None, :], axis=(2, 3))
        out[:, start:stop] = shared.T * scale
    return out


def temporal_local(
    high_seq: np.ndarray,
    low_seq: np.ndarray,
    k: int = 5,
    *,
    convention: Convention = "paper",
    block_size: int | None = None,
) -> float:
    """temp_l: mean over samples and epochs of :func:`temporal_local_scores`.

    Shapes as there. higher_is_better: True.

    >>> rng = np.random.default_rng(0)
    >>> seq = rng.normal(size=(6, 3, 2))
    >>> temporal_local(seq, seq[:, ::-1], k=2) < 1.0
    True
    """
    scores = temporal_local_scores(
        high_seq, low_seq, k, convention=convention, block_size=block_size
    )
    return float(scores.mean())


def _kendall_tau_b(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise Kendall τ-b (scipy's default): (M, n), (M, n) -> (M,), NaN where a row is constant.

    With ``>`` comparisons over ordered pairs (j, l): concordant = #(x_j>x_l and y_j>y_l),
    discordant = #(x_j>x_l and y_j<y_l), and #(x_j>x_l) = pairs untied in x, so
    τ_b = (C - D) / sqrt(untied_x · untied_y). O(M n²) work, in chunks of bounded memory.
    """
    n_rows, width = first.shape
    out = np.empty(n_rows, dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, width * width))
    for start in range(0, n_rows, rows):
        x = first[start : start + rows]
        y = second[start : start + rows]
        greater_x = x[:, :, None] > x[:, None, :]
        greater_y = y[:, :, None] > y[:, None, :]
        concordant = np.count_nonzero(greater_x & greater_y, axis=(1, 2))
        discordant = np.count_nonzero(greater_x & greater_y.transpose(0, 2, 1), axis=(1, 2))
        untied_x = np.count_nonzero(greater_x, axis=(1, 2)).astype(np.float64)
        untied_y = np.count_nonzero(greater_y, axis=(1, 2)).astype(np.float64)
        untied = untied_x * untied_y
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = (concordant - discordant) / np.sqrt(untied)
        tau[untied == 0] = np.nan
        out[start : start + len(x)] = np.clip(tau, -1.0, 1.0)
    return out


def _spearman_rho(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise Spearman ρ (average ranks for ties): (M, n), (M, n) -> (M,), NaN if constant."""
    return _rowwise_pearson(rankdata(first, axis=1), rankdata(second, axis=1))


def temporal_global_scores(
    high_seq: np.ndarray,
    low_seq: np.ndarray,
    method: RankMethod = "kendall",
    *,
    convention: Convention = "paper",
    block_size: int | None = None,
) -> np.ndarray:
    """temp_g per (epoch, sample): rank correlation of distances to the sample's other epochs.

    high_seq: (T, N, D), low_seq: (T, N, d) (read in blocks of ``block_size`` samples). For
    sample i at epoch t: Kendall τ-b or Spearman ρ between ``(‖x_i^t - x_i^{t'}‖)_{t'≠t}`` and
    ``(‖y_i^t - y_i^{t'}‖)_{t'≠t}`` (equal to scipy's kendalltau / spearmanr on those vectors).
    ``convention="reference"`` keeps t' = t (distance 0 in both), as the reference code did.
    Returns float64 (T, N); NaN where a distance vector is constant (undefined correlation).

    >>> rng = np.random.default_rng(0)
    >>> seq = rng.normal(size=(5, 3, 2))
    >>> scores = temporal_global_scores(seq, -3.0 * seq, "spearman")
    >>> scores.shape, float(scores.min())
    ((5, 3), 1.0)
    """
    _check_convention(convention)
    if method not in _RANK_METHODS:
        raise InputError(f"method={method!r} must be one of {_RANK_METHODS}")
    n_epochs, n_samples = _check_sequences(high_seq, low_seq)
    width = n_epochs if convention == "reference" else n_epochs - 1
    if width < 2:
        raise InputError(f"temp_g needs at least 3 epochs, got {n_epochs}")
    step = _block_size(block_size, n_epochs, max(high_seq.shape[2], low_seq.shape[2]))
    keep = np.ones((n_epochs, n_epochs), dtype=bool)
    if convention == "paper":
        np.fill_diagonal(keep, False)
    correlate = _kendall_tau_b if method == "kendall" else _spearman_rho
    out = np.empty((n_epochs, n_samples), dtype=np.float64)
    for start in range(0, n_samples, step):
        stop = min(start + step, n_samples)
        rows = []
        for name, seq in (("high_seq", high_seq), ("low_seq", low_seq)):
            dist = _trajectory_distances(_read_block(name, seq, start, stop))
            rows.append(dist[:, keep].reshape(-1, width))
        out[:, start:stop] = correlate(rows[0], rows[1]).reshape(stop - start, n_epochs).T
    return out


def temporal_global(
    high_seq: np.ndarray,
    low_seq: np.ndarray,
    method: RankMethod = "kendall",
    *,
    convention: Convention = "paper",
    block_size: int | None = None,
) -> float:
    """temp_g: mean over (epoch, sample) of :func:`temporal_global_scores`, NaN values left out.

    Shapes as there; NaN if every value is undefined. higher_is_better: True.

    >>> rng = np.random.default_rng(0)
    >>> seq = rng.normal(size=(5, 3, 2))
    >>> temporal_global(seq, seq + 4.0)
    1.0
    """
    scores = temporal_global_scores(
        high_seq, low_seq, method, convention=convention, block_size=block_size
    )
    return _mean_ignoring_nan(scores)
