"""Refinement: UMAP's layout optimisation of the tracked samples' 2-D positions, with every
sample's trajectory kept faithful to its path in feature space.

The projector is one smooth map for every epoch; it places whole classes and keeps time
coherent, but at a CPU budget it cannot give every sample its own neighbourhood (neighbour
preservation stays near half of per-epoch UMAP's, docs/faithfulness.md). Refinement starts from
the projector's positions and moves each (sample, epoch) point directly, as umap-learn's
``optimize_layout_euclidean`` does: attraction along the edges of each epoch's fuzzy kNN graph
(every tracked sample and boundary point of the epoch), repulsion from random points of the same
epoch, and a learning rate decaying to 0.

Time is kept by a trajectory term: for pairs of one sample's epochs, the 2-D distance between
its two copies is pulled towards their feature-space distance, scaled to the sample's own 2-D
trajectory (a stress per sample, relative to its mean target). A sample's path then takes its
shape from feature space and its size from the projector, the epochs nearest to each of its
epochs stay the nearest (temp_l, temp_g), and a sample that does not move in feature space is
held in place.

All updates of one optimisation epoch are computed from the same positions and summed
(``index_add_``), the way GPU UMAP implementations run it; edges are drawn each epoch with
probability ``w / max(w)`` (umap-learn visits edge e every ``max(w) / w_e`` epochs: the same
expectation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from timevis_cli.complex import EdgeSet, mix_edges, spatial_edges
from timevis_cli.errors import InputError
from timevis_cli.neighbors import KNNBackend

log = logging.getLogger(__name__)

GRADIENT_CLIP = 4.0  # umap-learn's per-coordinate clip of every update
_REPULSION_EPS = 0.001  # umap-learn's offset of d² in the repulsive gradient
_STILL_FRACTION = 0.05  # smallest unit of the trajectory stress, of the mean sample's


@dataclass(frozen=True)
class TrajectoryTerm:
    """The trajectory stress of :func:`optimize_layout`, on pairs of points (a sample's copies).

    ``first``, ``second`` int64 [M]: the rows of each pair; ``target`` [M]: the distance the pair
    is pulled towards; ``scale`` [M] > 0: the unit of the error (the sample's mean target), so
    each step moves the pair by ``weight · step · (target - d) / scale`` along the line joining
    it, but by at most ``|target - d| / (2 · degree)`` (``degree``: the most pairs either end
    belongs to), so the summed moves of a point's pairs cannot overshoot however small its
    trajectory; clipped as every update is. Coincident copies (d = 0) have no direction and are
    left.
    """

    first: Tensor
    second: Tensor
    target: Tensor
    scale: Tensor
    weight: float

    def limit(self) -> Tensor:
        """Per pair, ``1 / (2 · degree)``: the largest gain that cannot overshoot."""
        size = int(max(self.first.max(), self.second.max())) + 1 if self.first.numel() else 0
        degree = torch.bincount(self.first, minlength=size) + torch.bincount(self.second, minlength=size)
        return 0.5 / torch.maximum(degree[self.first], degree[self.second]).to(self.target.dtype)


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
    trajectory: TrajectoryTerm | None = None,
) -> Tensor:
    """UMAP's SGD on 2-D positions [V, 2] (float32; written back in place at the end, and returned).

    ``head``, ``tail``: int64 [m] vertex ids of directed edges (give both directions of a
    symmetric graph, as umap-learn iterates its symmetric COO); ``weight`` [m] > 0: edge e is
    used in an epoch with probability ``weight[e] / max(weight)``. Used edges pull both ends
    together; each also pushes its head away from ``negative_rate`` vertices drawn uniformly from
    the head's segment ``[segment_start[v], segment_start[v] + segment_size[v])`` (its epoch),
    [V] int64 each (a vertex drawn as its own negative is not pushed). The step is
    ``learning_rate · (1 - epoch / n_epochs)``; every update is clipped to ±4 per coordinate.
    ``trajectory`` adds its stress to every epoch's update. ``progress`` is called with the
    epoch number after each.
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
    if n_epochs == 0 or (head.numel() == 0 and trajectory is None):
        return positions
    if head.numel() and not bool((weight > 0).all()):
        raise InputError("edge weights must be > 0")
    device, dtype = positions.device, positions.dtype
    probability = (weight / weight.max()).to(dtype) if head.numel() else weight.to(dtype)
    # one contiguous row per coordinate: gathers and updates of [m] vectors, not [m, 2] rows
    xy = positions.t().contiguous()
    x, y = xy[0], xy[1]
    edge_first = segment_start[head]
    edge_last = segment_start[head] + segment_size[head] - 1
    edge_size = segment_size[head].to(dtype)
    limit = trajectory.limit() if trajectory is not None else None
    for epoch in range(n_epochs):
        alpha = learning_rate * (1.0 - epoch / n_epochs)
        clip = GRADIENT_CLIP * alpha
        move_x, move_y = torch.zeros_like(x), torch.zeros_like(y)
        take = (torch.rand(probability.shape, generator=generator, device=device) < probability)
        take = take.nonzero().squeeze(1)
        h, t = head[take], tail[take]
        xh, yh = x[h], y[h]
        dx, dy = xh - x[t], yh - y[t]
        d2 = dx * dx + dy * dy
        d2b = d2.pow(b)
        coeff = ((-2.0 * a * b * alpha) * d2b / (d2 * (1.0 + a * d2b))).nan_to_num_(0.0)
        pull_x, pull_y = (coeff * dx).clamp_(-clip, clip), (coeff * dy).clamp_(-clip, clip)
        move_x.index_add_(0, t, -pull_x)
        move_y.index_add_(0, t, -pull_y)
        if negative_rate:
            draw = torch.rand((negative_rate, len(h)), generator=generator, device=device, dtype=dtype)
            other = (edge_first[take] + (draw * edge_size[take]).long()).minimum(edge_last[take])
            dx, dy = xh - x[other], yh - y[other]
            d2 = dx * dx + dy * dy
            coeff = (2.0 * b * alpha) / ((_REPULSION_EPS + d2) * (1.0 + a * d2.pow(b)))
            push_x, push_y = (coeff * dx).clamp_(-clip, clip), (coeff * dy).clamp_(-clip, clip)
            # coincident distinct points are pushed apart by the clip, as umap-learn does; a
            # vertex drawn as its own negative has dx = dy = 0 and is not pushed
            coincident = (d2 == 0) & (other != h)
            if bool(coincident.any()):
                push_x = torch.where(coincident, clip, push_x)
                push_y = torch.where(coincident, clip, push_y)
            pull_x += push_x.sum(dim=0)
            pull_y += push_y.sum(dim=0)
        move_x.index_add_(0, h, pull_x)
        move_y.index_add_(0, h, pull_y)
        if trajectory is not None:
            _trajectory_step(x, y, move_x, move_y, trajectory, limit, alpha, clip)
        x += move_x
        y += move_y
        if progress is not None:
            progress(epoch + 1)
    positions.copy_(xy.t())
    return positions


def _trajectory_step(
    x: Tensor,
    y: Tensor,
    move_x: Tensor,
    move_y: Tensor,
    term: TrajectoryTerm,
    limit: Tensor,
    alpha: float,
    clip: float,
) -> None:
    """Add the trajectory stress's update to ``move_x``, ``move_y``."""
    dx = x[term.first] - x[term.second]
    dy = y[term.first] - y[term.second]
    d = (dx * dx + dy * dy).sqrt_()
    # gain · (target - d) / d along (dx, dy): apart when too close, together when too far
    gain = torch.minimum((term.weight * alpha) / term.scale, limit)
    coeff = (gain * (term.target - d) / d).nan_to_num_(0.0, 0.0, 0.0)
    step_x, step_y = (coeff * dx).clamp_(-clip, clip), (coeff * dy).clamp_(-clip, clip)
    move_x.index_add_(0, term.first, step_x)
    move_x.index_add_(0, term.second, -step_x)
    move_y.index_add_(0, term.first, step_y)
    move_y.index_add_(0, term.second, -step_y)


def trajectory_pairs(n_epochs: int, max_lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of epoch indices (first < second) whose lag ``second - first`` is in a set of at
    most ``max_lags`` lags: every lag ``1 .. n_epochs - 1`` when there are that few, else lags
    spaced geometrically from 1 to ``n_epochs - 1`` (dense among short lags, sparse among long).
    int64 [P] each, ordered by lag then epoch.

    >>> first, second = trajectory_pairs(4, 8)
    >>> list(zip(first.tolist(), second.tolist()))
    [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)]
    >>> sorted(set((trajectory_pairs(100, 10)[1] - trajectory_pairs(100, 10)[0]).tolist()))
    [1, 2, 3, 5, 8, 13, 21, 36, 59, 99]
    """
    if max_lags < 1:
        raise InputError(f"refine.trajectory_lags={max_lags} must be >= 1")
    longest = n_epochs - 1
    if longest < 1:
        empty = np.zeros(0, np.int64)
        return empty, empty
    lags = np.arange(1, longest + 1)
    if longest > max_lags:
        # the most geometrically spaced lags whose rounding leaves at most max_lags distinct
        count = max_lags
        lags = np.unique(np.round(np.geomspace(1, longest, count)).astype(np.int64))
        while count < 64 * longest:  # ends far sooner: at most `longest` distinct lags exist
            wider = np.unique(np.round(np.geomspace(1, longest, count + 1)).astype(np.int64))
            if len(wider) > max_lags:
                break
            lags, count = wider, count + 1
    first = np.concatenate([np.arange(n_epochs - lag) for lag in lags]).astype(np.int64)
    second = first + np.repeat(lags, n_epochs - lags)
    return first, second


def trajectory_distances(
    blocks: Iterable[np.ndarray], first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Feature-space distance between each sample's two epochs of every pair: float32 [N, P].

    ``blocks``: features [E, B, D] of consecutive blocks of samples (all their epochs), in
    sample order; ``first``, ``second`` from :func:`trajectory_pairs`. Computed one lag at a
    time as differences (no Gram matrix: a sample's nearby epochs can be far closer to each
    other than to the origin), so memory stays at one block.
    """
    lag_of_pair = second - first
    out = []
    for block in blocks:
        x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        dist = np.empty((x.shape[1], len(first)), np.float32)
        for lag in np.unique(lag_of_pair):
            pairs = np.flatnonzero(lag_of_pair == lag)
            at = torch.from_numpy(first[pairs])
            # [pairs, B]: ‖x[t + lag] - x[t]‖ of every sample of the block
            dist[:, pairs] = (x[at + int(lag)] - x[at]).norm(dim=2).t().numpy()
        out.append(dist)
    if not out:
        return np.zeros((0, len(first)), np.float32)
    return np.concatenate(out)


@dataclass(frozen=True)
class EpochPoints:
    """One epoch's points to refine: the tracked samples first (the same samples in the same
    order at every epoch), then the boundary points.

    ``features`` float32 [n + B, D], ``positions`` float32 [n + B, 2] (where refinement starts:
    the projector's embedding), ``n_tracked``: n.
    """

    features: np.ndarray
    positions: np.ndarray
    n_tracked: int


@dataclass
class LayoutGraph:
    """Every epoch's points in one array and each epoch's kNN edges between them.

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

    def tracked_rows(self) -> np.ndarray:
        """int64 [N, E]: the row of tracked sample n at epoch index e."""
        n = int(self.n_tracked[0]) if len(self.n_tracked) else 0
        return (self.offsets[:-1][None, :] + np.arange(n)[:, None]).astype(np.int64)


def layout_graph(
    epochs: Iterable[EpochPoints],
    backend: KNNBackend,
    n_neighbors: int,
    rate: float,
    prune_offset: float,
) -> LayoutGraph:
    """The refinement's graph: each epoch's fuzzy kNN graph over all its points (tracked samples
    and boundary points together), pruned and weighted as the complex's spatial edges are
    (``rate``, ``prune_offset``: :func:`timevis_cli.complex.mix_edges`).

    ``epochs`` is read once, in time order; one epoch's features are held at a time. Every epoch
    must track the same number of samples.
    """
    positions: list[np.ndarray] = []
    n_tracked: list[int] = []
    spatial: list[EdgeSet] = []
    offsets = [0]
    for points in epochs:
        n_points = len(points.features)
        k = min(n_neighbors, n_points - 1)
        if k < 2:
            raise InputError(
                f"an epoch has {n_points} points to refine; refinement needs at least 3 "
                "(turn it off with --set refine.enabled=false)"
            )
        if n_tracked and points.n_tracked != n_tracked[0]:
            raise InputError(
                f"epoch {len(n_tracked)} tracks {points.n_tracked} samples, epoch 0 {n_tracked[0]}: "
                "refinement needs the same samples at every epoch"
            )
        idx, dist = backend.query(points.features, k=k, include_self=True)
        spatial.append(spatial_edges(idx, dist, vertex_offset=offsets[-1]).edges)
        positions.append(np.asarray(points.positions, np.float32))
        n_tracked.append(int(points.n_tracked))
        offsets.append(offsets[-1] + n_points)
    if not positions:
        raise InputError("refinement needs at least one epoch")
    joined = EdgeSet.concat(spatial)
    spatial.clear()
    return LayoutGraph(
        positions=np.concatenate(positions),
        edges=mix_edges(joined, rates={"spatial": rate}, prune_offset=prune_offset),
        offsets=np.asarray(offsets, np.int64),
        n_tracked=np.asarray(n_tracked, np.int64),
    )


def trajectory_term(
    graph: LayoutGraph,
    first: np.ndarray,
    second: np.ndarray,
    distance: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of rows, targets and units of the trajectory stress, flattened: int64 [M] x 2,
    float32 [M] x 2 with M = N · P.

    Sample n's targets are ``scale · c_n · distance[n]``, where ``c_n`` fits (least squares) the
    feature-space distances of its pairs to the 2-D distances it has at the start: its
    trajectory keeps its size on the canvas (times ``scale``) and takes its shape from feature
    space. The unit of its error is its mean target, at least 5% of the mean sample's: a
    sample that never moves in feature space gets targets 0 and its copies are pulled together
    firmly. The stress's weight is applied by :func:`refine_layout`.
    """
    if not scale > 0:
        raise InputError(f"refine.trajectory_scale={scale} must be > 0")
    rows = graph.tracked_rows()
    if distance.shape != (len(rows), len(first)):
        raise InputError(
            f"trajectory distances have shape {distance.shape}, expected ({len(rows)}, {len(first)})"
        )
    row_first, row_second = rows[:, first], rows[:, second]  # [N, P]
    start = graph.positions
    drawn = np.linalg.norm(start[row_first] - start[row_second], axis=2).astype(np.float64)
    high = distance.astype(np.float64)
    energy = np.square(high).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fitted = np.where(energy > 0, (drawn * high).sum(axis=1) / energy, 0.0)
    target = (scale * fitted[:, None] * high).astype(np.float32)
    # the unit of a sample's error: its mean target, at least 5% of the typical one, so a
    # sample (nearly) still in feature space is held (nearly) still, not left free
    unit = target.mean(axis=1, keepdims=True) if target.size else np.ones((len(rows), 1))
    floor = _STILL_FRACTION * float(unit.mean()) if unit.size else 0.0
    unit = np.maximum(unit, floor)
    unit = np.where(unit > 0, unit, 1.0).astype(np.float32)
    return (
        row_first.reshape(-1),
        row_second.reshape(-1),
        target.reshape(-1),
        np.repeat(unit, target.shape[1], axis=1).reshape(-1),
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
    trajectory: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    trajectory_weight: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Refined positions float32 [V, 2] of ``graph``'s points (:func:`optimize_layout`).

    ``trajectory``: :func:`trajectory_term`'s arrays, applied with ``trajectory_weight``.
    """
    start, size = graph.segments()
    term = None
    if trajectory is not None and trajectory_weight > 0 and len(trajectory[0]):
        first, second, target, unit = (torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in trajectory)
        term = TrajectoryTerm(first, second, target, unit, float(trajectory_weight))
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
        trajectory=term,
    )
    return positions.cpu().numpy()
