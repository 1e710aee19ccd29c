"""Fit ONE visualization model for all epochs of a run store (docs/method.md §2-5).

Stages: reduce every epoch to a covering subset (last epoch first), build each epoch's spatial
and boundary fuzzy graphs, link each sample's copies across epochs (temporal edges), mix the edge
types, train the projector on the joined complex, then either embed every sample of every epoch
with the encoder or (``[refine]``, the default) refine every tracked sample's and boundary
point's position (:mod:`timevis_cli.fit.refine`) and fit the decoder, with one bias per epoch, to
the refined positions. Features are read one epoch at a time (the refinement's trajectory
distances: blocks of samples across epochs); what stays in memory is the reduced complex, the
positions of every (sample, epoch), and the refinement's edges and targets up to
``refine.memory_mb`` (past it in a scratch file), so memory is flat in the number of epochs.

    >>> from timevis_callback import open_run                        # doctest: +SKIP
    >>> result = fit(open_run("runs/mnist/store"), load_config())     # doctest: +SKIP
    >>> result.transform(features, epoch=12)   # [n, D] -> [n, 2]     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from timevis_callback.boundary import bisect, select_pairs
from timevis_callback.head import Head
from timevis_callback.reader import Run, format_epochs
from timevis_cli.config import Config
from timevis_cli.device import resolve_device
from timevis_cli.errors import InputError
from timevis_cli.fit.align import align_layout, largest
from timevis_cli.fit.complex import (
    EdgeKind,
    EdgeSet,
    EpochVertices,
    boundary_edges,
    mix_edges,
    spatial_edges,
    temporal_edges,
)
from timevis_cli.fit.losses import (
    attention_weights_autograd,
    class_pair_attention,
    find_ab_params,
    top2_classes,
)
from timevis_cli.fit.neighbors import KNNBackend, TorchExact, dense_backend, resolve_backend
from timevis_cli.fit.predictive import (
    EpochHeads,
    PredictionTerm,
    is_linear_head,
    prediction_targets,
)
from timevis_cli.fit.projector import Projector
from timevis_cli.fit.reduction import select_epochs
from timevis_cli.fit.refine import (
    EpochPoints,
    LayoutGraph,
    Trajectories,
    layout_graph,
    refine_layout,
    trajectory_distances,
    trajectory_pairs,
    trajectory_term,
)
from timevis_cli.fit.trainer import SharedRows, TrainParams, TrainReport, fit_decoder, fit_projector
from timevis_cli.ranges import parse_range

log = logging.getLogger(__name__)

FEATURE_BOUNDARY_FRACTION = 0.1  # feature-space boundary points per epoch, of the train samples
_BATCH = 8192
_TRAJECTORY_BLOCK_ELEMENTS = 1 << 24  # features [epochs, samples, D] read per block (64 MB)


class Reporter:
    """Progress of a command's stages (fit's, eval's). The default logs to ``logger``
    (fit's by default); the CLI draws bars on a terminal."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger

    def start(self, stage: str, total: int) -> None:
        self.log.info("%s (%d steps)", stage, total)

    def advance(self, steps: int = 1, **info: Any) -> None:
        """``steps`` more of the stage's total are done; ``info`` describes where it stands."""
        if info:
            self.log.debug("%s", ", ".join(f"{k} {v}" for k, v in info.items()))

    def finish(self) -> None:
        """The current stage is done."""


#: Tracked samples whose positions place a new sample (:meth:`FitModel.transform`).
TRANSFORM_NEIGHBORS = 10


@dataclass
class TrackedSamples:
    """Where a refined fit placed every tracked sample, for :meth:`FitModel.transform`.

    The features are read from the store one fitted epoch at a time (the last one read is kept:
    n x D float32); ``positions(index)`` gives that epoch's ``(train [n_train, 2], test [n_test,
    2])`` positions, ``index`` being the epoch's position in ``epochs`` (the fit's arrays, or
    its ``embedding.h5``).
    """

    run: Run
    epochs: list[int]
    positions: Callable[[int], tuple[np.ndarray, np.ndarray]]
    _last: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def epoch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Features float32 [n, D] and 2-D positions float32 [n, 2] of every tracked sample
        (store row order, train and test) at fitted epoch ``index``."""
        if self._last is None or self._last[0] != index:
            self._last = None  # the previous epoch's features go before the next are read
            features = self.run.features(self.epochs[index])
            train_mask, test_mask = self.run.samples.mask("train"), self.run.samples.mask("test")
            train, test = (np.asarray(p, dtype=np.float32) for p in self.positions(index))
            if train.shape != (int(train_mask.sum()), 2) or test.shape != (int(test_mask.sum()), 2):
                raise InputError(
                    f"epoch {self.epochs[index]}: positions of shapes {train.shape} and "
                    f"{test.shape} do not match the store's {int(train_mask.sum())} train and "
                    f"{int(test_mask.sum())} test samples; refit"
                )
            positions = np.zeros((len(features), 2), np.float32)
            positions[train_mask], positions[test_mask] = train, test
            self._last = (index, features, positions)
        return self._last[1], self._last[2]


def _fit_positions(train: np.ndarray, test: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    return train[index], test[index]


def _place(distances: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """2-D positions float32 [n, 2] from each row's nearest tracked samples: distances [n, k]
    (ascending) and their positions [n, k, 2]. A row with tracked samples at distance 0 (its
    own features) takes their position; any other the mean of its neighbours' positions
    weighted by ``1 / distance²``."""
    distances = distances.astype(np.float64)
    same = distances <= 0.0
    weights = np.where(
        same.any(axis=1, keepdims=True),
        same.astype(np.float64),
        1.0 / np.maximum(distances**2, np.finfo(np.float64).tiny),
    )
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, positions.astype(np.float64)).astype(np.float32)


@dataclass
class FitModel:
    """The fitted projector with the sklearn-style transforms of one run's feature space.

    ``tracked``: where a refined fit placed the tracked samples (None: the positions are the
    encoder's, and :meth:`transform` is the encoder).
    ``epoch_projectors``: a DVI fit's one projector per fitted epoch, in ``epochs`` order
    (``projector`` is then the last of them); None for timevis's one projector of all epochs.
    """

    projector: Projector
    device: torch.device
    epochs: list[int] = field(default_factory=list)  # fitted epochs, in the decoder's order
    tracked: TrackedSamples | None = None
    epoch_projectors: list[Projector] | None = None

    def __post_init__(self) -> None:
        if self.projector.epochs not in (0, len(self.epochs)):
            raise InputError(
                f"the decoder has {self.projector.epochs} per-epoch biases but {len(self.epochs)} "
                "fitted epochs are given; load the fit with timevis_cli.fit.io.load_fit"
            )
        if self.epoch_projectors is not None and len(self.epoch_projectors) != len(self.epochs):
            raise InputError(
                f"{len(self.epoch_projectors)} per-epoch projectors are given for "
                f"{len(self.epochs)} fitted epochs; load the fit with timevis_cli.fit.io.load_fit"
            )

    def projector_at(self, epoch: int | None) -> Projector:
        """The projector of recorded ``epoch``: a DVI fit's own model of that epoch (``epoch``
        required), otherwise the one projector of every epoch (``epoch`` may be None)."""
        if self.epoch_projectors is None:
            return self.projector
        if epoch is None:
            raise InputError(
                "this fit (DVI) has one model per epoch; pass epoch= (one of "
                f"{format_epochs(self.epochs)})"
            )
        return self.epoch_projectors[self.epoch_index(epoch)]

    @torch.no_grad()
    def encode(self, features: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """The encoder's 2-D positions float32 [n, 2] of features [n, D] (the fit's positions
        unless it was refined); ``epoch``: a DVI fit's epoch, whose own encoder is used
        (ignored by a timevis fit)."""
        projector = self.projector_at(epoch)
        return self._apply(projector.encode, features, "features", projector.input_dim, 2)

    def decoder(self, device: torch.device | str) -> Callable[..., torch.Tensor]:
        """``decode(y, index=None)``: 2-D points [n, 2] (a tensor on ``device``) to features,
        by the decoder of fitted-epoch ``index`` (:meth:`decode_index`; None for a decoder
        shared by every epoch), its parameters on ``device`` (copies where the fit lies
        elsewhere; the fit itself is left as it is). What ``timevis render`` decodes its
        landscapes with; gradients are the caller's to switch off (``torch.no_grad()``)."""
        device = torch.device(device)

        def on_device(projector: Projector) -> Projector:
            if next(projector.parameters()).device != device:
                projector = copy.deepcopy(projector).to(device)
            return projector.eval()

        if self.epoch_projectors is None:
            projector = on_device(self.projector)
            return lambda y, index=None: projector.decode(y, index)
        projectors = [on_device(p) for p in self.epoch_projectors]

        def decode(y: torch.Tensor, index: int | None = None) -> torch.Tensor:
            if index is None:
                raise InputError(
                    "this fit (DVI) has one decoder per epoch; decode with an epoch's index"
                )
            return projectors[index].decode(y)

        return decode

    def transform(self, features: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """2-D positions float32 [n, 2] of features [n, D] recorded at ``epoch``, on the map the
        fit drew.

        A refined fit (``tracked`` set) places each row among the tracked samples of ``epoch``:
        at the mean of its :data:`TRANSFORM_NEIGHBORS` nearest ones' positions (feature space,
        Euclidean) weighted by ``1 / distance²``, so a tracked sample's own features land exactly
        where the fit placed it and a new sample among its neighbours. ``epoch`` None searches
        every fitted epoch (their features are read once per call; pass the epoch when it is
        known; features recorded alike at several epochs land at the mean of their positions).
        A fit without refinement is its encoder (:meth:`encode`), and ``epoch`` is ignored; a
        DVI fit is the encoder of ``epoch`` (required).
        """
        if self.tracked is None:
            return self.encode(features, epoch)
        x = np.asarray(features, dtype=np.float32)
        width = self.projector.input_dim
        if x.ndim != 2 or x.shape[1] != width:
            raise InputError(
                f"features of shape {x.shape} given; this fit takes features of shape [n, {width}]"
            )
        if not np.isfinite(x).all():
            raise InputError(
                f"{_non_finite_rows(x)} of the {len(x)} feature rows hold NaN or inf; "
                "transform only finite features"
            )
        indices = range(len(self.epochs)) if epoch is None else [self.epoch_index(epoch)]
        if len(x) == 0:
            return np.zeros((0, 2), np.float32)
        knn = TorchExact(str(self.device))
        best_d = np.full((len(x), 0), np.inf, np.float32)
        best_p = np.zeros((len(x), 0, 2), np.float32)
        for index in indices:
            data, positions = self.tracked.epoch(index)
            k = min(TRANSFORM_NEIGHBORS, len(data))
            if k == 0:
                continue
            rows, distances = knn.query(data, x, k=k)
            best_d = np.concatenate([best_d, distances], axis=1)
            best_p = np.concatenate([best_p, positions[rows]], axis=1)
            order = np.argsort(best_d, axis=1, kind="stable")[:, :TRANSFORM_NEIGHBORS]
            best_d = np.take_along_axis(best_d, order, axis=1)
            best_p = np.take_along_axis(best_p, order[..., None], axis=1)
        if best_d.shape[1] == 0:
            raise InputError("the fit tracks no samples to place new ones among")
        return _place(best_d, best_p)

    @torch.no_grad()
    def inverse_transform(self, points: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """Features float32 [n, D] decoded from 2-D points [n, 2] at recorded ``epoch`` (required
        when the decoder has per-epoch biases, as after refinement, or per-epoch models, as a
        DVI fit; ignored otherwise)."""
        index = self.decode_index(epoch)
        projector = self.projector_at(epoch)
        decode = lambda y: projector.decode(y, index)  # noqa: E731
        return self._apply(decode, points, "points", 2, projector.input_dim)

    @torch.no_grad()
    def decoder_layers(self, epoch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The decoder of recorded ``epoch`` as its chain of affine maps: ``(weight [out, in],
        bias [out])`` per layer, float64 on the CPU, a ReLU between consecutive layers and none
        after the last; the epoch's own bias (a refined fit) is folded into the first layer's.
        ``inverse_transform(y, epoch)`` equals this chain applied to ``y`` (up to float32
        rounding); exact region computations read the decoder through it. A DVI fit gives the
        decoder of that epoch's own model."""
        index = self.decode_index(epoch)
        projector = self.projector_at(epoch)
        linears = [layer for layer in projector.decoder if isinstance(layer, torch.nn.Linear)]
        layers = [(m.weight.detach().double().cpu(), m.bias.detach().double().cpu()) for m in linears]
        if index is not None and projector.epoch_bias is not None:
            weight, bias = layers[0]
            layers[0] = (weight, bias + projector.epoch_bias[index].detach().double().cpu())
        return layers

    def epoch_index(self, epoch: int) -> int:
        """The position of recorded ``epoch`` in the fitted epochs; InputError when not fitted."""
        if epoch not in self.epochs:
            raise InputError(
                f"epoch {epoch} was not fitted (fitted: {format_epochs(self.epochs)}); pick one of "
                f"those, or refit with --epochs including {epoch}"
            )
        return self.epochs.index(epoch)

    def decode_index(self, epoch: int | None) -> int | None:
        """The decoder's index of recorded ``epoch`` (None when the decoder is shared by all
        epochs). A decoder with per-epoch biases, or a DVI fit's per-epoch models, needs the
        epoch."""
        if self.epoch_projectors is None and self.projector.epoch_bias is None:
            return None
        if epoch is None:
            what = "one bias" if self.epoch_projectors is None else "one model (DVI)"
            raise InputError(
                f"this fit's decoder has {what} per epoch; pass epoch= (one of "
                f"{format_epochs(self.epochs)}) to inverse_transform"
            )
        return self.epoch_index(epoch)

    def _apply(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        x: np.ndarray,
        what: str,
        width: int,
        out_width: int,
    ) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != width:
            raise InputError(
                f"{what} of shape {x.shape} given; this fit takes {what} of shape [n, {width}]"
            )
        self.projector.eval()
        out = [
            fn(torch.from_numpy(x[i : i + _BATCH]).to(self.device)).cpu()
            for i in range(0, len(x), _BATCH)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, out_width), np.float32)


class ModelTransforms:
    """``transform`` / ``inverse_transform`` of a fit (computed or loaded), by its ``model``."""

    model: FitModel

    def transform(self, features: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """2-D positions [n, 2] of features [n, D] recorded at ``epoch``: :meth:`FitModel.transform`."""
        return self.model.transform(features, epoch)

    def inverse_transform(self, points: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """Features [n, D] decoded from 2-D points at recorded ``epoch``:
        :meth:`FitModel.inverse_transform`."""
        return self.model.inverse_transform(points, epoch)


@dataclass
class FitResult(ModelTransforms):
    """What :func:`fit` computed: the model, every epoch's embedding, and how it got there."""

    model: FitModel
    config: Config
    run_id: str
    epochs: list[int]
    train: np.ndarray  # float32 [E, n_train, 2]
    test: np.ndarray  # float32 [E, n_test, 2]
    boundary_points: list[np.ndarray]  # per epoch float32 [B_t, 2]
    boundary_features: list[np.ndarray]  # per epoch float16 [B_t, D]
    boundary_pairs: list[np.ndarray]  # per epoch int64 [B_t, 2]
    boundary_source: list[str]  # per epoch: "store", "feature" or "none"
    selected_ids: dict[int, np.ndarray]  # epoch -> train sample ids in the complex
    report: TrainReport
    stats: dict[str, Any] = field(default_factory=dict)


def _peak_memory_mb() -> float:
    """Peak resident memory of this process (VmHWM: ru_maxrss also carries the peak of the
    process this one was exec'd from)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _return_freed_memory() -> None:
    """Hand the heap pages freed so far back to the OS (glibc only; a no-op elsewhere).

    Called after each epoch of the streaming stages: glibc keeps freed pages mapped, and when a
    small array that lives on (an epoch's edges or positions) lands above an epoch's freed
    temporaries, the heap cannot reuse or return them, so the peak grows with the epochs by the
    size of the temporaries (measured: +4.6 MB per epoch of 2 400 x 512 features without it,
    flat with it).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)


@contextmanager
def _timed(stats: dict[str, Any], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    stats.setdefault("seconds", {})[stage] = round(time.perf_counter() - started, 3)
    # the process's high-water mark when the stage ends: the stage that raises it holds the peak
    stats.setdefault("peak_memory_mb_after", {})[stage] = round(_peak_memory_mb(), 1)


def _non_finite_rows(features: np.ndarray) -> int:
    return int((~np.isfinite(features)).any(axis=1).sum())


def _check_finite(features: np.ndarray, epoch: int) -> None:
    bad = _non_finite_rows(features)
    if bad:
        raise InputError(
            f"epoch {epoch} has {bad} samples with NaN or inf features (training diverged?); "
            f"fit only the epochs before it with --epochs"
        )


def _tracked_features(run: Run, epoch: int) -> np.ndarray:
    """Every tracked sample's features at ``epoch`` (train AND test rows), checked finite."""
    features = run.features(epoch)
    _check_finite(features, epoch)
    return features


def select_fit_epochs(run: Run, text: str) -> list[int]:
    """The recorded epochs named by ``text``; at least two (time travel needs two)."""
    if not run.epochs:
        raise InputError(f"{run.path} holds no readable epoch yet; train with TimeVisCallback first")
    epochs = parse_range(text, run.epochs, run.bad_epochs)
    if len(epochs) < 2:
        raise InputError(
            f"epochs {text!r} select {len(epochs)} epoch ({epochs}); a time-travelling fit needs "
            "at least two recorded epochs"
        )
    return epochs


def vertex_attention(
    features: np.ndarray, head: Head, temperature: float, logits: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruction attention of features [n, D] under one epoch's head, as shared rows.

    Returns ``(table, index)``: float32 [A, D] and int64 [n], row v's attention being
    ``table[index[v]]``. For a linear head ``a_v`` depends only on v's top-2 classes, so the
    table has one row per class pair that occurs; for other heads every row is its own.
    """
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    if is_linear_head(head):
        layer = next(i for i, layer in enumerate(head.spec) if layer["type"] == "Linear")
        weight = torch.from_numpy(head.state[f"{layer}.weight"].astype(np.float32))
        z = torch.from_numpy(head(features) if logits is None else np.asarray(logits))
        top2 = torch.sort(torch.stack(top2_classes(z), dim=1), dim=1).values
        pairs, index = torch.unique(top2, dim=0, return_inverse=True)
        table = class_pair_attention(weight, pairs[:, 0], pairs[:, 1], temperature)
        return table.numpy(), index.numpy().astype(np.int64)
    module = head.to_torch()
    rows = attention_weights_autograd(x, module, temperature).numpy()
    return rows, np.arange(len(rows), dtype=np.int64)


def feature_boundary_points(
    features: np.ndarray, logits: np.ndarray, head: Head, n_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-space boundary points (docs/method.md §2 fallback): features [B, D], pairs [B, 2].

    Interpolates between the representations of two samples predicted as different classes and
    bisects to where the head hesitates between them. Off the representation manifold: used only
    when the store has no input-space boundary points.
    """
    a, b, pairs = select_pairs(logits, math.ceil(n_points / 2), rng)
    if len(a) == 0:
        return np.zeros((0, features.shape[1]), np.float32), np.zeros((0, 2), np.int64)
    module = head.to_torch()
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    with torch.no_grad():
        result = bisect(
            lambda mix: (module(mix), mix),
            torch.cat([x[a], x[b]]),
            torch.cat([x[b], x[a]]),
            np.concatenate([pairs[:, 0], pairs[:, 1]]),
            np.concatenate([pairs[:, 1], pairs[:, 0]]),
            l_bound=0.5,
            batch_size=_BATCH,
            max_steps=16,
        )
    return result.features.numpy()[:n_points], result.pair[:n_points]


@dataclass
class _EpochPart:
    """One epoch's share of the complex while it is being built."""

    epoch: int
    offset: int
    n_train: int
    train_rows: np.ndarray  # int64 [n_train]: rows of the epoch's train split in the complex
    features: np.ndarray  # float32 [n_train + n_boundary, D]; the boundary rows only once trained
    attention: np.ndarray  # float32 [A, D]: distinct attention rows of this epoch's vertices
    attention_index: np.ndarray  # int64 [same as features]: each vertex's row of attention
    boundary_pair: np.ndarray
    boundary_source: str


def _epoch_part(
    run: Run,
    epoch: int,
    train_rows: np.ndarray,
    offset: int,
    config: Config,
    backend: KNNBackend,
    rng: np.random.Generator,
) -> tuple[_EpochPart, EpochVertices, list[EdgeSet]]:
    """Spatial and boundary edges of one epoch, its vertices' features and attention."""
    # every tracked row is checked (test rows too): a NaN is refused here, not after training
    all_train = _tracked_features(run, epoch)[run.samples.mask("train")]
    train_logits = run.logits(epoch, split="train")
    head = run.head(epoch)
    feats = all_train[train_rows]
    k = config.knn.n_neighbors
    if k >= len(feats):
        raise InputError(
            f"knn.n_neighbors={k} needs more points than epoch {epoch} keeps ({len(feats)}); "
            f"use --set knn.n_neighbors={max(2, len(feats) - 1)} or a smaller reduction.r0"
        )
    knn_idx, knn_dist = backend.query(feats, k=k, include_self=True)
    spatial = spatial_edges(knn_idx, knn_dist, vertex_offset=offset)

    source = config.complex.boundary_source
    boundary, pair, used = None, np.zeros((0, 2), np.int64), "none"
    stored = run.boundary(epoch) if source in ("auto", "store") else None
    if stored is not None and len(stored.features):
        bad = _non_finite_rows(stored.features)
        if bad:
            raise InputError(
                f"epoch {epoch} has {bad} of {len(stored.features)} stored boundary points with "
                "NaN or inf features; fit with feature-space boundary points instead: "
                "--set complex.boundary_source=feature"
            )
        boundary, pair, used = stored.features, stored.pair, "store"
    elif source in ("auto", "feature"):
        n_points = int(round(FEATURE_BOUNDARY_FRACTION * len(all_train)))
        boundary, pair = feature_boundary_points(all_train, train_logits, head, n_points, rng)
        used = "feature" if len(boundary) else "none"
    edges = [spatial.edges]
    vertices = feats
    if boundary is not None and len(boundary) >= 2:
        vertices = np.concatenate([feats, boundary.astype(np.float32)])
        kb = min(config.knn.boundary_neighbors, len(boundary))
        b_idx, b_dist = backend.query(boundary, vertices, k=kb)
        edges.append(boundary_edges(b_idx, b_dist, n_train=len(feats), vertex_offset=offset).edges)
    else:
        used, pair = "none", np.zeros((0, 2), np.int64)
    logits = np.concatenate([train_logits[train_rows], head(vertices[len(feats) :])])
    attention, attention_index = vertex_attention(
        vertices, head, config.training.attention_temperature, logits
    )
    part = _EpochPart(
        epoch, offset, len(feats), train_rows, vertices, attention, attention_index, pair, used
    )
    ids = run.samples.id[run.samples.mask("train")][train_rows]
    epoch_vertices = EpochVertices(
        sample_ids=ids,
        vertex_ids=offset + np.arange(len(feats)),
        features=vertices[: len(feats)],  # a view: the train rows are held once
        sigma=spatial.sigma,
        rho=spatial.rho,
    )
    return part, epoch_vertices, edges


def _layout_graph(
    run: Run,
    epochs: list[int],
    parts: list[_EpochPart],
    model: FitModel,
    config: Config,
    backend: KNNBackend,
    reporter: Reporter,
) -> LayoutGraph:
    """The refinement's graph over every tracked sample and boundary point of every epoch,
    starting from the projector's positions; features are read one epoch at a time."""
    n_tracked = len(run.samples.id)  # a sample's row is its identity across epochs
    splits = [(split, np.flatnonzero(run.samples.mask(split))) for split in ("train", "test")]
    reporter.start("refinement graph", len(epochs))

    def points() -> Iterator[EpochPoints]:
        for epoch, part in zip(epochs, parts, strict=True):
            features = np.concatenate([_tracked_features(run, epoch), part.features])
            features = features.astype(np.float32, copy=False)
            # every tracked sample's prediction at the epoch (the model's, never the label;
            # boundary points have none)
            classes = np.full(len(features), -1, np.int64)
            for split, rows in splits:
                if len(rows):
                    classes[rows] = run.logits(epoch, split).argmax(axis=1)
            yield EpochPoints(features, model.encode(features), n_tracked, classes)
            _return_freed_memory()
            reporter.advance(epoch=epoch)

    graph = layout_graph(
        points(),
        backend,
        n_neighbors=config.knn.n_neighbors,
        rate=config.complex.rate_spatial,
        prune_offset=config.complex.prune_offset,
        budget_bytes=_budget_bytes(config),
        scratch_dir=run.path,
        cross_class_weight=config.refine.cross_prediction_weight,
        anchors=config.refine.prediction_anchors,
    )
    reporter.finish()
    return graph


def _trajectories(
    run: Run,
    epochs: list[int],
    graph: LayoutGraph,
    config: Config,
    device: torch.device,
    reporter: Reporter,
) -> Trajectories:
    """The trajectory stress's targets: every sample's feature-space distances between its
    epochs, read in blocks of samples (every epoch of a block at a time); the targets are kept
    within what the layout graph left of ``refine.memory_mb``."""
    r = config.refine
    first, second = trajectory_pairs(len(epochs), r.trajectory_lags)
    n = len(run.samples.id)
    block = max(1, _TRAJECTORY_BLOCK_ELEMENTS // max(1, len(epochs) * run.feature_dim))
    reporter.start("trajectories", n)

    def blocks() -> Iterator[np.ndarray]:
        # float32 blocks of 64 MB (measured: float16 blocks of 16 MB converted by torch into
        # 32 MB left the fit's memory growing by 0.7 MB per epoch in bench_fit --memory-scaling,
        # flat with these; likely glibc's mmap threshold, which only blocks of 32 MB or less move)
        with run.feature_reader(epochs) as reader:
            for start in range(0, n, block):
                rows = np.arange(start, min(start + block, n))
                yield reader.read(rows)
                _return_freed_memory()
                reporter.advance(len(rows), samples=int(rows[-1]) + 1)

    trajectories = trajectory_term(
        graph,
        first,
        second,
        trajectory_distances(blocks(), first, second, device),
        r.trajectory_scale,
        budget_bytes=max(0, _budget_bytes(config) - graph.edges.resident_bytes),
        scratch_dir=run.path,
    )
    reporter.finish()
    return trajectories


def _budget_bytes(config: Config) -> int:
    return int(config.refine.memory_mb * 2**20)


def _prediction_term(
    parts: list[_EpochPart], positions: np.ndarray, starts: np.ndarray, run: Run, config: Config
) -> PredictionTerm | None:
    """The decoder's prediction term over every train sample of every fitted epoch, at its
    refined position (``positions`` of the layout; epoch i's samples start at ``starts[i]``), or
    None when ``refine.prediction_weight`` is 0."""
    r = config.refine
    if r.prediction_weight == 0:
        return None
    train_rows = np.flatnonzero(run.samples.mask("train"))
    logits = [run.logits(part.epoch, split="train") for part in parts]
    target, floor = prediction_targets(logits)
    return PredictionTerm(
        heads=EpochHeads([run.head(part.epoch) for part in parts]),
        positions=torch.from_numpy(np.concatenate([positions[s + train_rows] for s in starts])),
        epoch_index=torch.from_numpy(np.repeat(np.arange(len(parts)), len(train_rows))),
        target=torch.from_numpy(target),
        floor=torch.from_numpy(floor),
        weight=r.prediction_weight,
        batch_size=r.decoder_batch,
    )


def _complex_features(
    parts: list[_EpochPart], total: int, dim: int, train_features: Callable[[_EpochPart], np.ndarray]
) -> torch.Tensor:
    """The complex's vertex features float32 [total, dim] in one preallocated tensor: each
    epoch's selected train samples (``train_features(part)``), then its boundary points, which
    ``part.features`` holds alone once ``train_features`` has returned. Filled part by part, so
    the rows are never held twice: before training they are shed from the parts as they are
    copied (:func:`_shed_train_rows`); for the decoder fit they are read back from the store
    (:func:`_stored_train_rows`), the refinement's graph and layout having run without them (at
    10 000 x 200 epochs they are 0.9 GB)."""
    out = torch.empty((total, dim), dtype=torch.float32)
    for part in parts:
        train = train_features(part)
        boundary = part.features
        out[part.offset : part.offset + part.n_train] = torch.from_numpy(np.asarray(train, np.float32))
        end = part.offset + part.n_train + len(boundary)
        out[part.offset + part.n_train : end] = torch.from_numpy(np.asarray(boundary, np.float32))
        del train
        _return_freed_memory()
    return out


def _shed_train_rows(part: _EpochPart) -> np.ndarray:
    """The part's train rows; the part keeps its boundary rows only."""
    train = part.features[: part.n_train]
    part.features = part.features[part.n_train :].copy()
    return train


def _stored_train_rows(run: Run) -> Callable[[_EpochPart], np.ndarray]:
    """The part's train rows, read from the store."""
    train_index = np.flatnonzero(run.samples.mask("train"))  # one gather per epoch, no masked copy
    return lambda part: run.features(part.epoch)[train_index[part.train_rows]]


def _refine(
    graph: LayoutGraph,
    trajectory: Trajectories | None,
    parts: list[_EpochPart],
    attention: SharedRows,
    model: FitModel,
    run: Run,
    config: Config,
    device: torch.device,
    reporter: Reporter,
    stats: dict[str, Any],
    peaks: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Refine the layout (then ``graph``'s edges and ``trajectory``'s targets are dropped), fit the
    decoder to it; train [E, n_train, 2], test, boundary per epoch. ``peaks``: the high-water
    marks so far of the refinement's parts, to which the layout's and the decoder's are added."""
    r, t = config.refine, config.training
    a, b = find_ab_params(t.spread, t.min_dist)
    started = time.perf_counter()
    reporter.start("refinement", r.epochs)
    positions = refine_layout(
        graph,
        n_epochs=r.epochs,
        learning_rate=r.learning_rate,
        negative_rate=r.negative_rate,
        a=a,
        b=b,
        device=device,
        seed=config.fit.seed,
        trajectory=trajectory,
        trajectory_weight=r.trajectory_weight,
        consecutive_weight=r.trajectory_consecutive_weight,
        progress=lambda epoch: reporter.advance(epoch=epoch),
    )
    reporter.finish()
    # each epoch's block onto its predecessor's (drift without information), before the decoder
    # learns the positions: the decoder, the landscapes and embedding.h5 share the aligned frame
    transforms = align_layout(positions, graph.offsets, graph.n_tracked, r.align)
    if r.align != "none":
        big = largest(transforms)
        log.info(
            "alignment (%s) of %d epochs: largest rotation %.1f°, scale x%.3f, translation %.3g",
            r.align,
            len(transforms),
            big["rotation_degrees"],
            big["scale"],
            big["translation"],
        )
    layout_seconds = time.perf_counter() - started
    sizes = {
        "points": int(graph.offsets[-1]),
        "edges": graph.n_edges,
        "trajectory_pairs": trajectory.n_pairs if trajectory is not None else 0,
        # edges and trajectory targets: held in memory, or in a scratch file past refine.memory_mb
        "blocks_bytes": graph.edges.nbytes + (trajectory.targets.nbytes if trajectory else 0),
        "resident_bytes": graph.edges.resident_bytes + (trajectory.targets.resident_bytes if trajectory else 0),
        "scratch_file": graph.edges.spilled or bool(trajectory and trajectory.targets.spilled),
    }
    layout_peak = round(_peak_memory_mb(), 1)
    # the layout's edges and targets are done with: the decoder fit runs without them
    graph.close()
    if trajectory is not None:
        trajectory.close()
    _return_freed_memory()
    train_rows = np.flatnonzero(run.samples.mask("train"))
    test_rows = np.flatnonzero(run.samples.mask("test"))
    starts, n = graph.offsets[:-1], graph.n_tracked
    # each vertex of the complex (an epoch's selected train samples, then its boundary points)
    # is one point of the layout: the decoder learns the complex's features at their positions
    rows_of_part = [
        np.concatenate([start + train_rows[part.train_rows], start + n + np.arange(len(part.features))])
        for part, start in zip(parts, starts, strict=True)
    ]
    layout_row = np.concatenate(rows_of_part)
    epoch_index = np.repeat(np.arange(len(parts)), [len(rows) for rows in rows_of_part])
    total = sum(part.n_train + len(part.features) for part in parts)
    features = _complex_features(parts, total, run.feature_dim, _stored_train_rows(run))
    reporter.start("decoder", r.decoder_steps)
    reported = [0]  # fit_decoder reports every 10 steps

    def decoder_progress(step: int, loss: float) -> None:
        reporter.advance(step - reported[0], step=step, loss=round(loss, 5))
        reported[0] = step

    losses = fit_decoder(
        model.projector,
        torch.from_numpy(positions[layout_row]),
        features,
        attention,
        steps=r.decoder_steps,
        batch_size=r.decoder_batch,
        lr=r.decoder_lr,
        seed=config.fit.seed,
        epoch_index=torch.from_numpy(epoch_index) if r.epoch_decoder else None,
        n_epochs=len(parts),
        progress=decoder_progress,
        prediction=_prediction_term(parts, positions, starts, run, config),
    )
    reporter.finish()
    stats["refine"] = {
        **sizes,
        "decoder_loss": [round(losses[0], 6), round(losses[-1], 6)] if losses else [],
        # x_aligned = scale * R(rotation_degrees) x + translation, per fitted epoch (the first: identity)
        "align": {
            "mode": r.align,
            "epochs": {str(p.epoch): t.to_dict() for p, t in zip(parts, transforms, strict=True)},
        },
        "seconds": {
            "layout": round(layout_seconds, 3),
            "decoder": round(time.perf_counter() - started - layout_seconds, 3),
        },
        "peak_memory_mb_after": {**peaks, "layout": layout_peak, "decoder": round(_peak_memory_mb(), 1)},
    }
    train = np.stack([positions[s + train_rows] for s in starts])
    test = np.stack([positions[s + test_rows] for s in starts])
    boundary = [positions[s + n : e] for s, e in zip(starts, graph.offsets[1:], strict=True)]
    return train, test, boundary


def fit(run: Run, config: Config, reporter: Reporter | None = None) -> FitResult:
    """Fit the projector on the run's epochs (``config.fit.epochs``) and embed every epoch.

    ``config.fit.method = "dvi"`` fits the DeepVisualInsight baseline instead
    (:func:`timevis_cli.fit.dvi.fit_dvi`: one model per epoch, no refinement)."""
    reporter = reporter or Reporter()
    if config.fit.method == "dvi":
        from timevis_cli.fit.dvi import fit_dvi  # imports this module: loaded when asked for

        return fit_dvi(run, config, reporter)
    stats: dict[str, Any] = {}
    epochs = select_fit_epochs(run, config.fit.epochs)
    device = resolve_device(config.fit.device)
    backend = resolve_backend(config.knn.backend, str(device))
    stats.update(device=str(device), knn_backend=type(backend).__name__, epochs=epochs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_mask = run.samples.mask("train")
    train_ids = run.samples.id[train_mask]
    if len(train_ids) < 3:
        raise InputError(f"{run.path} tracks {len(train_ids)} training samples; fit needs at least 3")
    if len(np.unique(run.samples.label[train_mask])) < 2:
        log.warning("the run has one class only: the map is fitted, but without boundary points")
    seed = config.fit.seed

    with _timed(stats, "reduction"):
        if config.reduction.enabled:
            loaded: list[int] = []  # the bar starts with the first read (none when init_size
            # covers every sample: all are kept, nothing is read)

            def load(epoch: int) -> np.ndarray:
                if not loaded:
                    reporter.start("reduction", len(epochs))
                _return_freed_memory()  # the previous epoch's
                features = _tracked_features(run, epoch)[train_mask]
                loaded.append(epoch)
                reporter.advance(epoch=epoch)
                return features

            r = config.reduction
            selected = select_epochs(
                load,
                epochs,
                train_ids,
                r0=r.r0,
                alpha=r.alpha,
                beta=r.beta,
                init_size=r.init_size,
                coverage=r.coverage,
                rng=np.random.default_rng(seed),
                device=device,
            )
            if loaded:
                reporter.finish()
        else:
            selected = {epoch: train_ids for epoch in epochs}
    position = {int(sample): row for row, sample in enumerate(train_ids)}

    parts: list[_EpochPart] = []
    vertices: list[EpochVertices] = []
    edge_sets: list[EdgeSet] = []
    offset = 0
    with _timed(stats, "complex"):
        reporter.start("spatial and boundary edges", len(epochs))
        for epoch in epochs:
            rows = np.sort(np.array([position[int(s)] for s in selected[epoch]], dtype=np.int64))
            part, epoch_vertices, edges = _epoch_part(
                run, epoch, rows, offset, config, backend, np.random.default_rng([seed, epoch])
            )
            parts.append(part)
            vertices.append(epoch_vertices)
            edge_sets.extend(edges)
            offset += len(part.features)
            _return_freed_memory()
            reporter.advance(epoch=epoch, vertices=len(part.features))
        reporter.finish()
    with _timed(stats, "temporal"):
        window = config.complex.temporal_window or None
        edge_sets.append(temporal_edges(vertices, config.complex.temporal_neighbors, window))
    with _timed(stats, "mixing"):
        joined = EdgeSet.drain(edge_sets)  # each part freed once copied
        del edge_sets
        rates = {
            "spatial": config.complex.rate_spatial,
            "boundary": config.complex.rate_boundary,
            "temporal": config.complex.rate_temporal,
        }
        mixed = mix_edges(joined, rates=rates, prune_offset=config.complex.prune_offset)
    premixed_bytes = joined.nbytes
    stats["complex"] = {
        "vertices": offset,
        "selected_per_epoch": {str(p.epoch): p.n_train for p in parts},
        "boundary_per_epoch": {str(p.epoch): len(p.features) - p.n_train for p in parts},
        "boundary_source": {str(p.epoch): p.boundary_source for p in parts},
        "edges_before_mixing": {k.name.lower(): int((joined.kind == k).sum()) for k in EdgeKind},
        "edges": {k.name.lower(): int((mixed.kind == k).sum()) for k in EdgeKind},
    }
    from_features = [p.epoch for p in parts if p.boundary_source == "feature"]
    if from_features:
        log.info(
            "boundary points: the store has none for epoch(s) %s; used feature-space boundary "
            "points there (docs/method.md §2's fallback: off the representation manifold)",
            format_epochs(from_features),
        )
    log.info(
        "complex: %d vertices over %d epochs, %d edges (%s)",
        offset,
        len(epochs),
        len(mixed),
        ", ".join(f"{k} {v}" for k, v in stats["complex"]["edges"].items()),
    )
    del vertices, joined

    # the complex's features live once, in `features` (a concatenation would hold every row
    # twice at its peak); each part keeps its boundary rows
    features = _complex_features(parts, offset, run.feature_dim, _shed_train_rows)
    row_offsets = np.cumsum([0] + [len(p.attention) for p in parts[:-1]])
    attention = SharedRows(
        torch.from_numpy(np.concatenate([p.attention for p in parts])),
        torch.from_numpy(
            np.concatenate([p.attention_index + o for p, o in zip(parts, row_offsets, strict=True)])
        ),
    )
    for part in parts:  # the attention lives once, in `attention`
        part.attention = np.zeros((0, run.feature_dim), np.float32)
        part.attention_index = np.zeros(0, np.int64)
    _return_freed_memory()
    stats["complex"]["bytes"] = {
        "features": features.nbytes,
        "attention": attention.table.nbytes + attention.index.nbytes,
        "edges_before_mixing": premixed_bytes,  # alive with the mixed ones while mixing
        "edges": mixed.nbytes,
    }
    t = config.training
    params = TrainParams(
        hidden=config.projector.hidden,
        depth=config.projector.depth,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        lr_step=t.lr_step,
        lr_gamma=t.lr_gamma,
        patience=t.patience,
        min_improvement=t.min_improvement,
        max_epochs=t.max_epochs,
        edges_per_epoch_factor=t.edges_per_epoch_factor,
        min_edges_per_epoch=t.min_edges_per_epoch,
        # the refinement places every sample: the projector's budget need not grow with the complex
        max_edges_per_epoch=t.max_edges_per_epoch if config.refine.enabled else 0,
        negative_rate=t.negative_rate,
        recon_weight=t.recon_weight,
        min_dist=t.min_dist,
        spread=t.spread,
        init=config.projector.init,
    )
    with _timed(stats, "training"):
        reporter.start("training", t.max_epochs)
        projector, report = fit_projector(
            features,
            attention,
            mixed,
            params,
            device,
            seed,
            progress=lambda info: reporter.advance(**{k: _short(v) for k, v in info.items()}),
        )
        reporter.finish()
    # the complex's edges and features are done with: the refinement builds its own graph, and
    # reads the features back for the decoder fit at its end (_complex_features)
    del mixed, features
    _return_freed_memory()
    model = FitModel(projector, device, list(epochs))
    test_mask = run.samples.mask("test")
    if config.refine.enabled:
        with _timed(stats, "refine"):
            prepared = time.perf_counter()
            graph = _layout_graph(run, epochs, parts, model, config, dense_backend(backend), reporter)
            built = time.perf_counter() - prepared
            peaks = {"graph": round(_peak_memory_mb(), 1)}
            trajectory = None
            try:
                if config.refine.trajectory_weight > 0:
                    trajectory = _trajectories(run, epochs, graph, config, device, reporter)
                peaks["trajectories"] = round(_peak_memory_mb(), 1)
                prepared = time.perf_counter() - prepared
                train_pos, test_pos, boundary_points = _refine(
                    graph, trajectory, parts, attention, model, run, config, device, reporter, stats, peaks
                )
            finally:
                graph.close()
                if trajectory is not None:
                    trajectory.close()
            stats["refine"]["seconds"].update(graph=round(built, 3), trajectories=round(prepared - built, 3))
        del attention
        boundary_features = [p.features.astype(np.float16) for p in parts]
        model.tracked = TrackedSamples(
            run, list(epochs), functools.partial(_fit_positions, train_pos, test_pos)
        )
    else:
        del attention
        with _timed(stats, "embedding"):
            reporter.start("embedding", len(epochs))
            train_pos = np.zeros((len(epochs), int(train_mask.sum()), 2), np.float32)
            test_pos = np.zeros((len(epochs), int(test_mask.sum()), 2), np.float32)
            boundary_points, boundary_features = [], []
            for i, (epoch, part) in enumerate(zip(epochs, parts, strict=True)):
                points = model.encode(_tracked_features(run, epoch))
                train_pos[i], test_pos[i] = points[train_mask], points[test_mask]
                boundary = part.features  # the boundary rows only, since training
                boundary_points.append(
                    model.encode(boundary) if len(boundary) else np.zeros((0, 2), np.float32)
                )
                boundary_features.append(boundary.astype(np.float16))
                reporter.advance(epoch=epoch)
            reporter.finish()
    stats["peak_memory_mb"] = round(_peak_memory_mb(), 1)
    if device.type == "cuda":
        stats["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return FitResult(
        model=model,
        config=config,
        run_id=run.run_id,
        epochs=epochs,
        train=train_pos,
        test=test_pos,
        boundary_points=boundary_points,
        boundary_features=boundary_features,
        boundary_pairs=[p.boundary_pair for p in parts],
        boundary_source=[p.boundary_source for p in parts],
        selected_ids={epoch: np.sort(selected[epoch]) for epoch in epochs},
        report=report,
        stats=stats,
    )


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
