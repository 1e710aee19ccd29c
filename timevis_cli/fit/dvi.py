"""The DeepVisualInsight baseline (``fit.method = "dvi"``, ``[dvi]``; docs/dvi.md).

DVI, timevis's predecessor, fits one visualization model per epoch. Epoch t's model starts from
epoch t-1's final weights (a new optimiser each epoch) and trains on the UMAP fuzzy complex of
that epoch alone (its tracked train samples, every one of them, and its boundary points: the
spatial and boundary edges of :mod:`timevis_cli.fit.complex`, mixed as timevis mixes them) with

    L_t = L_umap + λ1 · L_rec + λ2 · mean(npr_t) · Σ_θ ‖θ - θ_{t-1}‖²

where ``L_rec`` is the plain mean squared reconstruction error (the maintained code's attention
is zero), ``npr_t`` each train sample's high-dimensional kNN overlap between epochs t-1 and t
(:func:`neighbour_preservation`) and ``θ_{t-1}`` epoch t-1's final weights; the first epoch has
no temporal term. Each epoch's positions are that epoch's encoder on that epoch's features; there
is no refinement and no prediction term. The result is an ordinary :class:`FitResult` whose
:class:`FitModel` holds the per-epoch projectors (``epoch_projectors``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from timevis_callback.reader import Run
from timevis_cli.config import Config
from timevis_cli.device import resolve_device
from timevis_cli.errors import InputError
from timevis_cli.fit.complex import EdgeKind, EdgeSet, mix_edges
from timevis_cli.fit.losses import find_ab_params, reconstruction_loss, umap_loss
from timevis_cli.fit.neighbors import KNNBackend, resolve_backend
from timevis_cli.fit.pipeline import (
    FitModel,
    FitResult,
    Reporter,
    _epoch_part,
    _peak_memory_mb,
    _return_freed_memory,
    _tracked_features,
    select_fit_epochs,
)
from timevis_cli.fit.projector import Projector
from timevis_cli.fit.trainer import TrainReport, deterministic_on_cpu, edges_per_epoch, sample_edges

__all__ = [
    "DVIReport",
    "EpochTraining",
    "fit_dvi",
    "knn_overlap",
    "neighbour_preservation",
    "train_epoch",
    "weight_change",
]

log = logging.getLogger(__name__)

#: What ``fit.json``'s ``seconds`` holds for a DVI fit, summed over the epochs; all but
#: ``embedding`` is the fit's own time (what the benchmarks compare with timevis's).
STAGES = ("complex", "npr", "training", "embedding")
FIT_STAGES = STAGES[:-1]
_NPR_BLOCK = 65_536  # rows of the [rows, k, k] overlap test at a time


@dataclass(frozen=True)
class DVIReport(TrainReport):
    """A DVI fit's training: the :class:`TrainReport` fields over every pass of every epoch
    (``epochs_run``: passes in all; ``edges_per_epoch``: the most edges drawn in one pass;
    ``stopped_early``: some epoch stopped before ``dvi.max_passes``), and ``per_epoch``: one
    dict per fitted epoch (:meth:`EpochTraining.as_dict`)."""

    per_epoch: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class EpochTraining:
    """One epoch's model training: per pass, the mean batch losses (``temporal``: the weighted
    term ``λ2 · mean(npr) · Σ‖θ - θ_{t-1}‖²``), and how it ended."""

    epoch: int
    umap: tuple[float, ...]
    recon: tuple[float, ...]
    temporal: tuple[float, ...]
    total: tuple[float, ...]
    stopped_early: bool
    draws_per_pass: int
    temporal_weight: float
    npr_mean: float
    vertices: int
    edges: int
    seconds: float

    @property
    def passes(self) -> int:
        return len(self.total)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for fit.json."""
        return {
            "epoch": self.epoch,
            "passes": self.passes,
            "stopped_early": self.stopped_early,
            "draws_per_pass": self.draws_per_pass,
            "vertices": self.vertices,
            "edges": self.edges,
            "npr_mean": round(self.npr_mean, 6),
            "temporal_weight": round(self.temporal_weight, 6),
            "loss": [round(v, 6) for v in self.total],
            "umap": [round(v, 6) for v in self.umap],
            "recon": [round(v, 6) for v in self.recon],
            "temporal": [round(v, 6) for v in self.temporal],
            "seconds": round(self.seconds, 3),
        }


def neighbour_preservation(
    previous: np.ndarray, current: np.ndarray, k: int, backend: KNNBackend
) -> np.ndarray:
    """Each sample's share of its ``k`` nearest neighbours (itself excluded, Euclidean) that
    are the same at two epochs: float64 [n] in [0, 1]. ``previous``, ``current``: the same
    samples' features [n, D] at epochs t-1 and t (row i is one sample at both)."""
    if previous.shape[0] != current.shape[0]:
        raise InputError(
            f"neighbour preservation needs the same samples at both epochs, got "
            f"{previous.shape[0]} and {current.shape[0]} rows"
        )
    k = min(int(k), len(current) - 1)
    if k < 1:
        return np.zeros(len(current))
    return knn_overlap(backend.query(previous, k=k)[0], backend.query(current, k=k)[0])


def knn_overlap(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Each row's share of the indices of ``before`` [n, k] that ``after`` [n, k] holds too
    (two neighbour lists of the same samples): float64 [n]."""
    kept = np.empty(len(after), np.int64)
    for start in range(0, len(after), _NPR_BLOCK):
        a, b = before[start : start + _NPR_BLOCK], after[start : start + _NPR_BLOCK]
        kept[start : start + len(a)] = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)
    return kept / max(1, after.shape[1])


def weight_change(projector: Projector, anchor: list[Tensor]) -> Tensor:
    """``Σ_θ ‖θ - θ_anchor‖²`` over every parameter of ``projector`` (a scalar tensor with
    gradient); ``anchor``: the parameters to stay near, in ``projector.parameters()`` order."""
    parameters = list(projector.parameters())
    if len(parameters) != len(anchor):
        raise InputError(
            f"the previous epoch's model has {len(anchor)} parameter tensors, this one "
            f"{len(parameters)}; both must have one architecture"
        )
    return torch.stack(
        [(p - q).square().sum() for p, q in zip(parameters, anchor, strict=True)]
    ).sum()


def _batch_loss(
    projector: Projector,
    head: Tensor,
    tail: Tensor,
    features: Tensor,
    config: Config,
    ab: tuple[float, float],
    temporal_weight: float,
    anchor: list[Tensor] | None,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(L_umap, L_rec, temporal term, total)`` of one batch of edges ``head -> tail``.

    Each distinct vertex is encoded and decoded once; the reconstruction error weights it by how
    many edge ends it is (the mean over both ends of every edge, as the reference computes it)."""
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
        config.training.negative_rate,
        generator,
    )
    recon = reconstruction_loss(x, reconstruction, torch.zeros_like(x), weight=counts)
    if anchor is not None and temporal_weight > 0:
        temporal = temporal_weight * weight_change(projector, anchor)
    else:
        temporal = umap.new_zeros(())
    return umap, recon, temporal, umap + config.dvi.lambda1 * recon + temporal


def train_epoch(
    projector: Projector,
    features: Tensor,
    edges: EdgeSet,
    config: Config,
    *,
    epoch: int,
    temporal_weight: float,
    anchor: list[Tensor] | None,
    generator: torch.Generator,
    npr_mean: float = 0.0,
) -> EpochTraining:
    """Train ``projector`` (in place, on its device) on one epoch's complex.

    ``features`` [V, D] (on the projector's device): the epoch's vertices; ``edges``: its mixed
    edges (sampling weights). A new Adam (``dvi.adam_lr``, ``dvi.adam_weight_decay``) with a
    StepLR schedule (``dvi.lr_decay_every``, ``dvi.lr_decay``); each pass draws
    ``floor(dvi.edges_factor · Σ w / max w)`` edges with replacement and steps on batches of
    ``dvi.batch_edges``; at most ``dvi.max_passes`` passes, stopping once the pass's mean loss
    has fallen by less than ``dvi.min_loss_drop`` in ``dvi.patience_passes`` + 1 passes in a row
    (the reference's rule). ``anchor``: the previous epoch's final parameters (None at the first
    epoch: no temporal term), weighted by ``temporal_weight`` (λ2 · mean npr).
    """
    started = time.perf_counter()
    settings = config.dvi
    device = features.device
    head = torch.as_tensor(edges.head, device=device)
    tail = torch.as_tensor(edges.tail, device=device)
    weight = torch.as_tensor(edges.weight, device=device)
    draws = edges_per_epoch(edges.weight, settings.edges_factor)
    ab = find_ab_params(config.training.spread, config.training.min_dist)
    optimizer = torch.optim.Adam(
        projector.parameters(), lr=settings.adam_lr, weight_decay=settings.adam_weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=settings.lr_decay_every, gamma=settings.lr_decay
    )
    history: list[tuple[float, float, float, float]] = []
    previous, patience, stopped_early = math.inf, settings.patience_passes, False
    projector.train()
    for number in range(1, settings.max_passes + 1):
        drawn = sample_edges(weight, draws, generator)
        heads, tails = head[drawn], tail[drawn]
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        batches = 0
        with deterministic_on_cpu(device):
            for start in range(0, draws, settings.batch_edges):
                stop = start + settings.batch_edges
                terms = _batch_loss(
                    projector,
                    heads[start:stop],
                    tails[start:stop],
                    features,
                    config,
                    ab,
                    temporal_weight,
                    anchor,
                    generator,
                )
                optimizer.zero_grad(set_to_none=True)
                terms[-1].backward()
                optimizer.step()
                sums += torch.stack([t.detach() for t in terms]).to(torch.float64)
                batches += 1
        scheduler.step()
        means = tuple((sums / batches).tolist())
        history.append(means)  # type: ignore[arg-type]
        loss = means[-1]
        if not math.isfinite(loss):
            raise InputError(
                f"the DVI loss became {loss} at epoch {epoch}, pass {number}; lower "
                f"dvi.adam_lr={settings.adam_lr} or dvi.lambda2={settings.lambda2}"
            )
        log.debug("epoch %d pass %d: loss %.5f (umap %.5f, recon %.5f, temporal %.5f)",
                  epoch, number, loss, *means[:3])  # fmt: skip
        if previous - loss < settings.min_loss_drop:
            if patience == 0:
                stopped_early = number < settings.max_passes
                break
            patience -= 1
        else:
            patience = settings.patience_passes
        previous = loss
    projector.eval()
    return EpochTraining(
        epoch=epoch,
        umap=tuple(h[0] for h in history),
        recon=tuple(h[1] for h in history),
        temporal=tuple(h[2] for h in history),
        total=tuple(h[3] for h in history),
        stopped_early=stopped_early,
        draws_per_pass=draws,
        temporal_weight=float(temporal_weight),
        npr_mean=float(npr_mean),
        vertices=int(features.shape[0]),
        edges=len(edges),
        seconds=time.perf_counter() - started,
    )


def _initial_projector(dim: int, config: Config, device: torch.device) -> Projector:
    """The first epoch's model: PyTorch's random initialisation, seeded by ``fit.seed``
    (without touching torch's global generator)."""
    init_seed = int(np.random.SeedSequence(config.fit.seed).generate_state(1, dtype=np.uint64)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed & (2**63 - 1))
        projector = Projector(dim, config.projector.hidden, config.projector.depth)
    return projector.to(device)


def _sampling_generator(config: Config, device: torch.device) -> torch.Generator:
    state = np.random.SeedSequence([config.fit.seed, 0xD71]).generate_state(1, dtype=np.uint64)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) & (2**63 - 1))
    return generator


#: A map whose train samples all lie within this distance of each other has collapsed.
COLLAPSED_EXTENT = 1e-3


def _warn_if_collapsed(points: np.ndarray, epoch: int, later: list[int]) -> None:
    """Warn when an epoch's model maps every train sample to (nearly) one point: its UMAP
    gradients vanish there, and the next epochs start from that model (measured on MNIST-5k's
    untrained epoch 0, whose features hardly vary between samples)."""
    extent = float(np.ptp(points, axis=0).max()) if len(points) else 0.0
    if extent >= COLLAPSED_EXTENT:
        return
    fix = f"; fit from a later epoch, e.g. --epochs {later[0]}-" if later else ""
    log.warning(
        "DVI: epoch %d's map collapsed to a point (its train samples span %.2g): its features "
        "hardly vary between samples (an untrained network?) and the next epochs start from this "
        "model%s",
        epoch,
        extent,
        fix,
    )


def fit_dvi(run: Run, config: Config, reporter: Reporter | None = None) -> FitResult:
    """Fit DVI's per-epoch models on the run's epochs (``config.fit.epochs``), in order, and
    embed every epoch with its own encoder. What :func:`timevis_cli.fit.pipeline.fit` runs for
    ``fit.method = "dvi"``."""
    reporter = reporter or Reporter()
    stats: dict[str, Any] = {"method": "dvi"}
    epochs = select_fit_epochs(run, config.fit.epochs)
    device = resolve_device(config.fit.device)
    backend = resolve_backend(config.knn.backend, str(device))
    stats.update(device=str(device), knn_backend=type(backend).__name__, epochs=epochs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_mask, test_mask = run.samples.mask("train"), run.samples.mask("test")
    train_ids = run.samples.id[train_mask]
    n_train = len(train_ids)
    if n_train < 3:
        raise InputError(f"{run.path} tracks {n_train} training samples; fit needs at least 3")
    if len(np.unique(run.samples.label[train_mask])) < 2:
        log.warning("the run has one class only: the map is fitted, but without boundary points")
    seconds = dict.fromkeys(STAGES, 0.0)
    all_rows = np.arange(n_train, dtype=np.int64)
    rates = {"spatial": config.complex.rate_spatial, "boundary": config.complex.rate_boundary}
    projector = _initial_projector(run.feature_dim, config, device)
    generator = _sampling_generator(config, device)
    encoder = FitModel(projector, device)  # encodes with ``projector`` as it trains

    train_pos = np.zeros((len(epochs), n_train, 2), np.float32)
    test_pos = np.zeros((len(epochs), int(test_mask.sum()), 2), np.float32)
    models: list[Projector] = []
    trainings: list[EpochTraining] = []
    boundary_points: list[np.ndarray] = []
    boundary_features: list[np.ndarray] = []
    boundary_pairs: list[np.ndarray] = []
    boundary_source: list[str] = []
    edges_before: dict[str, int] = {k.name.lower(): 0 for k in EdgeKind}
    edges_after: dict[str, int] = {k.name.lower(): 0 for k in EdgeKind}
    npr_k = min(config.knn.n_neighbors, n_train - 1)
    previous: np.ndarray | None = None  # the previous epoch's train samples' kNN [n, npr_k]
    anchor: list[Tensor] | None = None  # the previous epoch's final parameters
    reporter.start("DVI: one model per epoch", len(epochs))
    for index, epoch in enumerate(epochs):
        started = time.perf_counter()
        part, _, edge_list = _epoch_part(
            run,
            epoch,
            all_rows,
            0,
            config,
            backend,
            np.random.default_rng([config.fit.seed, epoch]),
        )
        joined = EdgeSet.concat(edge_list)
        mixed = mix_edges(joined, rates=rates, prune_offset=config.complex.prune_offset)
        for kind in EdgeKind:
            edges_before[kind.name.lower()] += int((joined.kind == kind).sum())
            edges_after[kind.name.lower()] += int((mixed.kind == kind).sum())
        del joined, edge_list
        current = part.features[:n_train]
        seconds["complex"] += time.perf_counter() - started

        started = time.perf_counter()
        npr_mean, temporal_weight = 0.0, 0.0
        neighbours, _ = backend.query(current, k=npr_k)  # neighbour_preservation, kNN kept
        if previous is not None:
            npr_mean = float(knn_overlap(previous, neighbours).mean())
            temporal_weight = config.dvi.lambda2 * npr_mean
        seconds["npr"] += time.perf_counter() - started

        training = train_epoch(
            projector,
            torch.from_numpy(part.features).to(device),
            mixed,
            config,
            epoch=epoch,
            temporal_weight=temporal_weight,
            anchor=anchor,
            generator=generator,
            npr_mean=npr_mean,
        )
        seconds["training"] += training.seconds
        trainings.append(training)
        models.append(copy.deepcopy(projector).eval())
        anchor = [p.detach().clone() for p in projector.parameters()]

        started = time.perf_counter()
        points = encoder.encode(_tracked_features(run, epoch))
        train_pos[index], test_pos[index] = points[train_mask], points[test_mask]
        _warn_if_collapsed(train_pos[index], epoch, epochs[index + 1 :])
        boundary = part.features[n_train:]
        boundary_points.append(
            encoder.encode(boundary) if len(boundary) else np.zeros((0, 2), np.float32)
        )
        boundary_features.append(boundary.astype(np.float16))
        seconds["embedding"] += time.perf_counter() - started
        boundary_pairs.append(part.boundary_pair)
        boundary_source.append(part.boundary_source)
        previous = neighbours
        del part, current, boundary, mixed
        _return_freed_memory()
        reporter.advance(epoch=epoch, passes=training.passes, loss=round(training.total[-1], 4))
    reporter.finish()

    stats["seconds"] = {stage: round(value, 3) for stage, value in seconds.items()}
    stats["complex"] = {
        "vertices": int(sum(t.vertices for t in trainings)),
        "selected_per_epoch": {str(e): n_train for e in epochs},
        "boundary_per_epoch": {
            str(e): len(b) for e, b in zip(epochs, boundary_points, strict=True)
        },
        "boundary_source": dict(zip(map(str, epochs), boundary_source, strict=True)),
        "edges_before_mixing": edges_before,
        "edges": edges_after,
    }
    stats["peak_memory_mb"] = round(_peak_memory_mb(), 1)
    if device.type == "cuda":
        stats["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    log.info(
        "DVI: %d epochs, %d passes in all, %.1f s of training",
        len(epochs),
        sum(t.passes for t in trainings),
        seconds["training"],
    )
    a, b = find_ab_params(config.training.spread, config.training.min_dist)
    report = DVIReport(
        umap_losses=tuple(v for t in trainings for v in t.umap),
        recon_losses=tuple(v for t in trainings for v in t.recon),
        total_losses=tuple(v for t in trainings for v in t.total),
        epochs_run=sum(t.passes for t in trainings),
        seconds=seconds["training"],
        stopped_early=any(t.stopped_early for t in trainings),
        edges_per_epoch=max(t.draws_per_pass for t in trainings),
        a=a,
        b=b,
        per_epoch=tuple(t.as_dict() for t in trainings),
    )
    return FitResult(
        model=FitModel(models[-1], device, list(epochs), epoch_projectors=models),
        config=config,
        run_id=run.run_id,
        epochs=epochs,
        train=train_pos,
        test=test_pos,
        boundary_points=boundary_points,
        boundary_features=boundary_features,
        boundary_pairs=boundary_pairs,
        boundary_source=boundary_source,
        selected_ids={epoch: np.sort(train_ids) for epoch in epochs},
        report=report,
        stats=stats,
    )
