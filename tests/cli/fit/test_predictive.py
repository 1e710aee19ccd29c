"""The decoder's prediction term: heads in torch, the margin hinge, and what it buys a decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timevis_callback.head import Head
from timevis_cli.errors import InputError
from timevis_cli.fit.predictive import (
    MARGIN_FRACTION,
    EpochHeads,
    PredictionTerm,
    margin_floor,
    prediction_hinge,
    prediction_targets,
)
from timevis_cli.fit.projector import Projector
from timevis_cli.fit.trainer import fit_decoder


def _linear_head(rng: np.random.Generator, dim: int, classes: int) -> Head:
    spec = [{"type": "Linear", "in_features": dim, "out_features": classes, "bias": True}]
    state = {
        "0.weight": rng.normal(size=(classes, dim)).astype(np.float32),
        "0.bias": rng.normal(size=classes).astype(np.float32),
    }
    return Head(spec, state)


def _deep_head(rng: np.random.Generator, dim: int, classes: int) -> Head:
    spec = [
        {"type": "BatchNorm1d", "num_features": dim, "eps": 1e-5, "affine": True},
        {"type": "Linear", "in_features": dim, "out_features": 16, "bias": True},
        {"type": "ReLU"},
        {"type": "Dropout", "p": 0.1},
        {"type": "Linear", "in_features": 16, "out_features": classes, "bias": False},
    ]
    state = {
        "0.running_mean": rng.normal(size=dim).astype(np.float32),
        "0.running_var": rng.uniform(0.5, 2.0, size=dim).astype(np.float32),
        "0.weight": rng.normal(size=dim).astype(np.float32),
        "0.bias": rng.normal(size=dim).astype(np.float32),
        "1.weight": rng.normal(size=(16, dim)).astype(np.float32),
        "1.bias": rng.normal(size=16).astype(np.float32),
        "4.weight": rng.normal(size=(classes, 16)).astype(np.float32),
    }
    return Head(spec, state)


@pytest.mark.parametrize("make", [_linear_head, _deep_head], ids=["linear", "sequential"])
def test_epoch_heads_apply_each_rows_own_epoch_head(make):
    rng = np.random.default_rng(0)
    heads = [make(rng, 6, 4) for _ in range(3)]
    x = rng.normal(size=(50, 6)).astype(np.float32)
    epoch = rng.integers(0, 3, size=50)
    got = EpochHeads(heads).logits(torch.from_numpy(x), torch.from_numpy(epoch)).numpy()
    want = np.stack([heads[e](x[i : i + 1])[0] for i, e in enumerate(epoch)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_epoch_heads_pass_gradients_to_the_features():
    rng = np.random.default_rng(1)
    heads = EpochHeads([_deep_head(rng, 5, 3), _deep_head(rng, 5, 3)])
    x = torch.randn(8, 5, requires_grad=True)
    heads.logits(x, torch.tensor([0, 1] * 4)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_margin_floor_is_a_fraction_of_the_median_margin_and_scale_free():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 0.0], [2.0, 2.0, 5.0]])
    # margins 2, 0.5, 3 -> median 2
    assert margin_floor(logits) == pytest.approx(MARGIN_FRACTION * 2.0)
    assert margin_floor(100 * logits) == pytest.approx(100 * margin_floor(logits))
    assert margin_floor(np.zeros((4, 3))) > 0  # ties everywhere: still a usable floor
    with pytest.raises(InputError, match="must be"):
        margin_floor(np.zeros((0, 3)))


def test_prediction_targets_give_each_sample_its_class_and_its_epochs_floor():
    first = np.array([[2.0, 0.0], [0.0, 1.0]])
    second = np.array([[0.0, 4.0]])
    target, floor = prediction_targets([first, np.zeros((0, 2)), second])
    assert target.tolist() == [0, 1, 1]
    assert floor.tolist() == pytest.approx([margin_floor(first)] * 2 + [margin_floor(second)])


def test_prediction_hinge_is_zero_past_the_floor_and_counts_only_targeted_rows():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 0.0, 0.0]])
    target = torch.tensor([0, 0, 0, -1])
    floor = torch.ones(4)
    # margins: 3 (past the floor), 0.5 (half short), -2 (three short); row 3 has no target
    expected = (0.0 + 0.5 + 3.0) / 3
    assert float(prediction_hinge(logits, target, floor)) == pytest.approx(expected)
    assert float(prediction_hinge(logits, torch.full((4,), -1), floor)) == 0.0
    with pytest.raises(InputError, match="must agree"):
        prediction_hinge(logits, target[:2], floor)


def test_prediction_hinge_gradient_raises_the_predicted_class():
    logits = torch.tensor([[0.0, 1.0]], requires_grad=True)
    prediction_hinge(logits, torch.tensor([0]), torch.ones(1)).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # descent raises class 0, lowers class 1


def test_the_prediction_term_makes_the_decoded_predictions_the_models_own():
    # The head reads one small direction (dimension 0: 0.3 +- 0.05, the class in the sign of the
    # +-0.05, the head's bias taking the 0.3 off) among fifteen large ones that vary with the
    # position. Reconstruction spends the decoder on the large ones and gets the 0.05 wrong for
    # about a fifth of the samples; with the prediction term it gets (nearly) every one right.
    rng = np.random.default_rng(0)
    n, dim, offset = 600, 16, 0.3
    cls = rng.integers(0, 2, size=n)
    positions = rng.normal(size=(n, 2)).astype(np.float32)
    positions[:, 0] += np.where(cls == 1, 3.0, -3.0)  # the classes apart in 2-D
    x = (np.sin(positions @ rng.normal(size=(2, dim))) * 3.0).astype(np.float32)
    x[:, 0] = np.where(cls == 1, 0.05, -0.05) + offset + rng.normal(size=n) * 0.005
    weight = np.zeros((2, dim), np.float32)
    weight[:, 0] = [-1.0, 1.0]  # class 1 where dimension 0 exceeds the offset
    head = Head(
        [{"type": "Linear", "in_features": dim, "out_features": 2, "bias": True}],
        {"0.weight": weight, "0.bias": np.array([offset, -offset], np.float32)},
    )
    model = head(x).argmax(axis=1)
    assert (model == cls).all()
    epoch = torch.zeros(n, dtype=torch.int64)
    target, floor = prediction_targets([head(x)])
    agreement = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        projector = Projector(dim, hidden=32, depth=1)
        term = PredictionTerm(
            EpochHeads([head]), torch.from_numpy(positions), epoch, torch.from_numpy(target),
            torch.from_numpy(floor), lam, batch_size=200,
        )  # fmt: skip
        fit_decoder(
            projector, torch.from_numpy(positions), torch.from_numpy(x), torch.zeros(n, dim),
            steps=300, batch_size=200, lr=1e-2, seed=0, epoch_index=epoch,
            prediction=term if lam else None,
        )  # fmt: skip
        with torch.no_grad():
            decoded = projector.decode(torch.from_numpy(positions), epoch).numpy()
        agreement[lam] = float((head(decoded).argmax(axis=1) == model).mean())
    assert agreement[1.0] >= 0.99, agreement
    assert agreement[0.0] < 0.9, agreement  # the case is one reconstruction alone gets wrong


def test_a_prediction_term_refuses_points_that_do_not_agree():
    heads = EpochHeads([_linear_head(np.random.default_rng(0), 4, 2)])
    ok = dict(
        positions=torch.zeros(10, 2), epoch_index=torch.zeros(10, dtype=torch.int64),
        target=torch.zeros(10, dtype=torch.int64), floor=torch.ones(10), weight=1.0, batch_size=4,
    )  # fmt: skip
    PredictionTerm(heads, **ok)
    with pytest.raises(InputError, match="must agree"):
        PredictionTerm(heads, **{**ok, "target": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(InputError, match=r"epoch_index must lie in \[0, 1\)"):
        PredictionTerm(heads, **{**ok, "epoch_index": torch.ones(10, dtype=torch.int64)})
    with pytest.raises(InputError, match="batch_size=0"):
        PredictionTerm(heads, **{**ok, "batch_size": 0})
