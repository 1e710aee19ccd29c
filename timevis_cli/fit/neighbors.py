"""Exact k-nearest-neighbour search (Euclidean), behind small swappable backends.

This is the only module that imports FAISS or pynndescent; each is imported inside its backend,
so a missing optional dependency fails only when that backend is asked for.

Every backend answers the same question with ``backend.query(data, queries=None, k=...)``:

- ``queries is None``: the self-kNN of ``data``. A point never lists itself (removed by index, so
  exact duplicates are handled); with ``include_self=True`` the point's own index comes first at
  distance 0 and the ``k`` columns hold it plus its ``k - 1`` nearest others (UMAP's convention).
- ``queries`` given: the ``k`` nearest rows of ``data`` for each query row, nothing removed.

Results are ``(indices int64 [n, k], distances float32 [n, k])``, Euclidean (not squared),
ascending per row (ties broken by index). Backends only choose candidates; the distances of the
chosen pairs are then recomputed directly as ``||x - y||``, which avoids the cancellation of the
squared form ``|x|² + |y|² - 2x·y`` on near neighbours. Inputs are never modified.
"""

from __future__ import annotations

import difflib
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from timevis_cli.errors import ConfigError, InputError

__all__ = [
    "KNN_BACKENDS",
    "KNNBackend",
    "FaissGPU",
    "FaissCPU",
    "TorchExact",
    "PyNNDescent",
    "resolve_backend",
    "dense_backend",
]

logger = logging.getLogger(__name__)

KNN_BACKENDS: tuple[str, ...] = ("auto", "faiss-gpu", "faiss-cpu", "torch", "pynndescent")
"""Valid values of the ``--knn`` option / ``knn`` configuration key."""

FAISS_GPU_MAX_K = 2048
"""Largest k that FAISS's GPU selection kernels support."""

_REFINE_BLOCK_ELEMENTS = 2**22  # candidates x features per block of the exact re-ranking (16 MB)
"""Bound on the elements of the ``[rows, k, n_features]`` block used to recompute distances."""


class MissingKNNDependencyError(InputError, ImportError):
    """A kNN backend was asked for without its optional dependency installed."""


_EXTRA_HINT = {
    "faiss-gpu": 'pip install "timevis[gpu]" (faiss-gpu, on a CUDA machine)',
    "faiss-cpu": 'pip install "timevis[cpu]" (faiss-cpu)',
    "pynndescent": 'pip install "timevis[nndescent]" (pynndescent)',
}


class KNNBackend(ABC):
    """A kNN search backend. Subclasses choose candidates; ``query`` does the rest."""

    name: ClassVar[str]
    """The ``--knn`` value that selects this backend."""
    exact: ClassVar[bool] = True
    """Whether the neighbours are the exact k nearest (False for approximate backends)."""

    _compute_dtype: type[np.floating] = np.float32

    @property
    def rerank_device(self) -> str | None:
        """The torch device of the exact re-ranking of the candidates (None: numpy on the CPU).
        A GPU backend re-ranks on its GPU: on the CPU the gathers of [n, k, D] rows cost
        0.4-0.8 s per 60 000 x 15 x 512-d query (2 cores), once per epoch and stage."""
        return None

    def query(
        self,
        data: np.ndarray,
        queries: np.ndarray | None = None,
        *,
        k: int,
        include_self: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows of ``data`` by Euclidean distance, ascending.

        data: array of shape (n_points, n_features), float16/32/64, finite.
        queries: array of shape (n_queries, n_features), or None for the self-kNN of ``data``
            (each point's own index is excluded; see ``include_self``).
        k: neighbours per row; for the self-kNN at most ``n_points - 1`` (``n_points`` with
            ``include_self``), otherwise at most ``n_points``.
        include_self: self-kNN only: column 0 is the point itself (distance 0), followed by its
            ``k - 1`` nearest other points.
        Returns (indices int64 of shape (n, k), distances float32 of shape (n, k)), where n is
        n_points for the self-kNN and n_queries otherwise.
        """
        points = _as_points(data, "data", self._compute_dtype)
        if queries is None:
            n_others = _check_self_k(k, len(points), include_self)
            probes = None
        else:
            if include_self:
                raise InputError(
                    "include_self=True applies to the self-kNN only; pass queries=None, or "
                    "include_self=False to search the given queries"
                )
            probes = _as_points(queries, "queries", self._compute_dtype, allow_empty=True)
            if probes.shape[1] != points.shape[1]:
                raise InputError(
                    f"queries have {probes.shape[1]} features but data has {points.shape[1]}; "
                    "both must come from the same representation"
                )
            n_others = _check_query_k(k, len(points))
        started = time.perf_counter()
        center = points.mean(axis=0, dtype=np.float64).astype(self._compute_dtype)
        points = points - center
        if probes is not None:
            probes = probes - center
        indices, distances = self._neighbors(points, probes, n_others)
        if queries is None and include_self:
            own = np.arange(len(points), dtype=np.int64)[:, None]
            indices = np.concatenate([own, indices], axis=1)
            distances = np.concatenate([np.zeros_like(own, dtype=np.float32), distances], axis=1)
        logger.debug(
            "kNN %s: %d rows among %d points, k=%d, %.2f s",
            self.name,
            len(points) if probes is None else len(probes),
            len(points),
            k,
            time.perf_counter() - started,
        )
        return np.ascontiguousarray(indices), np.ascontiguousarray(distances)

    def _neighbors(
        self, points: np.ndarray, probes: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validated, centred arrays in; (indices, distances) of shape (n, k) out, self removed."""
        n_rows = len(points) if probes is None else len(probes)
        if k == 0 or n_rows == 0:
            return np.empty((n_rows, k), np.int64), np.empty((n_rows, k), np.float32)
        if probes is None:
            candidates = self._check_candidates(self._search(points, None, k + 1), n_rows, k + 1)
            candidates = _drop_self(candidates)
        else:
            candidates = self._check_candidates(self._search(points, probes, k), n_rows, k)
        probes = points if probes is None else probes
        return _exact_sorted(points, probes, candidates, self.rerank_device)

    def _check_candidates(self, indices: np.ndarray, n_rows: int, k: int) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.shape != (n_rows, k) or (indices < 0).any():
            raise RuntimeError(
                f"kNN backend {self.name!r} returned {indices.shape} indices (expected "
                f"{(n_rows, k)}, none missing); use an exact backend such as --knn torch"
            )
        return indices

    @abstractmethod
    def _search(self, points: np.ndarray, probes: np.ndarray | None, k: int) -> np.ndarray:
        """Indices int64 of shape (n, k) of the k nearest points per probe row (points when
        ``probes`` is None; self not removed). Order within a row does not matter."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FaissCPU(KNNBackend):
    """Exact search with FAISS ``IndexFlatL2`` on the CPU (FAISS blocks the work internally)."""

    name = "faiss-cpu"

    def __init__(self) -> None:
        self._faiss = _import_faiss("faiss-cpu")

    def _search(self, points: np.ndarray, probes: np.ndarray | None, k: int) -> np.ndarray:
        index = self._faiss.IndexFlatL2(points.shape[1])
        index.add(points)
        _, indices = index.search(points if probes is None else probes, k)
        return indices


class FaissGPU(KNNBackend):
    """Exact search with FAISS ``GpuIndexFlatL2`` on one CUDA device.

    device: ``"cuda"``, ``"cuda:<i>"`` or ``"auto"`` (GPU 0).
    Raises ConfigError when FAISS sees no GPU; no FAISS GPU function is called before that check.
    """

    name = "faiss-gpu"

    def __init__(self, device: str = "cuda", query_rows: int = 65536) -> None:
        self._faiss = _import_faiss("faiss-gpu")
        n_gpus = _faiss_gpu_count(self._faiss)
        if n_gpus == 0:
            raise ConfigError(
                "knn='faiss-gpu' needs a CUDA GPU visible to FAISS but found none (no GPU, or a "
                'faiss-cpu build); use --knn auto or --knn faiss-cpu, or pip install "timevis[gpu]" '
                "on a GPU machine"
            )
        self.gpu = _gpu_ordinal(device)
        if self.gpu >= n_gpus:
            raise ConfigError(
                f"device={device!r} but FAISS sees {n_gpus} GPU(s) (0-{n_gpus - 1}); "
                "pick one of those with --device cuda:<i>"
            )
        self.query_rows = _positive_int(query_rows, "query_rows")
        self._resources: Any = None

    @property
    def rerank_device(self) -> str | None:
        # FAISS's GPU needs no CUDA build of torch; without one the re-ranking stays numpy's
        import torch

        usable = torch.cuda.is_available() and self.gpu < torch.cuda.device_count()
        return f"cuda:{self.gpu}" if usable else None

    def _search(self, points: np.ndarray, probes: np.ndarray | None, k: int) -> np.ndarray:
        if k > FAISS_GPU_MAX_K:
            raise InputError(
                f"k={k} is above FAISS's GPU limit of {FAISS_GPU_MAX_K}; lower k or use --knn torch"
            )
        if self._resources is None:
            self._resources = self._faiss.StandardGpuResources()
        config = self._faiss.GpuIndexFlatConfig()
        config.device = self.gpu
        index = self._faiss.GpuIndexFlatL2(self._resources, points.shape[1], config)
        index.add(points)
        source = points if probes is None else probes
        blocks = [
            index.search(source[start : start + self.query_rows], k)[1]
            for start in range(0, len(source), self.query_rows)
        ]
        return np.concatenate(blocks, axis=0)

    def __repr__(self) -> str:
        return f"FaissGPU(device='cuda:{self.gpu}')"


class TorchExact(KNNBackend):
    """Exact search with ``torch.matmul`` + ``topk`` over blocks of query rows, on any device.

    device: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``"auto"`` = CUDA when
        available, else CPU).
    precision: ``"float32"`` (default) or ``"float64"``.
    block_rows: at most this many query rows per block; a block also holds at most
        ``max_block_elements`` distances, so memory stays O(block · n_points), never O(n²).
    """

    name = "torch"

    def __init__(
        self,
        device: str = "cpu",
        precision: str = "float32",
        block_rows: int = 4096,
        max_block_elements: int = 2**26,
    ) -> None:
        self.device = _torch_device(device)
        if precision not in ("float32", "float64"):
            raise ConfigError(
                f"precision={precision!r} is not supported; use 'float32' or 'float64'"
            )
        self.precision = precision
        self._compute_dtype = np.float32 if precision == "float32" else np.float64
        self.block_rows = _positive_int(block_rows, "block_rows")
        self.max_block_elements = _positive_int(max_block_elements, "max_block_elements")

    @property
    def rerank_device(self) -> str | None:
        return None if self.device.type == "cpu" else str(self.device)

    def _search(self, points: np.ndarray, probes: np.ndarray | None, k: int) -> np.ndarray:
        import torch

        source = points if probes is None else probes
        rows = max(1, min(self.block_rows, self.max_block_elements // len(points)))
        indices = np.empty((len(source), k), dtype=np.int64)
        with torch.inference_mode():
            base = torch.from_numpy(points).to(self.device)
            base_sq = (base * base).sum(dim=1)
            for start in range(0, len(source), rows):
                block = torch.from_numpy(source[start : start + rows]).to(self.device)
                squared = torch.addmm(base_sq.unsqueeze(0), block, base.T, alpha=-2.0)
                squared += (block * block).sum(dim=1, keepdim=True)
                nearest = torch.topk(squared, k, dim=1, largest=False, sorted=False).indices
                indices[start : start + len(block)] = nearest.cpu().numpy()
        return indices

    def __repr__(self) -> str:
        return f"TorchExact(device={str(self.device)!r}, precision={self.precision!r})"


class PyNNDescent(KNNBackend):
    """Approximate search with pynndescent (NN-descent graph); for very large CPU runs only.

    seed: random state of the graph construction.
    min_graph_neighbors: the graph is built with at least this many neighbours per point (small
        graphs have poor recall), and the k nearest are taken from it.
    The first call in a process compiles numba code, which takes tens of seconds.
    """

    name = "pynndescent"
    exact = False

    def __init__(self, seed: int = 0, min_graph_neighbors: int = 15) -> None:
        try:
            import pynndescent
        except ImportError as error:
            raise MissingKNNDependencyError(
                f"--knn pynndescent needs pynndescent, which is not installed: "
                f"{_EXTRA_HINT['pynndescent']}"
            ) from error
        self._pynndescent = pynndescent
        self.seed = int(seed)
        self.min_graph_neighbors = _positive_int(min_graph_neighbors, "min_graph_neighbors")

    def _search(self, points: np.ndarray, probes: np.ndarray | None, k: int) -> np.ndarray:
        n_graph = min(len(points), max(k, self.min_graph_neighbors))
        index = self._pynndescent.NNDescent(
            points, metric="euclidean", n_neighbors=n_graph, random_state=self.seed
        )
        if probes is None:
            return index.neighbor_graph[0][:, :k]
        return index.query(probes, k=k)[0]

    def __repr__(self) -> str:
        return f"PyNNDescent(seed={self.seed})"


def resolve_backend(name: str, device: str = "cpu") -> KNNBackend:
    """The kNN backend for a ``--knn`` value, with ``auto`` resolved; the choice is logged once.

    name: one of KNN_BACKENDS (case-insensitive).
    device: the run's torch device string (``cpu``, ``cuda``, ``cuda:<i>``, ``auto``).
    ``auto`` picks, in order: FAISS on the GPU (FAISS reports a GPU and the device is not the
    CPU); torch on a CUDA device (when the device is CUDA but FAISS has no GPU); FAISS on the CPU;
    torch on the CPU. Explicit GPU requests without a GPU raise ConfigError.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in KNN_BACKENDS:
        close = difflib.get_close_matches(str(key), KNN_BACKENDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"knn={name!r} is not a kNN backend; {hint}choose one of {', '.join(KNN_BACKENDS)}"
        )
    if key == "auto":
        backend, reason = _auto_backend(device)
        logger.info("kNN backend: %r (auto: %s)", backend, reason)
        return backend
    backend = _explicit_backend(key, device)
    logger.info("kNN backend: %r (requested)", backend)
    return backend


def dense_backend(backend: KNNBackend) -> KNNBackend:
    """The backend of the refinement's graph, the kNN of every tracked sample and boundary point
    of each epoch among themselves (and its anchors): FAISS's flat CPU index is replaced by
    torch's exact search, which does it in a third of the time (measured, 2 threads: 12 000
    points x 512 features, 3.0 s against 1.15 s; both exact, the same neighbours up to exact
    ties). Other backends are returned as they are. The complex keeps the configured backend:
    its searches are small (an epoch's selected samples), and a tie broken otherwise would
    change the fit."""
    if isinstance(backend, FaissCPU):
        logger.info("refinement graph: torch's exact search instead of FAISS on the CPU (faster)")
        return TorchExact("cpu")
    return backend


def _explicit_backend(key: str, device: str) -> KNNBackend:
    if key == "faiss-gpu":
        return FaissGPU(device if _is_cuda(device) else "cuda")
    if key == "faiss-cpu":
        return FaissCPU()
    if key == "torch":
        return TorchExact(device)
    return PyNNDescent()


def _auto_backend(device: str) -> tuple[KNNBackend, str]:
    try:
        faiss = _import_faiss("faiss-cpu")
    except ImportError:
        faiss = None
    wants_gpu = device == "auto" or _is_cuda(device)
    if faiss is not None and wants_gpu and _faiss_gpu_count(faiss) > 0:
        return FaissGPU(device), "FAISS with a GPU"
    torch_device = _torch_device(device)
    if torch_device.type == "cuda":
        reason = (
            "CUDA device, FAISS without GPU support"
            if faiss is not None
            else "CUDA device, no FAISS"
        )
        return TorchExact(str(torch_device)), reason
    if faiss is not None:
        return FaissCPU(), "FAISS on the CPU"
    return TorchExact("cpu"), "no FAISS installed, exact search in torch"


def _import_faiss(backend_name: str) -> Any:
    try:
        import faiss
    except ImportError as error:
        raise MissingKNNDependencyError(
            f"--knn {backend_name} needs FAISS, which is not installed: "
            f"{_EXTRA_HINT[backend_name]}; or use --knn torch"
        ) from error
    import torch

    # FAISS's OpenMP pool starts one thread per core of the machine; keep it to torch's count,
    # which the command sized to the cores this process may use (timevis_cli.threads)
    set_threads = getattr(faiss, "omp_set_num_threads", None)  # absent in some builds
    if set_threads is not None:
        set_threads(torch.get_num_threads())
    return faiss


def _faiss_gpu_count(faiss: Any) -> int:
    """GPUs FAISS can use; 0 for CPU-only builds. The only FAISS GPU call made unguarded."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def _torch_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"device={device!r} is not a torch device; use cpu, cuda, cuda:<i> or auto"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} but torch sees no CUDA device; use --device cpu or --device auto"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s); "
                "pick one of those with --device cuda:<i>"
            )
    elif resolved.type != "cpu":
        raise ConfigError(f"device={device!r} is not supported for kNN; use cpu, cuda or auto")
    return resolved


def _is_cuda(device: str) -> bool:
    return isinstance(device, str) and (device == "cuda" or device.startswith("cuda:"))


def _gpu_ordinal(device: str) -> int:
    if device in ("cuda", "auto"):
        return 0
    if _is_cuda(device) and device[5:].isdigit():
        return int(device[5:])
    raise ConfigError(f"device={device!r} is not a CUDA device for FAISS; use cuda or cuda:<i>")


def _positive_int(value: int, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{label}={value!r} must be an integer >= 1")
    return int(value)


def _as_points(
    array: Any, label: str, dtype: type[np.floating], allow_empty: bool = False
) -> np.ndarray:
    """A finite C-contiguous copy-or-view of ``array`` of shape (n, n_features) in ``dtype``."""
    values = np.asarray(array)
    if values.ndim != 2:
        raise InputError(
            f"{label} must be a 2-D array of shape (n_points, n_features), got shape "
            f"{values.shape}; reshape it (e.g. x.reshape(len(x), -1))"
        )
    if values.dtype.kind not in "fiu":
        raise InputError(
            f"{label} must hold real numbers (float16/32/64), got dtype {values.dtype}"
        )
    n_rows, n_features = values.shape
    if n_features == 0 or (n_rows == 0 and not allow_empty):
        raise InputError(f"{label} of shape {values.shape} is empty; kNN needs points")
    values = np.ascontiguousarray(values, dtype=dtype)
    finite = np.isfinite(values)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        raise InputError(
            f"{label} has {int((~finite).sum())} non-finite values (NaN or inf) in {bad_rows} of "
            f"{n_rows} rows (after conversion to {np.dtype(dtype).name}); drop or fix those rows"
        )
    return values


def _check_k_type(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k={k!r} must be an integer >= 1")
    return int(k)


def _check_self_k(k: Any, n_points: int, include_self: bool) -> int:
    """Number of other points to find for a self-kNN with ``k`` columns."""
    k = _check_k_type(k)
    n_others = k - 1 if include_self else k
    if n_others > n_points - 1:
        counted = (
            "k includes the point itself" if include_self else "a point is not its own neighbour"
        )
        raise InputError(
            f"k={k} neighbours need at least {n_others + 1} points ({counted}), got {n_points} "
            f"points; lower k to at most {n_points - 1 + int(include_self)} or pass more points"
        )
    return n_others


def _check_query_k(k: Any, n_points: int) -> int:
    k = _check_k_type(k)
    if k > n_points:
        raise InputError(
            f"k={k} neighbours need at least {k} points to search, got {n_points} points; "
            f"lower k to at most {n_points} or pass more points"
        )
    return k


def _drop_self(candidates: np.ndarray) -> np.ndarray:
    """Remove each row's own index from (n, k + 1) candidates -> (n, k).

    When a row's own index is absent (more exact duplicates than k + 1), its last candidate goes.
    """
    n_rows, width = candidates.shape
    is_self = candidates == np.arange(n_rows, dtype=np.int64)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    if not (is_self.sum(axis=1) == 1).all():
        raise RuntimeError("kNN candidates list a point more than once; use --knn torch")
    return candidates[~is_self].reshape(n_rows, width - 1)


def _exact_sorted(
    points: np.ndarray, probes: np.ndarray, candidates: np.ndarray, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of (n, k) candidate pairs, computed directly, rows sorted ascending.

    points: (n_points, n_features); probes: (n, n_features); candidates: int64 (n, k) into points.
    device: a torch device to compute the distances on (None: numpy on the CPU); the sort is
    numpy's either way.
    Returns (indices int64 (n, k), distances float32 (n, k)), ties ordered by index.
    """
    n_rows, k = candidates.shape
    rows = max(1, _REFINE_BLOCK_ELEMENTS // max(1, k * points.shape[1]))
    if device is None:
        distances = np.empty((n_rows, k), dtype=np.float32)
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            diff = points[candidates[start:stop]] - probes[start:stop, None, :]
            distances[start:stop] = np.sqrt(np.einsum("rkf,rkf->rk", diff, diff))
    else:
        distances = _candidate_distances_torch(points, probes, candidates, device, rows)
    order = np.lexsort((candidates, distances), axis=-1)
    return (
        np.take_along_axis(candidates, order, axis=1),
        np.take_along_axis(distances, order, axis=1),
    )


def _candidate_distances_torch(
    points: np.ndarray, probes: np.ndarray, candidates: np.ndarray, device: str, rows: int
) -> np.ndarray:
    """float32 (n, k): ``‖points[candidates[i, j]] - probes[i]‖`` computed with torch on
    ``device``, in blocks of ``rows`` probes (the differences, not a Gram matrix: a point's
    nearest neighbours can be far closer to it than to the origin)."""
    import torch

    with torch.inference_mode():
        base = torch.from_numpy(points).to(device)
        source = base if probes is points else torch.from_numpy(probes).to(device)
        index = torch.from_numpy(candidates).to(device)
        out = torch.empty(candidates.shape, dtype=torch.float32, device=device)
        for start in range(0, len(candidates), rows):
            stop = min(start + rows, len(candidates))
            diff = base[index[start:stop]] - source[start:stop, None, :]
            out[start:stop] = torch.linalg.vector_norm(diff, dim=2).to(torch.float32)
        return out.cpu().numpy()
