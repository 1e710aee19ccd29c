"""The classifier head, rebuilt from its declarative description and arrays, without user code.

A head spec is a list of layer dicts, e.g.::

    [{"type": "Flatten", "start_dim": 1, "end_dim": -1},
     {"type": "Linear", "in_features": 512, "out_features": 10, "bias": true}]

Parameters are named as in the state_dict of ``torch.nn.Sequential`` built from the spec
(``"1.weight"``, ``"1.bias"``). :class:`Head` evaluates in numpy; :meth:`Head.to_torch`
builds the equivalent torch module (torch is imported only there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from timevis_callback.errors import StoreError
from timevis_callback.schema import HEAD_LAYER_TYPES

# Parameters and buffers each layer type carries (the others carry none).
_LAYER_PARAMS = {
    "Linear": ("weight", "bias"),
    "BatchNorm1d": ("weight", "bias", "running_mean", "running_var"),
}


def parse_head_spec(text: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate a head spec (JSON text or a list of dicts) and return it as a list of dicts."""
    spec = json.loads(text) if isinstance(text, str) else [dict(layer) for layer in text]
    if not isinstance(spec, list) or not spec:
        raise StoreError(f"head_spec={text!r} must be a non-empty JSON list of layers")
    for i, layer in enumerate(spec):
        kind = layer.get("type") if isinstance(layer, dict) else None
        if kind not in HEAD_LAYER_TYPES:
            raise StoreError(
                f"head_spec layer {i} has type {kind!r}; supported: {', '.join(HEAD_LAYER_TYPES)}"
            )
    return spec


def param_names(spec: Sequence[Mapping[str, Any]]) -> list[str]:
    """The state_dict names the head's arrays are stored under, in layer order."""
    names = []
    for i, layer in enumerate(spec):
        for p in _LAYER_PARAMS.get(layer["type"], ()):
            if p == "bias" and layer["type"] == "Linear" and not layer.get("bias", True):
                continue
            if layer["type"] == "BatchNorm1d" and p in ("weight", "bias") and not layer.get(
                "affine", True
            ):
                continue
            names.append(f"{i}.{p}")
    return names


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def param_shapes(
    spec: Sequence[Mapping[str, Any]], feature_dim: int, num_classes: int
) -> dict[str, tuple[int, ...]]:
    """The shape of every head parameter, after checking that the spec maps features
    [n, feature_dim] to logits [n, num_classes]: each layer's fields of the right type and
    range, and each layer's width that of the layer before it.

    Raises StoreError naming the layer and the field.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    width = feature_dim

    def field(
        i: int, layer: Mapping[str, Any], key: str, ok: Callable[[Any], bool], wanted: str,
        default: Any = None,
    ) -> Any:
        value = layer.get(key, default)
        if not ok(value):
            raise StoreError(
                f"head_spec layer {i} ({layer['type']}): {key}={value!r} must be {wanted}"
            )
        return value

    for i, layer in enumerate(spec):
        kind = layer["type"]

        if kind == "Linear":
            n_in = field(i, layer, "in_features", lambda v: _is_int(v) and v > 0, "an int > 0")
            n_out = field(i, layer, "out_features", lambda v: _is_int(v) and v > 0, "an int > 0")
            bias = field(i, layer, "bias", lambda v: isinstance(v, bool), "true or false", True)
            if n_in != width:
                raise StoreError(
                    f"head_spec layer {i} (Linear) takes in_features={n_in}, but its input has "
                    f"{width} values per sample (feature_dim={feature_dim})"
                )
            shapes[f"{i}.weight"] = (n_out, n_in)
            if bias:
                shapes[f"{i}.bias"] = (n_out,)
            width = n_out
        elif kind == "BatchNorm1d":
            n = field(i, layer, "num_features", lambda v: _is_int(v) and v > 0, "an int > 0")
            field(i, layer, "eps", lambda v: _is_number(v) and v > 0, "a number > 0", 1e-5)
            affine = field(i, layer, "affine", lambda v: isinstance(v, bool), "true or false", True)
            if n != width:
                raise StoreError(
                    f"head_spec layer {i} (BatchNorm1d) has num_features={n}, but its input has "
                    f"{width} values per sample"
                )
            names = ("running_mean", "running_var") + (("weight", "bias") if affine else ())
            shapes.update({f"{i}.{name}": (n,) for name in names})
        elif kind == "GELU":
            field(i, layer, "approximate", lambda v: v in ("none", "tanh"), "'none' or 'tanh'", "none")
        elif kind == "Dropout":
            field(i, layer, "p", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]", 0.5)
        elif kind == "Flatten":
            # features are [n, D]: only the Flatten that leaves them as they are is a head layer
            for key, default in (("start_dim", 1), ("end_dim", -1)):
                field(i, layer, key, lambda v: v in (1, -1) and not isinstance(v, bool), "1 or -1", default)
    if width != num_classes:
        raise StoreError(
            f"head_spec ends with {width} values per sample, but the run has num_classes="
            f"{num_classes}"
        )
    return shapes


def _erf(x: np.ndarray) -> np.ndarray:
    """Elementwise erf in float64 (numpy has none; torch, a base dependency, does)."""
    import torch

    return torch.erf(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


class Head:
    """A numpy callable computing logits [n, C] from features [n, D] for one epoch."""

    def __init__(self, spec: Sequence[Mapping[str, Any]], state: Mapping[str, np.ndarray]):
        self.spec = parse_head_spec(spec)
        missing = [n for n in param_names(self.spec) if n not in state]
        if missing:
            raise StoreError(f"head parameters {missing} are missing (present: {sorted(state)})")
        self.state = {k: np.asarray(v) for k, v in state.items()}

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Logits float32 [n, C] of features [n, D] (computed in float64)."""
        x = np.asarray(features, dtype=np.float64)
        for i, layer in enumerate(self.spec):
            x = self._apply(i, layer, x)
        return x.astype(np.float32)

    def _apply(self, i: int, layer: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
        kind = layer["type"]
        if kind == "Linear":
            x = x @ self.state[f"{i}.weight"].astype(np.float64).T
            if layer.get("bias", True):
                x = x + self.state[f"{i}.bias"].astype(np.float64)
            return x
        if kind == "ReLU":
            return np.maximum(x, 0.0)
        if kind == "GELU":
            if layer.get("approximate", "none") == "tanh":
                return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
            return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
        if kind == "Tanh":
            return np.tanh(x)
        if kind == "Sigmoid":
            return 1.0 / (1.0 + np.exp(-x))
        if kind == "Flatten":
            start, end = layer.get("start_dim", 1), layer.get("end_dim", -1)
            end = end % x.ndim
            return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])
        if kind == "BatchNorm1d":
            mean = self.state[f"{i}.running_mean"].astype(np.float64)
            var = self.state[f"{i}.running_var"].astype(np.float64)
            x = (x - mean) / np.sqrt(var + layer.get("eps", 1e-5))
            if layer.get("affine", True):
                x = x * self.state[f"{i}.weight"] + self.state[f"{i}.bias"]
            return x
        return x  # Dropout (eval) and Identity

    def to_torch(self) -> Any:
        """The equivalent ``torch.nn.Sequential`` in eval mode, float32, on the CPU."""
        import torch
        from torch import nn

        layers: list[nn.Module] = []
        for layer in self.spec:
            kind = layer["type"]
            if kind == "Linear":
                layers.append(
                    nn.Linear(layer["in_features"], layer["out_features"], bias=layer.get("bias", True))
                )
            elif kind == "GELU":
                layers.append(nn.GELU(approximate=layer.get("approximate", "none")))
            elif kind == "Flatten":
                layers.append(nn.Flatten(layer.get("start_dim", 1), layer.get("end_dim", -1)))
            elif kind == "BatchNorm1d":
                layers.append(
                    nn.BatchNorm1d(
                        layer["num_features"],
                        eps=layer.get("eps", 1e-5),
                        affine=layer.get("affine", True),
                    )
                )
            elif kind == "Dropout":
                layers.append(nn.Dropout(layer.get("p", 0.5)))
            else:
                layers.append(getattr(nn, kind)())
        module = nn.Sequential(*layers)
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in self.state.items()}
        module.load_state_dict(state, strict=False)
        return module.eval()
