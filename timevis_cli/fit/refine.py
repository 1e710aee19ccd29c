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

Memory stays flat in the number of epochs: only the positions of every (sample, epoch) point are
held (the output itself); the edges of runs of epochs and the trajectory targets of blocks of
samples sit in a :class:`~timevis_cli.fit.blocks.BlockStore`, in memory up to a budget, past it in a
scratch file read back block by block once per optimisation epoch (the same blocks in the same
order: on the CPU bitwise the same result; CUDA's ``index_add_`` sums in no fixed order).

All updates of one optimisation epoch are computed from the same positions and summed
(``index_add_``), the way GPU UMAP implementations run it; edges are drawn each epoch with
probability ``w / max(w)`` (umap-learn visits edge e every ``max(w) / w_e`` epochs: the same
expectation), and at 2/5 of it when an epoch holds more than 10 000 points (umap-learn runs 200
instead of 500 epochs on graphs that large). The trajectory stress of a block of samples is
computed on their [epochs, samples] positions, one slice per lag, with no per-pair indices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from timevis_cli.errors import InputError
from timevis_cli.fit.blocks import BlockStore
from timevis_cli.fit.complex import mix_edges, spatial_edges
from timevis_cli.fit.neighbors import KNNBackend

log = logging.getLogger(__name__)

GRADIENT_CLIP = 4.0  # umap-learn's per-coordinate clip of every update
_REPULSION_EPS = 0.001  # umap-learn's offset of d² in the repulsive gradient
_STILL_FRACTION = 0.05  # smallest unit of the trajectory stress, of the mean sample's
# umap-learn's layout runs 500 epochs on graphs of up to 10 000 points and 200 on larger ones:
# the edges of a larger epoch are drawn at 200 / 500 of the density (each layout epoch draws
# an edge with probability LARGE_EPOCH_DENSITY · w / max(w))
LARGE_EPOCH_POINTS = 10_000
LARGE_EPOCH_DENSITY = 0.4

_T = TypeVar("_T")


# a block of consecutive epochs' edges: rows from the block's first epoch, and its epochs' first
# rows (then the row after them) as segments
EDGE_FIELDS = {"head": np.int32, "tail": np.int32, "weight": np.float32, "segments": np.int64}
_EDGES_PER_BLOCK = 1 << 17  # edges a block at least (an epoch is never split; cache-sized on a CPU)
# a block of samples' trajectory targets [P, B]: pair-major, so a run of pairs is a slab of rows
TARGET_FIELDS = {"target": np.float32}
_PAIRS_PER_BLOCK = 1 << 20  # trajectory pairs per block (a step's temporaries: [E, B] and runs of it)
_CACHED_ELEMENTS = 1 << 20  # features [E, b, D] of the samples whose trajectory distances are taken together (4 MB)


@dataclass(frozen=True)
class EdgeBlock:
    """The edges of consecutive segments of the layout (epochs) for :func:`optimize_layout`.

    ``segments`` int64 [S + 1]: the first row of each segment and, last, the row after them;
    ``head``, ``tail``: int32 or int64 [m] rows counted from ``segments[0]``; ``weight`` [m]: an
    edge is used in an optimisation epoch with probability ``weight / max_weight`` (a weight
    <= 0 is never used). An edge's negatives are drawn from its head's segment.
    """

    head: Tensor
    tail: Tensor
    weight: Tensor
    segments: Tensor
    max_weight: float

    def __post_init__(self) -> None:
        shapes = {tuple(v.shape) for v in (self.head, self.tail, self.weight)}
        if len(shapes) != 1 or self.head.ndim != 1:
            raise InputError(
                f"head, tail and weight must be 1-D of one length, got {tuple(self.head.shape)}, "
                f"{tuple(self.tail.shape)}, {tuple(self.weight.shape)}"
            )
        if self.segments.ndim != 1 or len(self.segments) < 2:
            raise InputError(f"segments must be 1-D with at least 2 rows, got {tuple(self.segments.shape)}")
        if not self.max_weight > 0:
            raise InputError(f"max_weight={self.max_weight} must be > 0")


@dataclass(frozen=True)
class PairBlock:
    """The trajectory stress of a block of tracked samples for :func:`optimize_layout`.

    Sample ``sample + i`` is row ``epoch_rows[e] + sample + i`` at epoch index e
    (``epoch_rows`` int64 [E]: each epoch's first row). Every sample has the same P pairs of
    epochs, given as ``runs`` of consecutive pairs (:func:`pair_runs`): a run ``(lag, column,
    epoch, count)`` holds pairs ``column + j`` joining epochs ``epoch + j`` and ``epoch + j +
    lag`` (j < count). ``target`` [P, B]: the distance each pair of each sample is pulled
    towards; ``unit`` [B] > 0: each sample's unit of error; ``limit`` [P]: the largest gain that
    cannot overshoot, ``1 / (2 · degree)`` with ``degree`` the most pairs either end belongs to.
    Each step moves a pair by ``weight · step · (target - d) / unit`` along the line joining it,
    at most ``limit · |target - d|``, clipped as every update is; coincident copies (d = 0) have
    no direction and are left.
    """

    epoch_rows: Tensor
    runs: tuple[tuple[int, int, int, int], ...]
    limit: Tensor
    sample: int
    target: Tensor
    unit: Tensor

    def __post_init__(self) -> None:
        p = tuple(self.limit.shape)
        if self.epoch_rows.ndim != 1 or len(p) != 1:
            raise InputError(
                f"epoch_rows and limit must be 1-D, got {tuple(self.epoch_rows.shape)}, {p}"
            )
        if self.target.ndim != 2 or self.target.shape[0] != p[0] or tuple(self.unit.shape) != self.target.shape[1:]:
            raise InputError(
                f"target must be [{p[0]}, B] and unit [B], got {tuple(self.target.shape)}, {tuple(self.unit.shape)}"
            )
        n_epochs, column = len(self.epoch_rows), 0
        for lag, start, epoch, count in self.runs:
            if start != column or count < 1 or min(epoch, epoch + lag) < 0 or max(epoch, epoch + lag) + count > n_epochs:
                raise InputError(
                    f"run {(lag, start, epoch, count)} does not continue at pair {column} within "
                    f"{n_epochs} epochs; build the runs with pair_runs"
                )
            column += count
        if column != p[0]:
            raise InputError(f"the runs cover {column} pairs, limit and target {p[0]}")


def pair_runs(first: np.ndarray, second: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """Pairs of epoch indices as runs of consecutive pairs of one lag, for :class:`PairBlock`:
    ``(lag, column, epoch, count)``, pairs ``column + j`` joining epochs ``epoch + j`` and
    ``epoch + j + lag``. :func:`trajectory_pairs` gives one run per lag; any pairs are accepted.

    >>> pair_runs(*trajectory_pairs(4, 8))
    ((1, 0, 0, 3), (2, 3, 0, 2), (3, 5, 0, 1))
    """
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    lag = second - first
    # a run breaks where the lag changes or the next pair's first epoch is not the next epoch
    breaks = np.flatnonzero((np.diff(lag) != 0) | (np.diff(first) != 1)) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64) if len(first) else np.zeros(0, np.int64)
    ends = np.append(starts[1:], len(first))
    return tuple(
        (int(lag[s]), int(s), int(first[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)
    )


def pair_limit(first: np.ndarray, second: np.ndarray, n_epochs: int) -> np.ndarray:
    """Per pair of epochs, ``1 / (2 · degree)``: ``degree`` is the most pairs either epoch of the
    pair belongs to, so a copy's summed moves over its pairs stay within its error. float32 [P]."""
    degree = np.bincount(first, minlength=n_epochs) + np.bincount(second, minlength=n_epochs)
    return (0.5 / np.maximum(degree[first], degree[second])).astype(np.float32)


def optimize_layout(
    positions: Tensor,
    edges: Iterable[EdgeBlock],
    *,
    n_epochs: int,
    a: float,
    b: float,
    negative_rate: int = 5,
    learning_rate: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    trajectory: Iterable[PairBlock] | None = None,
    trajectory_weight: float = 0.0,
    consecutive_weight: float = 1.0,
) -> Tensor:
    """UMAP's SGD on 2-D positions [V, 2] (float32; written back in place at the end, and returned).

    ``edges``: blocks of directed edges (give both directions of a symmetric graph, as umap-learn
    iterates its symmetric COO); an edge is used in an epoch with probability ``w / max(w)``.
    Used edges pull both ends together; each also pushes its head away from ``negative_rate``
    rows drawn uniformly from the head's segment (a row drawn as its own negative is not pushed). The
    step is ``learning_rate · (1 - epoch / n_epochs)``; every update is clipped to ±4 per
    coordinate. ``trajectory`` adds its stress, times ``trajectory_weight``, to every epoch's
    update, its pairs of consecutive epochs (lag 1) times ``consecutive_weight`` more. ``edges``
    and ``trajectory`` are iterated once per epoch: a list, or a re-iterable that reads its
    blocks back (:class:`BlockStore`). ``progress`` is called with the epoch
    number after each.
    """
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise InputError(f"positions must have shape (V, 2), got {tuple(positions.shape)}")
    if n_epochs < 0 or negative_rate < 0:
        raise InputError(f"n_epochs={n_epochs} and negative_rate={negative_rate} must be >= 0")
    if trajectory_weight < 0:
        raise InputError(f"trajectory_weight={trajectory_weight} must be >= 0")
    if not consecutive_weight >= 0:
        raise InputError(f"consecutive_weight={consecutive_weight} must be >= 0")
    if trajectory_weight == 0:
        trajectory = None
    for name, blocks in (("edges", edges), ("trajectory", trajectory)):
        if blocks is not None and iter(blocks) is blocks:
            raise InputError(
                f"{name} is a one-shot iterator but is visited once per epoch; pass a list or a "
                "re-iterable (LayoutGraph.edge_blocks, Trajectories.pair_blocks)"
            )
    # one contiguous row per coordinate: gathers and updates of [m] vectors, not [m, 2] rows
    xy = positions.t().contiguous()
    x, y = xy[0], xy[1]
    for epoch in range(n_epochs):
        alpha = learning_rate * (1.0 - epoch / n_epochs)
        clip = GRADIENT_CLIP * alpha
        move_x, move_y = torch.zeros_like(x), torch.zeros_like(y)
        for block in edges:
            _edge_step(x, y, move_x, move_y, block, a, b, negative_rate, alpha, clip, generator)
        for pairs in trajectory if trajectory is not None else ():
            _trajectory_step(x, y, move_x, move_y, pairs, trajectory_weight * alpha, clip, consecutive_weight)
        x += move_x
        y += move_y
        if progress is not None:
            progress(epoch + 1)
    positions.copy_(xy.t())
    return positions


def _edge_step(
    x: Tensor,
    y: Tensor,
    move_x: Tensor,
    move_y: Tensor,
    block: EdgeBlock,
    a: float,
    b: float,
    negative_rate: int,
    alpha: float,
    clip: float,
    generator: torch.Generator | None,
) -> None:
    """Add one block's attraction and repulsion to ``move_x``, ``move_y``."""
    device, dtype = x.device, x.dtype
    # used with probability w / max(w): uniform draws scaled by max(w), no probability copy held
    draw = torch.rand(block.weight.shape, generator=generator, device=device, dtype=block.weight.dtype)
    take = (draw.mul_(block.max_weight) < block.weight).nonzero().squeeze(1)
    base = block.segments[0]
    h = block.head[take].long().add_(base)
    t = block.tail[take].long().add_(base)
    # index_select with int64 rows: the fastest gather on the CPU (x[rows] and int32 rows are slower)
    xh, yh = x.index_select(0, h), y.index_select(0, h)
    dx, dy = xh - x.index_select(0, t), yh - y.index_select(0, t)
    # the arithmetic in place (the temporaries of [m] and [negative_rate, m] dominate the step)
    d2 = dx * dx
    d2 += dy * dy
    d2b = d2.pow(b)
    coeff = d2b * (-2.0 * a * b * alpha)
    coeff.div_(d2b.mul_(a).add_(1.0).mul_(d2)).nan_to_num_(0.0)
    pull_x, pull_y = dx.mul_(coeff).clamp_(-clip, clip), dy.mul_(coeff).clamp_(-clip, clip)
    move_x.index_add_(0, t, -pull_x)
    move_y.index_add_(0, t, -pull_y)
    if negative_rate:
        shape = (negative_rate, len(h))
        if len(block.segments) == 2:  # one segment, every head's (an epoch per block, the usual case)
            # int32 draws: on the CPU a third of the time of float draws scaled to the segment
            size = int(block.segments[1] - base)
            other = torch.randint(0, size, shape, generator=generator, device=device, dtype=torch.int32)
            other = other.long().add_(base)
        else:
            segment = torch.searchsorted(block.segments, h, right=True) - 1
            first = block.segments[segment]
            size = block.segments[segment + 1] - first
            draw = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            other = (draw * size).long().minimum(size - 1).add_(first)
            del draw
        flat = other.view(-1)
        dx, dy = xh - x.index_select(0, flat).view(shape), yh - y.index_select(0, flat).view(shape)
        d2 = dx * dx
        d2 += dy * dy
        # 2b·alpha / ((eps + d²)(1 + a·d^2b)), computed in place
        coeff = d2.pow(b).mul_(a).add_(1.0).mul_(d2 + _REPULSION_EPS)
        coeff.reciprocal_().mul_(2.0 * b * alpha)  # what scalar / tensor computes
        push_x, push_y = dx.mul_(coeff).clamp_(-clip, clip), dy.mul_(coeff).clamp_(-clip, clip)
        # coincident distinct points are pushed apart by the clip, as umap-learn does; a row
        # drawn as its own negative has dx = dy = 0 and is not pushed (coincidences are rare:
        # only their entries are visited)
        zero = (d2 == 0).nonzero(as_tuple=True)
        if len(zero[0]):
            coincident = other[zero] != h[zero[1]]
            push_x[zero] = torch.where(coincident, clip, push_x[zero])
            push_y[zero] = torch.where(coincident, clip, push_y[zero])
        pull_x += push_x.sum(dim=0)
        pull_y += push_y.sum(dim=0)
    move_x.index_add_(0, h, pull_x)
    move_y.index_add_(0, h, pull_y)


def _trajectory_step(
    x: Tensor,
    y: Tensor,
    move_x: Tensor,
    move_y: Tensor,
    block: PairBlock,
    step: float,
    clip: float,
    consecutive_weight: float = 1.0,
) -> None:
    """Add one block's trajectory stress (``step``: weight x learning rate; pairs of lag 1 times
    ``consecutive_weight`` more) to ``move_x``, ``move_y``.

    The block's samples at every epoch are gathered once as [E, B]; each run of pairs of one lag
    is then two slices of it, so a pair costs no index arithmetic, gather or scatter of its own
    (the moves are summed per sample and epoch, and added to ``move_x``, ``move_y`` once)."""
    samples = torch.arange(block.sample, block.sample + len(block.unit), device=x.device)
    rows = (block.epoch_rows[:, None] + samples[None, :]).reshape(-1)
    bx, by = x[rows].view(len(block.epoch_rows), -1), y[rows].view(len(block.epoch_rows), -1)
    sum_x, sum_y = torch.zeros_like(bx), torch.zeros_like(by)
    per_unit = step / block.unit[None, :]  # [1, B]
    per_unit_consecutive = per_unit * consecutive_weight
    for lag, column, epoch, count in block.runs:
        at, to = slice(epoch, epoch + count), slice(epoch + lag, epoch + lag + count)
        pairs = slice(column, column + count)
        dx = bx[at] - bx[to]
        dy = by[at] - by[to]
        d = torch.hypot(dx, dy)
        # gain · (target - d) / d along (dx, dy): apart when too close, together when too far
        coeff = torch.minimum(per_unit_consecutive if lag == 1 else per_unit, block.limit[pairs, None])
        coeff *= block.target[pairs] - d
        coeff.div_(d).nan_to_num_(0.0, 0.0, 0.0)
        step_x, step_y = dx.mul_(coeff).clamp_(-clip, clip), dy.mul_(coeff).clamp_(-clip, clip)
        sum_x[at] += step_x
        sum_x[to] -= step_x
        sum_y[at] += step_y
        sum_y[to] -= step_y
    move_x.index_add_(0, rows, sum_x.reshape(-1))
    move_y.index_add_(0, rows, sum_y.reshape(-1))


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
    blocks: Iterable[np.ndarray],
    first: np.ndarray,
    second: np.ndarray,
    device: torch.device | None = None,
) -> Iterator[np.ndarray]:
    """Per block, the feature-space distance between each sample's two epochs of every pair:
    float32 [B, P].

    ``blocks``: features [E, B, D] of consecutive blocks of samples (all their epochs), in
    sample order; ``first``, ``second`` from :func:`trajectory_pairs`. Computed on ``device``
    (the CPU when None) one lag at a time as differences (no Gram matrix: a sample's nearby
    epochs can be far closer to each other than to the origin), so memory stays at a few blocks.
    """
    device = device or torch.device("cpu")
    lag_of_pair = second - first
    by_lag = []  # per lag: its pairs, and their first epochs as a slice when consecutive
    for lag in np.unique(lag_of_pair):
        pairs = np.flatnonzero(lag_of_pair == lag)
        at = first[pairs]
        span = slice(int(at[0]), int(at[-1]) + 1) if (np.diff(at) == 1).all() else None
        by_lag.append((int(lag), torch.from_numpy(pairs).to(device), torch.from_numpy(at).to(device), span))
    for block in blocks:
        x = torch.from_numpy(np.ascontiguousarray(block)).to(device, torch.float32)
        dist = torch.empty((x.shape[1], len(first)), dtype=torch.float32, device=device)
        # on the CPU, a few samples at a time, so that their every epoch stays in the cache while
        # all the lags are taken (measured, 100 epochs x 512: 3.4x faster than the whole block)
        step = x.shape[1] if device.type != "cpu" else max(1, _CACHED_ELEMENTS // max(1, x.shape[0] * x.shape[2]))
        for start in range(0, x.shape[1], step):
            part = x[:, start : start + step]
            for lag, pairs, at, span in by_lag:
                if span is not None:  # trajectory_pairs' order: epochs t .. t + n of one lag
                    diff = part[span.start + lag : span.stop + lag] - part[span]
                else:
                    diff = part[at + lag] - part[at]
                # [pairs, b]: ‖x[t + lag] - x[t]‖ of every sample of the part
                dist[start : start + step, pairs] = diff.norm(dim=2).t()
        yield dist.cpu().numpy()


@dataclass(frozen=True)
class EpochPoints:
    """One epoch's points to refine: the tracked samples first (the same samples in the same
    order at every epoch), then the boundary points.

    ``features`` float32 [n + B, D], ``positions`` float32 [n + B, 2] (where refinement starts:
    the projector's embedding), ``n_tracked``: n. ``classes`` int64 [n + B] or None: each
    point's predicted class at the epoch, -1 for a point without one (boundary points, test
    samples); :func:`layout_graph` weakens the edges between points of different classes.
    """

    features: np.ndarray
    positions: np.ndarray
    n_tracked: int
    classes: np.ndarray | None = None


def _device_blocks(store: BlockStore, convert: Callable[[int, dict[str, np.ndarray]], _T]) -> Iterable[_T]:
    """``store``'s blocks converted for the device: converted once and kept when the store is in
    memory, read back and converted at every pass when it lives in a scratch file."""
    if not store.spilled:
        return [convert(i, block) for i, block in enumerate(store)]
    return _Reread(store, convert)


@dataclass(frozen=True)
class _Reread(Generic[_T]):
    store: BlockStore
    convert: Callable[[int, dict[str, np.ndarray]], _T]

    def __iter__(self) -> Iterator[_T]:
        for i in range(len(self.store)):
            yield self.convert(i, self.store[i])


@dataclass
class LayoutGraph:
    """Every epoch's points in one array and each epoch's kNN edges between them.

    Epoch i's points are rows ``offsets[i]:offsets[i + 1]`` of ``positions`` (float32 [V, 2]),
    its ``n_tracked`` tracked samples first (the same samples in the same order at every epoch:
    sample n is row ``offsets[i] + n``), then its boundary points. ``edges`` holds the edges of
    runs of whole consecutive epochs, at least :data:`_EDGES_PER_BLOCK` a block but the last
    (:data:`EDGE_FIELDS`: rows counted from the block's first epoch, the mixed weight, and the
    block's epoch boundaries as ``segments``), in memory or in a scratch file
    (:class:`BlockStore`); ``max_weight``: the largest weight of all. ``density``: each layout
    epoch draws an edge with probability ``density · w / max_weight`` (1, or
    :data:`LARGE_EPOCH_DENSITY` when an epoch holds more than :data:`LARGE_EPOCH_POINTS` points).
    """

    positions: np.ndarray
    offsets: np.ndarray  # int64 [E + 1]
    n_tracked: int
    edges: BlockStore
    max_weight: float
    n_edges: int
    density: float = 1.0

    def edge_blocks(self, device: torch.device) -> Iterable[EdgeBlock]:
        """The edges as :class:`EdgeBlock` s on ``device`` (re-iterable)."""

        def convert(_: int, block: dict[str, np.ndarray]) -> EdgeBlock:
            head, tail, weight, segments = (
                torch.from_numpy(block[name]).to(device) for name in ("head", "tail", "weight", "segments")
            )
            return EdgeBlock(head, tail, weight, segments, self.max_weight / self.density)

        return _device_blocks(self.edges, convert)

    def close(self) -> None:
        """Drop the edges (and their scratch file)."""
        self.edges.close()


def layout_graph(
    epochs: Iterable[EpochPoints],
    backend: KNNBackend,
    n_neighbors: int,
    rate: float,
    prune_offset: float,
    *,
    budget_bytes: int = 1 << 62,
    scratch_dir: Path | None = None,
    cross_class_weight: float = 1.0,
    anchors: int = 0,
) -> LayoutGraph:
    """The refinement's graph: each epoch's fuzzy kNN graph over all its points (tracked samples
    and boundary points together), pruned and weighted as the complex's spatial edges are
    (``rate``, ``prune_offset``: :func:`timevis_cli.fit.complex.mix_edges`, epoch by epoch: every
    epoch's largest membership is 1, so this prunes what one pass over all epochs would).

    ``epochs`` is read once, in time order; one epoch's features are held at a time, and the
    edges go to a :class:`BlockStore` with ``budget_bytes`` in memory (past it, a scratch file in
    ``scratch_dir``), whole consecutive epochs joined into blocks of at least
    :data:`_EDGES_PER_BLOCK` edges (but the last). Every epoch must track the same number of samples.
    The edges of a graph whose largest epoch holds more than :data:`LARGE_EPOCH_POINTS` points
    are drawn at :data:`LARGE_EPOCH_DENSITY` (``density``), as umap-learn's layout runs fewer
    epochs on larger graphs.

    ``cross_class_weight`` in [0, 1]: an edge whose two ends both have a class
    (:attr:`EpochPoints.classes` >= 0) and the classes differ keeps this fraction of its weight
    (umap-learn's supervised layout does the same with labels; here the model's predictions), so
    the layout separates what the model tells apart and the landscape can colour each sample
    with its own prediction. 1 leaves the graph as the features give it.

    ``anchors`` >= 1: every point with a class also gets edges of weight 1 (a membership of 1:
    the graph's own edges weigh ``rate`` x membership) to its ``anchors`` nearest points of the
    same class (:func:`anchor_edges`, found in the epoch's kNN where it holds them), both
    directions, added to the graph's own, so a point whose feature neighbours are all of other
    classes is still held, by the nearest points predicted alike, when those edges are
    weakened. 0: none.
    """
    if not 0.0 <= cross_class_weight <= 1.0:
        raise InputError(f"cross_class_weight={cross_class_weight} must be within [0, 1]")
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 0:
        raise InputError(f"anchors={anchors!r} must be an integer >= 0")
    edges = BlockStore(EDGE_FIELDS, budget_bytes, scratch_dir, label="the refinement's edges")
    positions: list[np.ndarray] = []
    offsets = [0]
    n_tracked = -1
    max_weight, n_edges = 0.0, 0
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # rows from the block's first
    block_first = 0  # the epoch index the pending block starts at

    def flush() -> None:
        if pending:
            head, tail, weight = (np.concatenate(parts) for parts in zip(*pending, strict=True))
            edges.append(head=head, tail=tail, weight=weight, segments=offsets[block_first:])
            pending.clear()

    try:
        for points in epochs:
            n_points = len(points.features)
            k = min(n_neighbors, n_points - 1)
            if k < 2:
                raise InputError(
                    f"an epoch has {n_points} points to refine; refinement needs at least 3 "
                    "(turn it off with --set refine.enabled=false)"
                )
            if n_tracked >= 0 and points.n_tracked != n_tracked:
                raise InputError(
                    f"epoch {len(positions)} tracks {points.n_tracked} samples, epoch 0 {n_tracked}: "
                    "refinement needs the same samples at every epoch"
                )
            n_tracked = int(points.n_tracked)
            if n_points >= 2**31:
                raise InputError(
                    f"an epoch has {n_points} points to refine, more than 2**31 - 1; turn the "
                    "refinement off with --set refine.enabled=false"
                )
            if offsets[-1] + n_points - offsets[block_first] >= 2**31:
                flush()  # a block's rows must fit int32
                block_first = len(positions)
            idx, dist = backend.query(points.features, k=k, include_self=True)
            mixed = mix_edges(spatial_edges(idx, dist).edges, rates={"spatial": rate}, prune_offset=prune_offset)
            if points.classes is not None and cross_class_weight != 1.0:
                classes = np.asarray(points.classes)
                if classes.shape != (n_points,):
                    raise InputError(
                        f"classes of shape {classes.shape} given for an epoch of {n_points} points"
                    )
                ends = classes[mixed.head], classes[mixed.tail]
                cross = (ends[0] != ends[1]) & (ends[0] >= 0) & (ends[1] >= 0)
                mixed.weight[cross] *= np.float32(cross_class_weight)
            head, tail, weight = mixed.head, mixed.tail, mixed.weight
            if points.classes is not None and anchors:
                extra = anchor_edges(points.features, np.asarray(points.classes), anchors, backend, neighbors=idx)
                head, tail = np.concatenate([head, extra[0]]), np.concatenate([tail, extra[1]])
                weight = np.concatenate([weight, np.ones(len(extra[0]), np.float32)])
            shift = offsets[-1] - offsets[block_first]
            pending.append(((head + shift).astype(np.int32), (tail + shift).astype(np.int32), weight))
            if len(weight):
                max_weight = max(max_weight, float(weight.max()))
            n_edges += len(weight)
            positions.append(np.asarray(points.positions, np.float32))
            offsets.append(offsets[-1] + n_points)
            if sum(len(part[0]) for part in pending) >= _EDGES_PER_BLOCK:
                flush()
                block_first = len(positions)
        flush()
        if not positions:
            raise InputError("refinement needs at least one epoch")
    except BaseException:
        edges.close()
        raise
    offsets_array = np.asarray(offsets, np.int64)
    largest = int(np.diff(offsets_array).max())
    density = LARGE_EPOCH_DENSITY if largest > LARGE_EPOCH_POINTS else 1.0
    if density < 1.0:
        log.info(
            "refinement: epochs of up to %d points (more than %d): each layout epoch draws the "
            "edges at %.0f%% of their weight's probability, as umap-learn's layout runs 200 "
            "instead of 500 epochs on graphs that large",
            largest, LARGE_EPOCH_POINTS, 100 * density,
        )  # fmt: skip
    return LayoutGraph(
        positions=np.concatenate(positions),
        offsets=offsets_array,
        n_tracked=n_tracked,
        edges=edges,
        max_weight=max_weight or 1.0,
        n_edges=n_edges,
        density=density,
    )


def anchor_edges(
    features: np.ndarray,
    classes: np.ndarray,
    k: int,
    backend: KNNBackend,
    *,
    neighbors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Edges (head, tail: int64 [m], both directions of each pair) from every point with a
    class (``classes`` >= 0) to its ``k`` nearest points (``features``, exact kNN) among those
    of the same class; a class of c points gives each of them ``min(k, c - 1)``. Order: class
    by class (ascending), the class's points ascending, each point's nearest first, then the
    same pairs reversed.

    ``neighbors``: the points' own kNN over all classes (indices [n, m], nearest first, as the
    same exact ``backend`` gives them; a point's own index is skipped wherever it stands). A
    point with enough points of its class there takes its nearest ones from it (the nearest of
    its class, up to ties); only the other points are searched, among their class. On an epoch
    whose predictions are mostly settled this spares most of the per-class searches.
    """
    n = len(features)
    if classes.shape != (n,):
        raise InputError(f"classes of shape {classes.shape} given for {n} points")
    classes = classes.astype(np.int64, copy=False)
    has_class = classes >= 0
    if not has_class.any() or k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sizes = np.bincount(classes[has_class])
    want = np.zeros(n, np.int64)  # anchors per point
    want[has_class] = np.minimum(k, sizes[classes[has_class]] - 1)
    nearest = np.full((n, k), -1, np.int64)  # each point's anchors, nearest first
    searched = want > 0
    if neighbors is not None:
        if neighbors.ndim != 2 or len(neighbors) != n:
            raise InputError(f"neighbors of shape {neighbors.shape} given for {n} points")
        alike = (classes[neighbors] == classes[:, None]) & (neighbors != np.arange(n)[:, None])
        rank = np.cumsum(alike, axis=1)
        enough = searched & (rank[:, -1] >= want)
        rows, cols = np.nonzero(alike & (rank <= want[:, None]) & enough[:, None])
        nearest[rows, rank[rows, cols] - 1] = neighbors[rows, cols]
        searched &= ~enough
    for c in np.unique(classes[searched]):
        members = np.flatnonzero(classes == c)
        queries = np.flatnonzero(searched & (classes == c))
        kk = int(want[queries[0]])
        if len(queries) == len(members):  # every point of the class: its self-kNN
            idx, _ = backend.query(features[members], k=kk)
            nearest[queries, :kk] = members[idx]
            continue
        idx, _ = backend.query(features[members], features[queries], k=kk + 1)
        found = members[idx]
        # each query is among the members: skip it (or, where a tie hid it, the farthest)
        keep = found != queries[:, None]
        keep[keep.all(axis=1), -1] = False
        nearest[queries, :kk] = found[keep].reshape(len(queries), kk)
    heads, tails = [], []
    for c in np.flatnonzero(sizes):
        rows = np.flatnonzero(classes == c)
        kk = int(want[rows[0]])
        if kk < 1:
            continue
        head, tail = np.repeat(rows, kk), nearest[rows, :kk].reshape(-1)
        heads += [head, tail]
        tails += [tail, head]
    if not heads:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(heads), np.concatenate(tails)


def trajectory_targets(
    drawn: np.ndarray, distance: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Targets float32 [B, P] and mean target float32 [B] of a block of samples.

    Sample n's targets are ``scale · c_n · distance[n]``, where ``c_n`` fits (least squares) the
    feature-space distances of its pairs (``distance`` [B, P]) to the 2-D distances it has at
    the start (``drawn`` [B, P]): its trajectory keeps its size on the canvas (times ``scale``)
    and takes its shape from feature space.
    """
    high = distance.astype(np.float64)
    energy = np.square(high).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fitted = np.where(energy > 0, (drawn * high).sum(axis=1) / energy, 0.0)
    target = (scale * fitted[:, None] * high).astype(np.float32)
    mean = target.mean(axis=1) if target.shape[1] else np.zeros(len(target), np.float32)
    return target, mean.astype(np.float32)


@dataclass
class Trajectories:
    """The trajectory stress of every tracked sample, in blocks of consecutive samples.

    Every sample has the same pairs of epochs (``first``, ``second``: epoch indices int64 [P],
    :func:`trajectory_pairs`); ``targets`` holds, block by block (``sizes`` samples each), their
    target distances float32 [P, B] (:data:`TARGET_FIELDS`), in memory or in a scratch file;
    ``unit`` float32 [N]: each sample's unit of error.
    """

    first: np.ndarray
    second: np.ndarray
    targets: BlockStore
    unit: np.ndarray
    sizes: list[int]

    @property
    def n_pairs(self) -> int:
        return len(self.unit) * len(self.first)

    def pair_blocks(self, offsets: np.ndarray, device: torch.device) -> Iterable[PairBlock]:
        """The stress as :class:`PairBlock` s on ``device``, for a graph with ``offsets``."""
        epoch_rows = torch.from_numpy(np.asarray(offsets[:-1], np.int64)).to(device)
        runs = pair_runs(self.first, self.second)
        limit = torch.from_numpy(pair_limit(self.first, self.second, len(offsets) - 1)).to(device)
        unit = torch.from_numpy(self.unit).to(device)
        starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

        def convert(i: int, block: dict[str, np.ndarray]) -> PairBlock:
            s, e = int(starts[i]), int(starts[i + 1])
            return PairBlock(epoch_rows, runs, limit, s, torch.from_numpy(block["target"]).to(device), unit[s:e])

        return _device_blocks(self.targets, convert)

    def close(self) -> None:
        """Drop the targets (and their scratch file)."""
        self.targets.close()


def trajectory_term(
    graph: LayoutGraph,
    first: np.ndarray,
    second: np.ndarray,
    distances: Iterable[np.ndarray],
    scale: float,
    *,
    budget_bytes: int = 1 << 62,
    scratch_dir: Path | None = None,
) -> Trajectories:
    """The trajectory stress of ``graph``'s tracked samples from their feature-space distances
    (``distances``: [B, P] per block of consecutive samples, :func:`trajectory_distances`).

    Targets as :func:`trajectory_targets` from the 2-D distances at the start (``graph``'s
    positions); a sample's unit of error is its mean target, at least 5% of the mean sample's:
    a sample that never moves in feature space gets targets 0 and its copies are pulled together
    firmly. Targets go to a :class:`BlockStore` with ``budget_bytes`` in memory. The stress's
    weight is applied by :func:`refine_layout`.
    """
    if not scale > 0:
        raise InputError(f"refine.trajectory_scale={scale} must be > 0")
    targets = BlockStore(TARGET_FIELDS, budget_bytes, scratch_dir, label="the refinement's trajectory targets")
    first_row, second_row = graph.offsets[first], graph.offsets[second]
    chunk = max(1, _PAIRS_PER_BLOCK // max(1, len(first)))
    means: list[np.ndarray] = []
    sizes: list[int] = []
    done = 0
    try:
        for distance in distances:
            if distance.ndim != 2 or distance.shape[1] != len(first) or done + len(distance) > graph.n_tracked:
                raise InputError(
                    f"trajectory distances of shape {distance.shape} after {done} samples do not fit "
                    f"{graph.n_tracked} samples x {len(first)} pairs"
                )
            samples = np.arange(done, done + len(distance))[:, None]
            start = graph.positions
            drawn = np.linalg.norm(start[first_row + samples] - start[second_row + samples], axis=2)
            target, mean = trajectory_targets(drawn.astype(np.float64), distance, scale)
            for at in range(0, len(target), chunk):
                targets.append(target=target[at : at + chunk].T)
                sizes.append(len(target[at : at + chunk]))
            means.append(mean)
            done += len(distance)
        if done != graph.n_tracked:
            raise InputError(f"trajectory distances cover {done} samples, the graph tracks {graph.n_tracked}")
    except BaseException:
        targets.close()
        raise
    unit = np.concatenate(means) if means else np.zeros(0, np.float32)
    # the unit of a sample's error: its mean target, at least 5% of the typical one, so a
    # sample (nearly) still in feature space is held (nearly) still, not left free
    floor = _STILL_FRACTION * float(unit.mean()) if unit.size else 0.0
    unit = np.maximum(unit, floor)
    unit = np.where(unit > 0, unit, 1.0).astype(np.float32)
    return Trajectories(first, second, targets, unit, sizes)


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
    trajectory: Trajectories | None = None,
    trajectory_weight: float = 0.0,
    progress: Callable[[int], None] | None = None,
    consecutive_weight: float = 1.0,
) -> np.ndarray:
    """Refined positions float32 [V, 2] of ``graph``'s points (:func:`optimize_layout`), with
    ``trajectory``'s stress applied with ``trajectory_weight`` (its consecutive pairs times
    ``consecutive_weight`` more)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([int(seed), 7]).generate_state(1)[0]))
    positions = torch.from_numpy(graph.positions).to(device, copy=True)  # the graph's start is kept
    optimize_layout(
        positions,
        graph.edge_blocks(device),
        n_epochs=n_epochs,
        a=a,
        b=b,
        negative_rate=negative_rate,
        learning_rate=learning_rate,
        generator=generator,
        progress=progress,
        trajectory=trajectory.pair_blocks(graph.offsets, device) if trajectory is not None else None,
        trajectory_weight=trajectory_weight,
        consecutive_weight=consecutive_weight,
    )
    return positions.cpu().numpy()
