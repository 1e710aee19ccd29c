"""The projector's losses (docs/method.md §5) as pure functions of tensors.

Every function works in the dtype of its inputs (float32 in training, float64 in the gradient
checks) and on their device; none keeps state. The trainer calls them once per mini-batch:

- :func:`umap_loss`: UMAP's cross-entropy between the fuzzy graph (positives: the sampled edges)
  and the low-dimensional similarity ``q = 1 / (1 + a·d^{2b})``, with negatives drawn inside the
  batch (:func:`sample_negatives`);
- :func:`reconstruction_loss`: the attention-weighted squared error of the decoder;
- :func:`attention_weights` / :func:`attention_weights_autograd`: the per-vertex weights ``a_v``
  of that error, from the classifier head;
- :func:`total_loss`: ``L_umap + λ·L_rec``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from timevis_cli.errors import InputError

__all__ = [
    "ATTENTION_TEMPERATURE",
    "DISTANCE_EPS",
    "PROBABILITY_CLIP",
    "attention_weights",
    "attention_weights_autograd",
    "class_pair_attention",
    "find_ab_params",
    "top2_classes",
    "reconstruction_loss",
    "sample_negatives",
    "total_loss",
    "umap_loss",
]

logger = logging.getLogger(__name__)

PROBABILITY_CLIP = 1e-4
"""``q`` and ``1 - q`` are clipped to ``[PROBABILITY_CLIP, 1]`` before the log (docs/method.md §5)."""
DISTANCE_EPS = 1e-8
"""Distances are ``sqrt(d² + DISTANCE_EPS)``: finite gradients where two embeddings coincide."""
ATTENTION_TEMPERATURE = 0.01
"""Softmax temperature of the attention weights (the reference's value)."""
_AB_CURVE_POINTS = 300
"""umap-learn fits ``a, b`` on this many points of ``[0, 3·spread]``."""


# --------------------------------------------------------------------------- a, b


def _ab_target(spread: float, min_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """umap-learn's target curve: 1 below ``min_dist``, ``exp(-(x - min_dist) / spread)`` above."""
    x = np.linspace(0.0, spread * 3.0, _AB_CURVE_POINTS)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    return x, y


def _ab_curve(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + a * x ** (2.0 * b))


@functools.lru_cache(maxsize=32)
def find_ab_params(spread: float = 1.0, min_dist: float = 0.1) -> tuple[float, float]:
    """The ``a, b`` of ``q = 1 / (1 + a·d^{2b})`` fitted as umap-learn does (``find_ab_params``).

    Least squares of the curve against 1 for ``d < min_dist`` and ``exp(-(d - min_dist) /
    spread)`` beyond, on 300 points of ``[0, 3·spread]``, with scipy's ``curve_fit`` (imported
    here, so only a fit pays for it). Defaults give a ≈ 1.577, b ≈ 0.895. Results are cached per
    ``(spread, min_dist)``.
    """
    spread, min_dist = float(spread), float(min_dist)
    if not (np.isfinite(spread) and spread > 0):
        raise InputError(f"spread={spread!r} must be > 0 (umap-learn's default is 1.0)")
    if not (np.isfinite(min_dist) and 0 <= min_dist <= spread):
        raise InputError(
            f"min_dist={min_dist!r} must be in [0, spread={spread}] (umap-learn's default is 0.1)"
        )
    from scipy.optimize import curve_fit

    x, y = _ab_target(spread, min_dist)
    (a, b), _ = curve_fit(_ab_curve, x, y)
    logger.debug("a=%.6f b=%.6f for spread=%s min_dist=%s", a, b, spread, min_dist)
    return float(a), float(b)


# --------------------------------------------------------------------------- UMAP loss


def sample_negatives(
    batch_size: int,
    negative_rate: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Negative pairs inside a batch of ``batch_size`` edges, as the reference code draws them.

    Each edge's head is repeated ``negative_rate`` times (``repeat_interleave``) and paired with
    the batch's tails, repeated the same way and shuffled by one permutation drawn from
    ``generator``. Returns ``(heads, tails)``: int64 [batch_size · negative_rate], positions in
    the batch (a pair may happen to be a true edge, or a vertex with itself, as in UMAP).
    """
    if batch_size < 0 or negative_rate < 0:
        raise InputError(
            f"batch_size={batch_size!r} and negative_rate={negative_rate!r} must be >= 0"
        )
    n = batch_size * negative_rate
    device = generator.device if device is None and generator is not None else device
    heads = torch.arange(batch_size, device=device).repeat_interleave(negative_rate)
    perm = torch.randperm(n, generator=generator, device=device)
    return heads, heads[perm]


def _check_embeddings(emb_head: Tensor, emb_tail: Tensor) -> None:
    if emb_head.ndim != 2 or emb_head.shape != emb_tail.shape:
        raise InputError(
            f"emb_head and emb_tail must both have shape (B, d), got {tuple(emb_head.shape)} "
            f"and {tuple(emb_tail.shape)}"
        )


def _similarity(diff: Tensor, a: float, b: float, distance_eps: float) -> Tensor:
    """``q = 1 / (1 + a·d^{2b})`` with ``d = sqrt(|diff|² + eps)``, computed as ``(d²)^b``."""
    squared = (diff * diff).sum(dim=1) + distance_eps
    return 1.0 / (1.0 + a * squared.pow(b))


def umap_loss(
    emb_head: Tensor,
    emb_tail: Tensor,
    a: float,
    b: float,
    negative_rate: int = 5,
    generator: torch.Generator | None = None,
    *,
    negatives: tuple[Tensor, Tensor] | None = None,
    clip: float = PROBABILITY_CLIP,
    distance_eps: float = DISTANCE_EPS,
) -> Tensor:
    """UMAP's binary cross-entropy on one batch of B sampled edges (a scalar tensor).

    ``emb_head``, ``emb_tail``: [B, d], the embeddings of each edge's two ends. Positives are
    the B edges (target 1); negatives (target 0) are ``negatives`` (two int64 index tensors into
    the batch, e.g. from :func:`sample_negatives`) or, when None, ``B · negative_rate`` pairs
    drawn by :func:`sample_negatives` with ``generator``. With ``q = 1 / (1 + a·d^{2b})`` and
    ``d = sqrt(d² + distance_eps)``, each positive costs ``-log(clamp(q, clip, 1))`` and each
    negative ``-log(clamp(1 - q, clip, 1))``; the loss is the mean over all ``B + B·rate``
    terms (the reference's weighting: one edge's attraction weighs as much as one negative's
    repulsion).
    """
    _check_embeddings(emb_head, emb_tail)
    if negatives is None:
        negatives = sample_negatives(
            emb_head.shape[0], negative_rate, generator, device=emb_head.device
        )
    neg_heads, neg_tails = negatives
    q_pos = _similarity(emb_head - emb_tail, a, b, distance_eps)
    q_neg = _similarity(emb_head[neg_heads] - emb_tail[neg_tails], a, b, distance_eps)
    attraction = -torch.log(q_pos.clamp(min=clip, max=1.0))
    repulsion = -torch.log((1.0 - q_neg).clamp(min=clip, max=1.0))
    n_terms = attraction.shape[0] + repulsion.shape[0]
    if n_terms == 0:
        raise InputError("umap_loss needs at least one edge")
    return (attraction.sum() + repulsion.sum()) / n_terms


# --------------------------------------------------------------------------- reconstruction


def reconstruction_loss(
    x: Tensor, x_rec: Tensor, attention: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Attention-weighted squared error ``mean((1 + a_v) ⊙ (x - x_rec)²)`` (a scalar tensor).

    ``x``, ``x_rec``, ``attention``: [n, D]. The mean runs over the D dimensions and the n rows;
    with ``weight`` [n] (e.g. how often each vertex appears in the batch's edges) the rows are
    averaged with those weights: ``Σ_v w_v·mean_D(...) / Σ_v w_v``, which equals the plain mean
    over a batch in which vertex v is repeated ``w_v`` times.
    """
    if x.ndim != 2 or x.shape != x_rec.shape or x.shape != attention.shape:
        raise InputError(
            f"x, x_rec and attention must share one (n, D) shape, got {tuple(x.shape)}, "
            f"{tuple(x_rec.shape)}, {tuple(attention.shape)}"
        )
    per_row = ((1.0 + attention) * (x - x_rec).square()).mean(dim=1)
    if weight is None:
        return per_row.mean()
    if weight.shape != per_row.shape:
        raise InputError(f"weight must have shape ({x.shape[0]},), got {tuple(weight.shape)}")
    weight = weight.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum()


def total_loss(umap: Tensor, recon: Tensor, recon_weight: float = 1.0) -> Tensor:
    """``L_umap + λ·L_rec`` with ``λ = recon_weight``."""
    return umap + recon_weight * recon


# --------------------------------------------------------------------------- attention


def top2_classes(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's largest and second-largest class ids, int64 [n] each, of logits [n, C >= 2]."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise InputError(f"logits must have shape (n, C) with C >= 2, got {tuple(logits.shape)}")
    top = torch.topk(logits, 2, dim=1).indices
    return top[:, 0], top[:, 1]


def _normalise(saliency: Tensor, temperature: float) -> Tensor:
    if not temperature > 0:
        raise InputError(f"temperature={temperature!r} must be > 0 (the reference uses 0.01)")
    return torch.softmax(saliency / temperature, dim=1)


def attention_weights(
    features: Tensor,
    logits: Tensor,
    head_weight: Tensor,
    temperature: float = ATTENTION_TEMPERATURE,
) -> Tensor:
    """Attention ``a_v = softmax((|W[c1]| + |W[c2]|) / temperature)`` for a linear head.

    ``features`` [n, D] (only checked against the head), ``logits`` [n, C] (c1, c2: each row's
    two largest), ``head_weight`` [C, D] (the ``Linear``'s weight). The softmax runs over the D
    dimensions. This is the closed form of the reference's per-sample gradients ``|∂z_c1/∂x| +
    |∂z_c2/∂x|``. Returns [n, D] in the dtype of ``head_weight``; rows sum to 1.
    """
    c1, c2 = top2_classes(logits)
    if head_weight.ndim != 2 or features.ndim != 2 or head_weight.shape[1] != features.shape[1]:
        raise InputError(
            f"head_weight must have shape (C, D) matching features (n, D), got "
            f"{tuple(head_weight.shape)} and {tuple(features.shape)}"
        )
    if head_weight.shape[0] != logits.shape[1] or features.shape[0] != logits.shape[0]:
        raise InputError(
            f"logits {tuple(logits.shape)} must be (n, C) for features {tuple(features.shape)} "
            f"and head_weight {tuple(head_weight.shape)}"
        )
    return class_pair_attention(head_weight, c1, c2, temperature)


def class_pair_attention(
    head_weight: Tensor, c1: Tensor, c2: Tensor, temperature: float = ATTENTION_TEMPERATURE
) -> Tensor:
    """``softmax((|W[c1]| + |W[c2]|) / temperature)`` [n, D] for class ids ``c1``, ``c2`` [n].

    The attention of a linear head depends on the vertex only through its top-2 classes, so a
    fit computes it once per distinct (epoch, class pair) (:func:`attention_weights` per row).
    """
    magnitude = head_weight.abs()
    return _normalise(magnitude[c1] + magnitude[c2], temperature)


def attention_weights_autograd(
    features: Tensor,
    head_fn: Callable[[Tensor], Tensor],
    temperature: float = ATTENTION_TEMPERATURE,
    batch_size: int = 4096,
) -> Tensor:
    """Attention ``a_v = softmax((|∂z_c1/∂x| + |∂z_c2/∂x|) / temperature)`` for any head.

    ``features`` [n, D]; ``head_fn`` maps [b, D] to logits [b, C] row by row (an eval-mode head:
    each row's logits depend on that row only, so the gradient of a column sum is the per-row
    gradient); c1, c2 are each row's two largest logits. Batches of ``batch_size`` rows, two
    backward passes each. For a linear head this equals :func:`attention_weights` exactly (the
    gradients are the rows of W). Returns [n, D] in the features' dtype, without a graph.
    """
    if features.ndim != 2:
        raise InputError(f"features must have shape (n, D), got {tuple(features.shape)}")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be >= 1")
    pieces = []
    for start in range(0, features.shape[0], batch_size):
        chunk = features[start : start + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = head_fn(chunk)
            if logits.ndim != 2 or logits.shape[0] != chunk.shape[0]:
                raise InputError(
                    f"head_fn must map ({chunk.shape[0]}, D) to ({chunk.shape[0]}, C), got "
                    f"{tuple(logits.shape)}"
                )
            c1, c2 = top2_classes(logits.detach())
            first = logits.gather(1, c1[:, None]).sum()
            second = logits.gather(1, c2[:, None]).sum()
            (grad1,) = torch.autograd.grad(first, chunk, retain_graph=True)
            (grad2,) = torch.autograd.grad(second, chunk)
        pieces.append(_normalise(grad1.abs() + grad2.abs(), temperature))
    if not pieces:
        return features.new_empty(features.shape)
    return torch.cat(pieces)
