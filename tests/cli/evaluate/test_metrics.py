"""Invariance, oracle and hand-computed tests of the faithfulness metrics (docs/method.md §8)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from scipy.stats import kendalltau, pearsonr, spearmanr

from timevis_cli.errors import InputError
from timevis_cli.evaluate import metrics
from timevis_cli.evaluate.metrics import (
    HIGHER_IS_BETTER,
    boundary_counts,
    boundary_preservation,
    neighbor_kept_fraction,
    nnpv,
    nnpv_counts,
    ppr,
    recon_error,
    temporal_global,
    temporal_global_scores,
    temporal_local,
    temporal_local_scores,
    temppv,
    temppv_per_sample,
)

FIVE_HIGH = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
# The same line, with samples 0 and 4 swapped.
FIVE_LOW = np.array([[15.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0], [0.0, 0.0]])


def _similarity(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rotate, scale and translate 2-D points (keeps every distance ratio)."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return 2.5 * points @ rotation.T + np.array([3.0, -7.0])


def _isometric_lift(points: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Embed (..., 2) points isometrically into (..., dim) with orthonormal columns."""
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, 2)))
    return points @ basis.T


def _kdtree_knn(data: np.ndarray, queries: np.ndarray | None, k: int) -> np.ndarray:
    """An independent exact kNN with the ``knn`` callable contract."""
    tree = cKDTree(data)
    if queries is None:
        _, idx = tree.query(data, k=k + 1)
        return idx[:, 1:]
    _, idx = tree.query(queries, k=k)
    return idx.reshape(len(queries), k)


def _kdtree_overlap(high: np.ndarray, low: np.ndarray, k: int) -> np.ndarray:
    _, high_nn = cKDTree(high).query(high, k=k + 1)
    _, low_nn = cKDTree(low).query(low, k=k + 1)
    return np.array(
        [len(np.intersect1d(a[1:], b[1:])) for a, b in zip(high_nn, low_nn, strict=True)]
    )


def _random_walks(n_epochs: int, n_samples: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_epochs, n_samples, dim)).cumsum(axis=0)


def _shuffle_epochs(seq: np.ndarray, seed: int) -> np.ndarray:
    """Permute each sample's epochs independently."""
    rng = np.random.default_rng(seed)
    out = seq.copy()
    for i in range(seq.shape[1]):
        out[:, i] = seq[rng.permutation(seq.shape[0]), i]
    return out


def test_higher_is_better_names_every_metric():
    assert HIGHER_IS_BETTER == {
        "nnpv": True,
        "boundary": True,
        "ppr": True,
        "landscape": True,
        "recon": False,
        "temppv": False,
        "temp_l": True,
        "temp_g": True,
    }


# ----------------------------------------------------------------------------------- nnpv


def test_nnpv_identity_and_similarity_score_one():
    points = np.random.default_rng(0).normal(size=(300, 2))
    assert nnpv(points, points) == 1.0
    assert nnpv(points, _similarity(points)) == 1.0
    assert nnpv(_isometric_lift(points, 12), _similarity(points)) == 1.0
    assert nnpv(points, points, k=15, convention="reference") == 15.0


def test_nnpv_shuffled_embedding_scores_low():
    rng = np.random.default_rng(1)
    high = rng.normal(size=(500, 16))
    low = rng.normal(size=(500, 2))[rng.permutation(500)]
    score = nnpv(high, low)
    assert score < 0.3, f"nnpv {score}"


def test_nnpv_five_point_hand_case():
    # High 1-NN: 0->1, 1->0, 2->1, 3->2, 4->3; low 1-NN: 0->3, 1->4, 2->1, 3->2, 4->1.
    assert nnpv_counts(FIVE_HIGH, FIVE_LOW, k=1).tolist() == [0, 0, 1, 1, 0]
    assert nnpv(FIVE_HIGH, FIVE_LOW, k=1) == pytest.approx(2 / 5)
    # High 2-NN: {1,2} {0,2} {1,0} {2,1} {3,2}; low 2-NN: {3,2} {4,2} {1,4} {2,1} {1,2}.
    assert nnpv_counts(FIVE_HIGH, FIVE_LOW, k=2).tolist() == [1, 1, 1, 2, 1]
    assert nnpv(FIVE_HIGH, FIVE_LOW, k=2) == pytest.approx(6 / 10)
    # Reference: k = 2 including self -> 1 + the k = 1 counts.
    assert nnpv(FIVE_HIGH, FIVE_LOW, k=2, convention="reference") == pytest.approx(7 / 5)


@pytest.mark.parametrize("k", [1, 5, 15])
def test_nnpv_agrees_with_kdtree(k):
    rng = np.random.default_rng(2)
    high = rng.normal(size=(400, 8))
    low = high[:, :2] + 0.3 * rng.normal(size=(400, 2))
    expected = _kdtree_overlap(high, low, k)
    np.testing.assert_array_equal(nnpv_counts(high, low, k=k), expected)
    assert nnpv(high, low, k=k) == pytest.approx(expected.mean() / k)
    reference = _kdtree_overlap(high, low, k - 1) + 1 if k > 1 else np.ones(400)
    assert nnpv(high, low, k=k, convention="reference") == pytest.approx(reference.mean())


def test_nnpv_with_reference_set_searches_train_and_test():
    rng = np.random.default_rng(3)
    train_high, test_high = rng.normal(size=(200, 6)), rng.normal(size=(50, 6))
    train_low = train_high[:, :2] + 0.2 * rng.normal(size=(200, 2))
    test_low = test_high[:, :2] + 0.2 * rng.normal(size=(50, 2))
    k = 10
    all_high = np.concatenate([train_high, test_high])
    all_low = np.concatenate([train_low, test_low])
    expected = _kdtree_overlap(all_high, all_low, k)[200:]
    counts = nnpv_counts(test_high, test_low, k, high_ref=train_high, low_ref=train_low)
    np.testing.assert_array_equal(counts, expected)
    score = nnpv(test_high, test_low, k, high_ref=train_high, low_ref=train_low)
    assert score == pytest.approx(expected.mean() / k)


def test_self_is_excluded_by_index_not_by_position():
    samples = np.array([[0.0], [4.0]])
    reference = np.array([[0.0], [1.0], [9.0]])  # row 0 duplicates sample 0

    def self_second(data, queries, k):
        # A backend whose tie order puts the duplicate before the sample itself.
        found = _kdtree_knn(data, queries, k)
        for row, own in enumerate(range(len(reference), len(data))):
            if own in found[row]:
                others = [j for j in found[row] if j != own]
                found[row] = [others[0], own, *others[1:]][:k]
        return found

    found = metrics._knn_with_reference(samples, reference, 1, self_second)
    assert found[:, 0].tolist() == [0, 1]  # sample 0: its duplicate, never itself (row 3)


def test_nnpv_injected_knn_matches_default_and_is_checked():
    rng = np.random.default_rng(4)
    high, low = rng.normal(size=(120, 5)), rng.normal(size=(120, 2))
    assert nnpv(high, low, k=7, knn=_kdtree_knn) == nnpv(high, low, k=7)
    with pytest.raises(InputError, match="knn function returned shape"):
        nnpv(high, low, k=7, knn=lambda data, queries, k: np.zeros((3, k)))


def test_exact_knn_blocks_agree_with_kdtree(monkeypatch):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(333, 7))
    queries = rng.normal(size=(41, 7))
    whole = metrics._exact_knn(data, None, 9)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 1000)  # three rows per block
    np.testing.assert_array_equal(metrics._exact_knn(data, None, 9), whole)
    np.testing.assert_array_equal(whole, _kdtree_knn(data, None, 9))
    np.testing.assert_array_equal(
        metrics._exact_knn(data, queries, 9), _kdtree_knn(data, queries, 9)
    )


# ------------------------------------------------------------------------------ boundary


def test_boundary_identity_similarity_and_shuffle():
    rng = np.random.default_rng(6)
    points, border = rng.normal(size=(300, 2)), rng.normal(size=(120, 2))
    assert boundary_preservation(points, points, border, border) == 1.0
    moved_points, moved_border = _similarity(points), _similarity(border)
    assert boundary_preservation(points, moved_points, border, moved_border) == 1.0
    lifted = boundary_preservation(
        _isometric_lift(points, 9), points, _isometric_lift(border, 9), border
    )
    assert lifted == 1.0
    shuffled = border[rng.permutation(120)]
    score = boundary_preservation(points, points, border, shuffled)
    assert score < 0.3, f"boundary {score}"


def test_boundary_hand_case_and_reference_convention():
    high, low = np.array([[0.0], [10.0]]), np.array([[0.0, 0.0], [10.0, 0.0]])
    border_high = np.array([[1.0], [2.0], [9.0]])
    border_low = np.array([[1.0, 0.0], [9.0, 0.0], [2.0, 0.0]])
    # high 2-NN: {0, 1}, {2, 1}; low 2-NN: {0, 2}, {1, 2}.
    assert boundary_counts(high, low, border_high, border_low, k=2).tolist() == [1, 2]
    assert boundary_preservation(high, low, border_high, border_low, k=2) == 0.75
    reference = boundary_preservation(
        high, low, border_high, border_low, k=2, convention="reference"
    )
    assert reference == 1.5


def test_boundary_agrees_with_kdtree():
    rng = np.random.default_rng(7)
    high, border_high = rng.normal(size=(200, 6)), rng.normal(size=(80, 6))
    low = high[:, :2] + 0.3 * rng.normal(size=(200, 2))
    border_low = border_high[:, :2] + 0.3 * rng.normal(size=(80, 2))
    _, high_nn = cKDTree(border_high).query(high, k=15)
    _, low_nn = cKDTree(border_low).query(low, k=15)
    expected = [len(np.intersect1d(a, b)) for a, b in zip(high_nn, low_nn, strict=True)]
    assert boundary_counts(high, low, border_high, border_low).tolist() == expected


# ------------------------------------------------------------------------------ ppr, recon


def test_ppr_and_recon():
    labels = np.random.default_rng(8).integers(0, 10, size=100)
    assert ppr(labels, labels) == 1.0
    changed = labels.copy()
    changed[:25] = (changed[:25] + 1) % 10
    assert ppr(labels, changed) == 0.75
    x = np.random.default_rng(9).normal(size=(50, 4))
    assert recon_error(x, x) == 0.0
    assert recon_error(np.zeros((2, 2)), np.array([[3.0, 4.0], [0.0, 0.0]])) == 2.5


# ------------------------------------------------------------------------------ temppv


def _walk_with_steps(seed: int, low_step) -> tuple[np.ndarray, np.ndarray]:
    """Samples whose high-D step (and so neighbour loss) varies; low_step maps it to a 2-D step."""
    rng = np.random.default_rng(seed)
    n_epochs, n_samples = 12, 60
    steps = np.where(rng.random((n_epochs - 1, n_samples)) < 0.25, 30.0, 0.01)
    high = np.empty((n_epochs, n_samples, 5))
    low = np.empty((n_epochs, n_samples, 2))
    high[0] = 10.0 * rng.normal(size=(n_samples, 5))
    low[0] = rng.normal(size=(n_samples, 2))
    for t in range(1, n_epochs):
        dirs = rng.normal(size=(n_samples, 5))
        high[t] = high[t - 1] + steps[t - 1, :, None] * dirs / np.linalg.norm(dirs, axis=1)[:, None]
        angle = rng.uniform(0, 2 * np.pi, size=n_samples)
        unit = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        low[t] = low[t - 1] + low_step(steps[t - 1])[:, None] * unit
    return high, low


def test_temppv_sign_follows_the_embedding():
    faithful = temppv(*_walk_with_steps(10, lambda s: s))
    assert faithful < -0.5, f"temppv {faithful}"
    inverted = temppv(*_walk_with_steps(10, lambda s: 30.01 - s))
    assert inverted > 0.5, f"temppv {inverted}"


def test_temppv_agrees_with_an_independent_computation():
    high, low = _walk_with_steps(11, lambda s: s + 0.1)
    k = 15
    kept = np.stack(
        [_kdtree_overlap_pairs(high[t], high[t + 1], k) / k for t in range(len(high) - 1)],
        axis=1,
    )
    moved = np.linalg.norm(np.diff(low, axis=0), axis=2).T
    expected = []
    for a, b in zip(kept, moved, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected.append(pearsonr(a, b)[0])
    np.testing.assert_allclose(temppv_per_sample(high, low, k), expected, atol=1e-12)
    assert temppv(high, low, k) == pytest.approx(np.nanmean(expected))
    first = neighbor_kept_fraction(high[0], high[1], k)
    np.testing.assert_allclose(first, kept[:, 0])


def _kdtree_overlap_pairs(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    _, a = cKDTree(first).query(first, k=k + 1)
    _, b = cKDTree(second).query(second, k=k + 1)
    return np.array([len(np.intersect1d(x[1:], y[1:])) for x, y in zip(a, b, strict=True)])


def test_temppv_ignores_constant_series_and_reference_counts_them_as_zero():
    high, low = _walk_with_steps(12, lambda s: s)
    low[:, 0] = low[0, 0]  # sample 0 never moves in 2-D: its correlation is undefined
    per_sample = temppv_per_sample(high, low)
    assert np.isnan(per_sample[0]) and not np.isnan(per_sample[1:]).any()
    assert temppv(high, low) == pytest.approx(per_sample[1:].mean())
    reference_rows = temppv_per_sample(high, low, convention="reference")
    reference = temppv(high, low, convention="reference")
    assert reference == pytest.approx(np.nan_to_num(reference_rows).mean())
    static = np.repeat(high[:1], 4, axis=0)
    assert np.isnan(temppv(static, np.repeat(low[:1], 4, axis=0)))


def test_temppv_reads_one_epoch_at_a_time_from_a_list():
    high, low = _walk_with_steps(13, lambda s: s)
    assert temppv(list(high), list(low)) == temppv(high, low)


# ------------------------------------------------------------------------------ temp_l


def test_temporal_local_identity_similarity_and_shuffle():
    low = _random_walks(20, 40, 2, seed=14)
    assert temporal_local(low, low) == 1.0
    assert temporal_local(low, _similarity(low)) == 1.0
    assert temporal_local(_isometric_lift(low, 16), low) == 1.0
    assert temporal_local(low, low, convention="reference") == 5.0
    shuffled = temporal_local(low, _shuffle_epochs(low, seed=15))
    assert shuffled < 0.45, f"temp_l {shuffled}"


def test_temporal_local_hand_case():
    high = np.array([0.0, 1.0, 3.0, 7.0]).reshape(4, 1, 1)
    low = np.array([[0.0, 0.0], [1.0, 0.0], [7.0, 0.0], [3.0, 0.0]]).reshape(4, 1, 2)
    # nearest other epoch, high: 0->1, 1->0, 2->1, 3->2; low: 0->1, 1->0, 2->3, 3->1.
    assert temporal_local_scores(high, low, k=1)[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert temporal_local(high, low, k=1) == 0.5


def test_temporal_local_agrees_with_a_loop():
    high, low = _random_walks(9, 15, 6, seed=16), _random_walks(9, 15, 2, seed=17)
    k = 3
    expected = np.empty((9, 15))
    for i in range(15):
        high_dist, low_dist = cdist(high[:, i], high[:, i]), cdist(low[:, i], low[:, i])
        for t in range(9):
            others = [s for s in range(9) if s != t]
            near_high = {others[j] for j in np.argsort(high_dist[t, others])[:k]}
            near_low = {others[j] for j in np.argsort(low_dist[t, others])[:k]}
            expected[t, i] = len(near_high & near_low) / k
    np.testing.assert_array_equal(temporal_local_scores(high, low, k), expected)


# ------------------------------------------------------------------------------ temp_g


def _scipy_temporal_global(high, low, method, include_self=False):
    correlate = kendalltau if method == "kendall" else spearmanr
    n_epochs, n_samples = high.shape[:2]
    out = np.empty((n_epochs, n_samples))
    for i in range(n_samples):
        high_dist, low_dist = cdist(high[:, i], high[:, i]), cdist(low[:, i], low[:, i])
        for t in range(n_epochs):
            keep = np.ones(n_epochs, bool)
            keep[t] = include_self
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[t, i] = correlate(high_dist[t, keep], low_dist[t, keep])[0]
    return out


@pytest.mark.parametrize("method", ["kendall", "spearman"])
@pytest.mark.parametrize("convention", ["paper", "reference"])
def test_temporal_global_agrees_with_scipy_on_random_data(method, convention):
    high, low = _random_walks(11, 12, 7, seed=18), _random_walks(11, 12, 2, seed=19)
    ours = temporal_global_scores(high, low, method, convention=convention)
    expected = _scipy_temporal_global(high, low, method, include_self=convention == "reference")
    np.testing.assert_allclose(ours, expected, atol=1e-12)


@pytest.mark.parametrize("method", ["kendall", "spearman"])
def test_temporal_global_agrees_with_scipy_with_ties(method):
    rng = np.random.default_rng(20)
    high = rng.integers(0, 3, size=(10, 25, 3)).astype(np.float64)
    low = rng.integers(0, 3, size=(10, 25, 2)).astype(np.float32)
    high[:, 0] = high[0, 0]  # sample 0 never moves: every correlation undefined
    ours = temporal_global_scores(high, low, method)
    expected = _scipy_temporal_global(high, low.astype(np.float64), method)
    assert np.isnan(ours[:, 0]).all()
    np.testing.assert_allclose(ours, expected, atol=1e-12, equal_nan=True)
    assert temporal_global(high, low, method) == pytest.approx(np.nanmean(expected))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=9).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
        )
    )
)
def test_kendall_kernel_matches_scipy_on_tied_vectors(pair):
    x, y = (np.array([values], dtype=np.float64) for values in pair)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = kendalltau(x[0], y[0])[0]
    np.testing.assert_allclose(metrics._kendall_tau_b(x, y), [expected], atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("method", ["kendall", "spearman"])
def test_temporal_global_identity_similarity_and_shuffle(method):
    low = _random_walks(25, 30, 2, seed=21)
    assert temporal_global(low, low, method) == 1.0
    assert temporal_global(low, _similarity(low), method) == 1.0
    assert temporal_global(_isometric_lift(low, 10), low, method) == 1.0
    shuffled = temporal_global(low, _shuffle_epochs(low, seed=22), method)
    assert abs(shuffled) < 0.2, f"temp_g {shuffled}"


# ------------------------------------------------------------------------------ streaming


class _RecordingSeq:
    """A lazy (T, N, D) array that records the sample blocks read, like an h5py dataset."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = values
        self.shape = values.shape
        self.widths: list[int] = []

    def __getitem__(self, key):
        epochs, samples = key
        self.widths.append(len(range(*samples.indices(self.shape[1]))))
        return self._values[epochs, samples]


def test_temporal_metrics_stream_over_sample_blocks(monkeypatch):
    high, low = _random_walks(8, 23, 5, seed=23), _random_walks(8, 23, 2, seed=24)
    local = temporal_local_scores(high, low, k=3)
    global_ = temporal_global_scores(high, low)
    recorded = _RecordingSeq(high)
    np.testing.assert_array_equal(temporal_local_scores(recorded, low, 3, block_size=5), local)
    assert max(recorded.widths) == 5 and sum(recorded.widths) == 23
    np.testing.assert_array_equal(temporal_global_scores(high, low, block_size=4), global_)
    by_hand = np.concatenate(
        [temporal_global_scores(high[:, s : s + 6], low[:, s : s + 6]) for s in range(0, 23, 6)],
        axis=1,
    )
    np.testing.assert_array_equal(by_hand, global_)
    assert temporal_local(high, low, k=3, block_size=2) == pytest.approx(local.mean())
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 200)  # Kendall rows in chunks of 4
    np.testing.assert_array_equal(temporal_global_scores(high, low), global_)
    np.testing.assert_array_equal(temporal_local_scores(high, low, k=3), local)


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused():
    rng = np.random.default_rng(25)
    high, low = rng.normal(size=(20, 4)), rng.normal(size=(20, 2))
    with pytest.raises(InputError, match="rows"):
        nnpv(high, low[:19])
    with pytest.raises(InputError, match="k=20 must be <= 19"):
        nnpv(high, low, k=20)
    with pytest.raises(InputError, match=">= 1"):
        nnpv(high, low, k=0)
    with pytest.raises(InputError, match="both high_ref and low_ref"):
        nnpv(high, low, high_ref=high)
    with pytest.raises(InputError, match="columns"):
        nnpv(high, low, high_ref=high[:, :3], low_ref=low)
    bad = high.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="1 non-finite"):
        nnpv(bad, low)
    with pytest.raises(InputError, match="convention"):
        nnpv(high, low, convention="published")
    with pytest.raises(InputError, match="boundary points"):
        boundary_preservation(high, low, high[:5], low[:5], k=6)
    with pytest.raises(InputError, match="1-D class labels"):
        ppr(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(InputError, match="same non-empty shape"):
        recon_error(high, high[:, :3])
    seq = _random_walks(4, 6, 3, seed=26)
    with pytest.raises(InputError, match="other epochs"):
        temporal_local(seq, seq[..., :2], k=4)
    with pytest.raises(InputError, match="same epochs and samples"):
        temporal_global(seq, seq[:, :5])
    with pytest.raises(InputError, match="method"):
        temporal_global(seq, seq, method="pearson")
    with pytest.raises(InputError, match="block_size"):
        temporal_local(seq, seq, k=2, block_size=0)
    with pytest.raises(InputError, match="at least 3 epochs"):
        temppv(seq[:2], seq[:2], k=2)
    nan_seq = seq.copy()
    nan_seq[1, 2, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        temporal_global(nan_seq, seq)
