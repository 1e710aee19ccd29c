"""The landscape on a torch device (render.device / --device): it equals the numpy reference on
the CPU, it is computed once in the parent process, and render workers never import torch; each
epoch's landscape agreement (eval's ppr, computed at render time), its warning and its corner
figure; frames that follow a drifting fit."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_callback.head import Head
from timevis_cli.cli import main
from timevis_cli.config import load_config
from timevis_cli.errors import InputError
from timevis_cli.evaluate.loop import evaluate
from timevis_cli.fit.io import load_fit
from timevis_cli.render import playback
from timevis_cli.render.frames import render_epochs
from timevis_cli.render.landscape import (
    Bounds,
    class_dtype,
    classify_grid,
    classify_grid_torch,
    classify_points_torch,
    decode_grid,
    decode_grid_torch,
    grid_points,
    landscape_coarse_to_fine,
)
from timevis_cli.render.lift import SampleLift
from timevis_cli.render.playback import (
    AGREEMENT_FILE,
    FrameBuilder,
    GridLandscapes,
    agreement_summary,
    frame_inputs,
    plan_render,
    warn_low_agreement,
    write_agreement,
)

CUDA = torch.cuda.is_available()
UNIT = Bounds(-2.0, 2.0, -1.5, 2.5)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _mlp_head(rng: np.random.Generator, dim: int = 6, classes: int = 5) -> Head:
    spec = [
        {"type": "Linear", "in_features": dim, "out_features": 8, "bias": True},
        {"type": "GELU"},
        {"type": "Linear", "in_features": 8, "out_features": classes, "bias": True},
    ]
    state = {
        "0.weight": rng.normal(size=(8, dim)),
        "0.bias": rng.normal(size=8),
        "2.weight": rng.normal(size=(classes, 8)),
        "2.bias": rng.normal(size=classes),
    }
    return Head(spec, state)


def _decoder(dim: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim))
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.mul_(4.0)  # features that vary enough over the canvas to cross classes
    return decoder


# --- the functions ---------------------------------------------------------------------------


def test_decode_and_classify_on_the_cpu_equal_the_numpy_path():
    rng = np.random.default_rng(0)
    decoder, head = _decoder(), _mlp_head(rng)

    def numpy_decode(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return decoder(torch.from_numpy(points)).numpy()

    reference = decode_grid(numpy_decode, UNIT, resolution=30, batch_size=128)
    decoded = decode_grid_torch(decoder, UNIT, resolution=30, device="cpu", batch_size=77)
    assert decoded.dtype == torch.float32 and tuple(decoded.shape) == (900, 6)
    np.testing.assert_allclose(decoded.numpy(), reference, rtol=1e-6, atol=1e-6)

    classes_ref, margins_ref = classify_grid(reference, head)
    classes, margins = classify_grid_torch(decoded, head, batch_size=100)
    assert classes.shape == margins.shape == (30, 30)
    assert classes.dtype == np.uint8 and margins.dtype == np.float32
    assert len(np.unique(classes)) >= 2, "the test grid should cross a class boundary"
    np.testing.assert_array_equal(classes, classes_ref)
    np.testing.assert_allclose(margins, margins_ref, rtol=0, atol=1e-5)


def test_classify_grid_torch_checks_its_input():
    head = _mlp_head(np.random.default_rng(1))
    with pytest.raises(InputError, match="square grid"):
        classify_grid_torch(torch.zeros(35, 6), head)
    with pytest.raises(InputError, match="NaN"):
        decode_grid_torch(lambda p: p * torch.nan, UNIT, 4, "cpu")
    with pytest.raises(InputError, match="decode returned shape"):
        decode_grid_torch(lambda p: p[:-1], UNIT, 4, "cpu")


def test_class_dtype_is_the_smallest_that_holds_every_class():
    assert class_dtype(10) == np.uint8 and class_dtype(256) == np.uint8
    assert class_dtype(257) == np.int16 and class_dtype(2**15) == np.int16
    assert class_dtype(2**15 + 1) == np.int32


# --- GridLandscapes on a fitted store --------------------------------------------------------


def _fitted_store(folder, *overrides):
    path = drifting_clusters(folder / "store", n_train=120, n_test=20, classes=4, epochs=4)
    result = invoke(
        "-q", "fit", path, "--set", "training.max_epochs=1", "--set", "reduction.init_size=50",
        "--set", "projector.hidden=32", "--device", "cpu", *overrides,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A default fit: refined, its decoder has one bias per epoch."""
    return _fitted_store(tmp_path_factory.mktemp("device"))


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """A fit whose decoder is shared by every epoch (no refinement)."""
    return _fitted_store(tmp_path_factory.mktemp("shared"), "--set", "refine.enabled=false")


def _plan(store, **settings):
    run = open_run(store)
    fit = load_fit(run)
    overrides = [f"render.{key}={value}" for key, value in settings.items()]
    return run, fit, plan_render(run, fit, load_config(overrides=overrides).render)


@pytest.mark.parametrize("decoder", ["shared", "per-epoch"])
@pytest.mark.parametrize("bounds", ["global", "per-epoch"])
def test_grid_landscapes_on_cpu_equal_the_numpy_reference(store, shared_store, bounds, decoder):
    # landscape_step=1: a per-epoch decoder decodes every pixel too, so both are exact
    path = shared_store if decoder == "shared" else store
    run, fit, plan = _plan(path, resolution=24, bounds=bounds, landscape_step=1, sample_lift="false")
    landscapes = GridLandscapes(run, fit, plan, torch.device("cpu"))
    for epoch in plan.epochs:
        classes, margins = landscapes.grid(epoch)
        decoded = decode_grid(
            lambda points, e=epoch: fit.model.inverse_transform(points, epoch=e),
            plan.bounds[epoch],
            plan.resolution,
        )
        classes_ref, margins_ref = classify_grid(decoded, run.head(epoch))
        np.testing.assert_array_equal(classes, classes_ref)
        np.testing.assert_allclose(margins, margins_ref, rtol=0, atol=1e-5)
    assert set(landscapes.seconds) == {"decode", "heads"}


@pytest.mark.parametrize("decoder", ["shared", "per-epoch"])
def test_the_lifted_landscape_is_the_decoded_logits_plus_the_lift_and_honours_every_train_sample(
    store, shared_store, decoder
):
    run, fit, plan = _plan(shared_store if decoder == "shared" else store, resolution=24, landscape_step=1)
    assert plan.sample_lift  # the default
    landscapes = GridLandscapes(run, fit, plan, torch.device("cpu"))
    train = run.samples.mask("train")
    lifted_somewhere = False
    for epoch in plan.epochs:
        head, positions = run.head(epoch), fit.embedding(epoch)["train"]
        # the lift made independently: numpy decoder and head
        model = head(run.features(epoch)[train])
        lift = SampleLift.from_logits(positions, head(fit.model.inverse_transform(positions, epoch=epoch)), model)
        lifted_somewhere |= lift.n_lifted > 0
        points = grid_points(plan.bounds[epoch], 24)
        logits = head(fit.model.inverse_transform(points, epoch=epoch)) + lift(points)
        classes, _ = landscapes.grid(epoch)
        assert (classes.reshape(-1) == logits.argmax(axis=1)).mean() >= 0.998  # float32 ties aside
        shown = classify_points_torch(
            landscapes._epoch_decode(epoch), head, positions, "cpu", lift=landscapes.lift(epoch)
        )
        np.testing.assert_array_equal(shown, model.argmax(axis=1))  # every train sample, by construction
    assert lifted_somewhere or decoder == "per-epoch"  # the refined fit's decoder agrees already


def test_coarse_to_fine_landscape_matches_the_full_grid_with_fewer_decodes(store):
    run, fit, plan = _plan(store, resolution=60)  # the lattice 0, 2, ..., 58 and the last row 59
    epoch = plan.epochs[-1]
    index = fit.model.decode_index(epoch)
    decoded_points = []

    def decode(points):
        decoded_points.append(len(points))
        return fit.model.projector.decode(points, index)

    head = run.head(epoch)
    full = classify_grid_torch(decode_grid_torch(decode, plan.bounds[epoch], 60, "cpu"), head)
    assert sum(decoded_points) == 60 * 60
    decoded_points.clear()
    classes, margins = landscape_coarse_to_fine(decode, head, plan.bounds[epoch], 60, "cpu", step=2)
    assert sum(decoded_points) < 0.6 * 60 * 60  # the lattice (31 x 31) and the class borders
    assert classes.dtype == full[0].dtype and classes.shape == margins.shape == (60, 60)
    assert len(np.unique(full[0])) >= 2  # a landscape with borders to find
    assert (classes == full[0]).mean() >= 0.99
    lattice = np.r_[np.arange(0, 60, 2), 59]
    np.testing.assert_array_equal(classes[np.ix_(lattice, lattice)], full[0][np.ix_(lattice, lattice)])
    np.testing.assert_allclose(margins[np.ix_(lattice, lattice)], full[1][np.ix_(lattice, lattice)], atol=1e-5)
    assert np.abs(margins - full[1]).mean() < 0.02
    exact = landscape_coarse_to_fine(decode, head, plan.bounds[epoch], 60, "cpu", step=1)
    np.testing.assert_array_equal(exact[0], full[0])


@pytest.mark.parametrize("decoder", ["shared", "per-epoch"])
def test_the_grid_is_decoded_once_with_global_bounds_and_a_shared_decoder(
    store, shared_store, monkeypatch, decoder
):
    run, fit, plan = _plan(
        shared_store if decoder == "shared" else store, resolution=16, bounds="global"
    )
    assert (fit.model.projector.epochs == 0) == (decoder == "shared")
    calls = {"canvas": 0, "epoch": 0}
    canvas, per_epoch = playback.decode_grid_torch, playback.landscape_coarse_to_fine

    def count(kind, real):
        def counted(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)

        return counted

    monkeypatch.setattr(playback, "decode_grid_torch", count("canvas", canvas))
    monkeypatch.setattr(playback, "landscape_coarse_to_fine", count("epoch", per_epoch))
    inputs = list(frame_inputs(GridLandscapes(run, fit, plan, torch.device("cpu")), fit))
    if decoder == "shared":
        assert calls == {"canvas": 1, "epoch": 0}
    else:  # each epoch has its own decoder bias
        assert calls == {"canvas": 0, "epoch": len(plan.epochs)}
    assert len(inputs) == len(plan.epochs)
    for epoch, given in zip(plan.epochs, inputs, strict=True):
        np.testing.assert_array_equal(given.train_points, fit.embedding(epoch)["train"])
        assert given.classes.shape == given.margins.shape == (16, 16)


def test_workers_build_frames_without_torch(store, tmp_path):
    run, fit, plan = _plan(store, resolution=16, epochs="1-2", split="both")
    inputs = list(frame_inputs(GridLandscapes(run, fit, plan, torch.device("cpu")), fit))
    frame = FrameBuilder(plan)(plan.epochs[0], inputs[0])
    assert frame.background.shape == (16, 16, 3) and frame.background.dtype == np.uint8
    assert len(frame.test_points) == len(plan.test_rows) > 0
    options = {"class_names": run.class_names, "size_px": (200, 200)}
    paths = render_epochs(FrameBuilder(plan), plan.epochs, tmp_path, options, jobs=1, inputs=inputs)
    assert [p.name for p in paths] == ["epoch_0001.png", "epoch_0002.png"]
    # what a spawned render worker imports: no torch, so no CUDA either
    code = (
        "import sys, timevis_cli.render.playback, timevis_cli.render.frames; "
        "assert 'torch' not in sys.modules, 'a render worker imports torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the landscape's agreement with the model (ppr) --------------------------------------------


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory):
    """A fit of one training step, no refinement: a landscape that disagrees with the model."""
    path = drifting_clusters(
        tmp_path_factory.mktemp("bad") / "store", n_train=120, n_test=20, classes=4, epochs=4
    )
    result = invoke(
        "-q", "fit", path, "--set", "training.max_epochs=1", "--set", "reduction.init_size=50",
        "--set", "projector.hidden=32", "--device", "cpu", "--set", "refine.enabled=false",
        "--set", "training.min_edges_per_epoch=1000", "--set",
        "training.edges_per_epoch_factor=0.001", "--set", "training.batch_size=1000",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("lifted", [True, False])
@pytest.mark.parametrize("fitted", ["store", "shared_store", "bad_store"])
def test_the_agreement_at_render_time_is_evals(fitted, lifted, request):
    # with the sample lift: the test samples' agreement with the lifted landscape (eval's
    # landscape, test); without: the train samples' with the decoder's own (eval's ppr, train)
    run, fit, plan = _plan(request.getfixturevalue(fitted), resolution=16, sample_lift=str(lifted).lower())
    assert len(plan.train_rows) == int(run.samples.mask("train").sum())  # every sample drawn
    landscapes = GridLandscapes(run, fit, plan, torch.device("cpu"))
    assert landscapes.agreement_split() == ("test" if lifted else "train")
    inputs = list(frame_inputs(landscapes, fit))
    scores = evaluate(run, fit, plan.epochs, k=5, temporal_k=2, knn_backend="torch")
    for epoch, given in zip(plan.epochs, inputs, strict=True):
        assert scores.value("landscape", "train", epoch) == 1.0
        expected = scores.value("landscape", "test", epoch) if lifted else scores.value("ppr", "train", epoch)
        assert given.agreement == landscapes.agreements[epoch]
        assert given.agreement == pytest.approx(expected, abs=1e-12), epoch
        assert FrameBuilder(plan)(epoch, given).agreement == given.agreement


def test_a_bad_fit_warns_once_naming_its_epochs(bad_store, caplog):
    # without the sample lift: the decoder's own agreement at the train samples
    run, fit, plan = _plan(bad_store, resolution=16, sample_lift="false")
    landscapes = GridLandscapes(run, fit, plan, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="timevis_cli.render.playback"):
        list(frame_inputs(landscapes, fit))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    low = [e for e, value in landscapes.agreements.items() if value < 0.9]
    assert low, landscapes.agreements  # one training step: the map knows little
    assert len(warnings) == 1, warnings
    for epoch in low:
        assert f"epoch {epoch} {landscapes.agreements[epoch]:.3f}" in warnings[0]
    assert f"timevis fit {bad_store} --overwrite" in warnings[0]
    result = invoke("render", bad_store, "--resolution", "16", "--no-gif", "--jobs", "1", "--no-sample-lift")
    assert result.exit_code == 0, result.output
    assert result.output.count("the landscape disagrees with the model") == 1
    assert f"epoch {low[0]} " in result.output


def test_agreement_file_summary_and_warning_functions(tmp_path, caplog):
    values = {0: 0.5, 3: 0.95, 7: 0.875, 9: float("nan")}
    path = write_agreement(tmp_path, values)
    assert path.name == AGREEMENT_FILE
    assert json.loads(path.read_text()) == {"0": 0.5, "3": 0.95, "7": 0.875, "9": None}
    assert agreement_summary(values) == "agreement min 0.500 (epoch 0), mean 0.775"
    assert agreement_summary({}) == "agreement n/a (no train sample)"
    assert agreement_summary(values, "test") == "test agreement min 0.500 (epoch 0), mean 0.775"
    with caplog.at_level(logging.WARNING, logger="timevis_cli.render.playback"):
        assert warn_low_agreement(values, "runs/x") == [0, 7]
        assert warn_low_agreement({1: 0.95}) == []
    assert len(caplog.records) == 1
    assert "epoch 0 0.500, epoch 7 0.875" in caplog.records[0].getMessage()


def test_hiding_the_agreement_changes_only_the_frames_corner(bad_store):
    frames = {}
    for shown in ("true", "false"):
        result = invoke(
            "render", bad_store, "--epochs", "2", "--resolution", "24", "--no-gif", "--jobs", "1",
            "--set", f"render.show_agreement={shown}", "--no-sample-lift",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        frames[shown] = np.asarray(Image.open(bad_store / "render" / "epoch_0002.png"))
    rows, cols = np.nonzero((frames["true"] != frames["false"]).any(axis=2))
    assert len(rows) > 50  # the figure is drawn ...
    height, width = frames["true"].shape[:2]
    assert rows.max() < 0.15 * height and cols.max() < 0.35 * width  # ... in the corner only
    corner = frames["true"][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    red = (corner[..., 0] > 150) & (corner[..., 1] < 80) & (corner[..., 2] < 80)
    assert red.sum() > 20  # below 0.9: red


# --- frames that follow a drifting fit ---------------------------------------------------------


def test_frames_follow_a_fitted_drifting_run(tmp_path):
    path = drifting_clusters(
        tmp_path / "store", n_train=120, n_test=20, classes=3, epochs=5, drift=12.0, boundary=True
    )
    result = invoke(
        "-q", "fit", path, "--set", "training.max_epochs=1", "--set", "reduction.init_size=50",
        "--set", "projector.hidden=32", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    def fills(**settings):
        """Per epoch: its train samples' 5-95% extent over its frame's, on x and y; and the
        extent's aspect (longer / shorter)."""
        run, fit, plan = _plan(path, **settings)
        out, aspects = [], []
        for epoch in plan.epochs:
            low, high = np.quantile(fit.embedding(epoch)["train"], [0.05, 0.95], axis=0)
            b = plan.bounds[epoch]
            out.append((high - low) / [b.xmax - b.xmin, b.ymax - b.ymin])
            aspects.append((high - low).max() / (high - low).min())
        return np.array(out), np.array(aspects)

    (follow, aspects), (shared, _) = fills(), fills(bounds="global")
    # the data fills >= 0.6 of each square frame on both axes, but where the epoch's cloud is
    # over 1 / 0.6 times longer than wide: there its longer axis spans the frame
    assert (follow.max(axis=1) >= 0.6).all(), follow
    roundish = aspects <= 1 / 0.6
    assert roundish.sum() >= 2 and (follow[roundish].min(axis=1) >= 0.6).all(), (follow, aspects)
    assert (follow[~roundish].max(axis=1) > 0.99).all(), (follow, aspects)
    assert shared.max(axis=1).min() < 0.4, shared  # one canvas for all: early frames mostly empty


# --- the CLI ---------------------------------------------------------------------------------


def test_render_device_cpu_through_the_cli(store):
    result = invoke("render", store, "--epochs", "0-1", "--resolution", "16", "--no-gif",
                    "--jobs", "1", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 'device = "cpu"' in (store / "render" / "config.toml").read_text()


def test_render_device_cuda_without_a_gpu_is_one_line(store, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = sorted(p.name for p in (store / "render").glob("*"))
    result = invoke("-q", "render", store, "--device", "cuda", "--resolution", "16")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "device='cuda'" in lines[0] and "no CUDA GPU is available" in lines[0]
    assert sorted(p.name for p in (store / "render").glob("*")) == before


def test_render_device_unknown_names_the_choices(store):
    result = invoke("-q", "render", store, "--device", "tpu")
    assert result.exit_code == 1
    assert 'render.device = "tpu"' in result.output and "cuda:<i>" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_grid_landscapes_on_cuda_match_the_cpu(store):
    run, fit, plan = _plan(store, resolution=64)
    cpu = GridLandscapes(run, fit, plan, torch.device("cpu"))
    gpu = GridLandscapes(run, fit, plan, torch.device("cuda"))
    on_cpu = [cpu.grid(epoch) for epoch in plan.epochs]
    on_gpu = [gpu.grid(epoch) for epoch in plan.epochs]
    for (classes_cpu, margins_cpu), (classes_gpu, margins_gpu) in zip(on_cpu, on_gpu, strict=True):
        same = (classes_cpu == classes_gpu).mean()
        assert same >= 0.999, f"only {same:.4f} of the grid has the same class on the GPU"
        agree = classes_cpu == classes_gpu
        np.testing.assert_allclose(margins_gpu[agree], margins_cpu[agree], rtol=0, atol=1e-4)
    assert fit.model.device.type == "cpu"  # the fit itself was not moved
