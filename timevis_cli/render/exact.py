"""The exact decision landscape: the class regions and boundaries of ``y -> head(decoder(y))``
over the canvas, from convex polygons on which that map is affine or provably one class.

The decoder is a ReLU MLP (read through ``FitModel.decoder_layers(epoch)``) and the head, when
it is made of Linear, BatchNorm1d (eval mode: an affine map), ReLU, Flatten, Dropout and
Identity layers, is continuous piecewise linear too, so the composite is: :func:`cpwl_chain`
turns both into one chain of affine maps with a ReLU between consecutive ones (the decoder's
last layer fused with the head's affine layers). :func:`exact_landscape` then

1. starts from the canvas rectangle (pruning: a quadtree of grid cells, below) and, for every
   ReLU layer, splits every current polygon by the line where each neuron's pre-activation
   (affine on the polygon) changes sign, one neuron at a time across all polygons (vectorised
   over polygons; a convex polygon cut by a line gives two convex polygons); after the layer
   each polygon's activation pattern gives the affine map to the next layer's pre-activations
   (``A [k, 2]``, ``c [k]`` per polygon);
2. gives each final polygon (a *linear region*) its affine logits map ``C x 2``; a polygon whose
   vertices share one argmax with a positive gap over every other class is that class as a whole
   (each logit difference is affine, so its vertices decide); the others are clipped by the
   ``C - 1`` half-planes ``f_k >= f_m`` of each class ``k`` that can win there (a class whose
   largest logit over the vertices is below the largest over classes of their smallest logit
   over the vertices cannot), giving convex class *pieces*;
3. merges pieces per class: every edge carries the id of the line that made it (a neuron's cut,
   a class line, a grid line, a canvas side), so edges on one line are compared as intervals
   along it; where pieces of one class lie on both sides the edge is interior (and joins the two
   pieces into one connected class region), where only one side has the class it is a class
   boundary.

Pruning (``prune=True``, the default; each rule exact, docs/exact.md): only the class regions
and boundaries are wanted, so a polygon whose class is *proven* constant is not split further
but becomes one class piece. :func:`_prove` bounds the rest of the network over a polygon from
the pre-activations of the layer that are exactly affine on it: a forward linear relaxation in
the canvas coordinates (every neuron between two affine functions of ``y``, concretised at the
polygon's vertices), and proves class ``k`` when every ``f_k - f_m`` is bounded below by more
than :data:`PROOF_MARGIN` x the logits' scale at every vertex. It is applied to a quadtree of
cells (:data:`COARSE_CELLS` per side, unproven cells quartered down to :data:`FINE_CELLS`; small
cells make the bound tight) and, after each layer's splits, to every polygon left. Neurons
inactive on all of a chunk of polygons drop out of its matrix products; a neuron whose line
misses a polygon leaves it whole (and misses every part of it); the constant-class and
impossible-class tests of step 2. The linear regions inside proven polygons are not enumerated
(``prune=False`` splits the whole canvas into them).

Numerics: float64 throughout. A vertex within :data:`DISTANCE_TOL` x the canvas side of a line
is on it (on both sides); a cut or a class piece leaving a part of area below :data:`MIN_AREA`
x the canvas area is not made (the polygon stays whole, on its larger side; a class piece is
dropped): these *slivers* are counted (``ExactLandscape.slivers``), their area summed. The BLAS
runs on one thread here (the matrices are small: a second thread costs more than it gives).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from timevis_cli.errors import InputError
from timevis_cli.render.landscape import Bounds

__all__ = [
    "CPWL_LAYERS",
    "DISTANCE_TOL",
    "MIN_AREA",
    "ExactLandscape",
    "NotPiecewiseLinearError",
    "cpwl_chain",
    "exact_landscape",
]

log = logging.getLogger(__name__)

#: A vertex this close to a line (times the canvas side) lies on it.
DISTANCE_TOL = 1e-10
#: Parts of polygons smaller than this (times the canvas area) are not made (counted slivers).
MIN_AREA = 1e-14
#: Head layers that keep the composite continuous piecewise linear.
CPWL_LAYERS = ("Linear", "BatchNorm1d", "ReLU", "Flatten", "Dropout", "Identity")
#: Neurons split by in one batch: the polygons their lines cross are set apart from the others
#: once per batch (which lines cross which polygon is computed once per layer).
NEURON_BATCH = 16
#: Vertices per chunk when the logits are evaluated at every vertex.
_VERTEX_CHUNK = 1 << 17
#: Line ids 0..3 are the canvas sides.
_CANVAS_LINES = 4
#: Pruning: the canvas starts as a grid of COARSE_CELLS x COARSE_CELLS cells; a cell whose class
#: is not proven is quartered, down to FINE_CELLS per side (a power-of-two multiple of it).
COARSE_CELLS = 8
FINE_CELLS = 64
#: A class k is proven on a polygon when the lower bound of every f_k - f_m exceeds this share
#: of the logits' scale (room for the float64 rounding of the bounds).
PROOF_MARGIN = 1e-9
#: Polygons bounded (or tested against a layer's lines) together: the arrays are polygons x
#: vertices x width, small enough to stay in cache.
_BOUND_CHUNK = 512

Chain = list[tuple[np.ndarray, np.ndarray]]


class NotPiecewiseLinearError(InputError):
    """The head has a layer that is not piecewise linear: no exact landscape exists."""


def cpwl_chain(
    decoder_layers: Sequence[tuple[Any, Any]], head_spec: Sequence[Mapping[str, Any]],
    head_state: Mapping[str, np.ndarray],
) -> Chain:
    """``head(decoder(y))`` as affine maps ``(W [out, in], b [out])`` float64 with a ReLU
    between consecutive ones and none after the last (which gives the logits).

    decoder_layers: ``FitModel.decoder_layers(epoch)`` (tensors or arrays); head_spec,
    head_state: the epoch's head (``Run.head(epoch).spec`` and ``.state``). Consecutive affine
    maps (the decoder's last layer and the head's Linear, BatchNorm1d in eval mode, Flatten,
    Dropout, Identity) are fused into one. Raises :class:`NotPiecewiseLinearError` naming the
    first other layer.
    """
    for i, layer in enumerate(head_spec):
        if layer.get("type") not in CPWL_LAYERS:
            raise NotPiecewiseLinearError(
                f"head layer {i} is {layer.get('type')}, which is not piecewise linear, so "
                f"--exact cannot compute the regions (it needs {', '.join(CPWL_LAYERS)} layers "
                "only); render without --exact to draw the raster landscape"
            )
    chain: Chain = []
    for weight, bias in decoder_layers:
        chain.append((_array(weight), _array(bias)))
    if not chain:
        raise InputError("the decoder has no layers")
    pending = chain.pop()  # the decoder's last layer, fused with the head's affine layers
    for i, layer in enumerate(head_spec):
        kind = layer.get("type")
        if kind == "Linear":
            weight = _array(head_state[f"{i}.weight"])
            bias = (
                _array(head_state[f"{i}.bias"]) if layer.get("bias", True)
                else np.zeros(len(weight))
            )  # fmt: skip
            pending = (weight @ pending[0], weight @ pending[1] + bias)
        elif kind == "BatchNorm1d":
            mean = _array(head_state[f"{i}.running_mean"])
            scale = 1.0 / np.sqrt(_array(head_state[f"{i}.running_var"]) + layer.get("eps", 1e-5))
            shift = -mean * scale
            if layer.get("affine", True):
                gamma = _array(head_state[f"{i}.weight"])
                scale, shift = scale * gamma, shift * gamma + _array(head_state[f"{i}.bias"])
            pending = (scale[:, None] * pending[0], scale * pending[1] + shift)
        elif kind == "ReLU":
            chain.append(pending)
            width = len(pending[1])
            pending = (np.eye(width), np.zeros(width))
    chain.append(pending)
    return chain


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


# --- convex polygons in one flat array ----------------------------------------------------------


@dataclass
class _Polygons:
    """Convex polygons, counter-clockwise, vertices of polygon ``p`` contiguous.

    xy: float64 (N, 2); count: int64 (P,) vertices per polygon; edge: int64 (N,) the id of the
    line carrying the edge from vertex ``i`` to the next; owner: int64 (P,) the row of the
    affine map table the polygon uses; tag: int64 (P,) a free per-polygon label.
    """

    xy: np.ndarray
    count: np.ndarray
    edge: np.ndarray
    owner: np.ndarray
    tag: np.ndarray

    @property
    def start(self) -> np.ndarray:
        return np.cumsum(self.count) - self.count

    def pid(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.count)), self.count)

    def nxt(self) -> np.ndarray:
        """Index of each vertex's successor in its polygon."""
        following = np.arange(1, len(self.xy) + 1)
        following[self.start + self.count - 1] = self.start
        return following

    def area(self) -> np.ndarray:
        if len(self.count) == 0:
            return np.zeros(0)
        nxt = self.nxt()
        cross = self.xy[:, 0] * self.xy[nxt, 1] - self.xy[nxt, 0] * self.xy[:, 1]
        return 0.5 * np.add.reduceat(cross, self.start)

    def centroid(self) -> np.ndarray:
        """A point inside each polygon (the mean of its vertices), float64 (P, 2)."""
        if len(self.count) == 0:
            return np.zeros((0, 2))
        return np.add.reduceat(self.xy, self.start, axis=0) / self.count[:, None]

    def take(self, rows: np.ndarray) -> _Polygons:
        """The polygons ``rows`` (a bool mask or indices), in that order."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, np.int64)
        count = self.count[rows]
        index = _ranges(self.start[rows], count)
        return _Polygons(
            self.xy[index], count, self.edge[index], self.owner[rows], self.tag[rows]
        )

    @staticmethod
    def concat(parts: Sequence[_Polygons]) -> _Polygons:
        return _Polygons(
            np.concatenate([p.xy for p in parts]), np.concatenate([p.count for p in parts]),
            np.concatenate([p.edge for p in parts]), np.concatenate([p.owner for p in parts]),
            np.concatenate([p.tag for p in parts]),
        )  # fmt: skip


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + c))`` over the pairs, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total)


def _canvas(bounds: Bounds) -> _Polygons:
    xy = np.array(
        [[bounds.xmin, bounds.ymin], [bounds.xmax, bounds.ymin],
         [bounds.xmax, bounds.ymax], [bounds.xmin, bounds.ymax]], dtype=np.float64,
    )  # fmt: skip
    one = np.zeros(1, np.int64)
    return _Polygons(xy, np.array([4]), np.arange(_CANVAS_LINES), one, one.copy())


def _clip(
    poly: _Polygons, dist: np.ndarray, side: float, line: np.ndarray, tol: float
) -> _Polygons:
    """Each polygon's part where ``side * dist >= 0`` (Sutherland-Hodgman against one line per
    polygon; ``dist`` (N,) the vertices' signed distances to it, ``line`` (P,) its id, which
    labels the new edge). Parts may have fewer than 3 vertices where the line misses."""
    t = side * dist
    nxt = poly.nxt()
    inside = t >= -tol
    cross = ((t > tol) & (t[nxt] < -tol)) | ((t < -tol) & (t[nxt] > tol))
    emitted = inside.astype(np.int64) + cross
    slot = np.cumsum(emitted) - emitted
    total = int(emitted.sum())
    pid = poly.pid()
    xy = np.empty((total, 2))
    edge = np.empty(total, np.int64)
    keep = np.flatnonzero(inside)
    xy[slot[keep]] = poly.xy[keep]
    leaving = (t[nxt] < -tol) & ~cross
    edge[slot[keep]] = np.where(leaving[keep], line[pid[keep]], poly.edge[keep])
    at = np.flatnonzero(cross)
    w = (dist[at] / (dist[at] - dist[nxt[at]]))[:, None]
    target = slot[at] + inside[at]
    xy[target] = poly.xy[at] + w * (poly.xy[nxt[at]] - poly.xy[at])
    edge[target] = np.where(inside[at], line[pid[at]], poly.edge[at])
    count = np.bincount(pid, weights=emitted, minlength=len(poly.count)).astype(np.int64)
    return _Polygons(xy, count, edge, poly.owner, poly.tag)


@dataclass
class _Tally:
    """What the partition dropped, and the line ids handed out."""

    canvas_area: float
    next_line: int = _CANVAS_LINES
    slivers: int = 0
    sliver_area: float = 0.0

    def lines(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_line, self.next_line + n)
        self.next_line += n
        return ids


def _split(
    poly: _Polygons, dist: np.ndarray, tally: _Tally, tol: float, min_area: float
) -> _Polygons:
    """Split every polygon crossed by its line (``dist`` (N,): the vertices' signed distances)
    into its two sides; a polygon whose smaller side would be a sliver stays whole."""
    pid = poly.pid()
    size = len(poly.count)
    has_pos = np.bincount(pid[dist > tol], minlength=size) > 0
    has_neg = np.bincount(pid[dist < -tol], minlength=size) > 0
    cut = has_pos & has_neg
    if not cut.any():
        return poly
    whole = poly.take(~cut)
    crossed = poly.take(cut)
    dist = dist[np.repeat(cut, poly.count)]
    line = tally.lines(len(crossed.count))
    pos = _clip(crossed, dist, 1.0, line, tol)
    neg = _clip(crossed, dist, -1.0, line, tol)
    pos_area, neg_area = pos.area(), neg.area()
    sliver = (np.minimum(pos_area, neg_area) < min_area) | (pos.count < 3) | (neg.count < 3)
    if sliver.any():
        tally.slivers += int(sliver.sum())
        tally.sliver_area += float(np.minimum(pos_area, neg_area)[sliver].clip(0).sum())
    fine = ~sliver
    return _Polygons.concat([whole, crossed.take(sliver), pos.take(fine), neg.take(fine)])


# --- the partition -----------------------------------------------------------------------------


def _values(poly: _Polygons, maps: np.ndarray, pid: np.ndarray) -> np.ndarray:
    """Affine values at every vertex: (N, k) from maps (M, 3, k), the rows x, y and constant
    coefficients of each owner's ``k`` affine functions; computed in chunks of vertices."""
    out = np.empty((len(poly.xy), maps.shape[2]))
    owner = poly.owner[pid]
    for lo in range(0, len(poly.xy), _VERTEX_CHUNK):
        hi = lo + _VERTEX_CHUNK
        own = maps[owner[lo:hi]]
        out[lo:hi] = own[:, 0] * poly.xy[lo:hi, 0:1] + own[:, 1] * poly.xy[lo:hi, 1:2] + own[:, 2]
    return out


def _crossing(poly: _Polygons, maps: np.ndarray, tol: float) -> np.ndarray:
    """Whether each affine function ``maps[owner]`` (M, 3, k) of each polygon takes both signs
    (beyond ``tol``) at its vertices, i.e. whether its zero line crosses the polygon: bool
    (P, k). Computed in chunks of polygons of like vertex counts."""
    size = len(poly.count)
    out = np.zeros((size, maps.shape[2]), bool)
    order = np.argsort(poly.count, kind="stable")
    for lo in range(0, size, _BOUND_CHUNK):
        rows = order[lo:lo + _BOUND_CHUNK]
        values = _at_vertices(_padded(poly.take(rows)), maps[poly.owner[rows]])
        out[rows] = (values.max(axis=1) > tol) & (values.min(axis=1) < -tol)
    return out


def _refine_layer(
    poly: _Polygons, maps: np.ndarray, tally: _Tally, tol: float, min_area: float, batch: int
) -> _Polygons:
    """Split ``poly`` by the zero lines of every neuron of one layer whose pre-activations are
    ``maps[owner]`` (M, 3, k): ``x * m[0] + y * m[1] + m[2]``."""
    if len(poly.count) == 0:
        return poly
    norm = np.hypot(maps[:, 0], maps[:, 1])
    flat = norm == 0  # the neuron is constant on the polygon: no line
    unit = maps / np.where(flat, 1.0, norm)[:, None, :]
    unit[:, 2] = np.where(flat, 0.0, unit[:, 2])
    # a neuron's line crosses a part of a polygon only if it crosses the polygon
    crosses = _crossing(poly, unit, tol)
    poly.tag = np.arange(len(poly.count))  # the polygon of the layer's start it descends from
    neurons = np.flatnonzero(crosses.any(axis=0))
    for lo in range(0, len(neurons), batch):
        chosen_neurons = neurons[lo:lo + batch]
        ancestors = crosses[:, chosen_neurons]
        touched = ancestors.any(axis=1)[poly.tag]
        rest = poly.take(~touched)
        work = poly.take(touched)
        for j in chosen_neurons:
            candidate = crosses[work.tag, j]
            if not candidate.any():
                continue
            chosen = work.take(candidate)
            line = unit[chosen.owner[chosen.pid()], :, j]
            d = line[:, 0] * chosen.xy[:, 0] + line[:, 1] * chosen.xy[:, 1] + line[:, 2]
            work = _Polygons.concat([work.take(~candidate), _split(chosen, d, tally, tol, min_area)])
        poly = _Polygons.concat([rest, work])
    poly.tag = np.zeros(len(poly.count), np.int64)
    return poly


def _per_polygon_count(flags: np.ndarray, count: np.ndarray) -> np.ndarray:
    """How many of each polygon's vertices are flagged, per column: (P, B) from flags (N, B)
    (differences of running sums: much faster than ``reduceat`` along the first axis)."""
    running = np.zeros((len(flags) + 1, flags.shape[1]), np.int32)
    np.cumsum(flags, axis=0, dtype=np.int32, out=running[1:])
    ends = np.cumsum(count)
    return running[ends] - running[ends - count]


def _next_maps(
    poly: _Polygons, maps: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """Each polygon's affine map to the next pre-activations (or logits), (P, 3, out): its
    activation pattern (at its centroid) applied to ``maps[owner]``, then ``weight``, ``bias``.
    The polygons' owner becomes their own row."""
    centre = poly.centroid()
    size = len(poly.count)
    out = np.empty((size, 3, len(bias)))
    for lo in range(0, size, _BOUND_CHUNK):
        rows = slice(lo, lo + _BOUND_CHUNK)
        own = maps[poly.owner[rows]]  # (p, 3, k)
        active = (
            own[:, 0] * centre[rows, 0:1] + own[:, 1] * centre[rows, 1:2] + own[:, 2]
        ) > 0  # fmt: skip
        live = np.flatnonzero(active.any(axis=0))  # neurons inactive on all of them drop out
        own = own[:, :, live] * active[:, None, live]
        out[rows] = _times(own, weight.T[live])
    out[:, 2] += bias
    poly.owner = np.arange(size)
    return out


def _linear_regions(
    chain: Chain, bounds: Bounds, tally: _Tally, tol: float, min_area: float, batch: int,
    margin: float | None,
) -> tuple[_Polygons, np.ndarray, _Polygons, np.ndarray]:
    """The canvas split into the polygons on which ``chain`` is affine, with each polygon's
    logits map (P, 3, C); with pruning (``margin`` not None) only where the class is not proven
    first: the proven polygons (their tag: the layer whose pre-activations were exact on them
    when proven, 0 for the cells) and their classes are returned too (else empty)."""
    weight, bias = chain[0]
    if weight.shape[1] != 2:
        raise InputError(f"the decoder's first layer takes {weight.shape[1]} inputs, not 2")
    maps = np.stack([weight[:, 0], weight[:, 1], bias])[None]  # (1, 3, h)
    proven: list[_Polygons] = []
    proven_class: list[np.ndarray] = []
    if margin is None:
        poly = _canvas(bounds)
    else:
        poly, cells, cells_class = _cells(chain, maps, bounds, tally, margin)
        cells.tag = np.zeros(len(cells.count), np.int64)  # proven from the first layer on
        proven.append(cells)
        proven_class.append(cells_class)
    for layer, (weight, bias) in enumerate(chain[1:], start=1):
        started = time.perf_counter()
        if margin is not None and layer > 1:  # the cells were bounded from layer 1 on
            found = _prove(poly, maps, chain[layer:], margin)
            done = found >= 0
            log.debug("layer %d: %d of %d polygons proven", layer, int(done.sum()), len(done))
            done_poly = poly.take(done)
            done_poly.tag = np.full(len(done_poly.count), layer - 1)
            proven.append(done_poly)
            proven_class.append(found[done])
            poly = poly.take(~done)
        poly = _refine_layer(poly, maps, tally, tol, min_area, batch)
        maps = _next_maps(poly, maps, weight, bias)
        log.debug(
            "layer %d: %d polygons (%.2f s)", layer, len(poly.count), time.perf_counter() - started
        )
    if not proven:
        proven, proven_class = [poly.take(np.zeros(0, np.int64))], [np.zeros(0, np.int64)]
    return poly, maps, _Polygons.concat(proven), np.concatenate(proven_class).astype(np.int64)


# --- pruning: cells and sound class bounds -----------------------------------------------------


def _cells(
    chain: Chain, maps: np.ndarray, bounds: Bounds, tally: _Tally, margin: float
) -> tuple[_Polygons, _Polygons, np.ndarray]:
    """The canvas as a quadtree of grid cells: :data:`COARSE_CELLS` per side, each cell whose
    class :func:`_prove` does not prove quartered, down to :data:`FINE_CELLS` per side.

    Returns the unproven finest cells, the proven cells and their classes. A cell's edges carry
    the id of the grid line they lie on (one id per line across the canvas, so the merge compares
    the pieces on its two sides), the canvas sides keep theirs."""
    fine = FINE_CELLS
    xs = bounds.xmin + (bounds.xmax - bounds.xmin) * np.arange(fine + 1) / fine
    ys = bounds.ymin + (bounds.ymax - bounds.ymin) * np.arange(fine + 1) / fine
    xs[-1], ys[-1] = bounds.xmax, bounds.ymax
    vertical = np.r_[3, _CANVAS_LINES + np.arange(fine - 1), 1]  # line id at x = xs[i]
    horizontal = np.r_[0, _CANVAS_LINES + fine - 1 + np.arange(fine - 1), 2]
    tally.next_line = max(tally.next_line, _CANVAS_LINES + 2 * (fine - 1))
    size = fine // COARSE_CELLS
    ix, iy = (a.ravel() for a in np.meshgrid(np.arange(0, fine, size), np.arange(0, fine, size)))
    proven, proven_class = [], []
    while True:
        x0, x1, y0, y1 = xs[ix], xs[ix + size], ys[iy], ys[iy + size]
        xy = np.stack([np.c_[x0, y0], np.c_[x1, y0], np.c_[x1, y1], np.c_[x0, y1]], 1)
        edge = np.c_[horizontal[iy], vertical[ix + size], horizontal[iy + size], vertical[ix]]
        n = len(ix)
        cells = _Polygons(
            xy.reshape(-1, 2), np.full(n, 4), edge.ravel(), np.zeros(n, np.int64),
            np.zeros(n, np.int64),
        )  # fmt: skip
        found = _prove(cells, maps, chain[1:], margin)
        done = found >= 0
        proven.append(cells.take(done))
        proven_class.append(found[done])
        log.debug("cells of side %d/%d: %d, %d proven", size, fine, n, int(done.sum()))
        if size == 1 or done.all():
            return cells.take(~done), _Polygons.concat(proven), np.concatenate(proven_class)
        ix, iy = ix[~done], iy[~done]
        size //= 2
        ix = np.concatenate([ix, ix + size, ix, ix + size])
        iy = np.concatenate([iy, iy, iy + size, iy + size])


def _padded(poly: _Polygons) -> np.ndarray:
    """Each polygon's vertices in homogeneous coordinates ``(x, y, 1)``, float64 (P, V, 3),
    padded to the largest vertex count by repeating the last vertex."""
    width = int(poly.count.max())
    index = poly.start[:, None] + np.minimum(np.arange(width), poly.count[:, None] - 1)
    return np.concatenate([poly.xy[index], np.ones((*index.shape, 1))], axis=2)


def _relax(
    centre: np.ndarray, radius: np.ndarray | None, zlo: np.ndarray, zhi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ReLU of pre-activations ``z`` bounded by the affine functions ``centre -/+ radius``
    (P, 3, k; radius None: ``z = centre`` exactly) on each polygon, with ``zlo <= z <= zhi``
    (P, k) there: affine bounds of ``relu(z)`` in the same form.

    Stable neurons are exact (``z``, or 0); an unstable one (``zlo < 0 < zhi``) lies below the
    chord ``s (z - zlo)``, ``s = zhi / (zhi - zlo)``, and above ``l z`` with ``l`` 1 where
    ``zhi > -zlo`` else 0, so with ``upper = s (centre + radius - zlo)`` and
    ``lower = l (centre - radius)`` the new centre is ``a centre + b radius + g`` and the new
    radius ``b centre + a radius + g`` with ``a = (s + l) / 2``, ``b = (s - l) / 2``,
    ``g = -s zlo / 2`` (``a = 1``, ``b = g = 0`` where active; all 0 where inactive).

    Only the neurons active or unstable on some polygon are kept: returns the bounds of those
    (P, 3, k') and their indices (k',)."""
    active = zlo >= 0
    unstable = (zhi > 0) & ~active
    live = np.flatnonzero((active | unstable).any(axis=0))
    if len(live) < active.shape[1]:
        active, unstable, zlo, zhi = active[:, live], unstable[:, live], zlo[:, live], zhi[:, live]
        centre = centre[:, :, live]
        radius = None if radius is None else radius[:, :, live]
    slope = np.where(unstable, zhi / np.where(unstable, zhi - zlo, 1.0), 0.0)
    lower = unstable & (zhi > -zlo)
    a = np.where(active, 1.0, (slope + lower) * 0.5)[:, None, :]
    b = ((slope - lower) * 0.5)[:, None, :]
    shift = -0.5 * slope * zlo
    new_centre = centre * a
    new_radius = centre * b
    if radius is not None:
        new_centre += radius * b
        new_radius += radius * a
    new_centre[:, 2] += shift
    new_radius[:, 2] += shift
    return new_centre, new_radius, live


def _at_vertices(verts: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Affine functions ``maps`` (P, 3, k) at each polygon's vertices ``verts`` (P, V, 3):
    (P, V, k)."""
    return np.matmul(verts, maps)


def _times(maps: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Each polygon's affine functions (P, 3, k) times ``matrix`` (k, m): (P, 3, m)."""
    size = len(maps)
    return (maps.reshape(size * 3, -1) @ matrix).reshape(size, 3, -1)


def _prove(poly: _Polygons, maps: np.ndarray, rest: Chain, margin: float) -> np.ndarray:
    """The class each polygon provably has everywhere (-1: not proven), int64 (P,).

    ``maps[poly.owner]`` (3, k) are the pre-activations of one ReLU layer, exactly affine on the
    polygon; ``rest`` the affine maps after it (ReLU between, the last gives the logits). The
    bound is a forward linear relaxation in the canvas coordinates: every neuron is kept
    between two affine functions of ``y`` valid on the polygon, whose extremes over it are at
    its vertices; through a layer ``W`` the bounds are ``W centre +/- |W| radius``; at the logits
    the difference ``f_k - f_m`` of the class ``k`` the centre map gives at the vertices' mean
    and every other class ``m`` is bounded below the same way, and ``k`` is proven when every
    such lower bound, at every vertex, exceeds ``margin``."""
    size = len(poly.count)
    out = np.full(size, -1, np.int64)
    if size == 0:
        return out
    hidden = [(w.T.copy(), np.abs(w).T.copy(), b) for w, b in rest[:-1]]
    w_last, b_last = rest[-1]
    order = np.argsort(poly.count, kind="stable")  # chunks of like vertex counts: little padding
    for lo in range(0, size, _BOUND_CHUNK):
        rows_all = order[lo:lo + _BOUND_CHUNK]
        verts = _padded(poly.take(rows_all))
        centre, radius = maps[poly.owner[rows_all]], None
        values = _at_vertices(verts, centre)
        zlo, zhi = values.min(axis=1), values.max(axis=1)
        for weight_t, abs_t, bias in hidden:
            exact = radius is None
            centre, radius, live = _relax(centre, radius, zlo, zhi)
            abs_live = abs_t[live]
            if exact:  # the radius is 0 but for the unstable neurons
                spread = np.flatnonzero(np.abs(radius).max(axis=(0, 1)) > 0)
                radius, abs_live = radius[:, :, spread], abs_live[spread]
            centre = _times(centre, weight_t[live])
            centre[:, 2] += bias
            radius = _times(radius, abs_live)
            zlo = _at_vertices(verts, centre - radius).min(axis=1)
            zhi = _at_vertices(verts, centre + radius).max(axis=1)
        centre, radius, live = _relax(centre, radius, zlo, zhi)
        w_live = w_last[:, live]
        mean = verts.mean(axis=1)
        guess = (np.einsum("pi,pik->pk", mean, _times(centre, w_live.T)) + b_last).argmax(1)
        for k in np.unique(guess):
            rows = np.flatnonzero(guess == k)
            diff = w_live[k] - w_live  # (C, k')
            bound = _times(centre[rows], diff.T) - _times(radius[rows], np.abs(diff).T)
            bound[:, 2] += b_last[k] - b_last
            worst = _at_vertices(verts[rows], bound).min(axis=1)  # (r, C)
            worst[:, k] = np.inf
            out[rows_all[rows[(worst > margin).all(axis=1)]]] = k
    return out


# --- classes -----------------------------------------------------------------------------------


def _class_pieces(
    poly: _Polygons, maps: np.ndarray, tally: _Tally, tol: float, min_area: float,
    logit_tol: float,
) -> tuple[_Polygons, np.ndarray]:
    """Convex pieces on which the argmax class is constant, and their classes (Q,).

    Polygons whose vertices agree on the argmax by more than ``logit_tol`` are one piece;
    the others are clipped, per class that can win there, by ``f_k - f_m >= 0``."""
    n_classes = maps.shape[2]
    pid = poly.pid()
    logits = _values(poly, maps, pid)  # (N, C)
    top = logits.argmax(axis=1)
    second = np.partition(logits, n_classes - 2, axis=1)[:, n_classes - 2]
    gap = logits.max(axis=1) - second
    size = len(poly.count)
    first = top[poly.start]
    mixed = np.bincount(pid, weights=(top != first[pid]) | (gap <= logit_tol), minlength=size) > 0
    whole = poly.take(~mixed)
    classes = [first[~mixed]]
    pieces = [whole]
    if mixed.any():
        rows = np.flatnonzero(mixed)
        sub = poly.take(rows)
        sub_logits = logits[_ranges(poly.start[rows], poly.count[rows])]
        highest = _reduce(np.maximum, sub_logits, sub.start)  # (M, C)
        lowest = _reduce(np.minimum, sub_logits, sub.start)
        possible = highest >= lowest.max(axis=1, keepdims=True) - logit_tol
        for k in range(n_classes):
            owners = np.flatnonzero(possible[:, k])
            if len(owners) == 0:
                continue
            part = sub.take(owners)
            part.tag = rows[owners]  # the polygon's row: the class lines' ids
            for m in range(n_classes):
                if m == k or len(part.count) == 0:
                    continue
                diff = maps[part.owner, :, k] - maps[part.owner, :, m]  # (M, 3)
                norm = np.hypot(diff[:, 0], diff[:, 1])
                diff /= np.where(norm == 0, 1.0, norm)[:, None]
                line = diff[part.pid()]
                dist = line[:, 0] * part.xy[:, 0] + line[:, 1] * part.xy[:, 1] + line[:, 2]
                line = _class_line(part.tag, min(k, m), max(k, m), n_classes, tally.next_line)
                part = _clip(part, dist, 1.0, line, tol)
                alive = part.count >= 3
                if not alive.all():
                    part = part.take(alive)
            area = part.area()
            small = area < min_area
            tally.slivers += int(small.sum())
            tally.sliver_area += float(area[small].clip(0).sum())
            part = part.take(~small)
            pieces.append(part)
            classes.append(np.full(len(part.count), k))
    return _Polygons.concat(pieces), np.concatenate(classes).astype(np.int64)


def _reduce(ufunc: np.ufunc, values: np.ndarray, start: np.ndarray) -> np.ndarray:
    return ufunc.reduceat(values, start, axis=0)


def _class_line(
    polygon: np.ndarray, low: int, high: int, n_classes: int, base: int
) -> np.ndarray:
    """The id of the line ``f_low = f_high`` inside each polygon (shared by both classes'
    pieces there), above every neuron line's id."""
    return base + (polygon * n_classes + low) * n_classes + high


# --- merging per class: boundaries and connected class regions ---------------------------------


def _merge(
    pieces: _Polygons, classes: np.ndarray, side: float
) -> tuple[np.ndarray, int, np.ndarray]:
    """Boundary segments between classes (float64 (S, 4): x0, y0, x1, y1), the number of
    connected class regions, and the pieces' region labels (Q,).

    Edges on one line (same id) are compared as intervals along it: a piece lies left of its
    counter-clockwise edges, so along a line the pieces on its two sides run in opposite
    directions. Per (line, class), where the class covers both directions the pieces there
    are one region; where it covers only the forward direction that stretch is boundary
    (every boundary stretch is forward for exactly one of the two classes)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    size = len(pieces.count)
    if size == 0:
        return np.zeros((0, 4)), 0, np.zeros(0, np.int64)
    nxt = pieces.nxt()
    pid = pieces.pid()
    keep = pieces.edge >= _CANVAS_LINES
    p0, p1 = pieces.xy[keep], pieces.xy[nxt[keep]]
    line, owner = pieces.edge[keep], pid[keep]
    length = np.hypot(*(p1 - p0).T)
    # one direction per line: its longest edge's
    order = np.lexsort((-length, line))
    line_sorted = line[order]
    first = np.r_[True, line_sorted[1:] != line_sorted[:-1]]
    group_of_sorted = np.cumsum(first) - 1
    longest = order[first]
    direction = (p1[longest] - p0[longest]) / np.maximum(length[longest], 1e-300)[:, None]
    origin = p0[longest]
    group = np.empty(len(line), np.int64)
    group[order] = group_of_sorted
    d, o = direction[group], origin[group]
    t0 = np.einsum("nd,nd->n", p0 - o, d)
    t1 = np.einsum("nd,nd->n", p1 - o, d)
    forward = t1 >= t0
    lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
    key = group * (int(classes.max()) + 1) + classes[owner]
    # events: coverage +-1 of the forward and the backward direction at lo / hi
    ev_key = np.r_[key, key]
    ev_t = np.r_[lo, hi]
    ev_fwd = np.r_[np.where(forward, 1, 0), np.where(forward, -1, 0)]
    ev_bwd = np.r_[np.where(forward, 0, 1), np.where(forward, 0, -1)]
    ev_piece = np.r_[owner, np.full(len(owner), -1)]
    ev_start_fwd = np.r_[forward, np.zeros(len(owner), bool)]
    ev_start_bwd = np.r_[~forward, np.zeros(len(owner), bool)]
    order = np.lexsort((ev_fwd + ev_bwd, ev_t, ev_key))  # at a tie: ends before starts
    ev_key, ev_t = ev_key[order], ev_t[order]
    cov_f = np.cumsum(ev_fwd[order])
    cov_b = np.cumsum(ev_bwd[order])
    index = np.arange(len(order))
    last_f = np.maximum.accumulate(np.where(ev_start_fwd[order], index, -1))
    last_b = np.maximum.accumulate(np.where(ev_start_bwd[order], index, -1))
    piece_f = np.where(last_f >= 0, ev_piece[order][np.maximum(last_f, 0)], -1)
    piece_b = np.where(last_b >= 0, ev_piece[order][np.maximum(last_b, 0)], -1)
    same = ev_key[1:] == ev_key[:-1]
    span = (ev_t[1:] - ev_t[:-1]) * same
    real = span > DISTANCE_TOL * side
    on_f, on_b = cov_f[:-1] > 0, cov_b[:-1] > 0
    joined = real & on_f & on_b
    links = (piece_f[:-1][joined], piece_b[:-1][joined])
    graph = coo_matrix((np.ones(len(links[0])), links), shape=(size, size))
    n_regions, labels = connected_components(graph, directed=False)
    border = real & on_f & ~on_b
    ev_group = ev_key // (int(classes.max()) + 1)
    at = np.flatnonzero(border)
    start = origin[ev_group[at]] + ev_t[at, None] * direction[ev_group[at]]
    end = origin[ev_group[at]] + ev_t[at + 1, None] * direction[ev_group[at]]
    return np.concatenate([start, end], axis=1), int(n_regions), labels.astype(np.int64)


# --- the result -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExactLandscape:
    """One epoch's exact landscape on ``bounds``.

    regions: the linear regions the partition enumerated (convex polygons) as
    ``(xy float64 (N, 2), count int64 (P,))``, vertices counter-clockwise and contiguous per
    polygon (with pruning, only outside the proven polygons, and cut by the cell grid);
    region_maps: each region's logits map, ``(a float64 (P, C, 2), c float64 (P, C))``. proven,
    proven_class, proven_stage: the polygons proven one class before being split to their
    linear regions (``(xy, count)``), their classes, and the ReLU layer whose pre-activations
    were exact on them when proven (0: a grid cell, bounded from the first layer on). pieces:
    the convex class pieces (the proven polygons first) as ``(xy, count)``; piece_class: int64
    (Q,); piece_region: int64 (Q,) the connected class region each belongs to. boundary: float64
    (S, 4) segments ``x0, y0, x1, y1`` between classes. slivers, sliver_area: cuts not made and
    class pieces dropped for being below the area tolerance, and their total area (canvas
    units²).
    """

    bounds: Bounds
    regions: tuple[np.ndarray, np.ndarray]
    region_maps: tuple[np.ndarray, np.ndarray]
    pieces: tuple[np.ndarray, np.ndarray]
    piece_class: np.ndarray
    piece_region: np.ndarray
    class_regions: int
    boundary: np.ndarray
    slivers: int
    sliver_area: float
    proven: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 2)), np.zeros(0, np.int64))
    proven_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    proven_stage: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def linear_regions(self) -> int:
        return len(self.regions[1])

    @property
    def boundary_length(self) -> float:
        """Total length of the class boundaries, in canvas units."""
        b = self.boundary
        return float(np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).sum())

    @property
    def diagonal(self) -> float:
        return math.hypot(self.bounds.xmax - self.bounds.xmin, self.bounds.ymax - self.bounds.ymin)

    def summary(self) -> dict[str, float | int]:
        """The figures ``render/regions.json`` holds for the epoch."""
        length = self.boundary_length
        return {
            "linear_regions": self.linear_regions,
            "proven_polygons": len(self.proven_class),
            "class_regions": self.class_regions,
            "class_pieces": len(self.piece_class),
            "boundary_length": round(length, 9),
            "boundary_fraction": round(length / self.diagonal, 9),
            "slivers": self.slivers,
            "sliver_area": float(f"{self.sliver_area:.3e}"),
            "seconds": round(sum(self.seconds.values()), 4),
        }

    def piece_polygons(self) -> list[np.ndarray]:
        """Each class piece's vertices, float64 (n_i, 2), in piece order."""
        xy, count = self.pieces
        return np.split(xy, np.cumsum(count)[:-1]) if len(count) else []

    def classes_at(self, points: np.ndarray) -> np.ndarray:
        """The exact class at each point (n, 2): the class of the piece holding it; -1 outside
        every piece (off the canvas, or in a dropped sliver). A point on a shared edge takes
        either piece's class."""
        xy, count = self.pieces
        return _locate(np.asarray(points, np.float64), xy, count, self.piece_class, self.bounds)


def _locate(
    points: np.ndarray, xy: np.ndarray, count: np.ndarray, values: np.ndarray, bounds: Bounds,
    cells: int = 256,
) -> np.ndarray:
    """``values`` of the convex polygon holding each point (-1: none), by a uniform grid of
    buckets over ``bounds`` and half-plane tests of the (polygon, point) pairs sharing one."""
    out = np.full(len(points), -1, np.int64)
    tol = DISTANCE_TOL * max(bounds.xmax - bounds.xmin, bounds.ymax - bounds.ymin)
    if len(points) == 0 or len(count) == 0:
        return out
    start = np.cumsum(count) - count
    sx = cells / (bounds.xmax - bounds.xmin)
    sy = cells / (bounds.ymax - bounds.ymin)

    def cell(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cx = np.clip(np.floor((x - bounds.xmin) * sx), 0, cells - 1).astype(np.int64)
        cy = np.clip(np.floor((y - bounds.ymin) * sy), 0, cells - 1).astype(np.int64)
        return cx, cy

    lo_x, lo_y = cell(np.minimum.reduceat(xy[:, 0], start), np.minimum.reduceat(xy[:, 1], start))
    hi_x, hi_y = cell(np.maximum.reduceat(xy[:, 0], start), np.maximum.reduceat(xy[:, 1], start))
    # every (cell, polygon) pair of the polygons' bounding boxes, sorted by cell
    wide, tall = hi_x - lo_x + 1, hi_y - lo_y + 1
    span = wide * tall
    poly = np.repeat(np.arange(len(count)), span)
    k = _ranges(np.zeros(len(count), np.int64), span)
    cx = lo_x[poly] + k % wide[poly]
    cy = lo_y[poly] + k // wide[poly]
    cell_id = cy * cells + cx
    order = np.argsort(cell_id, kind="stable")
    cell_id, poly = cell_id[order], poly[order]
    first = np.searchsorted(cell_id, np.arange(cells * cells))
    last = np.searchsorted(cell_id, np.arange(cells * cells), side="right")
    px, py = cell(points[:, 0], points[:, 1])
    inside_canvas = (
        (points[:, 0] >= bounds.xmin) & (points[:, 0] <= bounds.xmax)
        & (points[:, 1] >= bounds.ymin) & (points[:, 1] <= bounds.ymax)
    )  # fmt: skip
    nxt = np.arange(1, len(xy) + 1)
    nxt[start + count - 1] = start
    ex, ey = xy[nxt, 0] - xy[:, 0], xy[nxt, 1] - xy[:, 1]
    pcell = py * cells + px
    chunk = 1 << 16
    for lo in range(0, len(points), chunk):
        idx = np.arange(lo, min(lo + chunk, len(points)))
        idx = idx[inside_canvas[idx]]
        a, b = first[pcell[idx]], last[pcell[idx]]
        n_pairs = b - a
        pair_point = np.repeat(idx, n_pairs)
        pair_poly = poly[_ranges(a, n_pairs)]
        if len(pair_poly) == 0:
            continue
        # the point is inside when it is left of (or on) every edge of the polygon
        vcount = count[pair_poly]
        vert = _ranges(start[pair_poly], vcount)
        owner = np.repeat(np.arange(len(pair_poly)), vcount)
        q = points[pair_point][owner]
        side = ex[vert] * (q[:, 1] - xy[vert, 1]) - ey[vert] * (q[:, 0] - xy[vert, 0])
        outside = side < -tol * np.hypot(ex[vert], ey[vert])
        bad = np.bincount(owner, weights=outside, minlength=len(pair_poly))
        hit = bad == 0
        out[pair_point[hit]] = values[pair_poly[hit]]
    return out


def exact_landscape(
    chain: Chain,
    bounds: Bounds,
    *,
    distance_tol: float = DISTANCE_TOL,
    min_area: float = MIN_AREA,
    batch: int = NEURON_BATCH,
    prune: bool = True,
) -> ExactLandscape:
    """The exact landscape of ``chain`` (:func:`cpwl_chain`) over the canvas ``bounds``.

    distance_tol and min_area are relative to the canvas side and area (see the module
    docstring). prune: prove polygons' classes on the way and stop splitting them (the class
    regions and boundaries are the same; the linear regions inside proven polygons are not
    enumerated); False splits the whole canvas into its linear regions."""
    if not (bounds.xmax > bounds.xmin and bounds.ymax > bounds.ymin):
        raise InputError(f"{bounds} is empty: max must exceed min on both axes")
    if chain[-1][0].shape[0] < 2:
        raise InputError(f"the head gives {chain[-1][0].shape[0]} logit; at least 2 are needed")
    side = max(bounds.xmax - bounds.xmin, bounds.ymax - bounds.ymin)
    tol = distance_tol * side
    area_tol = min_area * (bounds.xmax - bounds.xmin) * (bounds.ymax - bounds.ymin)
    tally = _Tally(canvas_area=(bounds.xmax - bounds.xmin) * (bounds.ymax - bounds.ymin))
    margin = PROOF_MARGIN * _logit_scale(chain, bounds) if prune and len(chain) > 1 else None
    seconds = {}
    started = time.perf_counter()
    # small matrices: a second BLAS thread costs more in synchronisation than it computes
    with threadpool_limits(limits=1, user_api="blas"):
        poly, maps, proven, proven_class = _linear_regions(
            chain, bounds, tally, tol, area_tol, batch, margin
        )
    seconds["regions"] = time.perf_counter() - started
    started = time.perf_counter()
    scale = float(np.abs(maps[:, 2]).max(initial=0)) + float(
        np.abs(maps[:, :2]).max(initial=0)
    ) * side + 1.0
    pieces, piece_class = _class_pieces(poly, maps, tally, tol, area_tol, 1e-12 * scale)
    proven_stage = proven.tag
    proven.tag = np.zeros(len(proven.count), np.int64)
    pieces = _Polygons.concat([proven, pieces])
    piece_class = np.concatenate([proven_class, piece_class])
    seconds["classes"] = time.perf_counter() - started
    started = time.perf_counter()
    boundary, n_regions, labels = _merge(pieces, piece_class, side)
    seconds["merge"] = time.perf_counter() - started
    log.debug(
        "exact landscape: %d linear regions, %d proven polygons, %d class pieces, "
        "%d class regions, %d slivers", len(poly.count), len(proven.count), len(piece_class),
        n_regions, tally.slivers,
    )  # fmt: skip
    return ExactLandscape(
        bounds=bounds,
        regions=(poly.xy, poly.count),
        region_maps=(np.ascontiguousarray(maps[:, :2].transpose(0, 2, 1)), maps[:, 2].copy()),
        pieces=(pieces.xy, pieces.count),
        piece_class=piece_class,
        piece_region=labels,
        class_regions=n_regions,
        boundary=boundary,
        slivers=tally.slivers,
        sliver_area=tally.sliver_area,
        proven=(proven.xy, proven.count),
        proven_class=proven_class,
        proven_stage=proven_stage,
        seconds=seconds,
    )


def _logit_scale(chain: Chain, bounds: Bounds) -> float:
    """1 + the largest absolute logit at the canvas's corners and centre (the scale the proof
    margin is relative to)."""
    x = np.array(
        [[bounds.xmin, bounds.ymin], [bounds.xmax, bounds.ymin], [bounds.xmax, bounds.ymax],
         [bounds.xmin, bounds.ymax],
         [(bounds.xmin + bounds.xmax) / 2, (bounds.ymin + bounds.ymax) / 2]],
    )  # fmt: skip
    for i, (weight, bias) in enumerate(chain):
        x = x @ weight.T + bias
        if i < len(chain) - 1:
            x = np.maximum(x, 0.0)
    return 1.0 + float(np.abs(x).max())
