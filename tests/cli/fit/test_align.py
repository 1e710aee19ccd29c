"""Alignment of consecutive epochs' layouts (``refine.align``): the estimator, the chain, the fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_cli.cli import main
from timevis_cli.config import load_config
from timevis_cli.errors import ConfigError, InputError
from timevis_cli.evaluate.metrics import nnpv
from timevis_cli.fit.align import Similarity, align_layout, largest, similarity
from timevis_cli.fit.io import save_fit
from timevis_cli.fit.pipeline import fit


def _random_similarity(rng: np.random.Generator) -> Similarity:
    return Similarity.from_parts(
        rng.uniform(-180, 180), rng.uniform(0.2, 5.0), rng.uniform(-100, 100, size=2)
    )


def _rotation(points: np.ndarray, degrees: float) -> np.ndarray:
    return Similarity.from_parts(degrees, 1.0, (0.0, 0.0)).apply(points)


def _rms(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


# --------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("seed", range(5))
def test_a_known_similarity_is_recovered_exactly(seed):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(40, 2)) * rng.uniform(0.1, 10)
    truth = _random_similarity(rng)
    found = similarity(source, truth.apply(source))
    np.testing.assert_allclose(found.rotation, truth.rotation, atol=1e-9)
    assert found.scale == pytest.approx(truth.scale, rel=1e-9)
    np.testing.assert_allclose(found.translation, truth.translation, atol=1e-7)
    assert abs(np.linalg.det(found.rotation) - 1) < 1e-12
    # rigid: a rotation and translation without scale are recovered too, with the scale kept 1
    rigid = Similarity(truth.rotation, 1.0, truth.translation)
    found = similarity(source, rigid.apply(source), scale=False)
    assert found.scale == 1.0
    np.testing.assert_allclose(found.apply(source), rigid.apply(source), atol=1e-9)


def test_a_mirrored_target_gives_the_best_rotation_never_a_reflection():
    rng = np.random.default_rng(3)
    source = rng.normal(size=(60, 2)) * [3.0, 1.0]  # elongated: the best rotation is defined
    mirrored = source * [-1.0, 1.0] + [2.0, -1.0]
    for scale in (True, False):
        found = similarity(source, mirrored, scale=scale)
        assert np.linalg.det(found.rotation) == pytest.approx(1.0, abs=1e-12)
        assert found.scale > 0
        # no proper rotation does better (a search over every degree, same scale, best translation)
        residual = ((found.apply(source) - mirrored) ** 2).sum()
        for degrees in range(360):
            turned = found.scale * _rotation(source, degrees)
            shifted = turned - turned.mean(axis=0) + mirrored.mean(axis=0)
            assert residual <= ((shifted - mirrored) ** 2).sum() + 1e-9


def test_weights_choose_which_points_the_transform_follows():
    rng = np.random.default_rng(4)
    source = rng.normal(size=(50, 2))
    first, second = _random_similarity(rng), _random_similarity(rng)
    target = np.concatenate([first.apply(source[:25]), second.apply(source[25:])])
    half = np.r_[np.ones(25), np.zeros(25)]
    for weights, truth in ((half, first), (1 - half, second), (7.5 * half, first)):
        found = similarity(source, target, weights)
        np.testing.assert_allclose(found.apply(source), truth.apply(source), atol=1e-8)
    # weights in between land in between: more weight on the first half, closer to it
    lean = similarity(source, target, 0.9 * half + 0.1)
    error = [
        np.abs(lean.apply(source[s]) - target[s]).mean() for s in (slice(0, 25), slice(25, 50))
    ]
    assert error[0] < error[1]


@pytest.mark.parametrize(
    "source, target, weights",
    [
        (np.full((10, 2), 3.0), np.random.default_rng(0).normal(size=(10, 2)), None),  # all equal
        (np.random.default_rng(0).normal(size=(10, 2)), np.full((10, 2), -2.0), None),
        (np.array([[1.0, 2.0]]), np.array([[5.0, 7.0]]), None),  # n = 1
        (np.zeros((0, 2)), np.zeros((0, 2)), None),  # n = 0
        (np.eye(2), np.eye(2)[::-1] + 4, np.array([1.0, 0.0])),  # one point of positive weight
        (np.full((4, 2), 1e6), np.full((4, 2), 1e6) + 1e-9, None),  # equal up to rounding
    ],
)
def test_degenerate_inputs_give_the_identity(source, target, weights):
    for scale in (True, False):
        found = similarity(source, target, weights, scale=scale)
        assert found.is_identity
        assert np.isfinite(found.apply(source)).all()


def test_bad_estimator_input_is_refused():
    points = np.zeros((3, 2))
    with pytest.raises(InputError, match="same shape"):
        similarity(points, np.zeros((4, 2)))
    with pytest.raises(InputError, match="weights must be finite and >= 0"):
        similarity(points, points, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(InputError, match="weights of shape"):
        similarity(points, points, np.ones(2))
    with pytest.raises(InputError, match="NaN"):
        similarity(np.array([[np.nan, 0.0], [1.0, 1.0]]), np.ones((2, 2)))
    with pytest.raises(InputError, match="'affine' is not one of similarity, rigid, none"):
        align_layout(np.zeros((4, 2), np.float32), np.array([0, 2, 4]), 2, "affine")


# --------------------------------------------------------------------------- the chain


def _drifting_layout(n_epochs=8, n=120, n_boundary=10, noise=0.0, seed=0):
    """Epoch blocks of one shape carried away by a growing rotation, translation and scale."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n + n_boundary, 2)) * [4.0, 1.5]
    blocks, truths = [], []
    for t in range(n_epochs):
        truth = Similarity.from_parts(25.0 * t, 1.15**t, (30.0 * t, -12.0 * t))
        shape = base + noise * rng.normal(size=base.shape)
        blocks.append(truth.apply(shape))
        truths.append(truth)
    offsets = np.arange(n_epochs + 1) * (n + n_boundary)
    return np.concatenate(blocks).astype(np.float32), offsets, n, truths


def _centroids(positions, offsets, n):
    return np.stack([positions[s : s + n].mean(axis=0) for s in offsets[:-1]])


def test_chained_alignment_removes_drift_rotation_and_scale():
    positions, offsets, n, truths = _drifting_layout()
    original = positions.copy()
    before = np.linalg.norm(np.diff(_centroids(positions, offsets, n), axis=0), axis=1)
    transforms = align_layout(positions, offsets, n, "similarity")
    after = np.linalg.norm(np.diff(_centroids(positions, offsets, n), axis=0), axis=1)
    assert before.min() > 20 and after.max() < 1e-3
    first = slice(0, offsets[1])
    np.testing.assert_array_equal(positions[first], original[first])  # the reference stays
    assert transforms[0].is_identity
    for i in range(1, len(transforms)):
        block = slice(offsets[i], offsets[i + 1])
        # every epoch lands on the first, boundary points included (they move with their block)
        np.testing.assert_allclose(positions[block], original[first], atol=1e-3)
        # the transform recorded maps the epoch's original positions to the aligned ones
        np.testing.assert_allclose(
            transforms[i].apply(original[block]), positions[block], atol=1e-4
        )
        # ... and undoes the drift put in: angle and scale of the inverse
        assert transforms[i].angle_degrees == pytest.approx(
            -((25.0 * i + 180) % 360 - 180), abs=1e-3
        )
        assert transforms[i].scale == pytest.approx(1.15**-i, rel=1e-5)
    big = largest(transforms)
    assert big["rotation_degrees"] == pytest.approx(max(abs(t.angle_degrees) for t in transforms))
    assert big["scale"] == pytest.approx(1.15**-7, rel=1e-5)


def test_rigid_alignment_keeps_each_epochs_size_and_none_changes_nothing():
    positions, offsets, n, _ = _drifting_layout(n_epochs=5)
    sizes = [_rms(positions[s:e]) for s, e in zip(offsets[:-1], offsets[1:], strict=True)]
    rigid = positions.copy()
    transforms = align_layout(rigid, offsets, n, "rigid")
    assert all(t.scale == 1.0 for t in transforms)
    after = [_rms(rigid[s:e]) for s, e in zip(offsets[:-1], offsets[1:], strict=True)]
    np.testing.assert_allclose(after, sizes, rtol=1e-5)
    centroids = _centroids(rigid, offsets, n)
    assert np.linalg.norm(centroids - centroids[0], axis=1).max() < 1e-3  # drift gone all the same
    untouched = positions.copy()
    assert all(t.is_identity for t in align_layout(untouched, offsets, n, "none"))
    np.testing.assert_array_equal(untouched, positions)


def test_similarity_chain_keeps_the_size_of_clouds_whose_samples_shuffle():
    # 60 epochs of one cloud whose samples also move relative to each other (independent noise
    # of half the cloud's spread): a least-squares scale (Umeyama's) is shrunk by the epochs'
    # correlation (~0.69 a step here) and, chained, leaves 5e-8 of the size (measured); the RMS
    # ratio keeps it
    positions, offsets, n, _ = _drifting_layout(n_epochs=60, noise=2.0, seed=1)
    align_layout(positions, offsets, n, "similarity")
    sizes = [_rms(positions[s : s + n]) for s in offsets[:-1]]
    assert 0.8 < sizes[-1] / sizes[0] < 1.25, sizes[-1] / sizes[0]
    assert np.isfinite(positions).all()


# --------------------------------------------------------------------------- the fit


def _fit_overrides(align: str) -> list[str]:
    return [
        "training.max_epochs=2",
        "training.min_edges_per_epoch=20000",
        "projector.hidden=64",
        "reduction.init_size=100",
        "refine.epochs=60",
        "refine.decoder_steps=100",
        f"refine.align={align}",
    ]


def _travel(train: np.ndarray) -> float:
    """Summed centroid travel between consecutive epochs, relative to the mean cloud extent."""
    centroids = train.mean(axis=1)
    size = np.mean([np.ptp(np.quantile(t, [0.05, 0.95], axis=0), axis=0).max() for t in train])
    return float(np.linalg.norm(np.diff(centroids, axis=0), axis=1).sum() / size)


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory):
    store = drifting_clusters(
        tmp_path_factory.mktemp("align") / "s", n_train=150, n_test=30, epochs=4, drift=4.0
    )
    run = open_run(store)
    return run, {
        mode: fit(run, load_config(overrides=_fit_overrides(mode)))
        for mode in ("none", "similarity")
    }


def test_alignment_removes_drift_but_no_neighbour_of_any_epoch(two_fits):
    run, fits = two_fits
    plain, aligned = fits["none"], fits["similarity"]
    travel = {mode: _travel(result.train) for mode, result in fits.items()}
    assert travel["similarity"] < 0.5 * travel["none"], travel
    for i, epoch in enumerate(aligned.epochs):
        high = run.features(epoch, split="train")
        assert nnpv(high, aligned.train[i], k=10) == pytest.approx(
            nnpv(high, plain.train[i], k=10), abs=0.02
        )
    # the same layout, each epoch moved as a whole by the transform the fit recorded
    recorded = aligned.stats["refine"]["align"]
    assert recorded["mode"] == "similarity" and list(recorded["epochs"]) == [
        str(e) for e in aligned.epochs
    ]
    assert recorded["epochs"][str(aligned.epochs[0])] == Similarity.identity().to_dict()
    for i, epoch in enumerate(aligned.epochs):
        entry = recorded["epochs"][str(epoch)]
        transform = Similarity.from_parts(
            entry["rotation_degrees"], entry["scale"], entry["translation"]
        )
        np.testing.assert_allclose(transform.apply(plain.train[i]), aligned.train[i], atol=1e-3)
        np.testing.assert_allclose(transform.apply(plain.test[i]), aligned.test[i], atol=1e-3)
        np.testing.assert_allclose(
            transform.apply(plain.boundary_points[i]), aligned.boundary_points[i], atol=1e-3
        )
    assert all(
        t == Similarity.identity().to_dict()
        for t in plain.stats["refine"]["align"]["epochs"].values()
    )
    assert (
        max(
            abs(t["rotation_degrees"]) + abs(math.log(t["scale"]))
            for t in recorded["epochs"].values()
        )
        > 0
    )


def test_an_aligned_fit_places_and_decodes_in_the_aligned_frame(two_fits, tmp_path):
    run, fits = two_fits
    aligned = fits["similarity"]
    train_mask, test_mask = run.samples.mask("train"), run.samples.mask("test")
    for i, epoch in enumerate(aligned.epochs):
        placed = aligned.transform(run.features(epoch), epoch=epoch)
        np.testing.assert_allclose(placed[train_mask], aligned.train[i], atol=1e-4)
        np.testing.assert_allclose(placed[test_mask], aligned.test[i], atol=1e-4)
        # the decoder was fitted to the aligned positions: it keeps the predictions there
        head = run.head(epoch)
        high = run.features(epoch, split="train")
        kept = np.mean(
            head(aligned.inverse_transform(aligned.train[i], epoch=epoch)).argmax(1)
            == head(high).argmax(1)
        )
        assert kept > 0.8, (epoch, kept)
    save_fit(run.path, aligned, overwrite=True)
    report = json.loads((run.path / "fit" / "fit.json").read_text())
    assert report["refine"]["align"] == aligned.stats["refine"]["align"]


def test_a_fit_without_refinement_is_not_aligned(tmp_path):
    store = drifting_clusters(tmp_path / "s", n_train=60, n_test=10, epochs=3, drift=4.0)
    run = open_run(store)
    base = [
        "training.max_epochs=1",
        "training.min_edges_per_epoch=5000",
        "reduction.init_size=50",
        "refine.enabled=false",
    ]
    plain = fit(run, load_config(overrides=[*base, "refine.align=none"]))
    other = fit(run, load_config(overrides=[*base, "refine.align=similarity"]))
    assert "refine" not in other.stats
    np.testing.assert_array_equal(plain.train, other.train)


def test_an_unknown_alignment_is_a_one_line_error(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r'refine.align = "foo" in --set is not accepted: it must be one of similarity, rigid, none',
    ):
        load_config(overrides=["refine.align=foo"])
    store = drifting_clusters(tmp_path / "s", n_train=30, n_test=5, epochs=2)
    result = CliRunner().invoke(main, ["fit", str(store), "--set", "refine.align=foo"])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "refine.align" in result.output and "foo" in result.output and "rigid" in result.output
    assert not (store / "fit").exists()
