"""Refinement: UMAP's own layout optimisation of the tracked samples' 2-D positions.

The projector is one smooth map for every epoch; it places whole classes and keeps time
coherent, but at a CPU budget it cannot give every sample its own neighbourhood (neighbour
preservation stays near half of per-epoch UMAP's, docs/faithfulness.md). Refinement starts from
the projector's positions and moves each (sample, epoch) point directly, as umap-learn's
``optimize_layout_euclidean`` does: attraction along the edges of each epoch's fuzzy kNN graph
(every tracked sample and boundary point of the epoch), temporal edges between a sample's copies
in nearby epochs so it still moves only where it moves in the network, repulsion from random
points of the same epoch, and a learning rate decaying to 0.

All updates of one optimisation epoch are computed from the same positions and summed
(``index_add_``), the way GPU UMAP implementations run it; edges are drawn each epoch with
probability ``w / max(w)`` (umap-learn visits edge e every ``max(w) / w_e`` epochs: the same
expectation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from timevis_cli.complex import (
    EdgeKind,
    EdgeSet,
    EpochVertices,
    mix_edges,
    spatial_edges,
    temporal_edges,
)
from timevis_cli.errors import InputError
from timevis_cli.neighbors import KNNBackend

log = logging.getLogger(__name__)

GRADIENT_CLIP = 4.0  # umap-learn's per-coordinate clip of every update
_REPULSION_EPS = 0.001  # umap-learn's offset of d² in the repulsive gradient


def optimize_layout(
    positions: Tensor,
    head: Tensor,
    tail: Tensor,
    weight: Tensor,
    segment_start: Tensor,
    segment_size: Tensor,
    *,
    n_epochs: int,
    a: float,
    b: float,
    negative_rate: int = 5,
    learning_rate: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    target: Tensor | None = None,
) -> Tensor:
    """UMAP's SGD on 2-D positions [V, 2] (float32, updated in place and returned).

    ``head``, ``tail``: int64 [m] vertex ids of directed edges (give both directions of a
    symmetric graph, as umap-learn iterates its symmetric COO); ``weight`` [m] > 0: edge e is
    used in an epoch with probability ``weight[e] / max(weight)``. Used edges pull both ends
    together; each also pushes its head away from ``negative_rate`` vertices drawn uniformly from
    the head's segment ``[segment_start[v], segment_start[v] + segment_size[v])`` (its epoch),
    [V] int64 each. The step is ``learning_rate · (1 - epoch / n_epochs)``; every update is
    clipped to ±4 per coordinate. ``progress`` is called with the epoch number after each.
    ``target`` [m, 2]: the difference ``y_head - y_tail`` each edge pulls towards (default 0:
    the ends together); the attraction acts on ``y_head - y_tail - target``.
    """
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise InputError(f"positions must have shape (V, 2), got {tuple(positions.shape)}")
    if not (head.shape == tail.shape == weight.shape) or head.ndim != 1:
        raise InputError(
            f"head, tail and weight must be 1-D of one length, got {tuple(head.shape)}, "
            f"{tuple(tail.shape)}, {tuple(weight.shape)}"
        )
    if n_epochs < 0 or negative_rate < 0:
        raise InputError(f"n_epochs={n_epochs} and negative_rate={negative_rate} must be >= 0")
    if head.numel() == 0 or n_epochs == 0:
        return positions
    if not bool((weight > 0).all()):
        raise InputError("edge weights must be > 0")
    probability = (weight / weight.max()).to(positions.dtype)
    device = positions.device
    for epoch in range(n_epochs):
        alpha = learning_rate * (1.0 - epoch / n_epochs)
        take = torch.rand(probability.shape, generator=generator, device=device) < probability
        h, t = head[take], tail[take]
        diff = positions[h] - positions[t]
        if target is not None:
            diff -= target[take]
        d2 = diff.square().sum(dim=1, keepdim=True)
        d2b = d2.pow(b)
        coeff = (-2.0 * a * b * alpha) * d2b / (d2 * (1.0 + a * d2b))
        coeff = coeff.nan_to_num_(0.0)  # coincident ends (0 / 0): no pull
        step = (coeff * diff).clamp_(-GRADIENT_CLIP * alpha, GRADIENT_CLIP * alpha)
        update = torch.zeros_like(positions)
        update.index_add_(0, h, step)
        update.index_add_(0, t, -step)
        if negative_rate:
            hn = h.repeat(negative_rate)
            draw = torch.rand(hn.shape, generator=generator, device=device, dtype=positions.dtype)
            other = segment_start[hn] + (draw * segment_size[hn]).long().clamp(max=segment_size[hn] - 1)
            diff = positions[hn] - positions[other]
            d2 = diff.square().sum(dim=1, keepdim=True)
            coeff = (2.0 * b * alpha) / ((_REPULSION_EPS + d2) * (1.0 + a * d2.pow(b)))
            push = (coeff * diff).clamp_(-GRADIENT_CLIP * alpha, GRADIENT_CLIP * alpha)
            # coincident points are pushed apart by the clip, as umap-learn does; a vertex
            # drawn as its own negative is skipped
            push = torch.where(d2 > 0, push, GRADIENT_CLIP * alpha)
            push *= (other != hn).unsqueeze(1)
            update.index_add_(0, hn, push)
        positions += update
        if progress is not None:
            progress(epoch + 1)
    return positions


@dataclass(frozen=True)
class EpochPoints:
    """One epoch's points to refine: the tracked samples first, then the boundary points.

    ``sample_ids`` int64 [n] (ids of the tracked samples, the first n rows), ``features``
    float32 [n + B, D], ``positions`` float32 [n + B, 2] (where refinement starts: the
    projector's embedding).
    """

    sample_ids: np.ndarray
    features: np.ndarray
    positions: np.ndarray


@dataclass
class LayoutGraph:
    """Every epoch's points in one array and the mixed edges between them.

    Epoch i's points are rows ``offsets[i]:offsets[i + 1]`` of ``positions`` (float32 [V, 2]),
    its tracked samples first (``n_tracked[i]`` of them), then its boundary points.
    """

    positions: np.ndarray
    edges: EdgeSet
    offsets: np.ndarray  # int64 [E + 1]
    n_tracked: np.ndarray  # int64 [E]

    def segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per vertex, the first row and the size of its epoch: int64 [V] each."""
        sizes = np.diff(self.offsets)
        return np.repeat(self.offsets[:-1], sizes), np.repeat(sizes, sizes)


def layout_graph(
    epochs: Iterable[EpochPoints],
    backend: KNNBackend,
    n_neighbors: int,
    temporal_neighbors: int,
    temporal_window: int,
    rates: Mapping[str, float],
    prune_offset: float,
) -> LayoutGraph:
    """The refinement's graph: each epoch's fuzzy kNN graph over all its points (tracked
    samples and boundary points together), and temporal edges between a tracked sample's copies
    in the epochs within ``temporal_window`` steps (its ``temporal_neighbors`` nearest), mixed
    with ``rates`` (``spatial`` and ``temporal``) as the complex's edges are.

    ``epochs`` is read once, in time order; only the window's features are held at a time.
    """
    positions: list[np.ndarray] = []
    n_tracked: list[int] = []
    spatial: list[EdgeSet] = []
    offsets = [0]

    def vertices() -> Iterator[EpochVertices]:
        for points in epochs:
            n_points = len(points.features)
            k = min(n_neighbors, n_points - 1)
            if k < 2:
                raise InputError(
                    f"an epoch has {n_points} points to refine; refinement needs at least 3 "
                    "(turn it off with --set refine.enabled=false)"
                )
            idx, dist = backend.query(points.features, k=k, include_self=True)
            graph = spatial_edges(idx, dist, vertex_offset=offsets[-1])
            spatial.append(graph.edges)
            n = len(points.sample_ids)
            positions.append(np.asarray(points.positions, np.float32))
            n_tracked.append(n)
            start = offsets[-1]
            offsets.append(start + n_points)
            yield EpochVertices(
                sample_ids=points.sample_ids,
                vertex_ids=start + np.arange(n),
                features=points.features[:n],
                sigma=graph.sigma[:n],
                rho=graph.rho[:n],
            )

    temporal = temporal_edges(vertices(), temporal_neighbors, temporal_window or None)
    joined = EdgeSet.concat([*spatial, temporal])
    spatial.clear()
    mixed = mix_edges(
        joined,
        rates={"spatial": rates["spatial"], "temporal": rates["temporal"]},
        prune_offset=prune_offset,
    )
    return LayoutGraph(
        positions=np.concatenate(positions),
        edges=mixed,
        offsets=np.asarray(offsets, np.int64),
        n_tracked=np.asarray(n_tracked, np.int64),
    )


def refine_layout(
    graph: LayoutGraph,
    *,
    n_epochs: int,
    learning_rate: float,
    negative_rate: int,
    a: float,
    b: float,
    device: torch.device,
    seed: int,
    keep_motion: bool = True,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Refined positions float32 [V, 2] of ``graph``'s points (:func:`optimize_layout`).

    ``keep_motion``: a temporal edge pulls the step between a sample's two copies towards the
    step they had at the start (the projector's motion of the sample) instead of pulling the
    copies together; spatial edges pull their ends together either way.
    """
    start, size = graph.segments()
    target = None
    if keep_motion:
        temporal = graph.edges.kind == EdgeKind.TEMPORAL
        steps = np.zeros((len(graph.edges), 2), np.float32)
        steps[temporal] = (
            graph.positions[graph.edges.head[temporal]] - graph.positions[graph.edges.tail[temporal]]
        )
        target = torch.from_numpy(steps).to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([int(seed), 7]).generate_state(1)[0]))
    positions = torch.from_numpy(graph.positions.copy()).to(device)
    optimize_layout(
        positions,
        torch.from_numpy(graph.edges.head).to(device),
        torch.from_numpy(graph.edges.tail).to(device),
        torch.from_numpy(graph.edges.weight).to(device),
        torch.from_numpy(start).to(device),
        torch.from_numpy(size).to(device),
        n_epochs=n_epochs,
        a=a,
        b=b,
        negative_rate=negative_rate,
        learning_rate=learning_rate,
        generator=generator,
        progress=progress,
        target=target,
    )
    return positions.cpu().numpy()
