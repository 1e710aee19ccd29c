"""Tests of the projector's training: sampling, batching, schedule, stopping, seeding, quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from timevis_cli.errors import InputError
from timevis_cli.fit import trainer
from timevis_cli.fit.complex import EdgeKind, EdgeSet, mix_edges, spatial_edges
from timevis_cli.fit.losses import find_ab_params, reconstruction_loss, umap_loss
from timevis_cli.fit.projector import Projector
from timevis_cli.fit.trainer import (
    SharedRows,
    TrainParams,
    _batch_losses,
    edges_per_epoch,
    fit_projector,
    sample_edges,
)

FAST = {"hidden": 64, "depth": 1}


def exact_knn(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force kNN, self at column 0, rows ascending."""
    diff = points[:, None, :].astype(np.float64) - points[None, :, :]
    dists = np.sqrt((diff**2).sum(-1))
    key = dists.copy()
    np.fill_diagonal(key, -1.0)
    indices = np.argsort(key, axis=1, kind="stable")[:, :k]
    return indices, np.take_along_axis(dists, indices, 1).astype(np.float32)


def neighbour_preservation(high: np.ndarray, low: np.ndarray, k: int) -> float:
    high_nn = exact_knn(high, k + 1)[0][:, 1:]
    low_nn = exact_knn(low, k + 1)[0][:, 1:]
    return float(
        np.mean([len(set(h) & set(lo)) / k for h, lo in zip(high_nn, low_nn, strict=True)])
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Train the tiny test models on one thread: on a shared small CPU, intra-op threads cost
    more than they give (OpenMP oversubscription made these tests 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blobs():
    """Two well-separated blobs in 20-D (each a noisy 2-D Gaussian sheet), their mixed kNN complex."""
    rng = np.random.default_rng(0)
    n, dim = 150, 20
    parts = []
    for k in (0, 1):
        basis = rng.normal(size=(2, dim)) / np.sqrt(2)
        offset = 10.0 * k * np.eye(dim)[0]
        parts.append(rng.normal(size=(n, 2)) @ basis + offset + 0.05 * rng.normal(size=(n, dim)))
    x = np.concatenate(parts).astype(np.float32)
    labels = np.repeat([0, 1], n)
    edges = mix_edges(spatial_edges(*exact_knn(x, 15)).edges)
    return x, labels, edges


def fit_blobs(blobs, seed=0, **overrides):
    x, _, edges = blobs
    params = TrainParams(**{**FAST, "max_epochs": 6, **overrides})
    features = torch.from_numpy(x)
    return fit_projector(features, torch.zeros_like(features), edges, params, "cpu", seed)


# --------------------------------------------------------------------------- parameters


def test_defaults_follow_the_method():
    params = TrainParams()
    assert (params.hidden, params.depth, params.batch_size) == (256, 3, 1000)
    assert (params.lr, params.weight_decay, params.lr_step, params.lr_gamma) == (0.01, 1e-5, 4, 0.1)
    assert (params.patience, params.min_improvement, params.max_epochs) == (3, 0.01, 20)
    assert (params.edges_per_epoch_factor, params.negative_rate, params.recon_weight) == (5, 5, 1)
    assert (params.min_dist, params.spread) == (0.1, 1.0)
    assert params.as_dict()["batch_size"] == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [("hidden", 0), ("depth", -1), ("batch_size", 0), ("batch_size", 2.5), ("patience", True),
     ("max_epochs", 0), ("negative_rate", 0), ("lr", 0.0), ("lr", math.nan),
     ("weight_decay", -1.0), ("lr_gamma", 0.0), ("lr_gamma", 1.5), ("min_improvement", 1.0),
     ("edges_per_epoch_factor", 0.0), ("recon_weight", -1.0), ("spread", 0.0),
     ("min_dist", 2.0), ("lr", "fast")],
)  # fmt: skip
def test_bad_params_are_refused_by_name(name, value):
    with pytest.raises(InputError, match=name):
        TrainParams(**{name: value})


# --------------------------------------------------------------------------- sampling


def test_edges_per_epoch_minimum_is_capped_at_the_method_factor():
    weight = np.array([2.0, 1.0, 1.0])  # p sums to 2: the paper's factor 5 draws 10
    assert edges_per_epoch(weight, 0.5, minimum=0) == 1
    assert edges_per_epoch(weight, 0.5, minimum=6) == 6
    assert edges_per_epoch(weight, 0.5, minimum=1000) == 10
    assert edges_per_epoch(weight, 8.0, minimum=6) == 16


def test_edges_per_epoch_is_floor_of_factor_times_normalised_mass():
    assert edges_per_epoch(np.array([2.0, 1.0, 1.0], np.float32), 5) == 10
    assert edges_per_epoch(np.array([3.0, 1.0], np.float32), 5) == 6
    assert edges_per_epoch(np.array([100.0, 1e-9], np.float32), 0.1) == 1


def assert_proportional(drawn: torch.Tensor, weight: torch.Tensor) -> None:
    counts = torch.bincount(drawn, minlength=weight.shape[0]).double()
    expected = weight.double() / weight.double().sum() * drawn.shape[0]
    positive = expected > 0
    assert counts[~positive].sum() == 0, "an edge of weight 0 was drawn"
    chi2 = (((counts - expected) ** 2)[positive] / expected[positive]).sum().item()
    dof = int(positive.sum()) - 1
    # a chi-square with `dof` degrees of freedom exceeds dof + 6·sqrt(2·dof) with p < 1e-4
    assert chi2 < dof + 6 * math.sqrt(2 * dof), f"chi2 {chi2:.1f} for {dof} dof"


@pytest.mark.parametrize("limit", [2**24, 11, 10, 9, 4, 3, 2])
def test_sample_edges_is_proportional_on_both_sides_of_the_chunk_limit(monkeypatch, limit):
    monkeypatch.setattr(trainer, "MAX_MULTINOMIAL_CATEGORIES", limit)
    sizes = []
    real_multinomial = torch.multinomial

    def recording_multinomial(probs, *args, **kwargs):
        sizes.append(probs.shape[0])
        return real_multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    weight = torch.tensor([1.0, 2.0, 0.0, 4.0, 8.0, 1.0, 3.0, 0.5, 2.0, 6.0])
    drawn = sample_edges(weight, 40_000, torch.Generator().manual_seed(0))
    assert drawn.shape == (40_000,) and drawn.dtype == torch.int64
    assert max(sizes) <= limit, sizes
    assert (len(sizes) == 1) == (limit >= 10), sizes
    assert_proportional(drawn, weight)
    if limit < 10:
        # chunks are shuffled together: the last chunk's edges are spread over the whole draw
        last_chunk = drawn >= (math.ceil(10 / limit) - 1) * limit
        first_half = last_chunk[:20_000].double().mean()
        second_half = last_chunk[20_000:].double().mean()
        assert abs(first_half - second_half) < 0.02


def test_sample_edges_refuses_a_limit_below_two(monkeypatch):
    monkeypatch.setattr(trainer, "MAX_MULTINOMIAL_CATEGORIES", 1)
    with pytest.raises(InputError, match="MAX_MULTINOMIAL_CATEGORIES"):
        sample_edges(torch.ones(3), 10)


def test_sample_edges_is_seeded():
    weight = torch.rand(50, generator=torch.Generator().manual_seed(0))
    first = sample_edges(weight, 1000, torch.Generator().manual_seed(5))
    second = sample_edges(weight, 1000, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


# --------------------------------------------------------------------------- batches


def test_batch_losses_over_distinct_vertices_equal_both_ends_of_each_edge():
    torch.manual_seed(0)
    projector = Projector(6, hidden=8, depth=1).double()
    features = torch.randn(10, 6, dtype=torch.float64)
    attention = torch.rand(10, 6, dtype=torch.float64)
    head = torch.tensor([0, 1, 2, 2, 5, 9, 0])
    tail = torch.tensor([1, 0, 5, 3, 2, 9, 4])
    params = TrainParams(negative_rate=3, recon_weight=2.0)
    ab = find_ab_params()
    umap, recon, total = _batch_losses(
        projector, head, tail, features, attention, params, ab, torch.Generator().manual_seed(1)
    )
    ends = torch.cat([head, tail])
    x = features[ends]
    emb, rec = projector(x)
    naive_recon = reconstruction_loss(x, rec, attention[ends])
    naive_umap = umap_loss(emb[:7], emb[7:], *ab, 3, torch.Generator().manual_seed(1))
    assert recon.item() == pytest.approx(naive_recon.item(), rel=1e-12)
    assert umap.item() == pytest.approx(naive_umap.item(), rel=1e-12)
    assert total.item() == pytest.approx(naive_umap.item() + 2.0 * naive_recon.item(), rel=1e-12)


def test_shared_attention_rows_train_exactly_as_the_dense_matrix(blobs):
    x, _, edges = blobs
    features = torch.from_numpy(x)
    table = torch.rand(3, x.shape[1])
    index = torch.from_numpy(np.random.default_rng(0).integers(0, 3, len(x)))
    params = TrainParams(**{**FAST, "max_epochs": 2})
    dense, _ = fit_projector(features, table[index], edges, params, "cpu", 3)
    shared, _ = fit_projector(features, SharedRows(table, index), edges, params, "cpu", 3)
    for key, value in dense.state_dict().items():
        assert torch.equal(value, shared.state_dict()[key]), key


def test_shared_rows_refuse_an_index_outside_the_table():
    with pytest.raises(InputError, match=r"index must lie in \[0, 2\)"):
        SharedRows(torch.zeros(2, 4), torch.tensor([0, 2]))


# --------------------------------------------------------------------------- end to end


def test_fit_separates_blobs_and_keeps_neighbours(blobs):
    x, labels, _ = blobs
    projector, report = fit_blobs(blobs)
    with torch.no_grad():
        y = projector.encode(torch.from_numpy(x)).numpy()
    centroids = np.stack([y[labels == k].mean(0) for k in (0, 1)])
    nearest = np.argmin(((y[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = float((nearest == labels).mean())
    assert accuracy > 0.95, f"nearest-centroid accuracy {accuracy}"
    preservation = neighbour_preservation(x, y, 10)
    assert preservation > 0.3, f"neighbour preservation {preservation}"
    assert report.epochs_run == len(report.total_losses) == len(report.umap_losses)
    assert report.total_losses[-1] < report.total_losses[0]
    assert report.a == pytest.approx(1.577, abs=1e-3)
    assert not projector.training


def test_same_seed_same_weights_and_untouched_global_rng(blobs):
    state = torch.get_rng_state()
    params = {"max_epochs": 2}
    first, _ = fit_blobs(blobs, seed=7, **params)
    second, _ = fit_blobs(blobs, seed=7, **params)
    third, _ = fit_blobs(blobs, seed=8, **params)
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not all(torch.equal(v, third.state_dict()[k]) for k, v in first.state_dict().items())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_progress_is_called_once_per_epoch_with_the_schedule(blobs, monkeypatch):
    scripted = iter([(1.0, 9.0, 100.0 - epoch) for epoch in range(20)])
    monkeypatch.setattr(trainer, "_train_epoch", lambda *args: next(scripted))
    x, _, edges = blobs
    features = torch.from_numpy(x)
    seen = []
    params = TrainParams(**FAST, max_epochs=9)
    _, report = fit_projector(
        features, torch.zeros_like(features), edges, params, "cpu", 0, progress=seen.append
    )
    assert [p["epoch"] for p in seen] == list(range(1, 10))
    assert set(seen[0]) == {"epoch", "loss", "umap", "recon", "lr", "seconds"}
    assert (seen[0]["loss"], seen[0]["umap"], seen[0]["recon"]) == (100.0, 1.0, 9.0)
    lrs = [p["lr"] for p in seen]
    assert lrs[:4] == pytest.approx([0.01] * 4) and lrs[4:8] == pytest.approx([0.001] * 4)
    assert lrs[8] == pytest.approx(1e-4)
    assert report.epochs_run == 9 and not report.stopped_early
    assert report.total_losses == tuple(100.0 - e for e in range(9))
    assert report.recon_losses == (9.0,) * 9


@pytest.mark.parametrize(
    ("totals", "patience", "epochs_run"),
    [
        ([10, 5, 4.99, 4.98, 4.97, 1, 1, 1], 3, 5),  # three epochs under 1% better than 5
        ([10, 5, 4.99, 4.5, 4.49, 4.48, 4.47, 4.46], 3, 7),  # 4.5 resets the count
        ([10, 10, 1, 1], 1, 2),
    ],
)
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_early_stopping_on_a_plateau(blobs, monkeypatch, totals, patience, epochs_run):
    scripted = iter([(0.0, 0.0, float(t)) for t in totals])
    monkeypatch.setattr(trainer, "_train_epoch", lambda *args: next(scripted))
    _, report = fit_blobs(blobs, max_epochs=len(totals), patience=patience)
    assert report.epochs_run == epochs_run
    assert report.stopped_early


def test_early_stopping_on_a_real_plateau(blobs):
    _, report = fit_blobs(blobs, max_epochs=10, patience=1, min_improvement=0.9)
    assert report.epochs_run == 2 and report.stopped_early


def test_warm_start_projector(blobs):
    x, _, edges = blobs
    features = torch.from_numpy(x)
    start = Projector(20, hidden=16, depth=0)
    projector, _ = fit_projector(
        features, torch.zeros_like(features), edges, TrainParams(max_epochs=1), "cpu", 0,
        projector=start,
    )  # fmt: skip
    assert projector is start
    with pytest.raises(InputError, match="20-D"):
        fit_projector(
            features, torch.zeros_like(features), edges, TrainParams(max_epochs=1), "cpu", 0,
            projector=Projector(3, hidden=4, depth=0),
        )  # fmt: skip


def test_bad_inputs_are_refused():
    features = torch.zeros(4, 3)
    edges = EdgeSet.from_coo([0, 1], [1, 2], [1.0, 1.0], EdgeKind.SPATIAL)
    params = TrainParams(max_epochs=1)
    with pytest.raises(InputError, match="attention"):
        fit_projector(features, torch.zeros(4, 2), edges, params, "cpu", 0)
    with pytest.raises(InputError, match="empty"):
        fit_projector(features, features, EdgeSet.empty(), params, "cpu", 0)
    far = EdgeSet.from_coo([0], [4], [1.0], EdgeKind.SPATIAL)
    with pytest.raises(InputError, match="4 rows"):
        fit_projector(features, features, far, params, "cpu", 0)
    zero = EdgeSet.from_coo([0], [1], [0.0], EdgeKind.SPATIAL)
    with pytest.raises(InputError, match="weight"):
        fit_projector(features, features, zero, params, "cpu", 0)


def test_large_batches_train_bitwise_the_same_on_many_threads(blobs):
    # batches of 4000 edges: the backward of the UMAP loss's gathers (40 000 elements) adds
    # from several CPU threads at once, in no fixed order, unless the fit makes it deterministic
    threads = torch.get_num_threads()
    torch.set_num_threads(8)  # more threads than cores: the order would change from run to run
    try:
        params = {"batch_size": 4000, "max_epochs": 2, "min_edges_per_epoch": 8000}
        first, _ = fit_blobs(blobs, seed=3, **params)
        second, _ = fit_blobs(blobs, seed=3, **params)
    finally:
        torch.set_num_threads(threads)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_deterministic_on_cpu_is_undone_after_the_fit_and_on_errors():
    assert not torch.are_deterministic_algorithms_enabled()
    with trainer.deterministic_on_cpu("cpu"):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory
    with pytest.raises(RuntimeError, match="boom"), trainer.deterministic_on_cpu("cpu"):
        raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # a caller's own setting is kept
    try:
        with trainer.deterministic_on_cpu("cpu"):
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    with trainer.deterministic_on_cpu("meta"):  # other devices: left as they are
        assert not torch.are_deterministic_algorithms_enabled()
