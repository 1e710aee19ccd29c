"""The visualisation model: encoder φ (features → 2-D) and decoder ψ (2-D → features), docs/method.md §5.

A checkpoint is a plain dict ``{"config": Projector.config(), "state_dict": state_dict()}`` of
ints and tensors, so ``torch.load(path, weights_only=True)`` reads it and
:meth:`Projector.from_checkpoint` rebuilds the model without unpickling code.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from timevis_cli.errors import InputError

__all__ = ["DEFAULT_DEPTH", "DEFAULT_HIDDEN", "EMBEDDING_DIM", "Projector"]

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 2
"""The dimension of the visualisation space."""
DEFAULT_HIDDEN = 256
"""Width of every hidden layer (the reference's ``units``)."""
DEFAULT_DEPTH = 3
"""Hidden-to-hidden layers in each of encoder and decoder (the reference's ``hidden_layer``)."""
_CONFIG_KEYS = ("input_dim", "hidden", "depth", "epochs")
_PCA_RIDGE = 1e-2
"""Ridge of :meth:`Projector.init_pca`'s least squares, relative to the mean diagonal."""


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, a ReLU after each but the last."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _ridge_fit(layer: nn.Linear, inputs: Tensor, targets: Tensor) -> None:
    """Set ``layer`` to the ridge least-squares map from ``inputs`` [n, i] to ``targets`` [n, o]."""
    design = torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], dim=1)
    gram = design.T @ design
    ridge = _PCA_RIDGE * gram.diagonal().mean().clamp(min=1e-12)
    solution = torch.linalg.solve(
        gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device),
        design.T @ targets,
    )
    layer.weight.copy_(solution[:-1].T.to(layer.weight.dtype))
    layer.bias.copy_(solution[-1].to(layer.bias.dtype))


class Projector(nn.Module):
    """Encoder ``input_dim → hidden → (hidden →)×depth → 2`` and its mirror-image decoder.

    ReLU between layers, none after the last of either. ``depth`` counts the hidden-to-hidden
    layers, so each half has ``depth + 2`` ``Linear`` layers (the reference's
    ``SingleVisualizationModel(units=hidden, hidden_layer=depth)``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: int = DEFAULT_HIDDEN,
        depth: int = DEFAULT_DEPTH,
        epochs: int = 0,
    ) -> None:
        super().__init__()
        self.input_dim = _check_positive_int("input_dim", input_dim, 1)
        self.hidden = _check_positive_int("hidden", hidden, 1)
        self.depth = _check_positive_int("depth", depth, 0)
        inner = [hidden] * (depth + 1)
        self.encoder = _mlp([input_dim, *inner, EMBEDDING_DIM])
        self.decoder = _mlp([EMBEDDING_DIM, *inner, input_dim])
        self.epochs = 0
        self.epoch_bias: nn.Parameter | None = None
        self.add_epoch_bias(epochs)

    def add_epoch_bias(self, epochs: int) -> None:
        """Give the decoder one bias per fitted epoch (index ``0 .. epochs - 1``), added to its
        first layer's output: ``ψ(y, e)`` can then decode one 2-D point to different features
        at different epochs, which a layout moved away from the encoder needs (refinement).
        Zero at the start (ψ unchanged); 0 epochs: none. Replaces any previous biases."""
        self.epochs = _check_positive_int("epochs", epochs, 0)
        if epochs:
            weight = self.decoder[0].weight
            self.epoch_bias = nn.Parameter(
                torch.zeros(epochs, self.hidden, dtype=weight.dtype, device=weight.device)
            )
        else:
            self.epoch_bias = None

    def encode(self, x: Tensor) -> Tensor:
        """φ: features [n, input_dim] → embedding [n, 2]."""
        return self.encoder(x)

    def decode(self, y: Tensor, epoch: Tensor | int | None = None) -> Tensor:
        """ψ: embedding [n, 2] → features [n, input_dim].

        ``epoch``: the fitted-epoch index (an int, or int64 [n]) whose bias the decoder adds
        when it has per-epoch biases (:meth:`add_epoch_bias`); otherwise ignored. An int is
        range-checked here; an index tensor is the caller's to check once (as
        :func:`~timevis_cli.fit.trainer.fit_decoder` does), not on every batch (a device sync).
        """
        if epoch is None or self.epoch_bias is None:
            return self.decoder(y)
        if isinstance(epoch, Tensor) and epoch.ndim:
            # an embedding lookup: its gradient sums each epoch's rows in a fixed order (the
            # backward of ``epoch_bias[epoch]`` adds them from several CPU threads at once)
            bias = nn.functional.embedding(epoch, self.epoch_bias)
        else:
            epoch = operator.index(epoch)
            if not 0 <= epoch < self.epochs:
                raise InputError(
                    f"epoch index {epoch} is outside the decoder's 0..{self.epochs - 1}; pass the "
                    "position of a fitted epoch (FitModel.inverse_transform maps epoch numbers)"
                )
            bias = self.epoch_bias[epoch]
        return self.decoder[1:](self.decoder[0](y) + bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(φ(x), ψ(φ(x)))``: embedding [n, 2] and reconstruction [n, input_dim]."""
        embedding = self.encoder(x)
        return embedding, self.decoder(embedding)

    def config(self) -> dict[str, int]:
        """The constructor arguments, as plain ints (``epochs``: the decoder's per-epoch biases)."""
        return {
            "input_dim": self.input_dim,
            "hidden": self.hidden,
            "depth": self.depth,
            "epochs": self.epochs,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Projector:
        """A fresh (untrained) projector from :meth:`config`'s dict; unknown keys are refused."""
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        missing = sorted(set(_CONFIG_KEYS[:1]) - set(config))
        if unknown or missing:
            raise InputError(
                f"projector config has unknown keys {unknown} / lacks {missing}; "
                f"expected {list(_CONFIG_KEYS)}"
            )
        return cls(**{key: config[key] for key in config})

    def checkpoint(self) -> dict[str, Any]:
        """``{"config": ..., "state_dict": ...}`` (tensors on the CPU), for ``torch.save``."""
        state = {key: value.detach().cpu() for key, value in self.state_dict().items()}
        return {"config": self.config(), "state_dict": state}

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Mapping[str, Any], map_location: torch.device | str | None = None
    ) -> Projector:
        """Rebuild a projector from :meth:`checkpoint`'s dict (e.g. ``torch.load(weights_only=True)``)."""
        if not isinstance(checkpoint, Mapping) or {"config", "state_dict"} - set(checkpoint):
            keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
            raise InputError(f"a projector checkpoint needs 'config' and 'state_dict', got {keys}")
        projector = cls.from_config(checkpoint["config"])
        projector.load_state_dict(checkpoint["state_dict"])
        if map_location is not None:
            projector.to(map_location)
        return projector

    @torch.no_grad()
    def init_pca(
        self,
        features: Tensor,
        scale: float = 1.0,
        max_samples: int = 20_000,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Start from (close to) PCA: refit the last layer of each half by least squares.

        The encoder's last ``Linear`` is set so that φ(x) ≈ the first two principal coordinates
        of ``features`` [n, input_dim] (centred, scaled so the first has standard deviation
        ``scale``), from the current (random) hidden activations; the decoder's last ``Linear``
        so that ψ(those coordinates) ≈ x. At most ``max_samples`` rows (drawn with
        ``generator``) enter the fits. Returns the PCA target [m, 2] of the rows used. The
        other layers keep their initialisation. Float64 on the features' device.
        """
        if features.ndim != 2 or features.shape[1] != self.input_dim or features.shape[0] < 3:
            raise InputError(
                f"features must have shape (n >= 3, {self.input_dim}), got {tuple(features.shape)}"
            )
        if features.shape[0] > max_samples:
            device = generator.device if generator is not None else features.device
            rows = torch.randperm(features.shape[0], generator=generator, device=device)
            features = features[rows[:max_samples].to(features.device)]
        x = features.to(torch.float64)
        centred = x - x.mean(dim=0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        target = centred @ vh[:EMBEDDING_DIM].T
        target = target * (scale / target[:, 0].std().clamp(min=1e-12))
        encoder64 = _double_copy(self.encoder, x.device)
        decoder64 = _double_copy(self.decoder, x.device)
        _ridge_fit(self.encoder[-1], encoder64[:-1](x), target)
        _ridge_fit(self.decoder[-1], decoder64[:-1](target), x)
        logger.debug("PCA initialisation on %d rows", x.shape[0])
        return target


def _double_copy(module: nn.Sequential, device: torch.device) -> nn.Sequential:
    """A float64 copy of ``module`` on ``device`` (the original keeps its dtype and device)."""
    copy = _mlp(
        [module[0].in_features] + [m.out_features for m in module if isinstance(m, nn.Linear)]
    )
    copy.load_state_dict(module.state_dict())
    return copy.to(device=device, dtype=torch.float64)
