"""Find the feature layer and the head of a model, and capture features with a forward hook.

The head is found by running the model once on a small batch and recording the order in which
leaf modules finish: the head is every leaf module that runs after the feature layer. It is then
described declaratively (:mod:`timevis_callback.head`) and checked numerically: the rebuilt head
applied to the captured features must reproduce the model's output, otherwise the forward pass
does work outside modules (``F.relu``, residual sums) and another ``feature_layer`` is needed.

A forward that returns more than the logits (a tuple, a dict, a ``ModelOutput``) is read through
:func:`select_logits`: the first item of a tuple or list, the ``"logits"`` entry of a mapping, or
what ``logits_key`` (an index, a key or attribute name, or a function) picks.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from timevis_callback.errors import CallbackConfigError
from timevis_callback.head import Head, param_names

log = logging.getLogger(__name__)

AUTO = "auto"
LOGITS_FIX = (
    "pass logits_key= the index or key of the logits in forward's output (or a function "
    "output -> logits)"
)

#: where the logits are in forward's output: None (the output itself, a tuple or list's first
#: item, a mapping's "logits"), an index, a key or attribute name, or a function output -> logits
LogitsKey = int | str | Callable[[Any], Any] | None


@dataclasses.dataclass(frozen=True)
class HeadInfo:
    """The resolved feature layer and the head that maps its output to the logits."""

    feature_layer: str  # module name; for "auto", the name of the last Linear
    from_input: bool  # True: features are the INPUT of feature_layer (auto), else its output
    head_modules: tuple[tuple[str, nn.Module], ...]  # (qualified name, module) in order
    spec: list[dict[str, Any]]
    feature_dim: int
    num_classes: int
    #: where the logits were taken from (":func:`select_logits`"), for messages
    logits_from: str = "forward's output"


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


def select_logits(output: Any, logits_key: LogitsKey = None) -> Any:
    """The logits in what the model's forward returned (see :data:`LogitsKey`).

    Raises CallbackConfigError naming ``logits_key`` when the key does not fit the output, or
    when a mapping output has no ``"logits"`` entry and no key was given. What it returns is
    checked by the caller (a tensor of shape (batch, num_classes)).
    """
    if logits_key is None:
        if isinstance(output, Mapping):
            if "logits" in output:
                return output["logits"]
            raise CallbackConfigError(
                f"the model's forward returned a {type(output).__name__} without a 'logits' "
                f"entry (keys: {_keys(output)}); pass logits_key= the key of the logits"
            )
        if isinstance(output, (tuple, list)) and output:
            return output[0]
        return output
    if callable(logits_key):
        return logits_key(output)
    if isinstance(logits_key, str):
        if isinstance(output, Mapping):
            if logits_key in output:
                return output[logits_key]
            raise CallbackConfigError(
                f"logits_key={logits_key!r} is not a key of the {type(output).__name__} that "
                f"forward returns (keys: {_keys(output)}); pass one of them"
            )
        if hasattr(output, logits_key):
            return getattr(output, logits_key)
        raise CallbackConfigError(
            f"logits_key={logits_key!r} names a key, but forward returns a "
            f"{type(output).__name__} without that attribute; {LOGITS_FIX}"
        )
    if isinstance(output, (tuple, list)):
        if -len(output) <= logits_key < len(output):
            return output[logits_key]
        raise CallbackConfigError(
            f"logits_key={logits_key} is out of range: forward returns a {type(output).__name__} "
            f"of {len(output)} items; pass an index in [0, {len(output)})"
        )
    raise CallbackConfigError(
        f"logits_key={logits_key} is an index, but forward returns a {type(output).__name__}, "
        f"not a tuple or list; {LOGITS_FIX}"
    )


def _keys(output: Mapping[Any, Any]) -> str:
    keys = [repr(k) for k in output]
    return ", ".join(keys[:10]) + (f" (first 10 of {len(keys)})" if len(keys) > 10 else "")


def _where(output: Any, logits_key: LogitsKey) -> str:
    """Where :func:`select_logits` took the logits from, for messages."""
    if logits_key is None:
        if isinstance(output, Mapping):
            return "forward's output['logits']"
        if isinstance(output, (tuple, list)) and output:
            return f"item 0 of the {type(output).__name__} forward returns"
        return "forward's output"
    if callable(logits_key):
        return f"logits_key={getattr(logits_key, '__name__', logits_key)!s}(forward's output)"
    return f"logits_key={logits_key!r} of forward's output"


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
    shown = close or candidates[-10:]
    more = "" if close or len(candidates) <= 10 else f" (last 10 of {len(candidates)})"
    return f"{'did you mean' if close else 'candidates'}: {', '.join(shown)}{more}"


def resolve_head(
    model: nn.Module,
    feature_layer: str,
    run_forward: Callable[[], Any],
    logits_key: LogitsKey = None,
) -> HeadInfo:
    """Trace one forward pass (``run_forward``, returning the model's output) and resolve the
    feature layer and its head.

    The logits are taken from the output by :func:`select_logits`. Under "auto" the features
    are the input of the ``nn.Linear`` whose output the logits are (so a Linear of an auxiliary
    output that runs after the classifier is not taken), else of the last ``nn.Linear`` to run.

    Raises CallbackConfigError naming the problem and the fix for an unknown layer name, a model
    without ``nn.Linear`` under "auto", an output without (batch, num_classes) logits where
    ``logits_key`` points, a head outside the declarative set, a head that does not reproduce
    the model's output, or a forward that returns (log-)probabilities. Warns when "auto" finds a
    Linear after the classifier (its input are class scores, not features).
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
    trace = _Trace(named, feature_layer)
    try:
        output = run_forward()
    finally:
        trace.remove()
    logits = select_logits(output, logits_key)
    where = _where(output, logits_key)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = type(logits).__name__ + (
            str(tuple(logits.shape)) if isinstance(logits, torch.Tensor) else ""
        )
        fix = (
            LOGITS_FIX
            if logits_key is not None or where != "forward's output"
            else "return them from LightningModule.forward (or pass logits_key= to pick them "
            "from a tuple or dict output)"
        )
        raise CallbackConfigError(
            f"{where} is {got}, not logits of shape (batch, num_classes); {fix}"
        )
    linears = [n for n in trace.order if isinstance(named[n], nn.Linear)]
    if feature_layer == AUTO:
        if not linears:
            raise CallbackConfigError(
                f"no nn.Linear of {type(model).__name__} ran in forward; pass feature_layer= the "
                "name of the module whose output feeds the classifier"
            )
        info, features = trace.head(_auto_layer(trace, linears, logits), True, logits)
    else:
        if feature_layer not in trace.outputs:
            raise CallbackConfigError(
                f"feature_layer={feature_layer!r} did not run (or returned no tensor) in forward; "
                + _suggest(feature_layer, [n for n in trace.order if n in trace.outputs])
            )
        info, features = trace.head(feature_layer, from_input=False, logits=logits)
    error = _head_error(info, features, logits)
    if error is not None:
        advice = _mismatch_advice(feature_layer, info, error, logits, trace, linears)
        if where != "forward's output" and logits_key is None:
            advice += f"; the logits were taken from {where}: if they are elsewhere, {LOGITS_FIX}"
        raise CallbackConfigError(advice)
    info = dataclasses.replace(info, logits_from=where)
    if feature_layer == AUTO:
        _warn_if_after_the_classifier(info, trace, linears, logits)
    log.info(
        "timevis: features = %s of %r (dim %d); head = %s",
        "input" if info.from_input else "output",
        info.feature_layer,
        info.feature_dim,
        " -> ".join(layer_["type"] for layer_ in info.spec),
    )
    return info


def _auto_layer(trace: _Trace, linears: list[str], logits: torch.Tensor) -> str:
    """The Linear "auto" takes the input of: the last that output the logits, else the last."""
    classifiers = [n for n in trace.makers(logits) if n in linears]
    return max(classifiers, key=trace.order.index) if classifiers else linears[-1]


class _Trace:
    """The order in which leaf modules (and the named feature layer) finish in one forward
    pass, with their first input and output; every module's output, for naming a module that
    produced a tensor."""

    def __init__(self, named: dict[str, nn.Module], feature_layer: str) -> None:
        self.named = named
        self.order: list[str] = []
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.any_outputs: dict[str, torch.Tensor] = {}  # containers too
        self._handles = []
        for name, module in named.items():
            if not name:
                continue
            traced = not list(module.children()) or name == feature_layer
            self._handles.append(module.register_forward_hook(self._hook(name, traced)))

    def _hook(self, name: str, traced: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.any_outputs.setdefault(name, output.detach())
            if not traced:
                return
            self.order.append(name)
            if args and isinstance(args[0], torch.Tensor):
                self.inputs.setdefault(name, args[0].detach())
            if isinstance(output, torch.Tensor):
                self.outputs.setdefault(name, output.detach())

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def head(
        self, layer: str, from_input: bool, logits: torch.Tensor
    ) -> tuple[HeadInfo, torch.Tensor]:
        """The head of features taken at ``layer`` (its input or output), and those features.

        The head is every leaf module that ran after ``layer``, up to the module whose output
        the logits are when there is one (modules of other outputs, e.g. an auxiliary head that
        runs after the classifier, are not part of it)."""
        end = self.end_of(logits)
        if from_input:
            position = self.order.index(layer)
            head_names = self.order[position:end]
            features = self.inputs[layer]
        else:
            features = self.outputs.get(layer, self.any_outputs[layer])
            # a container (untraced) ends where the traced module that made its output ends
            position = self.order.index(layer if layer in self.order else self.last_maker(features))
            head_names = [
                n for n in self.order[position + 1 : end] if not list(self.named[n].children())
            ]
        repeated = sorted({n for n in (layer, *head_names) if self.order.count(n) > 1})
        if repeated:
            raise CallbackConfigError(
                f"modules {repeated} run more than once per forward pass, so the head cannot be "
                "rebuilt from modules; pass feature_layer= a module after them"
            )
        features = features.reshape(features.shape[0], -1)
        modules = tuple((n, self.named[n]) for n in head_names)
        spec = [describe_layer(n, m) for n, m in modules] or [{"type": "Identity", "name": ""}]
        info = HeadInfo(
            feature_layer=layer,
            from_input=from_input,
            head_modules=modules,
            spec=spec,
            feature_dim=int(features.shape[1]),
            num_classes=int(logits.shape[1]),
        )
        return info, features

    def end_of(self, logits: torch.Tensor) -> int | None:
        """One past the last run of the traced module whose output the logits are (None: no
        traced module made them, so the head runs to the end of the forward pass)."""
        ends = [len(self.order) - self.order[::-1].index(n) for n in self.makers(logits)]
        return max(ends) if ends else None

    def makers(self, tensor: torch.Tensor, traced: bool = True) -> list[str]:
        """The modules whose output is ``tensor`` (traced ones only, or containers too)."""
        outputs = self.outputs if traced else self.any_outputs
        return [
            name
            for name, out in outputs.items()
            if out.data_ptr() == tensor.data_ptr() and out.shape == tensor.shape
        ]

    def producer(self, tensor: torch.Tensor) -> str | None:
        """The outermost module (fewest dots in its name) whose output is ``tensor``."""
        makers = self.makers(tensor, traced=False)
        return min(makers, key=lambda n: n.count(".")) if makers else None

    def last_maker(self, tensor: torch.Tensor) -> str:
        """The traced module whose output is ``tensor`` and that finished last."""
        makers = self.makers(tensor, traced=True)
        if not makers:
            raise CallbackConfigError("no traced module produced this tensor")
        return max(makers, key=self.order.index)


def _head_error(info: HeadInfo, features: torch.Tensor, logits: torch.Tensor) -> float | None:
    """None when the rebuilt head reproduces the model's output, else the largest error."""
    head = Head(info.spec, head_state(info.spec, info.head_modules))
    try:
        rebuilt = head(features.float().cpu().numpy())
    except ValueError:  # its layers' shapes do not chain: not the model's head
        return math.inf
    expected = logits.detach().float().cpu().numpy()
    if rebuilt.shape != expected.shape:
        return math.inf  # e.g. the head of another output's Linear
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(rebuilt - expected).max())
    # half-precision models differ from the float64 rebuild by their own rounding
    tolerance = scale * (5e-2 if features.dtype in (torch.float16, torch.bfloat16) else 1e-3)
    return None if error <= tolerance else error


def _shown(error: float) -> str:
    return "it does not compute the output's shape" if math.isinf(error) else f"max error {error:.3g}"


def _probabilities(logits: torch.Tensor) -> str | None:
    """"log_softmax" or "softmax" when the model's output rows are (log-)probabilities."""
    out = logits.detach().double().cpu()
    if out.shape[1] < 2 or not torch.isfinite(out).all():
        return None
    ones = torch.ones(len(out), dtype=out.dtype)
    if (out <= 1e-6).all() and torch.allclose(out.exp().sum(1), ones, atol=1e-3):
        return "log_softmax"
    if (out >= 0).all() and torch.allclose(out.sum(1), ones, atol=1e-3):
        return "softmax"
    return None


def _mismatch_advice(
    feature_layer: str,
    info: HeadInfo,
    error: float,
    logits: torch.Tensor,
    trace: _Trace,
    linears: list[str],
) -> str:
    """Why the rebuilt head does not reproduce the model's output, and a fix that is not the
    setting already in use."""
    probabilities = _probabilities(logits)
    if probabilities:
        kind = "log-probabilities" if probabilities == "log_softmax" else "probabilities"
        return (
            f"the model's forward returns {kind} (each output row is a {probabilities}), not "
            "logits, so no feature_layer reproduces it with a head of modules; return the "
            f"logits from forward and apply {probabilities} where it is needed (F.cross_entropy "
            "takes logits; predictions are logits.argmax(1))"
        )
    names = ", ".join(n for n, _ in info.head_modules) or "none"
    if feature_layer == AUTO:
        last = info.feature_layer
        return (
            f"the head found by feature_layer='auto' ({names}, from the input of {last!r}) does "
            f"not reproduce the model's output ({_shown(error)}): forward changes the "
            f"output of {last!r} outside modules (an F.* call, a scaling, a residual sum); make "
            "that work a module of the supported set (nn.ReLU for F.relu, ...) or move it out "
            f"of forward, so that forward returns what {last!r} computes"
        )
    where = (
        f"the modules after feature_layer={feature_layer!r} ({names}) do not reproduce the "
        f"model's output ({_shown(error)}): forward does work outside modules after "
        f"{feature_layer!r} (an F.* call, a scaling, a residual sum)"
    )
    if linears:
        auto_layer = _auto_layer(trace, linears, logits)
        try:
            auto, features = trace.head(auto_layer, from_input=True, logits=logits)
            if _head_error(auto, features, logits) is None:
                return (
                    f"{where}; use feature_layer='auto' (the input of {auto_layer!r}, which "
                    "reproduces it)"
                )
        except CallbackConfigError:
            pass  # auto's head is not declarative either: the general advice below
    return (
        f"{where}; pass feature_layer= a module after that work, or make the work a module of "
        "the supported set (nn.ReLU for F.relu, ...)"
    )


def _warn_if_after_the_classifier(
    info: HeadInfo, trace: _Trace, linears: list[str], logits: torch.Tensor
) -> None:
    """Warn when "auto" took the input of a Linear whose input is, unchanged, the output of
    another Linear with at most as many outputs as there are classes: those are class scores
    (a Linear after the classifier), not the penultimate features. A hidden layer with an
    activation before the last Linear is not warned about."""
    last = info.feature_layer
    position = trace.order.index(last)
    earlier = [n for n in trace.order[:position] if isinstance(trace.named[n], nn.Linear)]
    if not earlier or info.feature_dim > info.num_classes:
        return
    classifier = earlier[-1]
    between = trace.order[trace.order.index(classifier) + 1 : position]
    if any(not isinstance(trace.named[n], (nn.Dropout, nn.Identity)) for n in between):
        return
    if classifier not in trace.makers(trace.inputs[last]):
        return  # an F.* call between them: the input of the last Linear is another tensor
    feeder = trace.producer(trace.inputs[classifier]) if classifier in trace.inputs else None
    fix = "pass feature_layer= the name of the module whose output feeds it"
    if feeder is not None:
        try:
            candidate, features = trace.head(feeder, from_input=False, logits=logits)
            if _head_error(candidate, features, logits) is None:
                fix = (
                    f"pass feature_layer={feeder!r} (its output feeds {classifier!r}; dim "
                    f"{candidate.feature_dim}) to record the features before the classifier"
                )
        except CallbackConfigError:
            pass  # that module's head is not declarative: the general advice
    log.warning(
        "timevis: feature_layer='auto' took the input of %r, the last nn.Linear, which is the "
        "output of the Linear %r (%d values, no more than the %d classes): %r follows the "
        "classifier, so the recorded features are class scores; %s",
        last,
        classifier,
        info.feature_dim,
        info.num_classes,
        last,
        fix,
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
