"""The kNN backends: one contract, reused by every backend's test class, plus backend selection."""

from __future__ import annotations

import logging
import re
import sys
import types

import numpy as np
import pytest

import timevis_cli.fit.neighbors as neighbors_module
from timevis_cli.errors import ConfigError, InputError
from timevis_cli.fit.neighbors import (
    KNN_BACKENDS,
    FaissCPU,
    FaissGPU,
    KNNBackend,
    PyNNDescent,
    TorchExact,
    dense_backend,
    resolve_backend,
)


def _faiss_gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus()


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


HAS_FAISS = _has_module("faiss")
FAISS_GPUS = _faiss_gpu_count()
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")


def brute_force(
    data: np.ndarray, queries: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reference kNN in float64 numpy: full distance matrix, self excluded when queries is None."""
    base = data.astype(np.float64)
    probes = base if queries is None else queries.astype(np.float64)
    dist = np.sqrt(((probes[:, None, :] - base[None, :, :]) ** 2).sum(axis=2))
    if queries is None:
        np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    """300 seeded points in 16-D: no ties among distances."""
    return np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def with_duplicates() -> np.ndarray:
    """40 distinct points, then 3 copies of point 0 and 25 copies of point 1 (more than k + 1)."""
    rng = np.random.default_rng(1)
    distinct = rng.normal(size=(40, 8)).astype(np.float32)
    return np.concatenate(
        [distinct, np.repeat(distinct[:1], 3, 0), np.repeat(distinct[1:2], 25, 0)]
    )


class KNNContract:
    """What every backend guarantees, exact or not. Subclasses define ``make_backend``."""

    def make_backend(self) -> KNNBackend:
        raise NotImplementedError

    @pytest.fixture
    def backend(self) -> KNNBackend:
        return self.make_backend()

    def test_shapes_and_dtypes(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, distances = backend.query(cloud, k=7)
        assert indices.shape == distances.shape == (300, 7)
        assert indices.dtype == np.int64 and distances.dtype == np.float32
        indices, distances = backend.query(cloud, cloud[:11] + 0.5, k=7)
        assert indices.shape == distances.shape == (11, 7)
        assert indices.dtype == np.int64 and distances.dtype == np.float32

    def test_sorted_ascending_and_euclidean(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, distances = backend.query(cloud, k=10)
        assert (np.diff(distances, axis=1) >= 0).all()
        direct = np.linalg.norm(cloud[indices] - cloud[:, None, :], axis=2)
        np.testing.assert_allclose(distances, direct, rtol=1e-5, atol=1e-5)

    def test_self_excluded(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, _ = backend.query(cloud, k=10)
        assert not (indices == np.arange(300)[:, None]).any()
        assert all(len(set(row)) == 10 for row in indices.tolist())

    def test_duplicates_never_list_themselves(
        self, backend: KNNBackend, with_duplicates: np.ndarray
    ) -> None:
        n = len(with_duplicates)
        indices, distances = backend.query(with_duplicates, k=5)
        assert not (indices == np.arange(n)[:, None]).any()
        copies_of_1 = [1, *range(43, 68)]
        assert np.isin(indices[copies_of_1], copies_of_1).all()
        np.testing.assert_array_equal(distances[copies_of_1], 0.0)
        copies_of_0 = [0, 40, 41, 42]
        assert (distances[copies_of_0, :3] == 0).all()
        for row in copies_of_0:
            assert set(indices[row, :3]) == set(copies_of_0) - {row}

    def test_include_self_puts_self_first(
        self, backend: KNNBackend, with_duplicates: np.ndarray
    ) -> None:
        n = len(with_duplicates)
        indices, distances = backend.query(with_duplicates, k=6, include_self=True)
        assert indices.shape == (n, 6)
        np.testing.assert_array_equal(indices[:, 0], np.arange(n))
        np.testing.assert_array_equal(distances[:, 0], 0.0)
        assert not (indices[:, 1:] == np.arange(n)[:, None]).any()
        assert (np.diff(distances, axis=1) >= 0).all()

    def test_queries_keep_their_match(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, distances = backend.query(cloud, cloud[:20], k=4)
        np.testing.assert_array_equal(indices[:, 0], np.arange(20))
        np.testing.assert_array_equal(distances[:, 0], 0.0)

    def test_inputs_untouched(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        data = cloud.astype(np.float64) + 100.0
        queries = data[:9] * 1.01
        data.setflags(write=False)
        before_data, before_queries = data.copy(), queries.copy()
        backend.query(data, k=3)
        backend.query(data, queries, k=3)
        np.testing.assert_array_equal(data, before_data)
        np.testing.assert_array_equal(queries, before_queries)

    def test_smallest_and_largest_k(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        small = cloud[:30]
        indices, _ = backend.query(small, k=29)
        assert (
            np.sort(indices, axis=1) == [[j for j in range(30) if j != i] for i in range(30)]
        ).all()
        indices, _ = backend.query(small, k=30, include_self=True)
        assert indices.shape == (30, 30)
        indices, distances = backend.query(small, k=1, include_self=True)
        np.testing.assert_array_equal(indices[:, 0], np.arange(30))
        indices, _ = backend.query(small, cloud[30:35], k=30)
        assert (np.sort(indices, axis=1) == np.arange(30)).all()

    def test_empty_queries(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, distances = backend.query(cloud, cloud[:0], k=3)
        assert indices.shape == distances.shape == (0, 3)

    def test_k_too_large(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        with pytest.raises(InputError, match=r"k=30 .* got 30 points"):
            backend.query(cloud[:30], k=30)
        with pytest.raises(InputError, match=r"k=31 .* got 30 points"):
            backend.query(cloud[:30], k=31, include_self=True)
        with pytest.raises(InputError, match=r"k=31 .* got 30 points"):
            backend.query(cloud[:30], cloud[:5], k=31)

    def test_bad_k(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        for k in (0, -1, 2.5, True):
            with pytest.raises(InputError, match="must be an integer >= 1"):
                backend.query(cloud, k=k)

    def test_non_finite_values(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        data = cloud.copy()
        data[3, 0] = np.nan
        data[3, 1] = np.inf
        data[7, 2] = -np.inf
        with pytest.raises(InputError, match=r"data has 3 non-finite values .* in 2 of 300 rows"):
            backend.query(data, k=5)
        with pytest.raises(InputError, match=r"queries has 3 non-finite"):
            backend.query(cloud, data[:10], k=5)

    def test_bad_shapes(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        with pytest.raises(InputError, match="2-D array"):
            backend.query(cloud[0], k=3)
        with pytest.raises(InputError, match="2-D array"):
            backend.query(cloud[None], k=3)
        with pytest.raises(InputError, match="queries have 15 features but data has 16"):
            backend.query(cloud, cloud[:4, :15], k=3)
        with pytest.raises(InputError, match="empty"):
            backend.query(cloud[:0], k=1)
        with pytest.raises(InputError, match="real numbers"):
            backend.query(cloud.astype(np.complex64), k=3)
        with pytest.raises(InputError, match="self-kNN only"):
            backend.query(cloud, cloud[:4], k=3, include_self=True)


class ExactKNNContract(KNNContract):
    """Exact backends also match a brute-force reference exactly (indices) and closely (distances)."""

    def test_self_knn_matches_brute_force(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, distances = backend.query(cloud, k=12)
        ref_indices, ref_distances = brute_force(cloud, None, 12)
        np.testing.assert_array_equal(indices, ref_indices)
        np.testing.assert_allclose(distances, ref_distances, rtol=1e-5, atol=1e-5)

    def test_include_self_matches_brute_force(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        indices, distances = backend.query(cloud, k=12, include_self=True)
        ref_indices, ref_distances = brute_force(cloud, None, 11)
        np.testing.assert_array_equal(indices[:, 1:], ref_indices)
        np.testing.assert_allclose(distances[:, 1:], ref_distances, rtol=1e-5, atol=1e-5)

    def test_queries_match_brute_force(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        queries = np.random.default_rng(2).normal(size=(50, 16)).astype(np.float32)
        indices, distances = backend.query(cloud, queries, k=9)
        ref_indices, ref_distances = brute_force(cloud, queries, 9)
        np.testing.assert_array_equal(indices, ref_indices)
        np.testing.assert_allclose(distances, ref_distances, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("dtype", [np.float16, np.float64])
    def test_other_float_dtypes(self, backend: KNNBackend, cloud: np.ndarray, dtype: type) -> None:
        data = cloud.astype(dtype)
        indices, distances = backend.query(data, k=8)
        ref_indices, ref_distances = brute_force(data, None, 8)
        np.testing.assert_array_equal(indices, ref_indices)
        np.testing.assert_allclose(distances, ref_distances, rtol=1e-4, atol=1e-4)

    def test_large_common_offset(self, backend: KNNBackend, cloud: np.ndarray) -> None:
        """Features far from the origin (e.g. all-positive ReLU outputs) keep exact neighbours."""
        data = cloud * 0.05 + 30.0
        indices, distances = backend.query(data, k=6)
        ref_indices, ref_distances = brute_force(data, None, 6)
        np.testing.assert_array_equal(indices, ref_indices)
        np.testing.assert_allclose(distances, ref_distances, rtol=1e-3, atol=1e-5)


@needs_faiss
class TestFaissCPU(ExactKNNContract):
    def make_backend(self) -> KNNBackend:
        return FaissCPU()


class TestTorchExact(ExactKNNContract):
    def make_backend(self) -> KNNBackend:
        return TorchExact("cpu", block_rows=64)


class TestTorchExactFloat64(ExactKNNContract):
    def make_backend(self) -> KNNBackend:
        return TorchExact("cpu", precision="float64", max_block_elements=300 * 40)


class _TorchRerankedOnCPU(TorchExact):
    """The GPU backends' re-ranking (torch, on their device), run here on the CPU."""

    @property
    def rerank_device(self) -> str | None:
        return "cpu"


class TestTorchRerank(ExactKNNContract):
    def make_backend(self) -> KNNBackend:
        return _TorchRerankedOnCPU("cpu")


def test_the_torch_reranking_equals_numpys(
    cloud: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(neighbors_module, "_REFINE_BLOCK_ELEMENTS", 7 * 8 * 3)  # blocks of 3 rows
    candidates = np.random.default_rng(5).integers(0, len(cloud), size=(50, 7))
    probes = cloud[:50] + 0.25
    for pair in ((cloud, probes), (cloud, cloud[:50])):
        numpy_idx, numpy_dist = neighbors_module._exact_sorted(*pair, candidates)
        torch_idx, torch_dist = neighbors_module._exact_sorted(*pair, candidates, "cpu")
        np.testing.assert_array_equal(torch_idx, numpy_idx)
        np.testing.assert_allclose(torch_dist, numpy_dist, rtol=1e-6, atol=1e-6)
    assert TorchExact("cpu").rerank_device is None


def test_faiss_gpu_reranks_with_torch_only_where_torch_has_cuda(monkeypatch) -> None:
    # FAISS's GPU works with a CPU build of torch: the re-ranking then stays numpy's
    import torch

    backend = FaissGPU.__new__(FaissGPU)  # without FAISS's GPU check: only rerank_device is used
    backend.gpu = 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend.rerank_device is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert backend.rerank_device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # torch sees fewer GPUs
    assert backend.rerank_device is None


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_cuda(), reason="needs a CUDA device")
class TestTorchExactCUDA(ExactKNNContract):
    def make_backend(self) -> KNNBackend:
        return TorchExact("cuda", block_rows=64)


@pytest.mark.gpu
@pytest.mark.skipif(FAISS_GPUS == 0, reason="needs faiss-gpu and a GPU")
class TestFaissGPU(ExactKNNContract):
    def make_backend(self) -> KNNBackend:
        return FaissGPU("cuda", query_rows=64)


@pytest.mark.slow
@pytest.mark.skipif(not _has_module("pynndescent"), reason="pynndescent is not installed")
@pytest.mark.filterwarnings("ignore:Failed to correctly find n_neighbors:UserWarning")
class TestPyNNDescent(KNNContract):
    """Approximate: the structural contract, and a recall floor instead of exact equality.

    Marked slow because the first NN-descent graph in a process compiles numba code (~1 min).
    """

    def make_backend(self) -> KNNBackend:
        return PyNNDescent(seed=0)

    def test_recall(self, backend: KNNBackend) -> None:
        rng = np.random.default_rng(3)
        data = rng.normal(size=(1000, 16)).astype(np.float32)
        queries = rng.normal(size=(100, 16)).astype(np.float32)
        for probes in (None, queries):
            indices, _ = backend.query(data, probes, k=10)
            reference, _ = brute_force(data, probes, 10)
            recall = np.mean(
                [len(set(a) & set(b)) / 10 for a, b in zip(indices, reference, strict=True)]
            )
            assert recall >= 0.9, f"pynndescent recall {recall}"


def test_torch_blocks_bound_the_distance_matrix(cloud: np.ndarray) -> None:
    """One row per block gives the same answer as one block for everything."""
    whole = TorchExact("cpu").query(cloud[:60], k=5)
    blocked = TorchExact("cpu", block_rows=4096, max_block_elements=1).query(cloud[:60], k=5)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])


def test_more_duplicates_than_k_plus_one() -> None:
    """Self may not come back among k + 1 exact duplicates: the last candidate goes instead."""
    data = np.zeros((50, 3), dtype=np.float32)
    for backend in (TorchExact("cpu"), *([FaissCPU()] if HAS_FAISS else [])):
        indices, distances = backend.query(data, k=4)
        assert not (indices == np.arange(50)[:, None]).any()
        np.testing.assert_array_equal(distances, 0.0)
        indices, _ = backend.query(data, k=4, include_self=True)
        np.testing.assert_array_equal(indices[:, 0], np.arange(50))
        assert not (indices[:, 1:] == np.arange(50)[:, None]).any()


class TestResolveBackend:
    def test_names(self) -> None:
        assert KNN_BACKENDS == ("auto", "faiss-gpu", "faiss-cpu", "torch", "pynndescent")

    @needs_faiss
    @pytest.mark.skipif(FAISS_GPUS > 0, reason="this host has a FAISS GPU")
    def test_auto_on_cpu_host_is_faiss_cpu(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="timevis_cli.fit.neighbors"):
            backend = resolve_backend("auto", "cpu")
        assert isinstance(backend, FaissCPU)
        messages = [r.getMessage() for r in caplog.records if r.name == "timevis_cli.fit.neighbors"]
        assert len(messages) == 1 and "FaissCPU" in messages[0] and "auto" in messages[0]

    def test_auto_without_faiss_is_torch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "faiss", None)
        backend = resolve_backend("auto", "cpu")
        assert isinstance(backend, TorchExact) and backend.device.type == "cpu"

    def test_auto_skips_faiss_gpu_when_device_is_cpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = types.SimpleNamespace(get_num_gpus=lambda: 1)
        monkeypatch.setitem(sys.modules, "faiss", fake)
        assert isinstance(resolve_backend("auto", "cpu"), FaissCPU)

    def test_auto_uses_faiss_gpu_when_faiss_sees_one(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Only get_num_gpus is available on the fake module: no other GPU call at resolve time."""
        fake = types.SimpleNamespace(get_num_gpus=lambda: 2)
        monkeypatch.setitem(sys.modules, "faiss", fake)
        backend = resolve_backend("auto", "cuda:1")
        assert isinstance(backend, FaissGPU) and backend.gpu == 1

    def test_explicit_faiss_gpu_without_gpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = types.SimpleNamespace(get_num_gpus=lambda: 0)
        monkeypatch.setitem(sys.modules, "faiss", fake)
        with pytest.raises(ConfigError, match="faiss-gpu.*--knn auto"):
            resolve_backend("faiss-gpu", "cpu")

    @needs_faiss
    @pytest.mark.skipif(FAISS_GPUS > 0, reason="this host has a FAISS GPU")
    def test_explicit_faiss_gpu_on_this_host(self) -> None:
        with pytest.raises(ConfigError, match="found none"):
            resolve_backend("faiss-gpu", "cuda")

    @pytest.mark.parametrize(
        ("name", "extra"),
        [("faiss-cpu", "timevis[cpu]"), ("faiss-gpu", "timevis[gpu]"), ("auto", None)],
    )
    def test_missing_faiss(self, monkeypatch: pytest.MonkeyPatch, name: str, extra: str) -> None:
        monkeypatch.setitem(sys.modules, "faiss", None)
        if extra is None:
            assert isinstance(resolve_backend(name, "cpu"), TorchExact)
            return
        with pytest.raises(ImportError, match=re.escape(f'pip install "{extra}"')):
            resolve_backend(name, "cpu")

    def test_missing_pynndescent(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "pynndescent", None)
        with pytest.raises(ImportError, match=r'pip install "timevis\[nndescent\]"'):
            resolve_backend("pynndescent", "cpu")

    def test_explicit_choices(self) -> None:
        assert isinstance(resolve_backend("torch", "cpu"), TorchExact)
        assert isinstance(resolve_backend(" Torch ", "auto"), TorchExact)
        if HAS_FAISS:
            assert isinstance(resolve_backend("faiss-cpu", "cpu"), FaissCPU)

    def test_unknown_name_suggests(self) -> None:
        with pytest.raises(ConfigError) as caught:
            resolve_backend("fais-cpu", "cpu")
        message = str(caught.value)
        assert "'fais-cpu'" in message and "did you mean 'faiss-cpu'?" in message
        assert "auto, faiss-gpu, faiss-cpu, torch, pynndescent" in message
        assert "\n" not in message

    @pytest.mark.skipif(_torch_cuda(), reason="this host has CUDA")
    def test_cuda_device_without_cuda(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_backend("torch", "cuda")
        monkeypatch.setitem(sys.modules, "faiss", None)
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_backend("auto", "cuda")

    def test_bad_device(self) -> None:
        with pytest.raises(ConfigError, match="not a torch device"):
            resolve_backend("torch", "gpu0")


class TestDenseBackend:
    @needs_faiss
    def test_faiss_cpu_becomes_torch_with_the_same_neighbours(self) -> None:
        faiss_cpu = FaissCPU()
        dense = dense_backend(faiss_cpu)
        assert isinstance(dense, TorchExact) and dense.device.type == "cpu"
        points = np.random.default_rng(3).normal(size=(400, 24)).astype(np.float32)
        expected = faiss_cpu.query(points, k=8, include_self=True)
        got = dense.query(points, k=8, include_self=True)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])

    def test_other_backends_are_kept(self) -> None:
        torch_backend = TorchExact()
        assert dense_backend(torch_backend) is torch_backend
        fake = types.SimpleNamespace()  # e.g. an approximate or GPU backend: not replaced
        assert dense_backend(fake) is fake  # type: ignore[arg-type]
