"""M-PHATE (multislice PHATE) of hidden units over training, in numpy and scipy.

Every unit (one dimension of the feature layer) at every epoch is a point, described by its
activations over a fixed set of samples. The points are linked within an epoch by an
adaptive-bandwidth alpha-decay kNN kernel and across epochs (each unit to itself at every other
epoch) by a Gaussian of one global bandwidth: the multislice kernel. PHATE then embeds the graph:
the row-normalised diffusion operator, powered ``t`` times (``t`` at the knee of its von Neumann
entropy), turned into a potential (square root or log), and metric MDS (SMACOF) of the distances
between the potentials, on spectral landmarks when there are more points than landmarks.

Point ``epoch * U + unit`` of the ``E x U`` points is unit ``unit`` at the ``epoch``-th epoch.
The kernel is held as its parts: the within-epoch kernel as one sparse block-diagonal matrix,
the across-epoch kernel as one dense ``E x E`` matrix per unit (``[U, E, E]``), so a product with
it costs ``U E^2`` per column and nothing ``(E U)^2`` is ever formed.

Pure functions on arrays; the store is read in :mod:`timevis_cli.units.pipeline`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from timevis_cli.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "MPhateSettings",
    "MultisliceKernel",
    "Embedding",
    "zscore_units",
    "reduce_dimensions",
    "multislice_kernel",
    "von_neumann_entropy",
    "knee_point",
    "kmeans",
    "landmark_operator",
    "potential",
    "classic_mds",
    "smacof",
    "embed_units",
]

POTENTIALS = ("sqrt", "log")
_LOG_FLOOR = 1e-7  # added before the log potential, as PHATE does
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class MPhateSettings:
    """The embedding's knobs (M-PHATE's defaults where it has one).

    ``landmarks``: above this many points the diffusion runs between this many spectral
    landmarks (PHATE's landmark operator) and each point is placed by its transitions to them;
    M-PHATE's default is 4000, timevis's 1000 keeps 512 units x 200 epochs within a minute on
    two cores. ``t``: None picks it at the knee of the von Neumann entropy over 1..``t_max``.
    ``potential``: ``sqrt`` (PHATE's gamma = 0, M-PHATE's default) or ``log`` (gamma = 1).
    ``knn_max``: PHATE's cap on the neighbours whose within-epoch affinity is computed (each
    unit's ``knn_max`` nearest other units at most); PHATE leaves it off by default, timevis
    sets 20 so the kernel stays sparse where units are spread evenly (high-dimensional noise
    puts every unit within reach of every other's alpha-decay bandwidth).
    """

    intraslice_knn: int = 2
    knn_max: int = 20
    interslice_knn: int = 25
    decay: float = 5.0
    n_pca: int = 100
    threshold: float = 1e-4  # within-epoch affinities below this are dropped (graphtools')
    landmarks: int = 1000
    n_svd: int = 100
    t: int | None = None
    t_max: int = 100
    potential: str = "sqrt"
    mds_max_iter: int = 300
    mds_tolerance: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("intraslice_knn", self.intraslice_knn >= 1, "at least 1, e.g. 2"),
            ("knn_max", self.knn_max >= self.intraslice_knn, "at least intraslice_knn, e.g. 20"),
            ("interslice_knn", self.interslice_knn >= 1, "at least 1, e.g. 25"),
            ("decay", np.isfinite(self.decay) and self.decay > 0, "positive, e.g. 5"),
            ("n_pca", self.n_pca >= 1, "at least 1, e.g. 100"),
            ("threshold", 0 <= self.threshold < 1, "in [0, 1), e.g. 1e-4"),
            ("landmarks", self.landmarks >= 3, "at least 3, e.g. 1000"),
            ("n_svd", self.n_svd >= 2, "at least 2, e.g. 100"),
            ("t", self.t is None or self.t >= 1, "at least 1 (or auto)"),
            ("t_max", self.t_max >= 3, "at least 3, e.g. 100"),
            ("potential", self.potential in POTENTIALS, "sqrt or log"),
            ("mds_max_iter", self.mds_max_iter >= 0, "0 or more, e.g. 300"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r} cannot be used; it must be {fix}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the points


def zscore_units(activations: np.ndarray) -> np.ndarray:
    """``[E, S, U]`` activations (epochs, samples, units) -> ``[E, U, S]`` float32: each unit
    at each epoch z-scored over the samples (mean 0, standard deviation 1); a unit constant over
    the samples at an epoch (a dead ReLU) becomes all zeros."""
    x = np.asarray(activations, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"activations must be [epochs, samples, units]; got shape {x.shape}")
    out = np.ascontiguousarray(x.transpose(0, 2, 1))
    for block in out:  # one epoch at a time: no float64 copy of the whole array
        mean = block.mean(axis=1, keepdims=True, dtype=np.float64)
        std = block.std(axis=1, keepdims=True, dtype=np.float64)
        block -= mean.astype(np.float32)
        scale = np.where(std > 1e-12 * (1.0 + np.abs(mean)), std, np.inf)
        block *= (1.0 / scale).astype(np.float32)
    return out


def reduce_dimensions(points: np.ndarray, n_pca: int) -> np.ndarray:
    """``[N, S]`` -> ``[N, min(n_pca, S, N)]`` float64: the points' coordinates on their leading
    principal components (exact: the ``S x S`` covariance accumulated in float64 blocks and
    diagonalised; no randomness). Without reduction (``n_pca >= S``) the centred points."""
    x = np.asarray(points)
    n, s = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    k = min(n_pca, s, n)
    step = max(1, (1 << 22) // max(s, 1))  # ~32 MB float64 blocks
    if k >= s:
        return x.astype(np.float64) - mean
    cov = np.zeros((s, s))
    centre = mean.astype(np.float32)
    for start in range(0, n, step):  # float32 products (the values are z-scores), float64 sum
        block = x[start : start + step].astype(np.float32) - centre
        cov += block.T @ block
    values, vectors = np.linalg.eigh(cov)
    vectors = vectors[:, ::-1][:, :k]
    # a deterministic sign per component: its largest loading positive
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)])
    vectors *= np.where(signs == 0, 1.0, signs)
    out = np.empty((n, k))
    basis = vectors.astype(np.float32)
    for start in range(0, n, step):
        out[start : start + step] = (x[start : start + step].astype(np.float32) - centre) @ basis
    return out


# --------------------------------------------------------------------------- the kernel


@dataclass
class MultisliceKernel:
    """The multislice kernel of ``E x U`` points (point ``e * U + u``), symmetric.

    ``intra``: the within-epoch affinities, a sparse ``[N, N]`` matrix with one ``U x U`` block
    per epoch (diagonal 1: each point is its own nearest neighbour); ``inter``: the across-epoch
    affinities of each unit to itself, ``[U, E, E]`` (diagonal 0). ``bandwidth``: the across-epoch
    Gaussian's; ``sigma``: ``[E, U]``, each point's within-epoch kNN bandwidth.
    """

    intra: sparse.csr_matrix
    inter: np.ndarray
    epochs: int
    units: int
    bandwidth: float
    sigma: np.ndarray = field(repr=False)

    @property
    def size(self) -> int:
        return self.epochs * self.units

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """``K @ x`` for ``x`` of shape ``[N]`` or ``[N, k]`` (float64)."""
        vector = x.ndim == 1
        x2 = x[:, None] if vector else x
        out = np.asarray(self.intra @ x2, dtype=np.float64)
        if self.epochs > 1:
            k = x2.shape[1]
            per_unit = x2.reshape(self.epochs, self.units, k).transpose(1, 0, 2)
            per_unit = per_unit.astype(self.inter.dtype)  # [U, E, k], contiguous
            product = np.empty_like(per_unit)
            for unit in range(self.units):  # one BLAS product per unit (a stacked matmul is slow)
                np.matmul(self.inter[unit], per_unit[unit], out=product[unit])
            out += product.transpose(1, 0, 2).reshape(self.size, k)
        return out[:, 0] if vector else out

    def degrees(self) -> np.ndarray:
        """Row sums ``[N]`` (float64), all positive."""
        rows = np.asarray(self.intra.sum(axis=1)).ravel()
        if self.epochs > 1:
            rows = rows + self.inter.sum(axis=2, dtype=np.float64).T.reshape(self.size)
        return rows

    def rows_of_unit(self, unit: int) -> np.ndarray:
        return np.arange(self.epochs) * self.units + unit

    def dense(self) -> np.ndarray:
        """The whole ``[N, N]`` kernel (small cases and tests only)."""
        out = self.intra.toarray().astype(np.float64)
        if self.epochs > 1:
            for unit in range(self.units):
                rows = self.rows_of_unit(unit)
                out[np.ix_(rows, rows)] += self.inter[unit]
        return out


def _pairwise(x: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``x`` ``[..., n, d]`` -> ``[..., n, n]``, with
    an exact zero diagonal."""
    squared = np.einsum("...ij,...ij->...i", x, x)
    gram = np.matmul(x, np.swapaxes(x, -1, -2))
    d2 = squared[..., :, None] + squared[..., None, :] - 2.0 * gram
    np.maximum(d2, 0.0, out=d2)
    n = x.shape[-2]
    d2[..., np.arange(n), np.arange(n)] = 0.0
    return np.sqrt(d2, out=d2)


def multislice_kernel(data: np.ndarray, settings: MPhateSettings | None = None) -> MultisliceKernel:
    """The multislice kernel of ``data`` ``[E, U, d]`` (unit ``u`` at epoch ``e``: ``data[e, u]``).

    Within an epoch: ``K(x, y) = exp(-(|x - y| / sigma_k(x))^decay)`` with ``sigma_k(x)`` the
    distance from ``x`` to its ``intraslice_knn``-th nearest other unit of that epoch, for ``y``
    among ``x`` itself and its ``knn_max`` nearest other units (0 beyond), affinities below
    ``threshold`` dropped, symmetrised as ``(K + K^T) / 2``. Across epochs:
    unit ``u`` at epochs ``e`` and ``f`` (``e != f``) get ``exp(-(|x_ue - x_uf| / b)^2)`` with one
    global bandwidth ``b``: per unit, the median over its epochs of the distance to the
    ``interslice_knn``-th nearest of its epochs (counting itself, as M-PHATE does; clipped to
    ``E - 1``), averaged over the units. ``intraslice_knn`` is clipped to ``U - 1``.
    """
    settings = settings or MPhateSettings()
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 3:
        raise InputError(f"data must be [epochs, units, dims]; got shape {x.shape}")
    n_epochs, n_units, _ = x.shape
    if n_units < 2:
        raise InputError(f"the feature layer has {n_units} unit(s); M-PHATE needs at least 2")
    if not np.isfinite(x).all():
        raise InputError("the unit descriptions hold NaN or infinite values")
    knn = min(settings.intraslice_knn, n_units - 1)
    reach = min(settings.knn_max, n_units - 1) + 1  # the unit itself and its knn_max nearest
    rows, cols, values = [], [], []
    sigma = np.empty((n_epochs, n_units))
    for epoch in range(n_epochs):
        distance = _pairwise(x[epoch])
        bandwidth = np.partition(distance, knn, axis=1)[:, knn]  # index 0 is the unit itself
        bandwidth = np.maximum(bandwidth, _EPS)
        sigma[epoch] = bandwidth
        if reach < n_units:
            near = np.argpartition(distance, reach - 1, axis=1)[:, :reach]
        else:
            near = np.broadcast_to(np.arange(n_units), (n_units, n_units))
        ratio = np.take_along_axis(distance, near, axis=1) / bandwidth[:, None]
        affinity = np.exp(-np.power(ratio, settings.decay))
        keep = affinity >= settings.threshold
        r = np.broadcast_to(np.arange(n_units)[:, None], near.shape)[keep]
        one = sparse.coo_matrix((affinity[keep], (r, near[keep])), shape=(n_units, n_units))
        one = ((one + one.T) / 2.0).tocoo()
        offset = epoch * n_units
        rows.append(one.row + offset)
        cols.append(one.col + offset)
        values.append(one.data)
    n = n_epochs * n_units
    intra = sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    inter = np.zeros((n_units, n_epochs, n_epochs), np.float32)
    bandwidth = 0.0
    if n_epochs > 1:
        k = min(settings.interslice_knn, n_epochs - 1)
        per_unit = np.ascontiguousarray(x.transpose(1, 0, 2))  # [U, E, d]
        step = max(1, (1 << 22) // (n_epochs * n_epochs))  # ~32 MB float64 at a time
        medians = np.empty(n_units)
        for start in range(0, n_units, step):
            distance = _pairwise(per_unit[start : start + step])
            medians[start : start + step] = np.median(
                np.partition(distance, k, axis=2)[:, :, k], axis=1
            )
            inter[start : start + step] = distance
        bandwidth = max(float(medians.mean()), _EPS)
        for start in range(0, n_units, step):
            block = inter[start : start + step].astype(np.float64) / bandwidth
            block = np.exp(-(block**2))
            block[:, np.arange(n_epochs), np.arange(n_epochs)] = 0.0
            inter[start : start + step] = block
    return MultisliceKernel(intra, inter, n_epochs, n_units, bandwidth, sigma)


# --------------------------------------------------------------------------- diffusion


def von_neumann_entropy(operator: np.ndarray, t_max: int = 100) -> np.ndarray:
    """``[t_max]``: the von Neumann entropy of the diffusion operator powered ``t = 1..t_max``
    times: the Shannon entropy of its singular values raised to the ``t``-th power and
    normalised to sum to 1 (PHATE's measure)."""
    values = np.linalg.svd(np.asarray(operator, dtype=np.float64), compute_uv=False)
    values = np.clip(values, 0.0, None)
    out = np.empty(t_max)
    powered = values.copy()
    for index in range(t_max):
        total = powered.sum()
        p = powered / total if total > 0 else np.full_like(powered, 1.0 / len(powered))
        p = p + _EPS
        out[index] = -np.sum(p * np.log(p))
        powered = powered * values
    return out


def knee_point(y: np.ndarray, x: np.ndarray | None = None) -> float:
    """The ``x`` of the knee of the curve ``y(x)`` (L-method): the breakpoint where a line
    fitted by least squares to the points up to it and another to the points from it leave the
    smallest total absolute error. The breakpoint is never an end point."""
    y = np.asarray(y, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    if y.ndim != 1 or x.shape != y.shape:
        raise InputError(f"knee_point needs two 1-d arrays of one length; got {x.shape}, {y.shape}")
    if len(y) < 3:
        raise InputError(f"knee_point needs at least 3 points; got {len(y)}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]

    def fits(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # least-squares line through the first m points, for every m >= 2 (index m - 2)
        m = np.arange(2, len(xs) + 1, dtype=np.float64)
        sx, sy = np.cumsum(xs)[1:], np.cumsum(ys)[1:]
        sxx, sxy = np.cumsum(xs * xs)[1:], np.cumsum(xs * ys)[1:]
        det = m * sxx - sx * sx
        slope = (m * sxy - sx * sy) / det
        return slope, (sy - slope * sx) / m

    left_slope, left_cut = fits(x, y)
    right_slope, right_cut = fits(x[::-1], y[::-1])
    errors = np.full(len(y), np.inf)
    for b in range(1, len(y) - 1):
        left = np.abs(left_slope[b - 1] * x[: b + 1] + left_cut[b - 1] - y[: b + 1]).sum()
        j = len(y) - b - 2  # the right fit over x[b:], len(y) - b points
        right = np.abs(right_slope[j] * x[b:] + right_cut[j] - y[b:]).sum()
        errors[b] = left + right
    return float(x[int(np.argmin(errors))])


def choose_t(operator: np.ndarray, t_max: int = 100) -> tuple[int, np.ndarray]:
    """(``t`` at the knee of the von Neumann entropy over ``t = 1..t_max``, the entropy)."""
    entropy = von_neumann_entropy(operator, t_max)
    t = int(knee_point(entropy, np.arange(1, t_max + 1)))
    return t, entropy


def potential(operator: np.ndarray, t: int, kind: str = "sqrt") -> np.ndarray:
    """The diffusion potential of ``operator^t``: ``2 sqrt(P^t)`` (``sqrt``, PHATE's
    gamma = 0) or ``-log(P^t + 1e-7)`` (``log``, gamma = 1)."""
    powered = np.linalg.matrix_power(np.asarray(operator, dtype=np.float64), int(t))
    if kind == "sqrt":
        return 2.0 * np.sqrt(np.clip(powered, 0.0, None))
    if kind == "log":
        return -np.log(np.clip(powered, 0.0, None) + _LOG_FLOOR)
    raise InputError(f"potential {kind!r} cannot be used; choose sqrt or log")


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``y``'s (``y (y^T y)^-1/2``, twice for accuracy: two
    ``N x k^2`` products instead of a Householder QR's several)."""
    for _ in range(2):
        values, vectors = np.linalg.eigh(y.T @ y)
        floor = max(float(values.max()), 1e-300) * 1e-12
        y = y @ (vectors / np.sqrt(np.maximum(values, floor))) @ vectors.T
    return y


def _spectral_features(
    kernel: MultisliceKernel, degrees: np.ndarray, n_svd: int, seed: int, n_iter: int = 4
) -> np.ndarray:
    """``P V`` ``[N, n_svd]``: the diffusion operator applied to the leading eigenvectors ``V``
    of the symmetric ``D^-1/2 K D^-1/2`` (randomized subspace iteration, seeded), as
    graphtools clusters points into landmarks."""
    n = kernel.size
    k = min(n_svd, n - 1)
    inv_sqrt = 1.0 / np.sqrt(degrees)

    def affinity(block: np.ndarray) -> np.ndarray:
        return inv_sqrt[:, None] * kernel.matmul(inv_sqrt[:, None] * block)

    rng = np.random.default_rng(seed)
    q = _orthonormal(affinity(rng.standard_normal((n, min(k + 10, n)))))
    for _ in range(n_iter):
        q = _orthonormal(affinity(q))
    small = q.T @ affinity(q)
    values, vectors = np.linalg.eigh((small + small.T) / 2.0)
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    v = q @ vectors[:, order]
    return kernel.matmul(v) / degrees[:, None]


@dataclass
class _Landmarks:
    operator: np.ndarray  # [L, L], rows sum to 1
    labels: np.ndarray  # [N]: each point's landmark
    degrees: np.ndarray  # [N]


def _nearest_centre(x: np.ndarray, centres: np.ndarray, block: int = 8192) -> np.ndarray:
    """Index of each row's nearest centre (float32 products, a block of rows at a time)."""
    squared = (centres.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), block):
        scores = squared - 2.0 * (x[start : start + block] @ centres.T)
        out[start : start + block] = np.argmin(scores, axis=1)
    return out


def kmeans(
    features: np.ndarray, count: int, seed: int, max_iter: int = 6, tolerance: float = 5e-3
) -> np.ndarray:
    """Seeded k-means labels ``[N]`` (0..L-1, empty clusters dropped): k-means++ seeding on a
    seeded pool of ``3 count`` points (as scikit-learn's mini-batch k-means seeds), then Lloyd
    iterations over every point until fewer than ``tolerance`` of them change cluster."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = len(x)
    count = min(count, n)
    rng = np.random.default_rng([seed, 11])
    pool = x[np.sort(rng.choice(n, size=min(n, 3 * count), replace=False))].astype(np.float64)
    chosen = [int(rng.integers(len(pool)))]
    closest = ((pool - pool[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(count - 1):
        total = closest.sum()
        if total > 0:
            pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            pick = min(pick, len(pool) - 1)
        else:  # every pool point is a centre already: duplicates, dropped below
            pick = int(rng.integers(len(pool)))
        chosen.append(pick)
        np.minimum(closest, ((pool - pool[pick]) ** 2).sum(axis=1), out=closest)
    centres = pool[chosen].astype(np.float32)
    labels = _nearest_centre(x, centres)
    for _ in range(max_iter):
        members = sparse.csr_matrix((np.ones(n, np.float32), (labels, np.arange(n))),
                                    shape=(count, n))  # fmt: skip
        sizes = np.asarray(members.sum(axis=1)).ravel()
        filled = sizes > 0
        centres[filled] = (members @ x)[filled] / sizes[filled, None]
        updated = _nearest_centre(x, centres)
        changed = int(np.count_nonzero(updated != labels))
        labels = updated
        if changed <= tolerance * n:
            break
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def landmark_operator(
    kernel: MultisliceKernel, labels: np.ndarray, degrees: np.ndarray | None = None
) -> np.ndarray:
    """PHATE's landmark operator ``[L, L]`` of the points' landmark ``labels`` ``[N]``:
    ``M = K C`` (``C`` the points' one-hot landmark), ``pmn`` = ``M^T`` with rows normalised,
    ``pnm`` = ``M`` with rows normalised (``D^-1 M``), operator = ``pmn @ pnm``. Computed unit
    by unit (``M``'s rows of one unit over the epochs), never forming ``M``."""
    labels = np.asarray(labels, dtype=np.int64)
    count = int(labels.max()) + 1
    degrees = kernel.degrees() if degrees is None else degrees
    n = kernel.size
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, count))
    intra_m = (kernel.intra @ onehot).tocsr()
    totals = np.bincount(labels, weights=degrees, minlength=count)  # column sums of M
    out = np.zeros((count, count))
    for unit, cols, block in _unit_blocks(kernel, labels, intra_m):
        rows = kernel.rows_of_unit(unit)
        weighted = block / degrees[rows][:, None]
        out[np.ix_(cols, cols)] += block.T @ weighted
    out /= totals[:, None]
    return out


def _unit_blocks(kernel: MultisliceKernel, labels: np.ndarray, intra_m: sparse.csr_matrix):
    """Per unit: (unit, the landmarks its rows of ``M = K C`` touch, those rows of ``M``
    restricted to them, dense ``[E, len(cols)]``)."""
    for unit in range(kernel.units):
        rows = kernel.rows_of_unit(unit)
        part = intra_m[rows]
        own = labels[rows]
        cols = np.union1d(part.indices, own)
        block = np.zeros((len(rows), len(cols)))
        local = part.tocoo()
        block[local.row, np.searchsorted(cols, local.col)] += local.data
        if kernel.epochs > 1:
            position = np.searchsorted(cols, own)
            hot = np.zeros((len(rows), len(cols)))
            hot[np.arange(len(rows)), position] = 1.0
            block += kernel.inter[unit].astype(np.float64) @ hot
        yield unit, cols, block


def _interpolate(
    kernel: MultisliceKernel, labels: np.ndarray, degrees: np.ndarray, landmark_y: np.ndarray
) -> np.ndarray:
    """Each point's position: its transition probabilities to the landmarks (``D^-1 K C``)
    times the landmarks' positions."""
    n = kernel.size
    count = landmark_y.shape[0]
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, count))
    intra_m = (kernel.intra @ onehot).tocsr()
    out = np.empty((n, landmark_y.shape[1]))
    for unit, cols, block in _unit_blocks(kernel, labels, intra_m):
        rows = kernel.rows_of_unit(unit)
        out[rows] = (block @ landmark_y[cols]) / degrees[rows][:, None]
    return out


# --------------------------------------------------------------------------- MDS


def classic_mds(distances: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS: the top ``dims`` eigenvectors of ``-J D^2 J / 2`` scaled by
    the square roots of their eigenvalues; signs fixed (largest entry positive)."""
    from scipy.linalg import eigh

    d2 = np.asarray(distances, dtype=np.float64) ** 2
    b = -0.5 * (d2 - d2.mean(axis=0) - d2.mean(axis=1)[:, None] + d2.mean())
    n = len(b)
    values, vectors = eigh(b, subset_by_index=[max(0, n - dims), n - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    y = vectors * np.sqrt(np.clip(values, 0.0, None))
    signs = np.sign(y[np.argmax(np.abs(y), axis=0), np.arange(y.shape[1])])
    y = y * np.where(signs == 0, 1.0, signs)
    if y.shape[1] < dims:  # fewer points than dimensions
        y = np.pad(y, ((0, 0), (0, dims - y.shape[1])))
    return y


def _coordinate_distances(y: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Distances between the rows of the low-dimensional ``y`` [n, d] into ``out`` [n, n],
    one coordinate at a time in place (no Gram matrix: a handful of passes over ``out``)."""
    out.fill(0.0)
    for column in y.T:
        np.subtract(column[:, None], column[None, :], out=scratch)
        np.multiply(scratch, scratch, out=scratch)
        out += scratch
    return np.sqrt(out, out=out)


def smacof(
    distances: np.ndarray, init: np.ndarray, max_iter: int = 300, tolerance: float = 1e-3
) -> tuple[np.ndarray, float, int]:
    """Metric MDS by SMACOF (Guttman transforms) from ``init``: (positions, final raw stress
    ``sum_{i<j} (|y_i - y_j| - D_ij)^2``, iterations run). Stops when an iteration lowers the
    stress by less than ``tolerance`` of it. The ``n x n`` arrays are float32 (the positions'
    sums float64)."""
    target = np.asarray(distances, dtype=np.float32)
    y = np.asarray(init, dtype=np.float64).copy()
    y -= y.mean(axis=0)
    n = len(target)
    previous = np.inf
    stress = np.inf
    iterations = 0
    current = np.empty_like(target)
    ratio = np.empty_like(target)
    while iterations < max_iter:
        iterations += 1
        _coordinate_distances(y.astype(np.float32), current, ratio)
        np.subtract(current, target, out=ratio)
        stress = float(np.einsum("ij,ij->", ratio, ratio, dtype=np.float64) / 2.0)
        if previous - stress < tolerance * stress:
            break
        previous = stress
        # the Guttman transform y <- B(y) y / n without forming B: B = diag(rowsum R) - R,
        # R_ij = D_ij / |y_i - y_j| (0 where the points coincide)
        ratio.fill(0.0)
        np.divide(target, current, out=ratio, where=current > 0)
        pulled = (ratio @ y.astype(np.float32)).astype(np.float64)
        y = (ratio.sum(axis=1, dtype=np.float64)[:, None] * y - pulled) / n
    return y, stress, iterations


def _rotate_onto(y: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``y`` rotated (or reflected) about its centre to best match ``reference`` (orthogonal
    Procrustes; no scaling, so distances are kept)."""
    a = y - y.mean(axis=0)
    b = reference - reference.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    return a @ (u @ vt)


# --------------------------------------------------------------------------- the whole method


@dataclass
class Embedding:
    """What :func:`embed_units` computed: ``positions`` ``[E, U, 2]`` and how it got there."""

    positions: np.ndarray
    t: int
    entropy: np.ndarray
    landmarks: int  # 0: the diffusion ran on every point
    bandwidth: float  # the across-epoch Gaussian's
    stress: float
    mds_iterations: int
    dims: int  # after PCA
    seconds: dict[str, float]


def embed_units(descriptions: np.ndarray, settings: MPhateSettings | None = None) -> Embedding:
    """M-PHATE of ``descriptions`` ``[E, U, S]`` (each unit at each epoch described by ``S``
    values, already z-scored): PCA to ``n_pca``, the multislice kernel, the diffusion operator
    (on landmarks above ``settings.landmarks`` points), ``t``, the potential, classic MDS then
    SMACOF to 2-D (rotated onto the classic MDS), points placed through their landmarks."""
    settings = settings or MPhateSettings()
    x = np.asarray(descriptions)
    if x.ndim != 3:
        raise InputError(f"descriptions must be [epochs, units, samples]; got shape {x.shape}")
    n_epochs, n_units, n_samples = x.shape
    if n_epochs < 1 or n_units < 2 or n_samples < 1:
        raise InputError(
            f"M-PHATE needs at least 1 epoch, 2 units and 1 sample; got {n_epochs} epoch(s), "
            f"{n_units} unit(s), {n_samples} sample(s)"
        )
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        log.debug("units: %s in %.2f s", name, now - clock)
        clock = now

    n = n_epochs * n_units
    reduced = reduce_dimensions(x.reshape(n, n_samples), settings.n_pca)
    lap("pca")
    kernel = multislice_kernel(reduced.reshape(n_epochs, n_units, -1), settings)
    lap("kernel")
    degrees = kernel.degrees()
    landmark_count = 0
    if n > settings.landmarks:
        features = _spectral_features(kernel, degrees, settings.n_svd, settings.seed)
        labels = kmeans(features, settings.landmarks, settings.seed)
        operator = landmark_operator(kernel, labels, degrees)
        landmark_count = operator.shape[0]
        lap("landmarks")
    else:
        labels = None
        operator = kernel.dense() / degrees[:, None]
        lap("operator")
    if settings.t is None:
        t, entropy = choose_t(operator, settings.t_max)
    else:
        t, entropy = settings.t, von_neumann_entropy(operator, settings.t_max)
    lap("t")
    pot = potential(operator, t, settings.potential)
    distances = _pairwise(pot)
    lap("potential")
    initial = classic_mds(distances, 2)
    y, stress, iterations = smacof(
        distances, initial, settings.mds_max_iter, settings.mds_tolerance
    )
    y = _rotate_onto(y, initial)
    lap("mds")
    if labels is not None:
        y = _interpolate(kernel, labels, degrees, y)
        lap("interpolate")
    log.info(
        "units: %d points (%d epochs x %d units), %s, t = %d, MDS stress %.4g after %d "
        "iterations",
        n, n_epochs, n_units,
        f"{landmark_count} landmarks" if landmark_count else "no landmarks",
        t, stress, iterations,
    )  # fmt: skip
    return Embedding(
        positions=y.reshape(n_epochs, n_units, 2).astype(np.float32),
        t=int(t),
        entropy=entropy,
        landmarks=landmark_count,
        bandwidth=kernel.bandwidth,
        stress=stress,
        mds_iterations=iterations,
        dims=reduced.shape[1],
        seconds=seconds,
    )
