"""Tests of boundary points: the margin, the pair selection and the batched bisection."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from timevis_callback.boundary import BOUNDARY_MARGIN, bisect, margin, select_pairs

# --- margin -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        ([3.0, 1.0, 0.0], 2 / 3),
        ([0.0, 1.0, 3.0], 2 / 3),  # order of the classes does not matter
        ([1.0, 1.0, 0.0], 0.0),  # a tie between the top two
        ([5.0, 0.0, 0.0], 1.0),
        ([2.0, 2.0, 2.0], 0.0),  # all equal: no division by zero
        ([4.0, 3.0, 2.0, 0.0], 0.25),
    ],
)
def test_margin_hand_cases(logits: list[float], expected: float) -> None:
    got = margin(np.array([logits]))
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, abs=1e-6)


def test_margin_is_shift_and_scale_invariant() -> None:
    z = np.random.default_rng(0).normal(size=(20, 6))
    m = margin(z)
    assert m.shape == (20,) and ((m >= 0) & (m <= 1)).all()
    np.testing.assert_allclose(margin(z * 7.0 - 3.0), m, atol=1e-6)


# --- select_pairs -------------------------------------------------------------------------


def random_logits(n: int = 200, n_classes: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, n_classes)) * 3.0


@pytest.mark.parametrize("n_pairs", [1, 5, 50, 61])
def test_select_pairs_respects_the_predicted_classes(n_pairs: int) -> None:
    logits = random_logits()
    pred = logits.argmax(axis=1)
    a, b, pair = select_pairs(logits, n_pairs, np.random.default_rng(1))
    assert a.shape == b.shape == (n_pairs,) and pair.shape == (n_pairs, 2)
    assert a.dtype == b.dtype == pair.dtype == np.int64
    np.testing.assert_array_equal(pred[a], pair[:, 0])
    np.testing.assert_array_equal(pred[b], pair[:, 1])
    assert (pair[:, 0] != pair[:, 1]).all()


def test_select_pairs_balances_class_pairs() -> None:
    logits = random_logits(n_classes=4)
    _, _, pair = select_pairs(logits, 50, np.random.default_rng(2))
    counts = Counter(tuple(sorted(p)) for p in pair.tolist())
    assert set(counts) == set(itertools.combinations(range(4), 2))  # 6 pairs, all used
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_select_pairs_uses_only_predicted_classes() -> None:
    logits = random_logits(n_classes=5)
    logits[:, 4] = -100.0  # class 4 is never predicted
    _, _, pair = select_pairs(logits, 30, np.random.default_rng(3))
    assert 4 not in pair


def test_select_pairs_prefers_samples_near_the_boundary() -> None:
    n = 50
    logits = np.zeros((2 * n, 3))
    logits[:n, 0], logits[n:, 1] = 10.0, 10.0  # far from the 0|1 boundary
    logits[0, 1] = 9.999  # sample 0 (class 0) sits on it
    a, _, pair = select_pairs(logits, 200, np.random.default_rng(4))
    from_class_0 = a[pair[:, 0] == 0]
    assert (from_class_0 == 0).mean() > 0.9


@pytest.mark.parametrize("n_classes_predicted", [0, 1])
def test_select_pairs_needs_two_predicted_classes(n_classes_predicted: int) -> None:
    logits = np.zeros((10, 3)) if n_classes_predicted == 0 else random_logits(10, 3)
    if n_classes_predicted == 0:
        logits = logits[:0]
    else:
        logits[:, 2] += 100.0
    a, b, pair = select_pairs(logits, 8, np.random.default_rng(0))
    assert a.shape == b.shape == (0,) and pair.shape == (0, 2)


def test_select_pairs_zero_pairs() -> None:
    a, b, pair = select_pairs(random_logits(), 0, np.random.default_rng(0))
    assert len(a) == len(b) == len(pair) == 0


# --- bisect on a toy linear model ---------------------------------------------------------

ANGLES = np.deg2rad([90.0, 210.0, 330.0])
W = torch.tensor(np.stack([np.cos(ANGLES), np.sin(ANGLES)]), dtype=torch.float32)  # (2, 3)


class LinearToy:
    """logits = x @ W for 2-D inputs x; the features are x itself. Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return x @ W, x.clone()


def toy_points(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 3.0


def find_boundary(points: torch.Tensor, n_pairs: int, l_bound: float, seed: int, **kwargs):
    """select_pairs, then bisect in both directions; returns (result a->b, result b->a, calls)."""
    logits = (points @ W).numpy()
    a, b, pair = select_pairs(logits, n_pairs, np.random.default_rng(seed))
    toy = LinearToy()
    forward = bisect(toy, points[a], points[b], pair[:, 0], pair[:, 1], l_bound, 64, **kwargs)
    backward = bisect(toy, points[b], points[a], pair[:, 1], pair[:, 0], l_bound, 64, **kwargs)
    return forward, backward, toy.calls


def check_on_boundary(features: torch.Tensor, pair: np.ndarray) -> None:
    z = (features @ W).numpy().astype(np.float64)
    rows = np.arange(len(z))
    span = z.max(axis=1) - z.min(axis=1)
    gap = np.abs(z[rows, pair[:, 0]] - z[rows, pair[:, 1]]) / span
    assert (gap < BOUNDARY_MARGIN).all(), gap.max()
    pred = z.argmax(axis=1)
    assert ((pred == pair[:, 0]) | (pred == pair[:, 1])).all()
    # distance to the true boundary line x . (w1 - w2) = 0, relative to the point's norm
    w = W.numpy().astype(np.float64)
    normal = (w[:, pair[:, 0]] - w[:, pair[:, 1]]).T  # (n, 2)
    x = features.numpy().astype(np.float64)
    distance = np.abs((x * normal).sum(axis=1)) / np.linalg.norm(normal, axis=1)
    assert (distance < 0.1 * np.linalg.norm(x, axis=1) + 1e-6).all()


def test_bisect_finds_points_on_the_linear_boundary() -> None:
    points = toy_points()
    forward, backward, calls = find_boundary(points, 60, 0.5, seed=0)
    assert forward.attempted == backward.attempted == 60
    found = len(forward.features) + len(backward.features)
    assert found >= 60, found  # each crossing is reachable from one of the two directions
    for result in (forward, backward):
        assert result.features.shape == (len(result.pair), 2)
        assert result.pair.dtype == np.int64
        check_on_boundary(result.features, result.pair)
    assert calls <= 2 * 8  # batched: one forward pass per step, not one per pair


def test_bisect_from_both_directions_keeps_the_pair_order() -> None:
    points = toy_points(seed=1)
    forward, backward, _ = find_boundary(points, 40, 0.0, seed=1)
    logits = (points @ W).numpy()
    _, _, pair = select_pairs(logits, 40, np.random.default_rng(1))
    # with l_bound 0 every crossing is reachable: all are found, in the source->target order
    assert len(forward.pair) == len(backward.pair) == 40
    np.testing.assert_array_equal(forward.pair, pair)
    np.testing.assert_array_equal(backward.pair, pair[:, ::-1])


def normalised_gap(logits: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    rows = np.arange(len(logits))
    span = logits.max(axis=1) - logits.min(axis=1)
    return np.abs(logits[rows, c1] - logits[rows, c2]) / span


def test_bisect_cannot_reach_the_boundary_with_l_bound_near_one() -> None:
    points = toy_points(n=400, seed=5)
    logits = (points @ W).numpy()
    pred = logits.argmax(axis=1)
    rng = np.random.default_rng(5)
    # pairs of samples of different classes, none of them already a boundary point
    a = rng.integers(0, len(points), 200)
    b = rng.integers(0, len(points), 200)
    keep = (pred[a] != pred[b]) & (normalised_gap(logits[a], pred[a], pred[b]) > 0.3)
    a, b = a[keep], b[keep]
    assert len(a) >= 50
    source_class, target_class = pred[a], pred[b]
    easy = bisect(LinearToy(), points[a], points[b], source_class, target_class, 0.5, 64)
    hard = bisect(LinearToy(), points[a], points[b], source_class, target_class, 0.99, 64)
    assert len(easy.features) >= len(a) // 4, (len(easy.features), len(a))
    check_on_boundary(easy.features, easy.pair)
    assert len(hard.features) == 0 and hard.pair.shape == (0, 2)
    assert hard.attempted == len(a)


def test_bisect_is_deterministic() -> None:
    points = toy_points(seed=3)
    first, first_back, _ = find_boundary(points, 30, 0.5, seed=7)
    again, again_back, _ = find_boundary(points, 30, 0.5, seed=7)
    torch.testing.assert_close(first.features, again.features, rtol=0, atol=0)
    torch.testing.assert_close(first_back.features, again_back.features, rtol=0, atol=0)
    np.testing.assert_array_equal(first.pair, again.pair)


def test_bisect_in_small_batches_matches_one_batch() -> None:
    points = toy_points(seed=4)
    logits = (points @ W).numpy()
    a, b, pair = select_pairs(logits, 30, np.random.default_rng(0))
    whole = bisect(LinearToy(), points[a], points[b], pair[:, 0], pair[:, 1], 0.5, 64)
    toy = LinearToy()
    pieces = bisect(toy, points[a], points[b], pair[:, 0], pair[:, 1], 0.5, 7)
    torch.testing.assert_close(whole.features, pieces.features)
    np.testing.assert_array_equal(whole.pair, pieces.pair)
    assert toy.calls <= 8 * 5  # ceil(30 / 7) batches per step


class TanhToy:
    """A small float64 tanh MLP over 5-D inputs, 6 classes; features are the hidden layer."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(5, 16, generator=g, dtype=torch.float64)
        self.w2 = torch.randn(16, 6, generator=g, dtype=torch.float64)
        self.sizes: list[int] = []

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.sizes.append(len(x))
        hidden = torch.tanh(x @ self.w1)
        return hidden @ self.w2, hidden


def reference_bisect(model, source, target, source_class, target_class, l_bound, max_steps=8):
    """docs/method.md §2 written plainly: one pair at a time, one sample per forward pass."""
    found, features = [], []
    for i in range(len(source)):
        c1, c2 = int(source_class[i]), int(target_class[i])
        lower = torch.tensor(float(l_bound), dtype=torch.float32)
        upper = torch.tensor(1.0, dtype=torch.float32)
        for _ in range(max_steps):
            mid = (lower + upper) / 2
            lam = mid.to(source.dtype)
            logits, feats = model(lam * source[i : i + 1] + (1 - lam) * target[i : i + 1])
            z = logits[0].float()
            norm = (z - z.min()) / (z.max() - z.min()).clamp_min(1e-12)
            pred = int(z.argmax())
            if pred in (c1, c2) and float((norm[c1] - norm[c2]).abs()) < BOUNDARY_MARGIN:
                found.append(i)
                features.append(feats[0])
                break
            if pred == c1:
                upper = mid
            else:
                lower = mid
    return np.array(found, dtype=np.int64), features


@pytest.mark.parametrize(("l_bound", "batch_size"), [(0.5, 16), (0.4, 7), (0.0, 1000)])
def test_bisect_matches_a_per_pair_reference(l_bound: float, batch_size: int) -> None:
    g = torch.Generator().manual_seed(11)
    points = torch.randn(400, 5, generator=g, dtype=torch.float64) * 2.0
    model = TanhToy()
    logits, _ = model(points)
    a, b, pair = select_pairs(logits.numpy(), 90, np.random.default_rng(11))
    source, target = torch.cat([points[a], points[b]]), torch.cat([points[b], points[a]])
    source_class = np.concatenate([pair[:, 0], pair[:, 1]])
    target_class = np.concatenate([pair[:, 1], pair[:, 0]])
    model.sizes.clear()
    rows, features = reference_bisect(model, source, target, source_class, target_class, l_bound)
    assert 0 < len(rows) < len(source)  # some candidates fail: the comparison covers both cases
    evaluations = len(model.sizes)

    model.sizes.clear()
    result = bisect(model, source, target, source_class, target_class, l_bound, batch_size)
    np.testing.assert_array_equal(result.pair, np.stack([source_class, target_class], 1)[rows])
    torch.testing.assert_close(result.features, torch.stack(features), rtol=0, atol=1e-12)
    # the same evaluations as the reference, batched: at most one partial pass per step
    assert result.forwarded == sum(model.sizes) == evaluations
    assert result.passes == len(model.sizes)
    assert sum(size < batch_size for size in model.sizes) <= 8, model.sizes
    assert result.passes <= -(-result.forwarded // batch_size) + 8
