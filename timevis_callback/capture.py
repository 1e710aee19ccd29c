"""Find the feature layer and the head of a model, and capture features with a forward hook.

The head is found by running the model once on a small batch and recording the order in which
leaf modules finish: the head is every leaf module that runs after the feature layer. It is then
described declaratively (:mod:`timevis_callback.head`) and checked numerically: the rebuilt head
applied to the captured features must reproduce the model's output, otherwise the forward pass
does work outside modules (``F.relu``, residual sums) and another ``feature_layer`` is needed.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from timevis_callback.errors import CallbackConfigError
from timevis_callback.head import Head, param_names

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class HeadInfo:
    """The resolved feature layer and the head that maps its output to the logits."""

    feature_layer: str  # module name; for "auto", the name of the last Linear
    from_input: bool  # True: features are the INPUT of feature_layer (auto), else its output
    head_modules: tuple[tuple[str, nn.Module], ...]  # (qualified name, module) in order
    spec: list[dict[str, Any]]
    feature_dim: int
    num_classes: int


def describe_layer(name: str, module: nn.Module) -> dict[str, Any]:
    """The declarative description of one head module; refuses modules outside the set."""
    if isinstance(module, nn.Linear):
        return {
            "type": "Linear",
            "name": name,
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.BatchNorm1d):
        if not module.track_running_stats:
            raise CallbackConfigError(
                f"head module {name!r} (BatchNorm1d) has track_running_stats=False, so its eval "
                "output depends on the batch; pick a feature_layer after it"
            )
        return {
            "type": "BatchNorm1d",
            "name": name,
            "num_features": module.num_features,
            "eps": module.eps,
            "affine": module.affine,
        }
    if isinstance(module, nn.GELU):
        return {"type": "GELU", "name": name, "approximate": module.approximate}
    if isinstance(module, nn.Flatten):
        return {"type": "Flatten", "name": name, "start_dim": module.start_dim, "end_dim": module.end_dim}
    if isinstance(module, nn.Dropout):
        return {"type": "Dropout", "name": name, "p": module.p}
    for kind in (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity):
        if type(module) is kind:
            return {"type": kind.__name__, "name": name}
    raise CallbackConfigError(
        f"head module {name!r} ({type(module).__name__}) runs after the feature layer but cannot be "
        "stored declaratively (supported: Linear, ReLU, GELU, Tanh, Sigmoid, Dropout, Flatten, "
        f"BatchNorm1d, Identity); pass feature_layer= the name of a module at or after {name!r}"
    )


def head_state(spec: list[dict[str, Any]], modules: tuple[tuple[str, nn.Module], ...]) -> dict[str, np.ndarray]:
    """The head's parameters as float32 arrays named as in the rebuilt Sequential's state_dict."""
    state: dict[str, np.ndarray] = {}
    wanted = set(param_names(spec))
    for i, (_, module) in enumerate(modules):
        for key, value in module.state_dict().items():
            name = f"{i}.{key}"
            if name in wanted:
                state[name] = value.detach().to(device="cpu", dtype=torch.float32).numpy()
    return state


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
    shown = close or candidates[-10:]
    more = "" if close or len(candidates) <= 10 else f" (last 10 of {len(candidates)})"
    return f"{'did you mean' if close else 'candidates'}: {', '.join(shown)}{more}"


def resolve_head(
    model: nn.Module, feature_layer: str, run_forward: Callable[[], torch.Tensor]
) -> HeadInfo:
    """Trace one forward pass (``run_forward``) and resolve the feature layer and its head.

    Raises CallbackConfigError naming the problem and the fix for an unknown layer name, a model
    without ``nn.Linear`` under "auto", a head outside the declarative set, or a head that does
    not reproduce the model's output.
    """
    named = dict(model.named_modules())
    if feature_layer != AUTO and feature_layer not in named:
        candidates = [n for n in named if n]
        raise CallbackConfigError(
            f"feature_layer={feature_layer!r} is not a module of {type(model).__name__}; "
            + _suggest(feature_layer, candidates)
        )
    if feature_layer == AUTO and not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise CallbackConfigError(
            f"{type(model).__name__} has no nn.Linear, so feature_layer='auto' finds no classifier "
            "head; pass feature_layer= the name of the module whose output feeds the classifier"
        )
    order: list[str] = []  # leaf modules and the named layer, in the order they FINISH
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            order.append(name)
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(name, args[0].detach())
            if isinstance(output, torch.Tensor):
                outputs.setdefault(name, output.detach())

        return hook

    for name, module in named.items():
        if name and (not list(module.children()) or name == feature_layer):
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        logits = run_forward()
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise CallbackConfigError(
            f"the model's forward returned {type(logits).__name__}"
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else ''}; TimeVisCallback "
            "needs logits of shape (batch, num_classes) from LightningModule.forward"
        )

    if feature_layer == AUTO:
        linears = [n for n in order if isinstance(named[n], nn.Linear)]
        if not linears:
            raise CallbackConfigError(
                f"no nn.Linear of {type(model).__name__} ran in forward; pass feature_layer= the "
                "name of the module whose output feeds the classifier"
            )
        layer = linears[-1]
        position = order.index(layer)
        head_names = order[position:]
        features = inputs[layer]
        from_input = True
    else:
        layer = feature_layer
        if layer not in outputs:
            raise CallbackConfigError(
                f"feature_layer={layer!r} did not run (or returned no tensor) in forward; "
                + _suggest(layer, [n for n in order if n in outputs])
            )
        position = order.index(layer)
        head_names = [n for n in order[position + 1 :] if not list(named[n].children())]
        features = outputs[layer]
        from_input = False

    repeated = sorted({n for n in (layer, *head_names) if order.count(n) > 1})
    if repeated:
        raise CallbackConfigError(
            f"modules {repeated} run more than once per forward pass, so the head cannot be "
            "rebuilt from modules; pass feature_layer= a module after them"
        )
    features = features.reshape(features.shape[0], -1)
    modules = tuple((n, named[n]) for n in head_names)
    spec = [describe_layer(n, m) for n, m in modules]
    if not spec:
        spec = [{"type": "Identity", "name": ""}]
    info = HeadInfo(
        feature_layer=layer,
        from_input=from_input,
        head_modules=modules,
        spec=spec,
        feature_dim=int(features.shape[1]),
        num_classes=int(logits.shape[1]),
    )
    _check_head(info, features, logits)
    log.info(
        "timevis: features = %s of %r (dim %d); head = %s",
        "input" if from_input else "output",
        layer,
        info.feature_dim,
        " -> ".join(layer_["type"] for layer_ in spec),
    )
    return info


def _check_head(info: HeadInfo, features: torch.Tensor, logits: torch.Tensor) -> None:
    """Refuse a head whose rebuilt form does not reproduce the model's logits."""
    head = Head(info.spec, head_state(info.spec, info.head_modules))
    rebuilt = head(features.float().cpu().numpy())
    expected = logits.detach().float().cpu().numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(rebuilt - expected).max())
    # half-precision models differ from the float64 rebuild by their own rounding
    tolerance = scale * (5e-2 if features.dtype in (torch.float16, torch.bfloat16) else 1e-3)
    if not error <= tolerance:
        names = [n for n, _ in info.head_modules]
        raise CallbackConfigError(
            f"the modules after feature_layer={info.feature_layer!r} ({', '.join(names) or 'none'}) "
            f"do not reproduce the model's output (max error {error:.3g}): forward does work "
            "outside these modules (F.relu, a residual sum, a reshape); use feature_layer='auto' "
            "(the input of the last nn.Linear) or name the module that feeds it"
        )


@contextmanager
def capture_features(module: nn.Module, from_input: bool) -> Iterator[list[torch.Tensor]]:
    """Collect the input (or output) of ``module`` for every forward pass inside the block.

    The hook exists only inside the block and is removed in ``finally``.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        value = args[0] if from_input else output
        captured.append(value.detach().reshape(value.shape[0], -1))

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
