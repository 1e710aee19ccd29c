"""The decoder's prediction term: the landscape agrees with the model at its own samples.

The landscape colours each 2-D point with the classifier head's prediction on the decoded
features there. Reconstruction alone (even attention-weighted) leaves the decoded features of a
sample a little off its own, and where the classes are close together (the first epochs, whose
features are barely separated) a little off is on the other side of the head's boundary: the
picture then shows the sample in a region of another class. When the decoder is fitted to the
refined positions, this term adds, for every tracked train sample ``v`` at every fitted epoch
``t`` (its refined position ``y_v``; the model's prediction ``c_v = argmax h_t(x_v)`` from the
stored logits), a hinge on the decoded features' margin::

    m_v   = h_t(ψ_t(y_v))[c_v] - max_{c != c_v} h_t(ψ_t(y_v))[c]
    L_pred = mean_v  max(0, δ_t - m_v) / ‖∇m_v‖

where ``δ_t`` is a fraction (:data:`MARGIN_FRACTION`) of the median margin of epoch ``t``'s own
samples ``h_t(x_v)`` (an untrained epoch with logits of 0.01 and a trained one with logits of 10
ask for the same relative margin) and ``‖∇m_v‖`` is the norm of the margin's gradient with respect
to the decoded features, so each sample's term is how far (in feature space, exactly for a linear
head) its decoded features lie from the side of the boundary with margin ``δ_t``: the same units
as the reconstruction, whatever the epoch's logit scale. (Dividing by ``δ_t`` instead made an
untrained epoch, whose margins are thousandths, pull on the shared decoder a hundred times harder
than the others and spoil its neighbours.) The hinge is zero once a sample's decoded margin
reaches ``δ_t``: it moves the decoder only where the picture would lie, and no further, so the
reconstruction keeps its say everywhere else. The reconstruction is fitted on the complex's
vertices (a reduced subset of the samples, and the boundary points); this term reaches every
train sample, since it needs only their positions and logits. Test samples are left out, so
their agreement stays a measure of how the landscape generalises. Each decoder step draws one
batch for each term: ``L_rec + λ·L_pred`` (``refine.prediction_weight = λ``; 0 switches the term
off).

Everything here is a pure function of tensors (:class:`EpochHeads` holds the heads' parameters
as tensors) and runs on the tensors' device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from timevis_callback.head import Head
from timevis_cli.errors import InputError

__all__ = [
    "MARGIN_FRACTION",
    "LINEAR_EQUIVALENT",
    "EpochHeads",
    "PredictionTerm",
    "margin_floor",
    "is_linear_head",
    "margin_gradient_norm",
    "prediction_hinge",
    "prediction_targets",
    "top_margins",
]

MARGIN_FRACTION = 0.25
"""``δ_t`` is this fraction of the median margin of epoch ``t``'s samples under its own head."""

LINEAR_EQUIVALENT = {"Linear", "Flatten", "Identity", "Dropout"}
"""Head layer types that leave a head one linear map at evaluation (with exactly one Linear)."""


def is_linear_head(head: Head) -> bool:
    """Whether ``head`` is one Linear layer with only eval-time no-ops around it."""
    types = [layer["type"] for layer in head.spec]
    return set(types) <= LINEAR_EQUIVALENT and types.count("Linear") == 1


def _linear_map(head: Head) -> tuple[np.ndarray, np.ndarray] | None:
    """(W [C, D], b [C]) when ``head`` is one Linear layer (with eval-time no-ops around it)."""
    if not is_linear_head(head):
        return None
    i = next(i for i, layer in enumerate(head.spec) if layer["type"] == "Linear")
    weight = np.asarray(head.state[f"{i}.weight"], np.float32)
    bias = (
        np.asarray(head.state[f"{i}.bias"], np.float32)
        if head.spec[i].get("bias", True)
        else np.zeros(weight.shape[0], np.float32)
    )
    return weight, bias


class EpochHeads:
    """The classifier heads of the fitted epochs, evaluated on decoded features in torch.

    ``heads``: one :class:`~timevis_callback.head.Head` per fitted epoch, in the decoder's epoch
    order. Linear heads (the common case) are stacked into one matrix, so a batch mixing epochs
    costs one matmul; other heads run as their ``to_torch()`` modules, one call per epoch present.
    """

    def __init__(self, heads: Sequence[Head], device: torch.device | str = "cpu"):
        if not heads:
            raise InputError("EpochHeads needs the head of at least one epoch")
        self.n_epochs = len(heads)
        self.device = torch.device(device)
        self._heads = list(heads)
        maps = [_linear_map(h) for h in heads]
        self.n_classes = int(heads[0](np.zeros((1, _input_width(heads[0])), np.float32)).shape[1])
        if all(m is not None for m in maps):
            weight = np.concatenate([m[0] for m in maps])  # [E*C, D]
            bias = np.concatenate([m[1] for m in maps])
            self._weight = torch.from_numpy(weight).to(self.device)
            self._bias = torch.from_numpy(bias).to(self.device)
            self._modules: list[nn.Module] | None = None
        else:
            self._weight = self._bias = None
            self._modules = [h.to_torch().to(self.device) for h in heads]
            for module in self._modules:
                module.requires_grad_(False)

    def to(self, device: torch.device | str) -> EpochHeads:
        """These heads on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        return self if device == self.device else EpochHeads(self._heads, device)

    def logits(self, features: Tensor, epoch_index: Tensor) -> Tensor:
        """Logits [n, C] of ``features`` [n, D], row v under the head of ``epoch_index[v]``."""
        if self._modules is None:
            n, c = features.shape[0], self.n_classes
            every = features @ self._weight.T + self._bias  # [n, E*C]
            columns = epoch_index[:, None] * c + torch.arange(c, device=features.device)
            return every.gather(1, columns.view(n, c))
        out = features.new_empty((features.shape[0], self.n_classes))
        for e in torch.unique(epoch_index).tolist():
            rows = epoch_index == e
            out[rows] = self._modules[e](features[rows])
        return out


def _input_width(head: Head) -> int:
    first = next(layer for layer in head.spec if layer["type"] in ("Linear", "BatchNorm1d"))
    return int(first.get("in_features", first.get("num_features")))


def top_margins(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, top-1 minus top-2) of logits [n, C]; the class is ``argmax``'s (the first
    of tied top logits), as everywhere the model's prediction is taken."""
    if logits.shape[1] < 2:
        return logits.argmax(axis=1), np.zeros(len(logits), logits.dtype)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]  # the two largest, the largest last
    return logits.argmax(axis=1), top2[:, 1] - top2[:, 0]


def margin_floor(
    sample_logits: np.ndarray, fraction: float = MARGIN_FRACTION, *, margins: np.ndarray | None = None
) -> float:
    """``δ_t``: ``fraction`` of the median top-1 minus top-2 margin of one epoch's samples'
    logits [n, C] (a small positive number when every margin is 0, so the hinge stays defined).
    ``margins``: those logits' :func:`top_margins`, where the caller has them already."""
    if sample_logits.ndim != 2 or len(sample_logits) == 0:
        raise InputError(f"sample logits of shape {sample_logits.shape} must be [n >= 1, C]")
    if margins is None:
        _, margins = top_margins(np.asarray(sample_logits, np.float64))
    elif np.shape(margins) != (len(sample_logits),):
        raise InputError(f"margins of shape {np.shape(margins)} given for {len(sample_logits)} samples")
    scale = float(np.median(margins)) * fraction
    spread = float(np.abs(sample_logits).max())
    return max(scale, 1e-6 * max(spread, 1.0))


def prediction_targets(
    sample_logits: Sequence[np.ndarray], fraction: float = MARGIN_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample of the concatenated epochs: (target class int64, floor δ float32).

    ``sample_logits[t]``: logits [n_t, C] of epoch t's samples; every sample of epoch t gets
    that epoch's :func:`margin_floor`.
    """
    targets, floors = [], []
    for logits in sample_logits:
        logits = np.asarray(logits, np.float64)
        if len(logits) == 0:
            continue
        classes, margins = top_margins(logits)
        targets.append(classes.astype(np.int64))
        floors.append(np.full(len(logits), margin_floor(logits, fraction, margins=margins), np.float32))
    if not targets:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(targets), np.concatenate(floors)


def _margin(logits: Tensor, target: Tensor) -> Tensor:
    """``logits[v, target[v]]`` minus the best other class's logit, per row."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    return own - others


def prediction_hinge(
    logits: Tensor, target: Tensor, floor: Tensor, scale: Tensor | None = None
) -> Tensor:
    """``mean_v max(0, δ_v - m_v) / s_v`` over the rows with a target (``target >= 0``), where
    ``m_v`` is the margin of ``logits[v]`` for class ``target[v]`` over the best other class and
    ``s_v`` is ``scale[v]`` (e.g. the norm of the margin's gradient, which makes each row's
    hinge the feature-space distance to the side with margin ``δ_v``), ``δ_v`` when ``scale``
    is None; 0 (a tensor) when no row has a target."""
    if logits.ndim != 2 or target.shape != logits.shape[:1] or floor.shape != target.shape:
        raise InputError(
            f"logits [n, C], target [n] and floor [n] must agree, got {tuple(logits.shape)}, "
            f"{tuple(target.shape)}, {tuple(floor.shape)}"
        )
    if scale is not None and scale.shape != target.shape:
        raise InputError(f"scale must have shape {tuple(target.shape)}, got {tuple(scale.shape)}")
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    delta = floor[keep].to(logits.dtype)
    short = torch.relu(delta - _margin(logits[keep], target[keep]))
    return short.div(delta if scale is None else scale[keep].to(logits.dtype)).mean()


def margin_gradient_norm(logits: Tensor, target: Tensor, features: Tensor) -> Tensor:
    """Per row, ``‖∂m_v/∂features_v‖`` (detached; at least 1e-12): how fast the margin of class
    ``target[v]`` changes with the features (``‖W[c] - W[c']‖`` for a linear head), so
    ``(δ - m) / ‖∇m‖`` is how far the features are from the side with margin ``δ``. Rows without
    a target (-1) get 1. ``logits`` must have been computed from ``features`` with autograd."""
    keep = target >= 0
    out = torch.ones(target.shape, dtype=logits.dtype, device=logits.device)
    if not bool(keep.any()) or not features.requires_grad:
        return out
    margin = _margin(logits, target.clamp_min(0))
    (grad,) = torch.autograd.grad(margin[keep].sum(), features, retain_graph=True)
    out[keep] = grad[keep].norm(dim=1).detach().clamp_min(1e-12)
    return out


@dataclass(frozen=True)
class PredictionTerm:
    """``λ·L_pred`` over its own points: the 2-D positions [M, 2] of samples at the fitted epochs
    (``epoch_index`` [M], the decoder's epoch order), each with the model's prediction
    ``target`` [M] (-1: none) and its epoch's floor ``δ`` [M]; ``weight`` = λ, ``batch_size``
    points drawn per step. They need not be the decoder's reconstruction vertices: the positions
    of every tracked sample are known after the refinement, their features are not needed."""

    heads: EpochHeads
    positions: Tensor
    epoch_index: Tensor
    target: Tensor
    floor: Tensor
    weight: float
    batch_size: int

    def __post_init__(self) -> None:
        m = self.positions.shape[0]
        if self.positions.shape != (m, 2) or any(
            t.shape != (m,) for t in (self.epoch_index, self.target, self.floor)
        ):
            raise InputError(
                f"positions [M, 2], epoch_index, target and floor [M] must agree, got "
                f"{tuple(self.positions.shape)}, {tuple(self.epoch_index.shape)}, "
                f"{tuple(self.target.shape)}, {tuple(self.floor.shape)}"
            )
        if m and (int(self.epoch_index.min()) < 0 or int(self.epoch_index.max()) >= self.heads.n_epochs):
            raise InputError(f"epoch_index must lie in [0, {self.heads.n_epochs}) (one per head)")
        if self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size} must be >= 1")

    def loss(self, decode: Callable[[Tensor, Tensor], Tensor], generator: torch.Generator) -> Tensor:
        """``λ·L_pred`` on ``batch_size`` points drawn with ``generator``; ``decode(y, epoch)``
        is the decoder (features [b, D] of positions [b, 2] at epoch indices [b])."""
        m = self.positions.shape[0]
        rows = torch.randint(m, (min(self.batch_size, m),), generator=generator, device=self.positions.device)
        epoch, target = self.epoch_index[rows], self.target[rows]
        decoded = decode(self.positions[rows], epoch)
        logits = self.heads.logits(decoded, epoch)
        return self.weight * prediction_hinge(
            logits, target, self.floor[rows], margin_gradient_norm(logits, target, decoded)
        )

    def to(self, device: torch.device) -> PredictionTerm:
        """This term, its heads and per-point tensors on ``device``."""
        return PredictionTerm(
            self.heads.to(device),
            self.positions.to(device, torch.float32),
            self.epoch_index.to(device),
            self.target.to(device),
            self.floor.to(device),
            self.weight,
            self.batch_size,
        )
