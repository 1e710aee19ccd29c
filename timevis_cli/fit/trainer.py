"""Fitting the projector on the spatio-temporal complex (docs/method.md §5).

Everything per epoch stays on the device: the edge arrays become tensors once, each training
epoch draws its edges with ``torch.multinomial`` (:func:`sample_edges`), and mini-batches are
slices of the drawn indices (no DataLoader). Each batch encodes and decodes every vertex it
touches once; the edge terms index into those embeddings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from timevis_cli.errors import InputError
from timevis_cli.fit.complex import EdgeSet
from timevis_cli.fit.losses import find_ab_params, reconstruction_loss, total_loss, umap_loss
from timevis_cli.fit.predictive import PredictionTerm
from timevis_cli.fit.projector import DEFAULT_DEPTH, DEFAULT_HIDDEN, Projector

__all__ = [
    "MAX_MULTINOMIAL_CATEGORIES",
    "SharedRows",
    "TrainParams",
    "TrainReport",
    "deterministic_on_cpu",
    "edges_per_epoch",
    "fit_decoder",
    "fit_projector",
    "sample_edges",
]

logger = logging.getLogger(__name__)

INITIALISATIONS = ("random", "pca")
"""How :func:`fit_projector` may initialise a fresh projector (:attr:`TrainParams.init`)."""
METHOD_EDGES_FACTOR = 5.0
"""The paper's ``edges_per_epoch_factor``: the most that ``min_edges_per_epoch`` may raise the
draws per epoch to."""
MAX_MULTINOMIAL_CATEGORIES = 2**24
"""The most categories one ``torch.multinomial`` call is given (its CUDA limit); more are
sampled in chunks of at most this many."""


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of :func:`fit_projector` (defaults: docs/method.md §5, the reference's values).

    hidden, depth: the :class:`~timevis_cli.fit.projector.Projector`'s width and hidden layers.
    batch_size: sampled edges per mini-batch. lr, weight_decay: Adam's. lr_step, lr_gamma: the
    learning rate is multiplied by ``lr_gamma`` every ``lr_step`` epochs. patience,
    min_improvement: stop once ``patience`` epochs in a row fail to lower the epoch loss below
    ``(1 - min_improvement)`` times the best so far. max_epochs: the most training epochs.
    edges_per_epoch_factor, min_edges_per_epoch, max_edges_per_epoch: draws per epoch
    (:func:`edges_per_epoch`; 0 = no cap).
    negative_rate: negatives per edge. recon_weight: λ in ``L_umap + λ·L_rec``.
    min_dist, spread: UMAP's, for the ``a, b`` of the low-dimensional similarity.
    init: ``"random"`` (PyTorch's layer initialisation) or ``"pca"`` (then
    :meth:`~timevis_cli.fit.projector.Projector.init_pca` on the complex's vertices, so training
    starts from a global PCA of all epochs; ``init_scale`` is the standard deviation of its first
    coordinate).
    """

    hidden: int = DEFAULT_HIDDEN
    depth: int = DEFAULT_DEPTH
    batch_size: int = 1000
    lr: float = 0.01
    weight_decay: float = 1e-5
    lr_step: int = 4
    lr_gamma: float = 0.1
    patience: int = 3
    min_improvement: float = 0.01
    max_epochs: int = 20
    edges_per_epoch_factor: float = 5.0
    min_edges_per_epoch: int = 0
    max_edges_per_epoch: int = 0
    negative_rate: int = 5
    recon_weight: float = 1.0
    min_dist: float = 0.1
    spread: float = 1.0
    init: str = "random"
    init_scale: float = 5.0

    def __post_init__(self) -> None:
        if self.init not in INITIALISATIONS:
            raise InputError(
                f"init={self.init!r} must be one of {', '.join(INITIALISATIONS)}; set init, "
                "e.g. 'pca'"
            )
        ints = {
            "hidden": (1, "e.g. 256"),
            "depth": (0, "e.g. 3"),
            "batch_size": (1, "e.g. 1000"),
            "lr_step": (1, "e.g. 4"),
            "patience": (1, "e.g. 3"),
            "max_epochs": (1, "e.g. 20"),
            "min_edges_per_epoch": (0, "e.g. 100000"),
            "max_edges_per_epoch": (0, "e.g. 150000, or 0 for no cap"),
            "negative_rate": (1, "e.g. 5"),
        }
        for name, (minimum, example) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{name}={value!r} must be an integer; set {name}, {example}")
            if value < minimum:
                raise InputError(f"{name}={value!r} must be >= {minimum}; set {name}, {example}")
        floats = {
            "lr": (lambda v: v > 0, "> 0", "e.g. 0.01"),
            "weight_decay": (lambda v: v >= 0, ">= 0", "e.g. 1e-5"),
            "lr_gamma": (lambda v: 0 < v <= 1, "in (0, 1]", "e.g. 0.1"),
            "min_improvement": (lambda v: 0 <= v < 1, "in [0, 1)", "e.g. 0.01 for 1%"),
            "edges_per_epoch_factor": (lambda v: v > 0, "> 0", "e.g. 5"),
            "recon_weight": (lambda v: v >= 0, ">= 0", "e.g. 1"),
            "spread": (lambda v: v > 0, "> 0", "e.g. 1.0"),
            "init_scale": (lambda v: v > 0, "> 0", "e.g. 1.0"),
            "min_dist": (lambda v: 0 <= v <= self.spread, "in [0, spread]", "e.g. 0.1"),
        }
        for name, (valid, constraint, example) in floats.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise InputError(f"{name}={value!r} must be a number {constraint}; {example}")
            if not (math.isfinite(value) and valid(value)):
                raise InputError(f"{name}={value!r} must be {constraint}; set {name}, {example}")

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (for fit.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SharedRows:
    """A [V, D] matrix whose rows repeat, stored once per distinct row: row v is
    ``table[index[v]]``.

    The reconstruction attention of a linear head depends only on the epoch and the vertex's
    top-2 classes, so the complex's V attention rows are a few hundred distinct ones; holding
    ``table`` [A, D] and ``index`` [V] instead of V x D rows keeps the fit's memory at the
    features' size. :meth:`dense` wraps a plain matrix (every row distinct).
    """

    table: Tensor
    index: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.table, Tensor) or self.table.ndim != 2:
            raise InputError(f"SharedRows.table must be a 2-D tensor, got {type(self.table)}")
        if not isinstance(self.index, Tensor) or self.index.ndim != 1:
            raise InputError(f"SharedRows.index must be a 1-D tensor, got {type(self.index)}")
        if len(self.index) and (int(self.index.min()) < 0 or int(self.index.max()) >= len(self.table)):
            raise InputError(
                f"SharedRows.index must lie in [0, {len(self.table)}), got "
                f"[{int(self.index.min())}, {int(self.index.max())}]"
            )

    @classmethod
    def dense(cls, rows: Tensor) -> SharedRows:
        """Every row of ``rows`` [V, D] its own table entry."""
        return cls(rows, torch.arange(rows.shape[0], device=rows.device))

    @property
    def shape(self) -> tuple[int, int]:
        """``(V, D)``: the shape of the matrix the rows stand for."""
        return (self.index.shape[0], self.table.shape[1])

    def __getitem__(self, vertices: Tensor) -> Tensor:
        return self.table[self.index[vertices]]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SharedRows:
        """On ``device``, the table in ``dtype`` (the index stays int64)."""
        return SharedRows(self.table.to(device=device, dtype=dtype), self.index.to(device))


@dataclass(frozen=True)
class TrainReport:
    """What :func:`fit_projector` did: per-epoch mean batch losses and how it stopped.

    ``umap_losses``, ``recon_losses``, ``total_losses``: one float per training epoch run.
    ``stopped_early``: the patience rule ended training before ``max_epochs``.
    """

    umap_losses: tuple[float, ...]
    recon_losses: tuple[float, ...]
    total_losses: tuple[float, ...]
    epochs_run: int
    seconds: float
    stopped_early: bool
    edges_per_epoch: int
    a: float
    b: float

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict (for fit.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def edges_per_epoch(
    weight: Tensor | np.ndarray, factor: float, minimum: int = 1, maximum: int = 0
) -> int:
    """Edges drawn per training epoch: ``floor(factor · Σ p)`` with ``p = w / max w``, raised to
    ``minimum`` but never above what the paper's factor draws (``floor(5 · Σ p)``), then capped
    at ``maximum`` (0: no cap); at least 1.

    The floor lets a small complex train enough steps under a small ``factor`` without ever
    drawing more than the published configuration would; the cap keeps the step budget of a
    large complex fixed when the refinement places every sample afterwards.

    >>> w = np.ones(1000)
    >>> edges_per_epoch(w, 0.8), edges_per_epoch(w, 0.8, minimum=2000), edges_per_epoch(w, 0.8, maximum=500)
    (800, 2000, 500)
    """
    weight = torch.as_tensor(weight)
    total = float((weight.to(torch.float64) / weight.max().to(torch.float64)).sum())
    floor = min(int(minimum), math.floor(METHOD_EDGES_FACTOR * total))
    draws = max(1, floor, math.floor(factor * total))
    return min(draws, int(maximum)) if maximum > 0 else draws


def sample_edges(
    weight: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n_samples`` edge indices int64, drawn with replacement in proportion to ``weight`` [m].

    No ``torch.multinomial`` call is given more than :data:`MAX_MULTINOMIAL_CATEGORIES`
    categories: longer weights are cut into chunks of that many, the chunk of each draw is drawn
    by chunk mass (recursively, should the chunks themselves be too many), then each chunk's
    draws within it, so the indices follow ``weight`` exactly; with several chunks the result is
    shuffled. With one chunk the draws are already i.i.d. in random order. On ``weight``'s
    device.
    """
    m = weight.shape[0]
    limit = MAX_MULTINOMIAL_CATEGORIES
    if m == 0:
        raise InputError("cannot sample from an empty edge set")
    if m <= limit:
        return torch.multinomial(weight, n_samples, replacement=True, generator=generator)
    if limit < 2:
        raise InputError(f"MAX_MULTINOMIAL_CATEGORIES={limit} must be >= 2 to sample in chunks")
    starts = list(range(0, m, limit))
    masses = torch.stack([weight[s : s + limit].sum(dtype=torch.float64) for s in starts])
    chunk_of_draw = sample_edges(masses, n_samples, generator)
    counts = torch.bincount(chunk_of_draw, minlength=len(starts)).tolist()
    pieces = [
        s + torch.multinomial(weight[s : s + limit], c, replacement=True, generator=generator)
        for s, c in zip(starts, counts, strict=True)
        if c > 0
    ]
    drawn = torch.cat(pieces)
    return drawn[torch.randperm(n_samples, generator=generator, device=drawn.device)]


def _check_inputs(features: Tensor, attention: Tensor | SharedRows, edges: EdgeSet) -> None:
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] < 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
        raise InputError(f"features must be a tensor of shape (V >= 2, D), got {shape}")
    if not features.is_floating_point():
        raise InputError(f"features must be floating point, got {features.dtype}")
    if not isinstance(attention, (Tensor, SharedRows)) or tuple(attention.shape) != tuple(
        features.shape
    ):
        shape = (
            tuple(attention.shape) if isinstance(attention, (Tensor, SharedRows)) else type(attention)
        )
        raise InputError(
            f"attention must have the features' shape {tuple(features.shape)}, got {shape}"
        )
    if len(edges) == 0:
        raise InputError("the edge set is empty: nothing to fit (is the complex built?)")
    lo = min(int(edges.head.min()), int(edges.tail.min()))
    hi = max(int(edges.head.max()), int(edges.tail.max()))
    if lo < 0 or hi >= features.shape[0]:
        raise InputError(
            f"edges name vertices in [{lo}, {hi}] but features has {features.shape[0]} rows"
        )
    if not (np.all(np.isfinite(edges.weight)) and np.all(edges.weight >= 0)):
        raise InputError("edge weights must be finite and >= 0")
    if not edges.weight.max() > 0:
        raise InputError("every edge weight is 0: nothing to sample")


@contextmanager
def deterministic_on_cpu(device: torch.device | str) -> Iterator[None]:
    """Torch's deterministic algorithms while a fit runs on the CPU; the previous setting after.

    On the CPU the backward of a row gather ``x[index]`` (``index_put_`` with ``accumulate``)
    adds the rows from several threads in no fixed order once it touches 32 768 elements or
    more, so two fits of one seed gave different weights (the decoder's per-epoch bias, the
    UMAP loss's negatives at large batches); the deterministic variant adds them in order and
    costs nothing measurable here. Uninitialised memory is not filled (nothing reads it).
    Other devices are left as they are (CUDA's deterministic variants are slower, and some
    raise).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def _seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the initialisation and for the sampling generator."""
    init_seed, sample_seed = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    return int(init_seed) & (2**63 - 1), int(sample_seed) & (2**63 - 1)


def _batch_losses(
    projector: Projector,
    head: Tensor,
    tail: Tensor,
    features: Tensor,
    attention: SharedRows,
    params: TrainParams,
    ab: tuple[float, float],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_umap, L_rec, total)`` of one batch of edges ``head -> tail`` (vertex ids [B]).

    Each distinct vertex of the batch is encoded and decoded once; the reconstruction loss
    weights it by how many edge ends it is, which equals the mean over both ends of each edge.
    """
    size = head.shape[0]
    vertices, position, counts = torch.unique(
        torch.cat([head, tail]), return_inverse=True, return_counts=True
    )
    x = features[vertices]
    embedding, reconstruction = projector(x)
    umap = umap_loss(
        embedding[position[:size]],
        embedding[position[size:]],
        ab[0],
        ab[1],
        params.negative_rate,
        generator,
    )
    recon = reconstruction_loss(x, reconstruction, attention[vertices], weight=counts)
    return umap, recon, total_loss(umap, recon, params.recon_weight)


def _train_epoch(
    projector: Projector,
    optimizer: torch.optim.Optimizer,
    batches: tuple[Tensor, Tensor],
    features: Tensor,
    attention: SharedRows,
    params: TrainParams,
    ab: tuple[float, float],
    generator: torch.Generator,
) -> tuple[float, float, float]:
    """One pass over the drawn edges ``(heads, tails)``; returns the mean batch losses."""
    heads, tails = batches
    sums = torch.zeros(3, dtype=torch.float64, device=features.device)
    n_batches = 0
    for start in range(0, heads.shape[0], params.batch_size):
        stop = start + params.batch_size
        umap, recon, loss = _batch_losses(
            projector,
            heads[start:stop],
            tails[start:stop],
            features,
            attention,
            params,
            ab,
            generator,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums += torch.stack([umap.detach(), recon.detach(), loss.detach()]).to(torch.float64)
        n_batches += 1
    umap_mean, recon_mean, total_mean = (sums / n_batches).tolist()
    return umap_mean, recon_mean, total_mean


def fit_projector(
    features: Tensor,
    attention: Tensor | SharedRows,
    edges: EdgeSet,
    params: TrainParams,
    device: torch.device | str,
    seed: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
    projector: Projector | None = None,
) -> tuple[Projector, TrainReport]:
    """Fit a projector to the complex ``edges`` over the vertices ``features``.

    ``features`` [V, D] float32 (vertex v is row v; moved to ``device`` if elsewhere),
    ``attention`` [V, D] (the ``a_v`` of the reconstruction loss; a tensor, or
    :class:`SharedRows` when rows repeat), ``edges``: head/tail vertex
    ids and sampling weights ``w`` (after :func:`~timevis_cli.fit.complex.mix_edges`). Each
    training epoch draws :func:`edges_per_epoch` edges with :func:`sample_edges` and runs
    mini-batches of ``params.batch_size`` edges with Adam and a step learning-rate schedule,
    until ``params.max_epochs`` or the patience rule (:class:`TrainParams`).

    Each batch encodes and decodes each of its distinct vertices once. Its reconstruction loss
    is averaged over the distinct vertices weighted by how many edge ends they are, which is
    exactly the paper's mean "over both ends of each edge". Seeded end to end: the
    initialisation from ``seed`` (without touching torch's global generator), the sampling and
    the negatives from one ``torch.Generator`` on ``device``; the same seed gives identical
    weights on the CPU (the steps run under :func:`deterministic_on_cpu`; on CUDA, atomics in
    the backward of the gathers may differ in the last bits unless
    ``torch.use_deterministic_algorithms(True)`` is set).

    ``projector``: start from this one (e.g. a PCA initialisation, or the previous epoch's for
    the DVI baseline) instead of a fresh one; it must match the features' dimension. It is
    trained in place. ``progress`` is called after each training epoch with a dict: epoch (1-based),
    loss, umap, recon, lr (used in that epoch), seconds (since the start).
    Returns the projector (in eval mode, on ``device``) and a :class:`TrainReport`.
    """
    _check_inputs(features, attention, edges)
    device = torch.device(device)
    started = time.perf_counter()
    features = features.to(device=device, dtype=torch.float32)
    if isinstance(attention, Tensor):
        attention = SharedRows.dense(attention)
    attention = attention.to(device, torch.float32)
    head = torch.as_tensor(edges.head, device=device)
    tail = torch.as_tensor(edges.tail, device=device)
    weight = torch.as_tensor(edges.weight, device=device)
    n_draws = edges_per_epoch(
        edges.weight,
        params.edges_per_epoch_factor,
        params.min_edges_per_epoch,
        params.max_edges_per_epoch,
    )
    a, b = find_ab_params(params.spread, params.min_dist)

    init_seed, sample_seed = _seeds(seed)
    if projector is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            projector = Projector(features.shape[1], params.hidden, params.depth)
        if params.init == "pca":
            init_generator = torch.Generator(device=features.device)
            init_generator.manual_seed(init_seed)
            decoder_state = {k: v.clone() for k, v in projector.decoder.state_dict().items()}
            projector.to(features.device).init_pca(
                features, scale=params.init_scale, generator=init_generator
            )
            projector.decoder.load_state_dict(decoder_state)
    elif projector.input_dim != features.shape[1]:
        raise InputError(
            f"the projector takes {projector.input_dim}-D input, the features are "
            f"{features.shape[1]}-D"
        )
    projector.to(device).train()
    generator = torch.Generator(device=device)
    generator.manual_seed(sample_seed)
    optimizer = torch.optim.Adam(
        projector.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=params.lr_step, gamma=params.lr_gamma
    )
    logger.info(
        "fitting the projector: %d vertices, %d-D, %d edges, %d draws per epoch, on %s",
        features.shape[0],
        features.shape[1],
        len(edges),
        n_draws,
        device,
    )

    history: list[tuple[float, float, float]] = []
    best = math.inf
    stale = 0
    stopped_early = False
    for epoch in range(1, params.max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        drawn = sample_edges(weight, n_draws, generator)
        with deterministic_on_cpu(device):
            losses = _train_epoch(
                projector,
                optimizer,
                (head[drawn], tail[drawn]),
                features,
                attention,
                params,
                (a, b),
                generator,
            )
        scheduler.step()
        history.append(losses)
        umap, recon, total = losses
        if not math.isfinite(total):
            raise InputError(
                f"the loss became {total} at epoch {epoch}; lower lr={params.lr} or check the "
                "features for NaN/inf"
            )
        elapsed = time.perf_counter() - started
        logger.debug(
            "epoch %d: loss %.5f (umap %.5f, recon %.5f), lr %.2e, %.1f s",
            epoch,
            total,
            umap,
            recon,
            lr,
            elapsed,
        )
        if progress is not None:
            progress(
                {
                    "epoch": epoch,
                    "loss": total,
                    "umap": umap,
                    "recon": recon,
                    "lr": lr,
                    "seconds": elapsed,
                }
            )
        if total < best * (1.0 - params.min_improvement):
            best, stale = total, 0
        else:
            stale += 1
        if stale >= params.patience:
            stopped_early = epoch < params.max_epochs
            break

    projector.eval()
    seconds = time.perf_counter() - started
    report = TrainReport(
        umap_losses=tuple(h[0] for h in history),
        recon_losses=tuple(h[1] for h in history),
        total_losses=tuple(h[2] for h in history),
        epochs_run=len(history),
        seconds=seconds,
        stopped_early=stopped_early,
        edges_per_epoch=n_draws,
        a=a,
        b=b,
    )
    logger.info(
        "projector fitted: %d epochs in %.1f s, final loss %.5f%s",
        report.epochs_run,
        seconds,
        report.total_losses[-1],
        " (stopped early)" if stopped_early else "",
    )
    return projector, report


def fit_decoder(
    projector: Projector,
    positions: Tensor,
    features: Tensor,
    attention: Tensor | SharedRows,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    epoch_index: Tensor | None = None,
    n_epochs: int | None = None,
    progress: Callable[[int, float], None] | None = None,
    prediction: PredictionTerm | None = None,
) -> list[float]:
    """Fit the projector's decoder to map ``positions`` [V, 2] back to ``features`` [V, D].

    After refinement moves the tracked samples, the decoder (the landscape and ppr) must follow
    them: ``steps`` Adam steps on batches of ``batch_size`` vertices drawn uniformly, with the
    attention-weighted reconstruction loss of training (``attention``: [V, D] or shared rows).
    ``epoch_index`` int64 [V]: each vertex's fitted-epoch index (< ``n_epochs``, default: the
    largest index + 1), checked once here; the decoder then gets one bias per epoch
    (:meth:`Projector.add_epoch_bias`), fitted with it, since a refined layout may place
    different epochs' features at one 2-D point. The encoder is left as it is. Seeded (on the
    CPU bitwise: the steps run under :func:`deterministic_on_cpu`); runs on the projector's
    device. Returns the loss of every step; ``progress(step, loss)`` is
    called every 10 steps and at the end. ``prediction``: adds ``λ·L_pred`` on a batch of its
    own points each step (:mod:`~timevis_cli.fit.predictive`), so the head's prediction on each
    sample's decoded features is the model's own.
    """
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] != features.shape[0]:
        raise InputError(
            f"positions must have shape ({features.shape[0]}, 2), got {tuple(positions.shape)}"
        )
    if steps < 0 or batch_size < 1:
        raise InputError(f"steps={steps} must be >= 0 and batch_size={batch_size} >= 1")
    device = next(projector.parameters()).device
    positions = positions.to(device=device, dtype=torch.float32)
    features = features.to(device=device, dtype=torch.float32)
    if isinstance(attention, Tensor):
        attention = SharedRows.dense(attention)
    attention = attention.to(device, torch.float32)
    if epoch_index is not None:
        if epoch_index.shape != (features.shape[0],) or (epoch_index.numel() and int(epoch_index.min()) < 0):
            raise InputError(
                f"epoch_index must be {features.shape[0]} indices >= 0, got shape {tuple(epoch_index.shape)}"
            )
        epoch_index = epoch_index.to(device=device, dtype=torch.int64)
        largest = int(epoch_index.max()) + 1 if epoch_index.numel() else 0
        if n_epochs is not None and n_epochs < largest:
            raise InputError(f"n_epochs={n_epochs} but epoch_index holds index {largest - 1}")
        projector.add_epoch_bias(largest if n_epochs is None else n_epochs)
    if prediction is not None:
        prediction = prediction.to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(_seeds(seed)[1] ^ 0x5EED)
    parameters = list(projector.decoder.parameters())
    if projector.epoch_bias is not None:
        parameters.append(projector.epoch_bias)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    projector.decoder.train()
    history = torch.zeros(steps, dtype=torch.float32, device=device)  # one transfer at the end
    with deterministic_on_cpu(device):
        for step in range(1, steps + 1):
            rows = torch.randint(
                features.shape[0], (min(batch_size, features.shape[0]),), generator=generator, device=device
            )
            decoded = projector.decode(positions[rows], None if epoch_index is None else epoch_index[rows])
            loss = reconstruction_loss(features[rows], decoded, attention[rows])
            if prediction is not None:
                loss = loss + prediction.loss(projector.decode, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history[step - 1] = loss.detach()
            if progress is not None and (step % 10 == 0 or step == steps):
                progress(step, float(history[step - 1]))
    projector.eval()
    losses = history.tolist()
    if losses and not math.isfinite(losses[-1]):
        raise InputError(f"the decoder's loss became {losses[-1]}; lower refine.decoder_lr={lr}")
    return losses
