"""Tests of feature-layer resolution, head extraction and the feature hook (plain nn.Modules)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timevis_callback.capture import (
    AUTO,
    capture_features,
    head_state,
    resolve_head,
    select_logits,
)
from timevis_callback.errors import CallbackConfigError
from timevis_callback.head import Head

N, D_IN, HIDDEN, N_CLASSES = 16, 8, 12, 5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class MLP(nn.Module):
    """body (Linear-ReLU-Linear-ReLU) -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()
        )
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class MLPHead(nn.Module):
    """body -> classifier (Linear-ReLU-Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.Tanh())
        self.classifier = nn.Sequential(
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class SmallCNN(nn.Module):
    """conv -> ReLU -> pool (N, C, 1, 1) -> Flatten -> fc."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.act(self.conv(x)))))


def inputs(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def rebuilt_logits(model: nn.Module, info, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(logits of the model, logits of the rebuilt head on the captured features)."""
    module = dict(model.named_modules())[info.feature_layer]
    with torch.no_grad(), capture_features(module, info.from_input) as captured:
        logits = model(x)
    assert len(captured) == 1
    features = captured[0].numpy()
    assert features.shape == (len(x), info.feature_dim)
    head = Head(info.spec, head_state(info.spec, info.head_modules))
    return logits.numpy(), head(features)


def assert_no_hooks(model: nn.Module) -> None:
    assert all(not m._forward_hooks for m in model.modules())


def resolve(model: nn.Module, feature_layer: str, x: torch.Tensor):
    with torch.no_grad():
        return resolve_head(model, feature_layer, lambda: model(x))


def test_auto_finds_the_input_of_the_last_linear() -> None:
    model = MLP().eval()
    x = inputs(N, D_IN)
    info = resolve(model, AUTO, x)
    assert info.feature_layer == "fc" and info.from_input
    assert info.feature_dim == HIDDEN and info.num_classes == N_CLASSES
    assert [t["type"] for t in info.spec] == ["Linear"]
    assert [name for name, _ in info.head_modules] == ["fc"]
    assert info.head_modules[0][1] is model.fc
    expected, got = rebuilt_logits(model, info, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert_no_hooks(model)


def test_named_feature_layer_with_mlp_head() -> None:
    model = MLPHead().eval()
    x = inputs(N, D_IN)
    info = resolve(model, "body", x)
    assert info.feature_layer == "body" and not info.from_input
    assert [t["type"] for t in info.spec] == ["Linear", "ReLU", "Linear"]
    assert [name for name, _ in info.head_modules] == [
        "classifier.0",
        "classifier.1",
        "classifier.2",
    ]
    assert info.feature_dim == HIDDEN
    expected, got = rebuilt_logits(model, info, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # a leaf module as the feature layer works too
    leaf = resolve(model, "body.1", x)
    assert [t["type"] for t in leaf.spec] == ["Linear", "ReLU", "Linear"]
    # under auto only the last Linear is the head
    auto = resolve(model, AUTO, x)
    assert auto.feature_layer == "classifier.2" and [t["type"] for t in auto.spec] == ["Linear"]
    assert_no_hooks(model)


def test_pooling_layer_as_feature_layer() -> None:
    model = SmallCNN(channels=6).eval()
    x = inputs(N, 1, 8, 8)
    info = resolve(model, "pool", x)
    assert not info.from_input
    assert info.feature_dim == 6  # (N, 6, 1, 1) flattened
    assert [t["type"] for t in info.spec] == ["Flatten", "Linear"]
    expected, got = rebuilt_logits(model, info, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert_no_hooks(model)


def test_unknown_name_suggests_close_names() -> None:
    model = SmallCNN().eval()
    with pytest.raises(CallbackConfigError, match="feature_layer='pol' is not a module") as info:
        resolve(model, "pol", inputs(2, 1, 8, 8))
    assert "did you mean" in str(info.value) and "pool" in str(info.value)
    assert_no_hooks(model)


def test_auto_without_linear_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, N_CLASSES, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(CallbackConfigError, match="no nn.Linear") as info:
        resolve(model, AUTO, inputs(2, 1, 8, 8))
    assert "feature_layer=" in str(info.value)


def test_head_with_softmax_is_refused() -> None:
    model = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 3), nn.Softmax(1))
    with pytest.raises(CallbackConfigError, match="Softmax") as info:
        resolve(model.eval(), AUTO, inputs(4, D_IN))
    assert "'3'" in str(info.value) and "feature_layer" in str(info.value)
    assert_no_hooks(model)


class FunctionalReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D_IN, HIDDEN)
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.proj(x)))


def test_work_outside_modules_is_refused() -> None:
    model = FunctionalReLU().eval()
    x = inputs(N, D_IN) * 3.0
    with pytest.raises(CallbackConfigError, match="do not reproduce") as info:
        resolve(model, "proj", x)
    assert "feature_layer='proj'" in str(info.value) and "fc" in str(info.value)
    # auto takes the input of fc, after F.relu, and works
    info_auto = resolve(model, AUTO, x)
    expected, got = rebuilt_logits(model, info_auto, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class ReusedInHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D_IN, HIDDEN)
        self.act = nn.Tanh()
        self.hidden = nn.Linear(HIDDEN, HIDDEN)
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.hidden(self.act(self.proj(x)))))


def test_module_called_twice_in_the_head_is_refused() -> None:
    model = ReusedInHead().eval()
    with pytest.raises(CallbackConfigError, match=r"modules \['act'\] run more than once"):
        resolve(model, "proj", inputs(4, D_IN))
    assert_no_hooks(model)


class ReusedInBackbone(nn.Module):
    """A backbone reusing one activation module (as torchvision's ResNet BasicBlock does)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(D_IN, HIDDEN)
        self.l2 = nn.Linear(HIDDEN, HIDDEN)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.l2(self.relu(self.l1(x)))))


def test_module_reused_before_the_feature_layer_is_accepted() -> None:
    model = ReusedInBackbone().eval()
    x = inputs(N, D_IN)
    info = resolve(model, AUTO, x)
    assert info.feature_layer == "fc"
    expected, got = rebuilt_logits(model, info, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_feature_layer_that_does_not_run_is_refused() -> None:
    model = MLP()
    model.unused = nn.Linear(HIDDEN, HIDDEN)
    with pytest.raises(CallbackConfigError, match="feature_layer='unused' did not run"):
        resolve(model.eval(), "unused", inputs(4, D_IN))
    assert_no_hooks(model)


def test_forward_without_2d_logits_is_refused() -> None:
    model = nn.Sequential(nn.Linear(D_IN, N_CLASSES), nn.Flatten(0)).eval()
    with pytest.raises(CallbackConfigError, match="logits of shape"):
        resolve(model, AUTO, inputs(4, D_IN))
    assert_no_hooks(model)


def test_resolve_head_removes_hooks_when_forward_raises() -> None:
    model = MLP()

    def failing_forward() -> torch.Tensor:
        model(inputs(2, D_IN))
        raise RuntimeError("data loading failed")

    with pytest.raises(RuntimeError, match="data loading failed"):
        resolve_head(model, AUTO, failing_forward)
    assert_no_hooks(model)


@pytest.mark.parametrize("from_input", [True, False])
def test_capture_features_collects_and_flattens(from_input: bool) -> None:
    model = SmallCNN(channels=4).eval()
    module = model.pool if not from_input else model.fc
    with torch.no_grad(), capture_features(module, from_input) as captured:
        model(inputs(3, 1, 8, 8))
        model(inputs(5, 1, 8, 8))
        assert len(module._forward_hooks) == 1
    assert [c.shape for c in captured] == [(3, 4), (5, 4)]
    assert not module._forward_hooks


def test_capture_features_removes_its_hook_when_the_block_raises() -> None:
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match="inside"):
        with capture_features(model.pool, from_input=False) as captured:
            model(inputs(2, 1, 8, 8))
            raise ValueError("inside")
    assert len(captured) == 1
    assert not model.pool._forward_hooks
    model(inputs(2, 1, 8, 8))
    assert len(captured) == 1  # nothing collected after the block


# --- advice that is correct for the model at hand ---------------------------------------------
class Probabilities(nn.Module):
    """MLP whose forward returns log_softmax (or softmax) of its logits."""

    def __init__(self, log: bool) -> None:
        super().__init__()
        self.log = log
        self.body = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU())
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.body(x))
        return F.log_softmax(logits, dim=1) if self.log else F.softmax(logits, dim=1)


@pytest.mark.parametrize("feature_layer", [AUTO, "body"])
@pytest.mark.parametrize(("log", "kind"), [(True, "log-probabilities"), (False, "probabilities")])
def test_forward_returning_probabilities_is_told_to_return_logits(feature_layer, log, kind) -> None:
    model = Probabilities(log).eval()
    with pytest.raises(CallbackConfigError) as info:
        resolve(model, feature_layer, inputs(N, D_IN))
    message = str(info.value)
    assert f"forward returns {kind}" in message and "return the logits from forward" in message
    assert "feature_layer='auto'" not in message  # no setting can fix it: none is suggested
    assert_no_hooks(model)


class Scaled(nn.Module):
    """MLP whose forward changes the last Linear's output outside modules."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU())
        self.fc = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)) * 3.0 + 1.0


def test_work_after_the_last_linear_under_auto_does_not_suggest_auto() -> None:
    with pytest.raises(CallbackConfigError) as info:
        resolve(Scaled().eval(), AUTO, inputs(N, D_IN))
    message = str(info.value)
    assert "use feature_layer='auto'" not in message
    assert "feature_layer='auto' (fc, from the input of 'fc')" in message
    assert "forward changes the output of 'fc' outside modules" in message
    assert "so that forward returns what 'fc' computes" in message


def test_work_after_a_named_layer_suggests_auto_only_when_it_reproduces() -> None:
    with pytest.raises(CallbackConfigError) as info:
        resolve(FunctionalReLU().eval(), "proj", inputs(N, D_IN) * 3.0)
    assert "use feature_layer='auto' (the input of 'fc', which reproduces it)" in str(info.value)
    with pytest.raises(CallbackConfigError) as info:
        resolve(Scaled().eval(), "body", inputs(N, D_IN))
    assert "feature_layer='auto'" not in str(info.value)
    assert "pass feature_layer= a module after that work" in str(info.value)


class ExtraLinear(nn.Module):
    """body -> fc (the classifier) -> extra Linear on the class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU())
        self.fc = nn.Linear(HIDDEN, N_CLASSES)
        self.extra = nn.Linear(N_CLASSES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(self.fc(self.body(x)))


def test_a_linear_after_the_classifier_is_warned_with_a_layer_that_works(caplog) -> None:
    model = ExtraLinear().eval()
    x = inputs(N, D_IN)
    with caplog.at_level("WARNING", logger="timevis_callback.capture"):
        info = resolve(model, AUTO, x)
    assert info.feature_layer == "extra" and info.feature_dim == N_CLASSES  # auto as documented
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'extra' follows the classifier, so the recorded features are class scores" in warnings[0]
    assert f"pass feature_layer='body' (its output feeds 'fc'; dim {HIDDEN})" in warnings[0]
    # the advice works: the features before the classifier, and a head that reproduces
    better = resolve(model, "body", x)
    assert better.feature_dim == HIDDEN
    expected, got = rebuilt_logits(model, better, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # a hidden layer narrower than the classes, with an activation before the classifier, is
    # a layer of features: not warned about
    caplog.clear()
    narrow = nn.Sequential(nn.Linear(D_IN, 3), nn.ReLU(inplace=True), nn.Linear(3, N_CLASSES))
    with caplog.at_level("WARNING", logger="timevis_callback.capture"):
        assert resolve(narrow.eval(), AUTO, x).feature_dim == 3
    assert not caplog.records


# --- forward outputs that hold more than the logits -------------------------------------------
class Outputs(nn.Module):
    """body -> fc (the classifier), and an auxiliary Linear on the body that runs AFTER fc (so
    it is the last Linear to run); forward returns both in the container ``kind`` asks for."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU())
        self.fc = nn.Linear(HIDDEN, N_CLASSES)
        self.aux = nn.Linear(HIDDEN, 3)

    def forward(self, x: torch.Tensor):
        h = self.body(x)
        logits = self.fc(h)
        aux = self.aux(h)
        return {
            "tuple": lambda: (logits, aux),
            "list": lambda: [logits, aux],
            "dict": lambda: {"aux": aux, "logits": logits},
            "aux-first": lambda: (aux, logits),
            "scores": lambda: {"aux": aux, "scores": logits},
            "object": lambda: SimpleNamespace(aux=aux, scores=logits),
            "tensor": lambda: logits,
        }[self.kind]()


def assert_head_is_the_classifier(model: Outputs, info, x: torch.Tensor, logits_key=None) -> None:
    assert info.feature_layer == "fc" and info.from_input
    assert [name for name, _ in info.head_modules] == ["fc"]  # not the auxiliary Linear
    assert info.feature_dim == HIDDEN and info.num_classes == N_CLASSES
    with torch.no_grad(), capture_features(model.fc, True) as captured:
        logits = select_logits(model(x), logits_key)
    head = Head(info.spec, head_state(info.spec, info.head_modules))
    np.testing.assert_allclose(head(captured[0].numpy()), logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("tuple", "item 0 of the tuple forward returns"),
        ("list", "item 0 of the list forward returns"),
        ("dict", "forward's output['logits']"),
        ("tensor", "forward's output"),
    ],
)
def test_logits_are_found_in_a_tuple_list_or_dict_output(kind: str, where: str) -> None:
    model = Outputs(kind).eval()
    x = inputs(N, D_IN)
    with torch.no_grad():
        info = resolve_head(model, AUTO, lambda: model(x))
    assert_head_is_the_classifier(model, info, x)
    assert info.logits_from == where
    assert_no_hooks(model)


@pytest.mark.parametrize(
    ("kind", "logits_key"),
    [("aux-first", 1), ("aux-first", -1), ("scores", "scores"), ("object", "scores")],
)
def test_logits_key_picks_the_logits(kind: str, logits_key) -> None:
    model = Outputs(kind).eval()
    x = inputs(N, D_IN)
    with torch.no_grad():
        info = resolve_head(model, AUTO, lambda: model(x), logits_key)
    assert_head_is_the_classifier(model, info, x, logits_key)
    assert info.logits_from == f"logits_key={logits_key!r} of forward's output"


def test_logits_key_function_picks_the_logits() -> None:
    model = Outputs("aux-first").eval()
    x = inputs(N, D_IN)

    def second(output):
        return output[1]

    with torch.no_grad():
        info = resolve_head(model, AUTO, lambda: model(x), second)
    assert_head_is_the_classifier(model, info, x, second)
    assert info.logits_from == "logits_key=second(forward's output)"


@pytest.mark.parametrize(
    ("kind", "logits_key", "message"),
    [
        (
            "scores",
            None,
            "the model's forward returned a dict without a 'logits' entry (keys: 'aux', "
            "'scores'); pass logits_key= the key of the logits",
        ),
        ("scores", "logit", "logits_key='logit' is not a key of the dict that forward returns"),
        ("tuple", 2, "logits_key=2 is out of range: forward returns a tuple of 2 items"),
        ("tensor", 0, "logits_key=0 is an index, but forward returns a Tensor, not a tuple"),
        ("object", "logits", "logits_key='logits' names a key, but forward returns a SimpleNamespace"),
        ("tuple", lambda out: out[0][:, 0], "is Tensor(16,), not logits of shape (batch, num_classes)"),
    ],
)
def test_logits_that_cannot_be_found_name_logits_key(kind: str, logits_key, message: str) -> None:
    model = Outputs(kind).eval()
    with pytest.raises(CallbackConfigError) as info:
        resolve(model, AUTO, inputs(N, D_IN)) if logits_key is None else resolve_head(
            model, AUTO, lambda: model(inputs(N, D_IN)), logits_key
        )
    text = str(info.value)
    assert message in text and "logits_key=" in text
    assert "\n" not in text
    assert_no_hooks(model)


def test_a_tuple_whose_first_item_is_not_logits_is_told_to_pass_logits_key() -> None:
    class FeaturesFirst(nn.Module):  # (features, logits): item 0 is taken, the head cannot be it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(D_IN, N_CLASSES)

        def forward(self, x: torch.Tensor):
            h = torch.tanh(x)
            return h, self.fc(h)

    with pytest.raises(CallbackConfigError) as info:
        resolve(FeaturesFirst().eval(), AUTO, inputs(N, D_IN))
    assert "the logits were taken from item 0 of the tuple forward returns: if they are " in str(
        info.value
    )
    assert "pass logits_key= the index or key of the logits" in str(info.value)


@pytest.mark.parametrize("logits_key", [1.5, True, "", ["logits"]])
def test_callback_refuses_a_logits_key_of_another_type(logits_key) -> None:
    from timevis_callback import TimeVisCallback

    with pytest.raises(CallbackConfigError, match=r"^logits_key=.* must be None .*an int index"):
        TimeVisCallback(logits_key=logits_key)
