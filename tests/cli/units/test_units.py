"""``timevis units``: the multislice kernel against a direct loop reference, t at the entropy
knee, shapes and determinism, known structure (two groups of units separate, a unit constant
over the epochs stays put), class preference, the ``units/`` outputs through the CLI on a tiny
real run, and bad inputs as one-line errors."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from stores import drifting_clusters

from timevis_cli.cli import main
from timevis_cli.errors import InputError
from timevis_cli.units import mphate
from timevis_cli.units.mphate import (
    MPhateSettings,
    choose_t,
    embed_units,
    knee_point,
    landmark_operator,
    multislice_kernel,
    von_neumann_entropy,
    zscore_units,
)
from timevis_cli.units.outputs import gif_epochs, load_units
from timevis_cli.units.pipeline import (
    NO_PREFERENCE,
    class_preference,
    compute_units,
    stratified_rows,
)

# --------------------------------------------------------------------------- references


def _reference_kernel(data: np.ndarray, knn: int, knn_max: int, decay: float,
                      interslice_knn: int, threshold: float) -> np.ndarray:  # fmt: skip
    """The multislice kernel written out point by point from its definition (loops, no
    vectorisation shared with the implementation)."""
    n_epochs, n_units, _ = data.shape
    n = n_epochs * n_units
    kernel = np.zeros((n, n))
    for e in range(n_epochs):
        one = np.zeros((n_units, n_units))
        for i in range(n_units):
            dist = [math.dist(data[e, i], data[e, j]) for j in range(n_units)]
            others = sorted(dist[j] for j in range(n_units) if j != i)
            sigma = max(others[min(knn, n_units - 1) - 1], np.finfo(float).eps)
            reach = sorted(range(n_units), key=lambda j: (dist[j], j != i))[
                : min(knn_max, n_units - 1) + 1
            ]
            for j in reach:
                value = math.exp(-((dist[j] / sigma) ** decay))
                if value >= threshold:
                    one[i, j] = value
        one = (one + one.T) / 2
        kernel[e * n_units : (e + 1) * n_units, e * n_units : (e + 1) * n_units] = one
    if n_epochs > 1:
        k = min(interslice_knn, n_epochs - 1)
        medians = []
        for u in range(n_units):
            rows = []
            for e in range(n_epochs):
                dist = sorted(math.dist(data[e, u], data[f, u]) for f in range(n_epochs))
                rows.append(dist[k])  # counting the unit itself at distance 0
            medians.append(float(np.median(rows)))
        bandwidth = sum(medians) / n_units
        for u in range(n_units):
            for e in range(n_epochs):
                for f in range(n_epochs):
                    if e != f:
                        d = math.dist(data[e, u], data[f, u])
                        kernel[e * n_units + u, f * n_units + u] = math.exp(-((d / bandwidth) ** 2))
    return kernel


def _reference_knee(y: np.ndarray, x: np.ndarray) -> float:
    """L-method by brute force: a least-squares line (np.polyfit) on each side of every
    interior breakpoint, the breakpoint of least total absolute error."""
    best, where = np.inf, None
    for b in range(1, len(y) - 1):
        left = np.polyval(np.polyfit(x[: b + 1], y[: b + 1], 1), x[: b + 1]) - y[: b + 1]
        right = np.polyval(np.polyfit(x[b:], y[b:], 1), x[b:]) - y[b:]
        error = np.abs(left).sum() + np.abs(right).sum()
        if error < best - 1e-12:
            best, where = error, x[b]
    return float(where)


# --------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize(("knn_max", "epochs", "units"), [(20, 4, 9), (3, 5, 12), (20, 1, 6)])
def test_kernel_matches_a_direct_reference(knn_max, epochs, units):
    data = np.random.default_rng(3).normal(size=(epochs, units, 5))
    data[:, 0] = data[0, 0]  # a unit constant over the epochs (zero distances)
    settings = MPhateSettings(knn_max=knn_max, interslice_knn=25)
    kernel = multislice_kernel(data, settings)
    expected = _reference_kernel(data, 2, knn_max, 5.0, 25, 1e-4)
    dense = kernel.dense()
    np.testing.assert_allclose(dense, expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(dense, dense.T, atol=1e-7)
    np.testing.assert_allclose(kernel.degrees(), expected.sum(axis=1), rtol=2e-6)
    x = np.random.default_rng(4).normal(size=(epochs * units, 3))
    np.testing.assert_allclose(kernel.matmul(x), expected @ x, rtol=1e-5, atol=1e-6)


def test_landmark_operator_is_pmn_times_pnm():
    data = np.random.default_rng(5).normal(size=(4, 10, 6))
    kernel = multislice_kernel(data)
    labels = np.random.default_rng(6).integers(0, 7, 40)
    labels = np.unique(labels, return_inverse=True)[1]
    k = kernel.dense()
    onehot = np.eye(labels.max() + 1)[labels]
    m = k @ onehot
    pnm = m / m.sum(axis=1, keepdims=True)
    pmn = m.T / m.T.sum(axis=1, keepdims=True)
    operator = landmark_operator(kernel, labels)
    np.testing.assert_allclose(operator, pmn @ pnm, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(operator.sum(axis=1), 1.0, rtol=1e-9)


# --------------------------------------------------------------------------- t


def test_knee_matches_phates_documented_examples():
    x = np.arange(20)
    assert knee_point(np.exp(-x / 10), x) == 8
    operator = np.eye(10)
    operator[0, 0], operator[3, 2] = 5, 4
    assert knee_point(von_neumann_entropy(operator, 100), np.arange(100)) == 23


def test_knee_of_two_lines_is_their_corner():
    x = np.arange(1, 41, dtype=float)
    y = np.where(x <= 12, 30 - 2.0 * x, 6 - 0.05 * (x - 12))
    assert knee_point(y, x) == 12


@pytest.mark.parametrize("decay", [0.5, 0.8, 0.95])
def test_t_is_at_the_knee_of_the_entropy_of_a_constructed_operator(decay):
    """A symmetric operator with a chosen spectrum (1, then ``decay``^k): its entropy over t
    computed here from the eigenvalues, its knee by brute force."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    spectrum = np.r_[1.0, decay ** np.arange(1, 30) * 0.9]
    operator = (q * spectrum) @ q.T
    t, entropy = choose_t(operator, 60)
    expected = []
    for power in range(1, 61):
        p = spectrum**power / (spectrum**power).sum() + np.finfo(float).eps
        expected.append(-(p * np.log(p)).sum())
    # relative to each value, and absolutely for the last powers' entropies of ~1e-7 nats, where
    # the eigen-solver's last bits (BLAS-dependent) are a relative 1e-9
    np.testing.assert_allclose(entropy, expected, rtol=1e-9, atol=1e-13)
    assert t == _reference_knee(np.array(expected), np.arange(1, 61))
    assert 1 < t < 60


def test_slower_decay_diffuses_longer():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    chosen = []
    for decay in (0.5, 0.9):
        spectrum = np.r_[1.0, decay ** np.arange(1, 30)]
        chosen.append(choose_t((q * spectrum) @ q.T, 100)[0])
    assert chosen[0] < chosen[1], chosen


# --------------------------------------------------------------------------- embedding


def _groups(epochs: int = 6, per_group: int = 12, samples: int = 120, seed: int = 0,
            constant: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Activations [E, S, U] of two groups of units: group 0 fires for class-0 samples, group 1
    for class-1 samples, each unit with its own noise drifting over the epochs; unit 0 is
    constant over the epochs when ``constant``. Returns (activations, group of each unit)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % 2
    units = 2 * per_group
    group = np.repeat([0, 1], per_group)
    base = rng.normal(size=(samples, units)) * 0.3
    drift = rng.normal(size=(samples, units)) * 0.3
    out = np.empty((epochs, samples, units), np.float32)
    for e in range(epochs):
        signal = (labels[:, None] == group[None, :]) * 2.0
        out[e] = np.maximum(signal + base + drift * e / max(epochs - 1, 1), 0)
    if constant:
        out[:, :, 0] = out[0, :, 0]
    return out, group


@pytest.mark.parametrize("landmarks", [1000, 40])
def test_two_groups_of_units_separate(landmarks):
    activations, group = _groups()
    result = embed_units(zscore_units(activations), MPhateSettings(landmarks=landmarks))
    assert result.positions.shape == (6, 24, 2)
    assert (result.landmarks > 0) == (landmarks < 6 * 24)
    points = result.positions.reshape(-1, 2)
    labels = np.tile(group, 6)
    centres = np.stack([points[labels == g].mean(axis=0) for g in (0, 1)])
    nearest = np.argmin(((points[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)
    assert (nearest == labels).all()
    gap = np.linalg.norm(centres[0] - centres[1])
    spread = max(np.linalg.norm(points[labels == g] - centres[g], axis=1).max() for g in (0, 1))
    assert gap > 1.5 * spread, (gap, spread)


def test_units_constant_over_the_epochs_stay_put():
    """Every unit but units 0-2 turns from one random response pattern to another over the
    epochs; units 0-2 (a stable assembly: one pattern, each with its own fixed noise) keep
    theirs. They stay within a quarter of the distance the others travel (measured: 0.17)."""
    rng = np.random.default_rng(2)
    epochs, samples, units = 8, 100, 30
    start, end = rng.normal(size=(2, samples, units))
    angle = np.linspace(0, np.pi / 2, epochs)
    activations = np.cos(angle)[:, None, None] * start + np.sin(angle)[:, None, None] * end
    pattern = rng.normal(size=samples)
    for unit in range(3):
        activations[:, :, unit] = pattern + 0.2 * rng.normal(size=samples)
    result = embed_units(zscore_units(activations), MPhateSettings())
    p = result.positions.astype(float)
    spread = np.linalg.norm(p - p.mean(axis=0), axis=2).max(axis=0)
    travel = np.linalg.norm(p[-1] - p[0], axis=1)
    assert spread[:3].max() < 0.25 * np.median(travel[3:]), (spread[:3], np.median(travel[3:]))
    assert spread[:3].max() < spread[3:].min()


@pytest.mark.parametrize("landmarks", [1000, 50])
def test_embedding_is_deterministic_and_seeded(landmarks):
    activations, _ = _groups(epochs=5)
    described = zscore_units(activations)
    first = embed_units(described, MPhateSettings(landmarks=landmarks))
    again = embed_units(described, MPhateSettings(landmarks=landmarks))
    np.testing.assert_array_equal(first.positions, again.positions)
    assert first.t == again.t and np.isfinite(first.positions).all()
    assert first.positions.dtype == np.float32


def test_settings_are_checked():
    with pytest.raises(InputError, match="knn_max"):
        MPhateSettings(knn_max=1)
    with pytest.raises(InputError, match="potential"):
        MPhateSettings(potential="cube")
    with pytest.raises(InputError, match="2 units"):
        embed_units(np.zeros((3, 1, 5), np.float32))


def test_log_potential_and_fixed_t():
    activations, group = _groups()
    result = embed_units(zscore_units(activations), MPhateSettings(potential="log", t=7))
    assert result.t == 7
    assert np.isfinite(result.positions).all()


# --------------------------------------------------------------------------- preference


def test_class_preference_and_selectivity():
    labels = np.array([0, 0, 1, 1, 2, 2])
    x = np.zeros((1, 6, 3), np.float32)
    x[0, :, 0] = [0, 0, 0, 0, 3, 3]  # fires for class 2 only
    x[0, :, 1] = [1, 1, 2, 2, 3, 3]  # graded
    # unit 2: dead (constant 0)
    preferred, selectivity = class_preference(x, labels, 4)
    assert preferred[0].tolist() == [2, 2, NO_PREFERENCE]
    np.testing.assert_allclose(selectivity[0], [1.0, (3 - 1.5) / (3 + 1.5), 0.0], rtol=1e-6)


def test_stratified_rows_keep_class_proportions_and_the_seed():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    rows = stratified_rows(labels, 100, seed=0)
    assert np.bincount(labels[rows]).tolist() == [60, 30, 10]
    assert np.array_equal(rows, stratified_rows(labels, 100, seed=0))
    assert not np.array_equal(rows, stratified_rows(labels, 100, seed=1))
    assert np.array_equal(stratified_rows(labels[:50], 100, seed=0), np.arange(50))


def test_gif_epochs_keep_first_and_last():
    assert gif_epochs(5) == [0, 1, 2, 3, 4]
    chosen = gif_epochs(300, 100)
    assert chosen[0] == 0 and chosen[-1] == 299 and len(chosen) == 100


# --------------------------------------------------------------------------- the command


def _invoke(*args: object):
    return CliRunner().invoke(main, ["-q", "units", *(str(a) for a in args)])


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [
        line
        for line in result.output.splitlines()
        if line.strip() and not line.startswith("WARNING timevis_callback.reader")
    ]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory) -> Path:
    """A tiny real run: tests/digits_model.py's CNN (32 units) trained 3 epochs on scikit-learn's
    digits with the callback (epochs 0-3)."""
    import lightning.pytorch as L

    from digits_model import DigitsCNN, loaders
    from timevis_callback import TimeVisCallback

    out = tmp_path_factory.mktemp("units-digits")
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        callbacks=[TimeVisCallback(out / "store", boundary_fraction=0.0, weights="head",
                                   thumbnails=False)],
    )  # fmt: skip
    trainer.fit(DigitsCNN(), train, val)
    return out / "store"


def test_command_on_a_tiny_real_run(digits_store):
    result = _invoke(digits_store, "--samples", "300", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "32 units x 4 epochs (0-3)" in result.output
    out = digits_store / "units"
    for name in ("units.npz", "units.csv", "units.png", "units.gif", "index.html", "summary.json"):
        assert (out / name).is_file(), name
    arrays = load_units(out)
    assert arrays["positions"].shape == (4, 32, 2)
    assert arrays["epochs"].tolist() == [0, 1, 2, 3]
    assert np.isfinite(arrays["positions"]).all()
    assert len(arrays["sample_rows"]) == 300
    assert np.bincount(arrays["sample_labels"], minlength=10).min() >= 25  # stratified
    with open(out / "units.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 32
    assert {r["epoch"] for r in rows} == {"0", "1", "2", "3"}
    row = rows[-1]
    assert float(row["x"]) == pytest.approx(float(arrays["positions"][3, 31, 0]), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"] == 32 and summary["t"] == int(arrays["t"])
    assert sum(summary["samples"]["per_class"].values()) == 300
    assert len(summary["per_epoch"]["displacement"]) == 4
    with Image.open(out / "units.gif") as gif:
        assert gif.n_frames == 4
    with Image.open(out / "units.png") as png:
        assert png.size[0] >= 1200
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<input id="epoch" type="range"' in page and "preferred class" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                page, re.S).group(1))  # fmt: skip
    assert data["epochs"] == [0, 1, 2, 3] and data["units"] == 32


def test_command_is_deterministic_and_refuses_to_overwrite(digits_store, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(digits_store, store, ignore=shutil.ignore_patterns("units"))
    assert _invoke(store, "--epochs", "1-3").exit_code == 0
    first = load_units(store)["positions"]
    before = (store / "units" / "units.npz").read_bytes()
    _one_line_error(_invoke(store, "--epochs", "1-3"), "already exists", "--overwrite")
    assert (store / "units" / "units.npz").read_bytes() == before  # kept as it was
    result = _invoke(store, "--epochs", "1-3", "--overwrite")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_units(store)["positions"], first)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--samples", "1"], ["--samples 1", "at least 2"]),
        (["--epochs", "7-9"], ["not recorded"]),
        (["--t", "0"], ["--t 0", "positive integer"]),
        (["--t", "many"], ["--t many"]),
        (["--landmarks", "2"], ["landmarks=2", "at least 3"]),
        (["--split", "test"], ["tracks 0 test sample", "--split train"]),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, args, fragments):
    store = drifting_clusters(tmp_path / "store", n_train=60, n_test=0, epochs=3)
    _one_line_error(_invoke(store, *args), *fragments)
    assert not (store / "units").exists()


def test_a_missing_store_and_nan_features(tmp_path):
    _one_line_error(_invoke(tmp_path / "nowhere"), "does not exist")
    store = drifting_clusters(tmp_path / "store", n_train=60, n_test=10, epochs=3)
    import h5py

    path = sorted((store / "epochs").iterdir())[1]
    with h5py.File(path, "r+") as f:
        f["features"][3, 2] = np.nan
    _one_line_error(_invoke(store), "NaN", "--epochs")


def test_compute_units_on_a_synthetic_store(tmp_path):
    from timevis_callback import open_run

    store = drifting_clusters(
        tmp_path / "store", n_train=200, n_test=20, dim=16, classes=3, epochs=5
    )
    run = open_run(store)
    result = compute_units(run, run.epochs, samples=90, split="both")
    assert result.positions.shape == (5, 16, 2)
    assert len(result.sample_rows) == 90
    assert set(result.sample_splits.tolist()) <= {"train", "test"}
    assert result.preferred.shape == (5, 16) and result.selectivity.shape == (5, 16)
    assert ((result.selectivity >= 0) & (result.selectivity <= 1)).all()
    assert result.preference_counts().sum(axis=1).tolist() == [16] * 5
    assert np.isnan(result.displacement()[0]) and result.preference_changes()[0] == 0


def test_mphate_module_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, timevis_cli.units.mphate, timevis_cli.units.pipeline; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert mphate.__name__ == "timevis_cli.units.mphate"
