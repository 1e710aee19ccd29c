import numpy as np
import pytest

from timevis_callback.boundary import margin
from timevis_cli.errors import InputError
from timevis_cli.fit.predictive import margin_floor
from timevis_cli.render.landscape import landscape_alpha
from timevis_cli.render.lift import SampleLift, logit_lift


def _reference_lift(positions, classes, lifts, n_classes, k, point):
    """The lift at one point, written out from the formula: the k nearest samples weighted by
    ((R - d)+ / (R d))^2 with R the (k+1)-th nearest distance, normalised; on a sample, its own."""
    d = np.sqrt(((positions - point) ** 2).sum(axis=1))
    order = np.argsort(d, kind="stable")
    near, reach = order[:k], d[order[k]]
    out = np.zeros(n_classes)
    if (d[near] == 0).any():
        on = near[d[near] == 0]
        for v in on:
            out[classes[v]] += lifts[v] / len(on)
        return out
    w = np.array([max(reach - d[v], 0.0) / (reach * d[v]) for v in near]) ** 2
    if w.sum() == 0:
        return out
    for v, weight in zip(near, w / w.sum(), strict=True):
        out[classes[v]] += weight * lifts[v]
    return out


def test_logit_lift_is_the_rise_that_makes_the_predicted_class_win_by_the_floor():
    rng = np.random.default_rng(0)
    decoded = rng.normal(size=(200, 5))
    predictions = rng.integers(0, 5, 200)
    lift = logit_lift(decoded, predictions, 0.3)
    for v in range(200):
        best_other = max(decoded[v, c] for c in range(5) if c != predictions[v])
        assert lift[v] == pytest.approx(max(0.0, best_other + 0.3 - decoded[v, predictions[v]]), abs=1e-6)
    agreed = (decoded.argmax(axis=1) == predictions) & (lift == 0)
    assert agreed.any() and (lift > 0).any()
    with pytest.raises(InputError, match="predictions must be classes"):
        logit_lift(decoded, predictions + 5, 0.3)
    with pytest.raises(InputError, match="floor"):
        logit_lift(decoded, predictions, -1.0)
    # one floor per sample
    floors = rng.uniform(0, 1, 200)
    each = logit_lift(decoded, predictions, floors)
    for v in range(200):
        best_other = max(decoded[v, c] for c in range(5) if c != predictions[v])
        assert each[v] == pytest.approx(max(0.0, best_other + floors[v] - decoded[v, predictions[v]]), abs=1e-6)
    with pytest.raises(InputError, match="floor"):
        logit_lift(decoded, predictions, floors[:10])


def test_every_train_sample_shows_its_prediction_and_the_lift_matches_the_formula():
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(300, 2))
    model = rng.normal(size=(300, 4)) * 0.01  # an untrained model's small margins
    decoded = model + rng.normal(size=(300, 4)) * 0.02  # a decoder often on the wrong side
    lift = SampleLift.from_logits(positions, decoded, model, neighbors=6)
    predictions = model.argmax(axis=1)
    assert (decoded.argmax(axis=1) != predictions).mean() > 0.3 and lift.n_lifted > 0
    shown = decoded + lift(positions)
    assert (shown.argmax(axis=1) == predictions).all()
    margins = shown[np.arange(300), predictions] - np.where(
        np.eye(4, dtype=bool)[predictions], -np.inf, shown
    ).max(axis=1)
    # each wins by the model's own margin there, and by at least a quarter of the median margin
    top2 = np.sort(model, axis=1)[:, -2:]
    wanted = np.maximum(top2[:, 1] - top2[:, 0], margin_floor(model))
    assert (margins >= wanted * (1 - 1e-4) - 1e-7).all()
    # anywhere on the map: the formula, computed independently
    lifts = logit_lift(decoded, predictions, wanted)
    points = np.concatenate([rng.uniform(-3, 3, size=(40, 2)), positions[:5]])
    got = lift(points)
    for p, row in zip(points, got, strict=True):
        np.testing.assert_allclose(row, _reference_lift(positions, predictions, lifts, 4, 6, p), atol=1e-5)


def test_a_lifted_sample_is_drawn_in_its_colour_not_in_the_boundary_white():
    """Samples the model predicts with a clear top-2 gap (relative margin 0.25: coloured when its
    own logits are drawn). Where the decoder shows them in the runner-up's class, or in their
    class by a hair, the lifted picture draws them in colour; a lift to a bare win (a quarter of
    the median margin) would leave them white. Where the decoder is as sure as the model: no lift."""
    rng = np.random.default_rng(3)
    n = 400
    rows = np.arange(n)
    positions = rng.uniform(0, 10, size=(n, 2))
    predictions = rng.integers(0, 4, n)
    runner = (predictions + rng.integers(1, 4, n)) % 4
    model = np.zeros((n, 4))
    rest = np.ones((n, 4), bool)
    rest[rows, predictions] = rest[rows, runner] = False
    model[rest] = np.tile([1.0, 0.0], n)  # the two other classes: 1 and 0
    model[rows, predictions], model[rows, runner] = 4.0, 3.0
    assert (landscape_alpha(margin(model)) > 0).all()
    decoded = model.copy()
    swapped, hair = positions[:, 0] < 3, (positions[:, 0] >= 3) & (positions[:, 0] < 6)
    decoded[rows[swapped], predictions[swapped]], decoded[rows[swapped], runner[swapped]] = 3.0, 4.0
    decoded[rows[hair], runner[hair]] = 3.99  # its class, by a hundredth
    lift = SampleLift.from_logits(positions, decoded, model)
    shown = decoded + lift(positions)
    assert lift.n_lifted == (swapped | hair).sum() and (shown.argmax(axis=1) == predictions).all()
    assert (landscape_alpha(margin(shown)) > 0).all()
    bare = SampleLift(positions, predictions, logit_lift(decoded, predictions, margin_floor(model)), 4)
    assert (landscape_alpha(margin(decoded + bare(positions)))[swapped | hair] == 0).all()


def test_the_lift_is_continuous_and_zero_where_the_decoder_is_as_sure_as_the_model():
    rng = np.random.default_rng(2)
    positions = rng.uniform(0, 10, size=(200, 2))
    model = rng.normal(size=(200, 3))
    decoded = model + 10 * np.eye(3)[model.argmax(axis=1)]  # agrees, by a wide margin
    wrong = positions[:, 0] < 2  # the decoder errs only on the left of the map
    decoded[wrong] = np.roll(model[wrong], 1, axis=1)
    lift = SampleLift.from_logits(positions, decoded, model, neighbors=8)
    assert 0 < lift.n_lifted <= wrong.sum()
    right_side = np.column_stack([rng.uniform(6, 10, 500), rng.uniform(0, 10, 500)])
    assert not lift(right_side).any()  # every nearest sample agrees: the decoder's own picture
    # continuity: a tiny step anywhere (across samples and neighbour changes) changes it little
    points = np.column_stack([np.linspace(0, 4, 4001), np.full(4001, 5.0)])
    values = lift(points)
    jumps = np.abs(np.diff(values, axis=0)).max()
    finer = np.abs(np.diff(lift(np.column_stack([np.linspace(0, 4, 40001), np.full(40001, 5.0)])), axis=0)).max()
    assert finer < jumps / 4  # shrinks with the step, as a continuous function's does
    assert jumps < 0.2 * lift(positions).max()


def test_sample_lift_rejects_bad_input():
    with pytest.raises(InputError, match="must be \\[n, 2\\]"):
        SampleLift(np.zeros((4, 3)), np.zeros(4, int), np.zeros(4), 2)
    with pytest.raises(InputError, match="lifts >= 0"):
        SampleLift(np.zeros((4, 2)), np.zeros(4, int), -np.ones(4), 2)
    with pytest.raises(InputError, match="classes must be in"):
        SampleLift(np.zeros((4, 2)), np.full(4, 2), np.zeros(4), 2)
    with pytest.raises(InputError, match="same shape"):
        SampleLift.from_logits(np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(InputError, match="1 non-finite"):
        SampleLift.from_logits(np.zeros((4, 2)), np.zeros((4, 3)), np.array([[0, 1, np.nan]] + [[0, 1, 2]] * 3))
    nothing = SampleLift(np.random.default_rng(0).normal(size=(5, 2)), np.zeros(5, int), np.zeros(5), 3)
    assert not nothing(np.zeros((7, 2))).any() and nothing(np.zeros((7, 2))).shape == (7, 3)
