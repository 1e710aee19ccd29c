"""Refinement: UMAP's layout optimisation of the tracked samples' positions, and the decoder fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timevis_cli.complex import EdgeKind
from timevis_cli.errors import InputError
from timevis_cli.losses import find_ab_params
from timevis_cli.metrics import nnpv
from timevis_cli.neighbors import TorchExact
from timevis_cli.projector import Projector
from timevis_cli.refine import EpochPoints, layout_graph, optimize_layout, refine_layout
from timevis_cli.trainer import fit_decoder

A, B = find_ab_params(1.0, 0.1)


def _one_step_reference(y, head, tail, lr):
    """umap-learn's attractive update of one edge (both ends move), in float64 by hand."""
    y = y.astype(np.float64).copy()
    diff = y[head] - y[tail]
    d2 = float(diff @ diff)
    coeff = -2.0 * A * B * d2 ** (B - 1.0) / (1.0 + A * d2**B)
    grad = np.clip(coeff * diff, -4.0, 4.0) * lr
    y[head] += grad
    y[tail] -= grad
    return y


@pytest.mark.parametrize("distance", [0.05, 0.7, 3.0])
def test_one_attractive_step_equals_umap_learn_update(distance):
    y = np.array([[0.0, 0.0], [distance, 0.3 * distance], [5.0, 5.0]], np.float32)
    positions = torch.from_numpy(y.copy())
    optimize_layout(
        positions,
        torch.tensor([0]),
        torch.tensor([1]),
        torch.tensor([1.0]),
        torch.zeros(3, dtype=torch.int64),
        torch.full((3,), 3, dtype=torch.int64),
        n_epochs=1,
        a=A,
        b=B,
        negative_rate=0,
        learning_rate=0.5,
    )
    np.testing.assert_allclose(positions.numpy(), _one_step_reference(y, 0, 1, 0.5), rtol=1e-5, atol=1e-6)


def test_negatives_push_apart_within_the_segment_only():
    # two segments (epochs); vertex 0's negatives come from its own segment {0, 1} only
    y = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.01, 0.0], [0.02, 0.0]])
    start = torch.tensor([0, 0, 2, 2])
    size = torch.tensor([2, 2, 2, 2])
    before = y.clone()
    optimize_layout(
        y,
        torch.tensor([0]),
        torch.tensor([0]),  # a self-edge: no pull, only the negatives act
        torch.tensor([1.0]),
        start,
        size,
        n_epochs=1,
        a=A,
        b=B,
        negative_rate=20,
        learning_rate=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert y[0, 0] < before[0, 0]  # pushed away from vertex 1, never towards 2 or 3
    torch.testing.assert_close(y[1:], before[1:])


def _blobs(n=200, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(4, dim))
    labels = rng.integers(0, 4, n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_layout_from_a_random_start_recovers_neighbours_and_is_seeded():
    # a 2-D sheet linearly embedded in 10-D: a faithful 2-D layout exists
    rng = np.random.default_rng(0)
    sheet = rng.uniform(0, 10, size=(200, 2))
    x = (sheet @ rng.normal(size=(2, 10))).astype(np.float32)
    graph = layout_graph(
        [EpochPoints(np.arange(len(x)), x, np.random.default_rng(1).uniform(0, 10, (len(x), 2)))],
        TorchExact(),
        n_neighbors=10,
        temporal_neighbors=1,
        temporal_window=2,
        rates={"spatial": 5.0, "temporal": 5.0},
        prune_offset=0.0,
    )
    start = graph.positions.copy()
    kwargs = dict(n_epochs=200, learning_rate=0.25, negative_rate=5, a=A, b=B, device=torch.device("cpu"))
    first = refine_layout(graph, seed=3, **kwargs)
    second = refine_layout(graph, seed=3, **kwargs)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(graph.positions, start)  # the graph's start is not modified
    assert nnpv(x, start, k=10) < 0.15
    assert nnpv(x, first, k=10) > 0.5


def test_layout_graph_links_a_samples_copies_within_the_window_only():
    rng = np.random.default_rng(0)
    n, n_boundary, epochs = 30, 5, 5
    points = []
    for _ in range(epochs):
        feats = rng.normal(size=(n + n_boundary, 6)).astype(np.float32)
        points.append(EpochPoints(np.arange(n), feats, rng.normal(size=(n + n_boundary, 2))))
    graph = layout_graph(
        points,
        TorchExact(),
        n_neighbors=5,
        temporal_neighbors=2,
        temporal_window=2,
        rates={"spatial": 5.0, "temporal": 5.0},
        prune_offset=0.0,
    )
    assert graph.offsets.tolist() == [0, 35, 70, 105, 140, 175]
    assert graph.n_tracked.tolist() == [n] * epochs
    temporal = graph.edges.of_kind(EdgeKind.TEMPORAL)
    epoch_of = np.searchsorted(graph.offsets, np.arange(175), side="right") - 1
    row_of = np.arange(175) - graph.offsets[epoch_of]
    assert len(temporal) > 0
    assert (row_of[temporal.head] == row_of[temporal.tail]).all()  # the same sample
    assert (row_of[temporal.head] < n).all()  # boundary points have no copies
    assert (np.abs(epoch_of[temporal.head] - epoch_of[temporal.tail]) == 1).all()  # W = 2
    spatial = graph.edges.of_kind(EdgeKind.SPATIAL)
    assert (epoch_of[spatial.head] == epoch_of[spatial.tail]).all()
    start, size = graph.segments()
    assert start[40] == 35 and size[40] == 35


def test_layout_graph_refuses_an_epoch_too_small_to_have_neighbours():
    points = [EpochPoints(np.arange(2), np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32))]
    with pytest.raises(InputError, match="refine.enabled=false"):
        layout_graph(points, TorchExact(), 15, 2, 4, {"spatial": 1.0, "temporal": 1.0}, 0.0)


def test_optimize_layout_rejects_bad_input():
    y = torch.zeros(3, 2)
    idx = torch.tensor([0, 1])
    seg = torch.zeros(3, dtype=torch.int64), torch.full((3,), 3, dtype=torch.int64)
    with pytest.raises(InputError, match="weights must be > 0"):
        optimize_layout(y, idx, idx, torch.tensor([1.0, 0.0]), *seg, n_epochs=1, a=A, b=B)
    with pytest.raises(InputError, match="positions"):
        optimize_layout(torch.zeros(3, 3), idx, idx, torch.ones(2), *seg, n_epochs=1, a=A, b=B)


def test_fit_decoder_follows_new_positions_and_leaves_the_encoder():
    torch.manual_seed(0)
    x, labels = _blobs(n=300, dim=8)
    projector = Projector(8, hidden=32, depth=1)
    encoder = {k: v.clone() for k, v in projector.encoder.state_dict().items()}
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    positions = centres[torch.from_numpy(labels)] + 0.3 * torch.randn(len(x), 2)
    features = torch.from_numpy(x)
    losses = fit_decoder(
        projector, positions, features, torch.zeros_like(features),
        steps=300, batch_size=100, lr=1e-2, seed=0,
    )
    assert losses[-1] < 0.2 * losses[0]
    for key, value in projector.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder[key])
    with torch.no_grad():
        decoded = projector.decode(positions)
    nearest = torch.cdist(decoded, torch.from_numpy(x)).argmin(dim=1).numpy()
    assert (labels[nearest] == labels).mean() > 0.95


def test_keep_motion_keeps_the_projectors_step_between_copies():
    # one sample in two epochs, far from each other at the start, linked by a temporal edge
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 4)).astype(np.float32)
    start = rng.uniform(0, 10, size=(20, 2)).astype(np.float32)
    start[10:] = start[:10] + 3.0  # epoch 1's copies sit 3 units from epoch 0's
    graph = layout_graph(
        [EpochPoints(np.arange(10), feats[:10], start[:10]),
         EpochPoints(np.arange(10), feats[:10] + 0.01, start[10:])],
        TorchExact(), n_neighbors=3, temporal_neighbors=1, temporal_window=2,
        rates={"spatial": 5.0, "temporal": 5.0}, prune_offset=0.0,
    )  # fmt: skip
    graph.edges = graph.edges.of_kind(EdgeKind.TEMPORAL)
    kwargs = dict(n_epochs=100, learning_rate=0.5, negative_rate=0, a=A, b=B, device=torch.device("cpu"), seed=0)
    kept = refine_layout(graph, keep_motion=True, **kwargs)
    np.testing.assert_allclose(kept, start, atol=1e-4)  # already at the kept step: no pull
    together = refine_layout(graph, keep_motion=False, **kwargs)
    gap = np.linalg.norm(together[10:] - together[:10], axis=1)
    assert gap.max() < 0.5 * np.linalg.norm([3.0, 3.0])  # pulled together
