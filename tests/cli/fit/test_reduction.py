"""Tests of timevis_cli.fit.reduction: k-center greedy coverage, TwoNN, nested epoch selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timevis_cli.errors import InputError
from timevis_cli.fit import reduction
from timevis_cli.fit.reduction import (
    ReductionParams,
    covering_radius_after,
    k_center_greedy,
    normalize_epoch,
    select_epochs,
    twonn_dimension,
)

TOLERANCE = 1e-5  # float32 distances vs the float64 brute force


def _blobs(n_samples: int = 600, n_features: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, n_features))
    labels = rng.integers(0, 6, size=n_samples)
    points = centers[labels] + 0.15 * rng.normal(size=(n_samples, n_features))
    return normalize_epoch(points)


def _nearest_center_distances(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Brute force float64 distance of every row to its nearest selected row, shape (n,)."""
    points = features.astype(np.float64)
    diff = points[:, None, :] - points[None, centers, :]
    return np.sqrt((diff**2).sum(axis=2)).min(axis=1)


def _gonzalez_oracle(features: np.ndarray, initial: np.ndarray, radius: float) -> np.ndarray:
    """Plain float64 Gonzalez greedy with the maximum as covering radius."""
    points = features.astype(np.float64)
    selected = list(initial)
    min_dist = _nearest_center_distances(points, np.asarray(selected))
    while min_dist.max() >= radius:
        farthest = int(np.argmax(min_dist))
        selected.append(farthest)
        min_dist = np.minimum(min_dist, np.linalg.norm(points - points[farthest], axis=1))
    return np.asarray(selected)


def _drifting_epochs(n_samples: int, n_epochs: int, seed: int = 0) -> list[np.ndarray]:
    """Epoch features (n, 16) on a 3-D subspace: noise at epoch 0 that separates into clusters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=n_samples)
    centers = 3.0 * rng.normal(size=(5, 3))
    noise = rng.normal(size=(n_samples, 3))
    basis = np.linalg.qr(rng.normal(size=(16, 3)))[0]
    return [
        ((epoch / (n_epochs - 1)) * centers[labels] + noise) @ basis.T
        + 0.01 * rng.normal(size=(n_samples, 16))
        for epoch in range(n_epochs)
    ]


# --- normalize_epoch ------------------------------------------------------------------------------


def test_normalize_epoch_scales_to_unit_max_norm_without_touching_input() -> None:
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float16)
    before = features.copy()
    normalised = normalize_epoch(features)
    assert normalised.dtype == np.float32
    assert np.isclose(np.linalg.norm(normalised, axis=1).max(), 1.0)
    assert np.array_equal(features, before)


@pytest.mark.parametrize(
    "features",
    [np.zeros((5, 3)), np.full((2, 2), np.nan), np.ones(4), np.ones((0, 3))],
    ids=["all-zero", "nan", "1-D", "empty"],
)
def test_normalize_epoch_rejects_unusable_features(features: np.ndarray) -> None:
    with pytest.raises(InputError):
        normalize_epoch(features)


# --- k_center_greedy ------------------------------------------------------------------------------


def test_every_point_is_within_radius_of_a_centre() -> None:
    features = _blobs()
    initial = np.array([3, 10, 200], dtype=np.int64)
    selected = k_center_greedy(features, initial, radius=0.2)
    assert np.array_equal(selected[:3], initial)
    assert np.unique(selected).size == selected.size
    distances = _nearest_center_distances(features, selected)
    assert distances.max() < 0.2 + TOLERANCE, f"covering radius {distances.max()}"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_samples=st.integers(1, 60),
    radius=st.floats(0.05, 1.0),
    coverage=st.floats(0.1, 1.0),
)
def test_coverage_holds_for_any_cloud(
    seed: int, n_samples: int, radius: float, coverage: float
) -> None:
    features = normalize_epoch(np.random.default_rng(seed).normal(size=(n_samples, 3)))
    selected = k_center_greedy(features, np.array([], dtype=np.int64), radius, coverage=coverage)
    within = (_nearest_center_distances(features, selected) < radius + TOLERANCE).mean()
    assert within >= coverage, f"{within:.3f} of the points within {radius}, wanted {coverage}"


def test_greedy_matches_plain_gonzalez() -> None:
    features = _blobs(n_samples=300)
    initial = np.array([0], dtype=np.int64)
    selected = k_center_greedy(features, initial, radius=0.25)
    assert np.array_equal(selected, _gonzalez_oracle(features, initial, 0.25))


def test_coverage_quantile_is_respected_and_needs_fewer_centres() -> None:
    features = _blobs()
    initial = np.array([0], dtype=np.int64)
    partial = k_center_greedy(features, initial, radius=0.15, coverage=0.8)
    full = k_center_greedy(features, initial, radius=0.15, coverage=1.0)
    within = (_nearest_center_distances(features, partial) < 0.15 + TOLERANCE).mean()
    assert within >= 0.8, f"only {within:.3f} of the points are within the radius"
    assert partial.size < full.size


def test_smaller_radius_extends_the_same_greedy_sequence() -> None:
    features = _blobs()
    initial = np.array([5], dtype=np.int64)
    coarse = k_center_greedy(features, initial, radius=0.3)
    fine = k_center_greedy(features, initial, radius=0.1)
    assert fine.size > coarse.size
    assert np.array_equal(fine[: coarse.size], coarse)


def test_empty_start_and_max_centers() -> None:
    features = _blobs(n_samples=200)
    selected = k_center_greedy(features, np.array([], dtype=np.int64), radius=0.0, max_centers=7)
    assert selected.size == 7
    assert selected[0] == 0
    everything = k_center_greedy(features, np.array([], dtype=np.int64), radius=0.0)
    assert np.array_equal(np.sort(everything), np.arange(200))


def test_duplicates_end_the_search() -> None:
    features = np.repeat(_blobs(n_samples=20), 3, axis=0)
    selected = k_center_greedy(features, np.array([0], dtype=np.int64), radius=0.0)
    assert selected.size == 20
    assert _nearest_center_distances(features, selected).max() < TOLERANCE


@pytest.mark.parametrize(
    ("initial", "kwargs"),
    [
        (np.array([0, 600]), {"radius": 0.1}),
        (np.array([1, 1]), {"radius": 0.1}),
        (np.array([0.5]), {"radius": 0.1}),
        (np.array([0]), {"radius": -0.1}),
        (np.array([0]), {"radius": 0.1, "coverage": 0.0}),
        (np.array([0]), {"radius": 0.1, "max_centers": 0}),
    ],
    ids=["out-of-range", "repeated", "float-index", "negative-radius", "zero-coverage", "max-0"],
)
def test_k_center_greedy_rejects_bad_input(initial: np.ndarray, kwargs: dict) -> None:
    with pytest.raises(InputError):
        k_center_greedy(_blobs(), initial, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_selection_covers_like_cpu() -> None:
    features = _blobs(n_samples=2000)
    initial = np.array([0, 1], dtype=np.int64)
    on_gpu = k_center_greedy(features, initial, radius=0.15, device="cuda")
    on_cpu = k_center_greedy(features, initial, radius=0.15, device="cpu")
    assert _nearest_center_distances(features, on_gpu).max() < 0.15 + TOLERANCE
    assert abs(on_gpu.size - on_cpu.size) <= 0.05 * on_cpu.size
    assert abs(twonn_dimension(features, "cuda") - twonn_dimension(features, "cpu")) < 0.05


# --- covering_radius_after --------------------------------------------------------------------------


def test_covering_radius_after_matches_brute_force_and_decreases() -> None:
    features = _blobs()
    initial = np.array([0, 1, 2], dtype=np.int64)
    radii = [covering_radius_after(features, initial, n, "cpu") for n in (3, 10, 40)]
    assert radii[0] > radii[1] > radii[2]
    selected = k_center_greedy(features, initial, radius=0.0, max_centers=40)
    brute = _nearest_center_distances(features, selected).max()
    assert abs(radii[2] - brute) < TOLERANCE
    with pytest.raises(InputError, match="n_centers"):
        covering_radius_after(features, initial, 0, "cpu")


# --- twonn_dimension --------------------------------------------------------------------------------


@pytest.mark.parametrize("dimension", [2, 5])
def test_twonn_recovers_the_dimension_of_a_linear_subspace(dimension: int) -> None:
    rng = np.random.default_rng(dimension)
    basis = np.linalg.qr(rng.normal(size=(20, dimension)))[0]
    points = rng.uniform(size=(2000, dimension)) @ basis.T + 3.0
    estimate = twonn_dimension(points, "cpu")
    assert abs(estimate - dimension) <= 0.2 * dimension, f"TwoNN {estimate} for d={dimension}"


def test_twonn_drops_duplicates() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(1000, 3)) @ np.linalg.qr(rng.normal(size=(10, 3)))[0].T
    with_copies = np.concatenate([points, points[:100]])
    estimate = twonn_dimension(with_copies)
    assert np.isfinite(estimate)
    assert abs(estimate - twonn_dimension(points[100:])) < 0.5


def test_twonn_rejects_too_few_points() -> None:
    with pytest.raises(InputError):
        twonn_dimension(np.ones((6, 4)))


# --- select_epochs ----------------------------------------------------------------------------------


class _Loader:
    """Serves epoch features and records the order in which epochs were asked for."""

    def __init__(self, epochs: list[np.ndarray]) -> None:
        self.epochs = epochs
        self.calls: list[int] = []

    def __call__(self, epoch: int) -> np.ndarray:
        self.calls.append(epoch)
        return self.epochs[epoch]


def _select(loader: _Loader, sample_ids: np.ndarray, seed: int = 0, **kwargs) -> dict:
    options = {"r0": 0.3, "init_size": 20} | kwargs
    return select_epochs(
        loader,
        list(range(len(loader.epochs))),
        sample_ids,
        rng=np.random.default_rng(seed),
        **options,
    )


def test_selections_are_nested_and_epochs_visited_last_first() -> None:
    loader = _Loader(_drifting_epochs(400, 4))
    selections = _select(loader, np.arange(400))
    assert loader.calls == [3, 2, 1, 0]
    for later, earlier in zip((3, 2, 1), (2, 1, 0), strict=True):
        assert set(selections[later]) <= set(selections[earlier]), f"epoch {later} not in {earlier}"
    assert all(np.unique(ids).size == ids.size for ids in selections.values())


def test_each_epoch_is_covered_at_constant_radius() -> None:
    epochs = _drifting_epochs(300, 3)
    selections = _select(_Loader(epochs), np.arange(300), r0=0.2, beta=0.0)
    for epoch, ids in selections.items():
        distances = _nearest_center_distances(normalize_epoch(epochs[epoch]), ids)
        assert distances.max() < 0.2 + TOLERANCE, f"epoch {epoch}: radius {distances.max()}"


def test_selection_returns_sample_ids_not_positions() -> None:
    epochs = _drifting_epochs(300, 3)
    sample_ids = np.random.default_rng(5).permutation(np.arange(1000, 1900, 3))
    by_position = _select(_Loader(epochs), np.arange(300))
    by_id = _select(_Loader(epochs), sample_ids)
    for epoch, positions in by_position.items():
        assert np.array_equal(by_id[epoch], sample_ids[positions])


def test_selection_is_deterministic_for_a_seed() -> None:
    epochs = _drifting_epochs(300, 3)
    first = _select(_Loader(epochs), np.arange(300), seed=7)
    second = _select(_Loader(epochs), np.arange(300), seed=7)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[epoch], second[epoch]) for epoch in first)


def test_twonn_is_skipped_when_alpha_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> float:
        raise AssertionError("twonn_dimension called with alpha == 0")

    monkeypatch.setattr(reduction, "twonn_dimension", forbidden)
    _select(_Loader(_drifting_epochs(200, 2)), np.arange(200), alpha=0.0)


def test_twonn_ratio_scales_the_radius(monkeypatch: pytest.MonkeyPatch) -> None:
    epochs = _drifting_epochs(300, 4)
    plain = _select(_Loader(epochs), np.arange(300), alpha=0.0, beta=0.0)
    fake_dimensions = iter([4.0, 4.0, 4.0, 1.0])  # epochs 3, 2, 1, 0 in visiting order
    monkeypatch.setattr(reduction, "twonn_dimension", lambda *args: next(fake_dimensions))
    scaled = _select(_Loader(epochs), np.arange(300), alpha=1.0, beta=0.0)
    for epoch in (3, 2, 1):  # d_t == d_0: the same radius as without the dimension term
        assert np.array_equal(scaled[epoch], plain[epoch])
    assert scaled[0].size > plain[0].size  # d_0 / 4: a quarter of the radius


def test_larger_r0_keeps_fewer_samples() -> None:
    epochs = _drifting_epochs(300, 2)
    coarse = _select(_Loader(epochs), np.arange(300), r0=0.5)
    fine = _select(_Loader(epochs), np.arange(300), r0=0.2)
    assert all(fine[epoch].size > coarse[epoch].size for epoch in coarse)


def test_init_size_at_least_n_keeps_everything() -> None:
    loader = _Loader(_drifting_epochs(30, 3))
    sample_ids = np.arange(30) * 10
    selections = _select(loader, sample_ids, init_size=50)
    assert all(np.array_equal(np.sort(ids), sample_ids) for ids in selections.values())


def test_selection_logs_sizes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="timevis_cli.fit.reduction"):
        _select(_Loader(_drifting_epochs(200, 2)), np.arange(200))
    messages = [record.getMessage() for record in caplog.records]
    assert sum("keeps" in message for message in messages) == 2
    assert any(record.levelno == logging.INFO for record in caplog.records)


def test_loader_with_wrong_rows_is_reported() -> None:
    loader = _Loader([np.ones((10, 4)), np.random.default_rng(0).normal(size=(9, 4))])
    with pytest.raises(InputError, match="epoch 1"):
        _select(loader, np.arange(10), init_size=2)


# --- parameters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("r0", 0.0),
        ("r0", float("nan")),
        ("r0", "0.25"),
        ("alpha", -1.0),
        ("beta", float("inf")),
        ("init_size", 0),
        ("init_size", 2.5),
        ("init_size", True),
        ("coverage", 0.0),
        ("coverage", 1.5),
    ],
)
def test_bad_params_name_the_value(field: str, value: object) -> None:
    with pytest.raises(InputError, match=field):
        ReductionParams(**{field: value})


def test_default_params_are_valid() -> None:
    assert ReductionParams() == ReductionParams(
        r0=0.25, alpha=0.0, beta=1.0, init_size=300, coverage=1.0
    )


def test_select_epochs_rejects_bad_arguments() -> None:
    loader = _Loader(_drifting_epochs(50, 2))
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="r0"):
        select_epochs(loader, [0, 1], np.arange(50), r0=-1.0, rng=rng)
    with pytest.raises(InputError, match="sample_ids"):
        select_epochs(loader, [0, 1], np.zeros(50, dtype=np.int64), rng=rng)
    with pytest.raises(InputError, match="epochs"):
        select_epochs(loader, [1, 1], np.arange(50), rng=rng)
    with pytest.raises(InputError, match="rng"):
        select_epochs(loader, [0, 1], np.arange(50), rng=0)  # type: ignore[arg-type]
