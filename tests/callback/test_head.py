"""Tests of the declarative head: described from torch, rebuilt in numpy and back in torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from timevis_callback import schema
from timevis_callback.capture import describe_layer, head_state
from timevis_callback.errors import CallbackConfigError, StoreError
from timevis_callback.head import Head, param_names, parse_head_spec

D_IN, HIDDEN, N_CLASSES = 12, 10, 4


def random_batchnorm(num_features: int, generator: torch.Generator, affine: bool = True):
    bn = nn.BatchNorm1d(num_features, eps=1e-3, affine=affine)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(num_features, generator=generator) * 2.0)
        bn.running_var.copy_(torch.rand(num_features, generator=generator) * 3.0 + 0.2)
        if affine:
            bn.weight.copy_(torch.randn(num_features, generator=generator))
            bn.bias.copy_(torch.randn(num_features, generator=generator))
    return bn


def head_with(kind: str, generator: torch.Generator) -> nn.Sequential:
    """Linear(D_IN, HIDDEN) -> <the layer under test> -> Linear(HIDDEN, N_CLASSES)."""
    middle: dict[str, nn.Module] = {
        "Linear": nn.Linear(HIDDEN, HIDDEN, bias=False),
        "ReLU": nn.ReLU(),
        "GELU": nn.GELU(),
        "Tanh": nn.Tanh(),
        "Sigmoid": nn.Sigmoid(),
        "Dropout": nn.Dropout(0.7),
        "Flatten": nn.Flatten(),
        "BatchNorm1d": random_batchnorm(HIDDEN, generator),
        "Identity": nn.Identity(),
    }
    return nn.Sequential(nn.Linear(D_IN, HIDDEN), middle[kind], nn.Linear(HIDDEN, N_CLASSES))


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator))
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=generator))


def rebuild(module: nn.Sequential) -> Head:
    """Describe a torch Sequential as the callback does, round-trip it through JSON, rebuild it."""
    modules = tuple((f"head.{i}", m) for i, m in enumerate(module))
    spec = [describe_layer(name, m) for name, m in modules]
    state = head_state(spec, modules)
    assert sorted(state) == sorted(param_names(spec))
    assert all(v.dtype == np.float32 for v in state.values())
    return Head(parse_head_spec(json.dumps(spec)), state)


def check_equivalent(module: nn.Sequential, x: torch.Tensor) -> None:
    module = module.eval()
    with torch.no_grad():
        expected = module(x).numpy()
    head = rebuild(module)
    got = head(x.numpy())
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    rebuilt = head.to_torch()
    assert not rebuilt.training
    with torch.no_grad():
        again = rebuilt(x).numpy()
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", schema.HEAD_LAYER_TYPES)
def test_every_layer_type_round_trips(kind: str) -> None:
    generator = torch.Generator().manual_seed(7)
    module = head_with(kind, generator)
    randomise(module, generator)
    x = torch.randn(32, D_IN, generator=generator) * 2.0
    check_equivalent(module, x)


def test_layer_types_match_the_schema() -> None:
    # every supported type is exercised above, and describe_layer names it as in the schema
    generator = torch.Generator().manual_seed(0)
    for kind in schema.HEAD_LAYER_TYPES:
        assert describe_layer("m", head_with(kind, generator)[1])["type"] == kind


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_modes(approximate: str) -> None:
    generator = torch.Generator().manual_seed(1)
    module = nn.Sequential(
        nn.Linear(D_IN, HIDDEN), nn.GELU(approximate=approximate), nn.Linear(HIDDEN, N_CLASSES)
    )
    randomise(module, generator)
    assert describe_layer("g", module[1])["approximate"] == approximate
    check_equivalent(module, torch.randn(64, D_IN, generator=generator) * 3.0)


def test_gelu_modes_differ() -> None:
    # guards the test above: if both modes were computed alike, it could not tell them apart
    x = np.linspace(-3, 3, 13)[None, :].astype(np.float32)
    exact = Head([{"type": "GELU", "approximate": "none"}], {})(x)
    approx = Head([{"type": "GELU", "approximate": "tanh"}], {})(x)
    assert np.abs(exact - approx).max() > 1e-5
    np.testing.assert_allclose(exact, nn.GELU()(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_batchnorm_without_affine_and_linear_without_bias() -> None:
    generator = torch.Generator().manual_seed(2)
    module = nn.Sequential(
        nn.Linear(D_IN, HIDDEN, bias=False),
        random_batchnorm(HIDDEN, generator, affine=False),
        nn.Tanh(),
        nn.Linear(HIDDEN, N_CLASSES),
    )
    randomise(module, generator)
    spec = [describe_layer(str(i), m) for i, m in enumerate(module)]
    assert param_names(spec) == [
        "0.weight",
        "1.running_mean",
        "1.running_var",
        "3.weight",
        "3.bias",
    ]
    check_equivalent(module, torch.randn(16, D_IN, generator=generator))


def test_batchnorm_uses_running_stats_not_the_batch() -> None:
    generator = torch.Generator().manual_seed(3)
    module = nn.Sequential(random_batchnorm(HIDDEN, generator), nn.Linear(HIDDEN, N_CLASSES))
    x = torch.randn(8, HIDDEN, generator=generator) * 5 + 3
    head = rebuild(module.eval())
    # one row alone gives the same logits as inside the batch: running stats, eval mode
    np.testing.assert_allclose(head(x[:1].numpy()), head(x.numpy())[:1], rtol=1e-6)
    check_equivalent(module, x)


def test_flatten_of_image_shaped_features() -> None:
    generator = torch.Generator().manual_seed(4)
    module = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, N_CLASSES))
    randomise(module, generator)
    check_equivalent(module, torch.randn(5, 3, 2, 2, generator=generator))


def test_deep_head() -> None:
    generator = torch.Generator().manual_seed(5)
    module = nn.Sequential(
        nn.Flatten(),
        nn.Linear(D_IN, HIDDEN),
        random_batchnorm(HIDDEN, generator),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(HIDDEN, HIDDEN),
        nn.GELU(approximate="tanh"),
        nn.Linear(HIDDEN, N_CLASSES),
        nn.Sigmoid(),
    )
    randomise(module, generator)
    check_equivalent(module, torch.randn(20, D_IN, generator=generator))


# --- refusals -----------------------------------------------------------------------------


def test_parse_head_spec_accepts_json_and_lists() -> None:
    spec = [{"type": "Linear", "in_features": 3, "out_features": 2}]
    assert parse_head_spec(json.dumps(spec)) == spec
    assert parse_head_spec(spec) == spec


@pytest.mark.parametrize("spec", ["[]", [], "{}", '"Linear"'])
def test_parse_head_spec_refuses_empty(spec) -> None:
    with pytest.raises(StoreError, match="non-empty JSON list"):
        parse_head_spec(spec)


@pytest.mark.parametrize("layer", [{"type": "Softmax"}, {"type": "LeakyReLU"}, {}, "Linear"])
def test_parse_head_spec_refuses_unknown_types(layer) -> None:
    spec = json.dumps([{"type": "Linear", "in_features": 3, "out_features": 2}, layer])
    with pytest.raises(StoreError, match="layer 1 has type") as info:
        parse_head_spec(spec)
    assert "supported: Linear, ReLU" in str(info.value)


def test_head_refuses_missing_parameter() -> None:
    spec = [
        {"type": "Linear", "in_features": 3, "out_features": 2},
        {"type": "BatchNorm1d", "num_features": 2},
    ]
    state = {
        "0.weight": np.ones((2, 3)),
        "0.bias": np.zeros(2),
        "1.weight": np.ones(2),
        "1.bias": np.zeros(2),
        "1.running_mean": np.zeros(2),
    }
    with pytest.raises(StoreError, match=r"\['1.running_var'\] are missing"):
        Head(spec, state)
    state["1.running_var"] = np.ones(2)
    assert Head(spec, state)(np.ones((1, 3))).shape == (1, 2)


@pytest.mark.parametrize("module", [nn.Softmax(dim=1), nn.LeakyReLU(), nn.Conv1d(1, 1, 1)])
def test_describe_layer_refuses_other_modules(module: nn.Module) -> None:
    with pytest.raises(CallbackConfigError) as info:
        describe_layer("classifier.3", module)
    message = str(info.value)
    assert "'classifier.3'" in message and type(module).__name__ in message
    assert "feature_layer" in message


def test_describe_layer_refuses_batchnorm_without_running_stats() -> None:
    with pytest.raises(CallbackConfigError, match="track_running_stats=False"):
        describe_layer("bn", nn.BatchNorm1d(4, track_running_stats=False))


def test_describe_layer_refuses_subclasses_of_simple_activations() -> None:
    class ShiftedReLU(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1.0

    with pytest.raises(CallbackConfigError, match="ShiftedReLU"):
        describe_layer("act", ShiftedReLU())
