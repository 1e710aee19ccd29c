"""Tests of the spatio-temporal complex, with umap-learn as the oracle for the fuzzy graphs."""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import pytest

from timevis_cli.errors import InputError
from timevis_cli.fit.complex import (
    EdgeKind,
    EdgeSet,
    EpochVertices,
    boundary_edges,
    fuzzy_union,
    membership_strengths,
    mix_edges,
    smooth_knn_dist,
    spatial_edges,
    temporal_edges,
    temporal_memberships,
)

umap_ = pytest.importorskip("umap.umap_")
sparse = pytest.importorskip("scipy.sparse")


def exact_knn(queries: np.ndarray, points: np.ndarray, k: int, self_first: bool = False):
    """Brute-force kNN (int64 indices, float32 distances, ascending); self first on request."""
    diff = queries[:, None, :].astype(np.float64) - points[None, :, :].astype(np.float64)
    dists = np.sqrt((diff**2).sum(-1))
    order_key = dists.copy()
    if self_first:
        np.fill_diagonal(order_key, -1.0)
    indices = np.argsort(order_key, axis=1, kind="stable")[:, :k]
    return indices.astype(np.int64), np.take_along_axis(dists, indices, 1).astype(np.float32)


def as_dict(rows, cols, vals) -> dict[tuple[int, int], float]:
    return {(int(r), int(c)): float(v) for r, c, v in zip(rows, cols, vals, strict=True)}


def assert_same_graph(edges: EdgeSet, oracle, offset: int = 0) -> None:
    coo = oracle.tocoo()
    expected = as_dict(coo.row + offset, coo.col + offset, coo.data)
    got = as_dict(edges.head, edges.tail, edges.weight)
    assert got.keys() == expected.keys()
    keys = sorted(expected)
    np.testing.assert_allclose(
        [got[key] for key in keys], [expected[key] for key in keys], rtol=1e-5, atol=1e-6
    )


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 6)).astype(np.float32)
    points[5] = points[6]
    points[7] = points[6]
    points[280:] = points[280]
    return points


# ---------------------------------------------------------------- sigma, rho, memberships


def test_smooth_knn_dist_matches_umap(cloud):
    for k in (5, 15):
        _, dists = exact_knn(cloud, cloud, k, self_first=True)
        sigma, rho = smooth_knn_dist(dists, float(k))
        sigma_ref, rho_ref = umap_.smooth_knn_dist(dists, float(k))
        assert sigma.dtype == np.float32 and rho.dtype == np.float32
        np.testing.assert_allclose(rho, rho_ref, rtol=1e-6)
        np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-5)
        assert rho[6] == dists[6][dists[6] > 0][0], "rho skips duplicate points"
        assert rho[285] == 0, "a point among k duplicates has rho 0"


def test_smooth_knn_dist_does_not_modify_input(cloud):
    _, dists = exact_knn(cloud, cloud, 15, self_first=True)
    before = dists.copy()
    smooth_knn_dist(dists, 15.0)
    np.testing.assert_array_equal(dists, before)


def test_membership_strengths_self_zero_and_within_rho_one():
    indices = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    dists = np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 2.0], [0.0, 2.0, 3.0]], dtype=np.float32)
    sigma = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    rho = np.array([1.0, 1.0, 2.0], dtype=np.float32)
    rows, cols, vals = membership_strengths(indices, dists, sigma, rho)
    got = as_dict(rows, cols, vals)
    assert got[(0, 0)] == got[(1, 1)] == got[(2, 2)] == 0.0
    assert got[(0, 1)] == got[(1, 0)] == got[(2, 1)] == 1.0
    assert got[(0, 2)] == pytest.approx(np.exp(-1.0))
    assert got[(1, 2)] == pytest.approx(np.exp(-1.0))
    assert got[(2, 0)] == 1.0, "sigma 0 gives membership 1, as in umap-learn"


# ---------------------------------------------------------------- fuzzy union


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzzy_union_is_symmetric_and_correct(seed):
    rng = np.random.default_rng(seed)
    n = 40
    pairs = rng.choice(n * n, size=300, replace=False)
    rows, cols = pairs // n, pairs % n
    vals = rng.uniform(0.05, 1.0, size=300).astype(np.float32)
    vals[:20] = 0.0
    out_rows, out_cols, out_vals = fuzzy_union(rows, cols, vals)
    got = as_dict(out_rows, out_cols, out_vals)
    directed = as_dict(rows, cols, vals)
    for (i, j), value in got.items():
        assert got[(j, i)] == value
        a, b = directed.get((i, j), 0.0), directed.get((j, i), 0.0)
        assert value == pytest.approx(a + b - a * b, rel=1e-6)
    assert all(v > 0 for v in got.values())
    assert set(got) == {(i, j) for (i, j), v in directed.items() if v > 0} | {
        (j, i) for (i, j), v in directed.items() if v > 0
    }
    keys = out_rows * n + out_cols
    assert np.all(np.diff(keys) > 0), "sorted by (row, col)"


def test_fuzzy_union_hand_values_and_duplicates():
    rows, cols, vals = fuzzy_union([0, 1, 2], [1, 0, 0], np.array([0.5, 0.4, 0.3], np.float32))
    got = as_dict(rows, cols, vals)
    assert got == pytest.approx({(0, 1): 0.7, (1, 0): 0.7, (0, 2): 0.3, (2, 0): 0.3})
    with pytest.raises(InputError, match="repeats"):
        fuzzy_union([0, 0], [1, 1], [0.5, 0.5])


# ---------------------------------------------------------------- spatial and boundary edges


@pytest.mark.parametrize("k", [4, 15])
def test_spatial_edges_match_umap_fuzzy_simplicial_set(cloud, k):
    indices, dists = exact_knn(cloud, cloud, k, self_first=True)
    indices_before, dists_before = indices.copy(), dists.copy()
    graph, sigma_ref, rho_ref = umap_.fuzzy_simplicial_set(
        cloud,
        n_neighbors=k,
        random_state=0,
        metric="euclidean",
        knn_indices=indices,
        knn_dists=dists,
    )
    local = spatial_edges(indices, dists, vertex_offset=1000)
    assert_same_graph(local.edges, graph, offset=1000)
    assert np.all(local.edges.kind == EdgeKind.SPATIAL)
    np.testing.assert_allclose(local.sigma, sigma_ref, rtol=1e-5)
    np.testing.assert_allclose(local.rho, rho_ref, rtol=1e-6)
    np.testing.assert_array_equal(indices, indices_before)
    np.testing.assert_array_equal(dists, dists_before)


def test_boundary_edges_match_umap_on_train_plus_boundary(cloud):
    rng = np.random.default_rng(3)
    train = cloud[:120]
    boundary = rng.normal(size=(40, cloud.shape[1])).astype(np.float32)
    everything = np.concatenate([train, boundary])
    k = 10
    query = exact_knn(everything, boundary, k)
    own_indices, own_dists = exact_knn(boundary, boundary, k, self_first=True)
    indices = np.concatenate([query[0][:120], own_indices])
    dists = np.concatenate([query[1][:120], own_dists])
    graph, sigma_ref, rho_ref = umap_.fuzzy_simplicial_set(
        everything,
        n_neighbors=k,
        random_state=0,
        metric="euclidean",
        knn_indices=indices + 120,
        knn_dists=dists,
    )
    local = boundary_edges(indices, dists, n_train=120, vertex_offset=500)
    assert_same_graph(local.edges, graph, offset=500)
    assert np.all(local.edges.kind == EdgeKind.BOUNDARY)
    assert local.sigma.shape == local.rho.shape == (40,)
    np.testing.assert_allclose(local.sigma, sigma_ref[120:], rtol=1e-5)
    np.testing.assert_allclose(local.rho, rho_ref[120:], rtol=1e-6)
    boundary_ids = np.arange(620, 660)
    assert np.all(np.isin(local.edges.head, boundary_ids) | np.isin(local.edges.tail, boundary_ids))


def test_knn_validation():
    indices, dists = exact_knn(np.eye(5, dtype=np.float32), np.eye(5, dtype=np.float32), 3, True)
    with pytest.raises(InputError, match="same shape"):
        spatial_edges(indices, dists[:, :2])
    with pytest.raises(InputError, match="sorted ascending"):
        spatial_edges(indices, dists[:, ::-1])
    with pytest.raises(InputError, match=r"\[0, 5\)"):
        spatial_edges(indices + 1, dists)
    with pytest.raises(InputError, match="twice"):
        spatial_edges(np.where(indices == 2, 1, indices), dists)
    with pytest.raises(InputError, match="vertex_offset"):
        spatial_edges(indices, dists, vertex_offset=-1)
    with pytest.raises(InputError, match="boundary point"):
        boundary_edges(indices, dists, n_train=5)


# ---------------------------------------------------------------- temporal edges


def make_epoch(sample_ids, features, first_vertex, sigma=1.0, rho=0.0) -> EpochVertices:
    n = len(sample_ids)
    return EpochVertices(
        sample_ids=np.asarray(sample_ids, dtype=np.int64),
        vertex_ids=np.arange(first_vertex, first_vertex + n, dtype=np.int64),
        features=np.asarray(features, dtype=np.float32),
        sigma=np.broadcast_to(np.float32(sigma), (n,)).copy() if np.ndim(sigma) == 0 else sigma,
        rho=np.broadcast_to(np.float32(rho), (n,)).copy() if np.ndim(rho) == 0 else rho,
    )


def brute_force_temporal(epochs, n_neighbors, window):
    """Loop-per-sample reference: identity by sample id, true top-k, source sigma/rho, union."""
    directed: dict[tuple[int, int], float] = {}
    for t, source in enumerate(epochs):
        for row, sample in enumerate(source.sample_ids):
            candidates = []
            for u, other in enumerate(epochs):
                if u == t or (window is not None and 2 * abs(u - t) > window):
                    continue
                hits = np.flatnonzero(other.sample_ids == sample)
                if hits.size:
                    d = np.linalg.norm(
                        source.features[row].astype(np.float64)
                        - other.features[hits[0]].astype(np.float64)
                    )
                    candidates.append((d, u, int(other.vertex_ids[hits[0]])))
            for d, _, vertex in sorted(candidates)[:n_neighbors]:
                excess = d - source.rho[row]
                mu = 1.0 if excess <= 0 else np.exp(-excess / source.sigma[row])
                directed[(int(source.vertex_ids[row]), vertex)] = mu
    union = {}
    for (i, j), a in directed.items():
        b = directed.get((j, i), 0.0)
        union[(i, j)] = union[(j, i)] = a + b - a * b
    return union


def random_epochs(n_epochs=7, n_samples=30, dim=5, seed=0):
    """Epochs that miss some samples and list the others in a different order each time."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_samples, dim))
    epochs, first_vertex = [], 0
    for t in range(n_epochs):
        present = rng.permutation(np.flatnonzero(rng.random(n_samples) < 0.7))
        features = base[present] + 0.3 * t + rng.normal(scale=0.5, size=(len(present), dim))
        sigma = rng.uniform(0.2, 2.0, size=len(present)).astype(np.float32)
        rho = rng.uniform(0.0, 0.5, size=len(present)).astype(np.float32)
        epochs.append(make_epoch(present + 100, features, first_vertex, sigma, rho))
        first_vertex += len(present) + 3
    return epochs


def test_temporal_neighbours_are_the_true_top_k_with_more_epochs_than_k():
    positions = [0.0, 10.0, 11.0, 12.0, 9.0, 8.0, 13.0, 0.5, 14.0, 0.7, 15.0, 0.9]
    rng = np.random.default_rng(1)
    epochs = []
    for t, x in enumerate(positions):
        features = rng.normal(size=(4, 3)) + 100.0
        features[2] = [x, 0.0, 0.0]
        epochs.append(make_epoch([10, 11, 42, 13], features, first_vertex=4 * t))
    rows, cols, vals = temporal_memberships(epochs[0], epochs[1:], n_neighbors=3)
    from_sample = cols[rows == 2]
    assert sorted((from_sample - 2) // 4) == [7, 9, 11]
    np.testing.assert_allclose(
        vals[rows == 2][np.argsort(from_sample)], np.exp([-0.5, -0.7, -0.9]), rtol=1e-6
    )
    union = temporal_edges(epochs, n_neighbors=3)
    expected = brute_force_temporal(epochs, 3, None)
    got = as_dict(union.head, union.tail, union.weight)
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=1e-5)


def test_temporal_identity_by_sample_id_with_missing_and_shuffled_rows():
    epochs = random_epochs()
    edges = temporal_edges(epochs, n_neighbors=3)
    vertex_sample = {}
    vertex_epoch = {}
    for t, epoch in enumerate(epochs):
        for vertex, sample in zip(epoch.vertex_ids, epoch.sample_ids, strict=True):
            vertex_sample[int(vertex)] = int(sample)
            vertex_epoch[int(vertex)] = t
    assert len(edges) > 0
    assert np.all(edges.kind == EdgeKind.TEMPORAL)
    for head, tail in zip(edges.head, edges.tail, strict=True):
        assert vertex_sample[int(head)] == vertex_sample[int(tail)]
        assert vertex_epoch[int(head)] != vertex_epoch[int(tail)]
    expected = brute_force_temporal(epochs, 3, None)
    got = as_dict(edges.head, edges.tail, edges.weight)
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("window", [0, 1, 2, 3, 4, 100])
def test_temporal_window_is_respected(window):
    epochs = random_epochs(n_epochs=8, seed=2)
    edges = temporal_edges(iter(epochs), n_neighbors=2, window=window)
    epoch_of = {int(v): t for t, e in enumerate(epochs) for v in e.vertex_ids}
    steps = [
        abs(epoch_of[int(h)] - epoch_of[int(t)])
        for h, t in zip(edges.head, edges.tail, strict=True)
    ]
    assert all(2 * step <= window for step in steps)
    if window in (2, 3):
        assert max(steps) == 1
    expected = brute_force_temporal(epochs, 2, window)
    got = as_dict(edges.head, edges.tail, edges.weight)
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=1e-5)


def test_temporal_edges_stream_a_bounded_window():
    epochs = random_epochs(n_epochs=12, seed=4)
    window = 4
    refs: list[weakref.ref] = []

    def stream():
        for t, epoch in enumerate(epochs):
            assert all(ref() is None for ref in refs[: max(t - window, 0)]), (
                f"epochs before step {t - window} still held at step {t}"
            )
            copy = EpochVertices(
                epoch.sample_ids, epoch.vertex_ids, epoch.features.copy(), epoch.sigma, epoch.rho
            )
            refs.append(weakref.ref(copy))
            yield copy
            del copy

    streamed = temporal_edges(stream(), n_neighbors=3, window=window)
    whole = temporal_edges(epochs, n_neighbors=3, window=window)
    assert as_dict(streamed.head, streamed.tail, streamed.weight) == as_dict(
        whole.head, whole.tail, whole.weight
    )


def test_temporal_weights_use_each_sources_sigma_rho():
    first = make_epoch([5], [[0.0, 0.0]], first_vertex=0, sigma=0.5, rho=1.0)
    second = make_epoch([5], [[3.0, 4.0]], first_vertex=1, sigma=2.0, rho=0.0)
    edges = temporal_edges([first, second], n_neighbors=1)
    a, b = np.exp(-(5.0 - 1.0) / 0.5), np.exp(-5.0 / 2.0)
    got = as_dict(edges.head, edges.tail, edges.weight)
    assert got == pytest.approx({(0, 1): a + b - a * b, (1, 0): a + b - a * b}, rel=1e-6)


def test_epoch_vertices_validation():
    with pytest.raises(InputError, match="unique"):
        make_epoch([1, 1], np.zeros((2, 2)), 0)
    with pytest.raises(InputError, match="features"):
        make_epoch([1, 2], np.zeros((3, 2)), 0)
    with pytest.raises(InputError, match="window"):
        temporal_edges([], n_neighbors=2, window=-2)
    assert len(temporal_edges([], n_neighbors=2)) == 0


# ---------------------------------------------------------------- edge sets and mixing


def test_edge_set_drain_is_concat_and_empties_the_list():
    rng = np.random.default_rng(0)
    parts = [
        EdgeSet.from_coo(rng.integers(0, 50, n), rng.integers(0, 50, n), rng.random(n), kind)
        for n, kind in ((7, EdgeKind.SPATIAL), (0, EdgeKind.BOUNDARY), (5, EdgeKind.TEMPORAL))
    ]
    expected = EdgeSet.concat(parts)
    pending = list(parts)
    drained = EdgeSet.drain(pending)
    assert pending == []
    for name in ("head", "tail", "weight", "kind"):
        np.testing.assert_array_equal(getattr(drained, name), getattr(expected, name))
        assert getattr(drained, name).dtype == getattr(expected, name).dtype
    assert len(EdgeSet.drain([])) == 0


def test_mix_edges_in_chunks_is_the_whole_array_arithmetic(monkeypatch):
    import timevis_cli.fit.complex as complex_module

    rng = np.random.default_rng(1)
    m = 1000
    edges = EdgeSet(rng.integers(0, 99, m), rng.integers(0, 99, m), rng.random(m).astype(np.float32),
                    rng.integers(0, 3, m).astype(np.uint8))  # fmt: skip
    rates = {"spatial": 5.0, "boundary": 3.0, "temporal": 100.0}
    whole = mix_edges(edges, rates=rates, prune_offset=0.001)
    monkeypatch.setattr(complex_module, "_MIX_CHUNK", 7)
    chunked = mix_edges(edges, rates=rates, prune_offset=0.001)
    for name in ("head", "tail", "weight", "kind"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    # the arithmetic itself: w = mu * rate where mu >= max(mu of the kind) / rate + offset
    for kind, name in enumerate(("spatial", "boundary", "temporal")):
        mu = edges.weight[edges.kind == kind].astype(np.float64)
        kept = mu[mu >= mu.max() / rates[name] + 0.001]
        np.testing.assert_array_equal(whole.weight[whole.kind == kind], (kept * rates[name]).astype(np.float32))


def test_edge_set_concat_and_len():
    spatial = EdgeSet.from_coo([0, 1], [1, 0], [0.5, 0.5], EdgeKind.SPATIAL)
    temporal = EdgeSet.from_coo([2], [3], [0.9], EdgeKind.TEMPORAL)
    joined = EdgeSet.concat([spatial, EdgeSet.empty(), temporal])
    assert len(joined) == 3 and len(EdgeSet.empty()) == 0
    np.testing.assert_array_equal(joined.head, [0, 1, 2])
    np.testing.assert_array_equal(joined.tail, [1, 0, 3])
    np.testing.assert_array_equal(joined.kind, [0, 0, 2])
    assert joined.head.dtype == np.int64 and joined.tail.dtype == np.int64
    assert joined.weight.dtype == np.float32 and joined.kind.dtype == np.uint8
    assert len(joined.of_kind(EdgeKind.TEMPORAL)) == 1
    assert len(EdgeSet.concat([])) == 0
    with pytest.raises(AttributeError):
        joined.head = np.zeros(3, np.int64)
    with pytest.raises(InputError, match="one length"):
        EdgeSet([0, 1], [1], [0.5, 0.5], [0, 0])
    with pytest.raises(InputError, match="kind"):
        EdgeSet([0], [1], [0.5], [7])


def test_mix_edges_prunes_and_weights_per_kind():
    mus = {
        EdgeKind.SPATIAL: [1.0, 0.3, 0.2, 0.15],
        EdgeKind.BOUNDARY: [0.5, 0.1, 0.102],
        EdgeKind.TEMPORAL: [0.8, 0.0085, 0.05],
    }
    counter = itertools.count()
    parts = [
        EdgeSet.from_coo([next(counter) for _ in mu], np.zeros(len(mu)), mu, kind)
        for kind, mu in mus.items()
    ]
    edges = EdgeSet.concat(parts)
    weight_before = edges.weight.copy()
    mixed = mix_edges(edges)
    np.testing.assert_array_equal(edges.weight, weight_before)
    np.testing.assert_array_equal(mixed.head, [0, 1, 4, 6, 7, 9])
    np.testing.assert_allclose(mixed.weight, [5.0, 1.5, 2.5, 0.51, 80.0, 5.0], rtol=1e-6)
    np.testing.assert_array_equal(mixed.kind, [0, 0, 1, 1, 2, 2])
    ones = {"spatial": 1.0, "boundary": 1.0, "temporal": 1.0}
    assert len(mix_edges(edges, rates=ones, prune_offset=0.0)) == 3, "rate 1 keeps the maxima"
    assert len(mix_edges(edges, rates=ones)) == 0, "the offset drops even the maxima at rate 1"
    with pytest.raises(InputError, match="unknown"):
        mix_edges(edges, rates={"spatial": 5.0, "boundary": 5.0, "temporal": 1.0, "x": 1.0})
    with pytest.raises(InputError, match="no rate"):
        mix_edges(edges, rates={"spatial": 5.0})
    with pytest.raises(InputError, match="> 0"):
        mix_edges(edges, rates={"spatial": 0.0, "boundary": 5.0, "temporal": 1.0})
    assert len(mix_edges(parts[0], rates={"spatial": 5.0})) == 2
