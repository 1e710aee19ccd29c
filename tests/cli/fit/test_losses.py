"""Tests of the projector's losses: umap-learn as the oracle for a, b; gradients checked in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timevis_cli.errors import InputError
from timevis_cli.fit import losses
from timevis_cli.fit.losses import (
    attention_weights,
    attention_weights_autograd,
    find_ab_params,
    reconstruction_loss,
    sample_negatives,
    total_loss,
    umap_loss,
)

umap_ = pytest.importorskip("umap.umap_")

AB_CASES = [(1.0, 0.1), (1.0, 0.0), (1.0, 0.5), (2.0, 0.25), (0.5, 0.01)]


# --------------------------------------------------------------------------- a, b


@pytest.mark.parametrize(("spread", "min_dist"), AB_CASES)
def test_find_ab_params_matches_umap_learn(spread, min_dist):
    a, b = find_ab_params(spread, min_dist)
    ref_a, ref_b = umap_.find_ab_params(spread, min_dist)
    assert a == pytest.approx(ref_a, rel=1e-6) and b == pytest.approx(ref_b, rel=1e-6)


def test_find_ab_params_defaults_are_the_published_values():
    a, b = find_ab_params()
    assert a == pytest.approx(1.577, abs=1e-3) and b == pytest.approx(0.895, abs=1e-3)


@pytest.mark.parametrize(("spread", "min_dist"), [(0.0, 0.1), (-1.0, 0.1), (1.0, -0.1), (1.0, 2.0)])
def test_find_ab_params_refuses_bad_values(spread, min_dist):
    with pytest.raises(InputError, match="spread|min_dist"):
        find_ab_params(spread, min_dist)


# --------------------------------------------------------------------------- UMAP loss


def reference_umap_loss(head, tail, neg_heads, neg_tails, a, b, clip=1e-4, eps=1e-8):
    """The loss written out in numpy (float64) from docs/method.md §5."""

    def q(u, v):
        d = np.sqrt(((u - v) ** 2).sum(1) + eps)
        return 1.0 / (1.0 + a * d ** (2 * b))

    pos = -np.log(np.clip(q(head, tail), clip, 1.0))
    neg = -np.log(np.clip(1.0 - q(head[neg_heads], tail[neg_tails]), clip, 1.0))
    return np.concatenate([pos, neg]).mean()


def test_sample_negatives_repeats_heads_and_shuffles_tails():
    generator = torch.Generator().manual_seed(0)
    heads, tails = sample_negatives(4, 3, generator)
    assert heads.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert sorted(tails.tolist()) == heads.tolist()
    assert tails.tolist() != heads.tolist()
    again = sample_negatives(4, 3, torch.Generator().manual_seed(0))
    assert torch.equal(again[1], tails)


def test_umap_loss_matches_the_formula():
    rng = np.random.default_rng(0)
    head, tail = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    a, b = find_ab_params()
    neg_heads, neg_tails = sample_negatives(6, 5, torch.Generator().manual_seed(1))
    value = umap_loss(
        torch.from_numpy(head),
        torch.from_numpy(tail),
        a,
        b,
        negatives=(neg_heads, neg_tails),
    )
    expected = reference_umap_loss(head, tail, neg_heads.numpy(), neg_tails.numpy(), a, b)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_umap_loss_hand_case():
    # one edge at distance 1 (q = 1/(1+a)), its negative pairs it with itself (q = 1/(1+a·eps^b))
    a, b = 1.0, 1.0
    head = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    tail = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    value = umap_loss(
        head, tail, a, b, negatives=(torch.tensor([0]), torch.tensor([0])), distance_eps=0
    )
    # positive: -log(1/2); negative: q = 1/2 again, -log(1 - 1/2)
    assert value.item() == pytest.approx(np.log(2.0), rel=1e-12)


def test_umap_loss_clips_probabilities():
    head = torch.zeros(1, 2, dtype=torch.float64)
    far = torch.tensor([[1e6, 0.0]], dtype=torch.float64)
    value = umap_loss(head, far, 1.0, 1.0, negatives=(torch.tensor([], dtype=torch.long),) * 2)
    assert value.item() == pytest.approx(-np.log(1e-4))


def test_umap_loss_draws_seeded_negatives():
    emb = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    first = umap_loss(emb[:5], emb[5:], 1.5, 0.9, 5, torch.Generator().manual_seed(3))
    second = umap_loss(emb[:5], emb[5:], 1.5, 0.9, 5, torch.Generator().manual_seed(3))
    assert first.item() == second.item()


def test_umap_loss_gradcheck():
    generator = torch.Generator().manual_seed(0)
    head = torch.randn(5, 2, dtype=torch.float64, generator=generator).requires_grad_(True)
    tail = torch.randn(5, 2, dtype=torch.float64, generator=generator).requires_grad_(True)
    negatives = sample_negatives(5, 3, torch.Generator().manual_seed(1))
    # keep every pair apart so no probability sits on a clip
    negatives = (negatives[0], (negatives[0] + 1 + negatives[1] % 4) % 5)
    a, b = find_ab_params()

    def fn(h, t):
        return umap_loss(h, t, a, b, negatives=negatives)

    assert torch.autograd.gradcheck(fn, (head, tail))


def test_umap_loss_gradient_is_finite_where_embeddings_coincide():
    emb = torch.zeros(3, 2, requires_grad=True)
    umap_loss(emb, emb, 1.577, 0.895, 2, torch.Generator().manual_seed(0)).backward()
    assert torch.isfinite(emb.grad).all()


def test_umap_loss_refuses_mismatched_shapes():
    with pytest.raises(InputError, match="emb_head"):
        umap_loss(torch.zeros(3, 2), torch.zeros(4, 2), 1.0, 1.0)


# --------------------------------------------------------------------------- reconstruction


def test_reconstruction_loss_hand_case():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    x_rec = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    attention = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    # rows: (2·1 + 1·4)/2 = 3 and (1.5·1 + 1.5·1)/2 = 1.5
    assert reconstruction_loss(x, x_rec, attention).item() == pytest.approx(2.25)
    weight = torch.tensor([1, 3])
    assert reconstruction_loss(x, x_rec, attention, weight).item() == pytest.approx(
        (3 + 3 * 1.5) / 4
    )


def test_reconstruction_loss_weights_equal_repeated_rows():
    generator = torch.Generator().manual_seed(0)
    x, x_rec, att = (torch.rand(4, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    counts = torch.tensor([1, 2, 3, 1])
    repeated = torch.repeat_interleave(torch.arange(4), counts)
    assert reconstruction_loss(x, x_rec, att, counts).item() == pytest.approx(
        reconstruction_loss(x[repeated], x_rec[repeated], att[repeated]).item(), rel=1e-12
    )


def test_reconstruction_loss_gradcheck():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, generator=generator)
    x_rec = torch.randn(4, 3, dtype=torch.float64, generator=generator).requires_grad_(True)
    attention = torch.rand(4, 3, dtype=torch.float64, generator=generator)
    weight = torch.tensor([1.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda r: reconstruction_loss(x, r, attention, weight), (x_rec,)
    )


def test_reconstruction_loss_refuses_mismatched_shapes():
    with pytest.raises(InputError, match="shape"):
        reconstruction_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


def test_total_loss():
    assert total_loss(torch.tensor(1.0), torch.tensor(2.0), 10.0).item() == 21.0


# --------------------------------------------------------------------------- attention


def test_attention_closed_form_hand_case():
    weight = torch.tensor([[1.0, -2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 0.0]])
    logits = torch.tensor([[5.0, 1.0, 4.0], [0.0, 2.0, 1.0]])
    features = torch.zeros(2, 3)
    att = attention_weights(features, logits, weight, temperature=1.0)
    # row 0: classes 0 and 2 -> |W0| + |W2| = [4, 2, 0]; row 1: classes 1, 2 -> [3, 1, 1]
    expected = torch.softmax(torch.tensor([[4.0, 2.0, 0.0], [3.0, 1.0, 1.0]]), dim=1)
    assert torch.allclose(att, expected)
    assert torch.allclose(att.sum(1), torch.ones(2))


def test_attention_default_temperature_is_sharp():
    weight = torch.tensor([[0.1, 0.2], [0.0, 0.0]])
    att = attention_weights(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), weight)
    assert att[0, 1].item() == pytest.approx(1 / (1 + np.exp(-10.0)))


def test_attention_autograd_equals_closed_form_for_linear_head():
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 4).double()
    features = torch.randn(11, 6, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        logits = head(features)
        closed = attention_weights(features, logits, head.weight, temperature=0.05)
    auto = attention_weights_autograd(features, head, temperature=0.05, batch_size=4)
    assert auto.shape == closed.shape
    assert torch.allclose(auto, closed, rtol=1e-12, atol=1e-14)
    assert not auto.requires_grad


def test_attention_autograd_matches_per_sample_gradients():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    head = head.double()
    features = torch.randn(7, 5, dtype=torch.float64)
    auto = attention_weights_autograd(features, head, temperature=0.1, batch_size=3)
    for i in range(7):
        jac = torch.autograd.functional.jacobian(head, features[i])  # [C, D]
        top = torch.topk(head(features[i]), 2).indices
        expected = torch.softmax((jac[top[0]].abs() + jac[top[1]].abs()) / 0.1, dim=0)
        assert torch.allclose(auto[i], expected, rtol=1e-10, atol=1e-12)


def test_attention_refuses_bad_input():
    with pytest.raises(InputError, match="C >= 2"):
        attention_weights(torch.zeros(2, 3), torch.zeros(2, 1), torch.zeros(1, 3))
    with pytest.raises(InputError, match="head_weight"):
        attention_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(4, 5))
    with pytest.raises(InputError, match="temperature"):
        attention_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(4, 3), 0.0)


def test_module_constants():
    assert losses.PROBABILITY_CLIP == 1e-4
    assert losses.ATTENTION_TEMPERATURE == 0.01
