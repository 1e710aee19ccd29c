"""``bash scripts/demo.sh --quick`` end to end, as a newcomer runs it, with real outputs checked.

The demo (train a CNN on scikit-learn's digits with the callback, fit, render, eval) runs once per
module as a subprocess into a temporary folder (``TIMEVIS_DEMO_OUT``), CPU only, with ``CI=true``.
Its wall time is printed against the 3-minute budget of the issue, never asserted. The checks:
exit code, the store's epochs, every fit/render/eval file (frame size, one GIF frame per epoch,
a self-contained HTML page), the paths printed last, and faithfulness floors relative to a seeded
random projection of the same features scored by the same :func:`~timevis_cli.evaluate.loop.evaluate`
(a pipeline that trains nothing lands near that baseline).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from baselines import embed_linear, global_pca, random_projection
from PIL import Image
from terminal import report as _report

from timevis_callback import open_run
from timevis_cli.config import load_config
from timevis_cli.evaluate.loop import EvalResult, evaluate
from timevis_cli.fit.io import load_fit

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo.sh"
EPOCHS = list(range(6))  # --quick: 5 training epochs plus epoch 0 (before training)
BUDGET_S = 180  # the "--quick under 3 minutes on 2 CPU cores": reported, not asserted
TIMEOUT_S = 840  # below the suite's per-test --timeout=900, so a hang fails with the demo's log
NNPV_MARGIN = 0.1  # the fit's mean nnpv(k) on train must beat the random projection's by this
PPR_FLOOR = 0.9  # on every epoch >= PPR_FROM, train and test
PPR_FROM = 2  # the demo's CNN is past 95% test accuracy from epoch 1 on
SEED = 0


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="module")
def demo(tmp_path_factory, pytestconfig):
    """(completed process, output folder, wall seconds) of ``bash scripts/demo.sh --quick``."""
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "CI": "true", "CUDA_VISIBLE_DEVICES": "", "TIMEVIS_DEMO_OUT": str(out)}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            ["bash", str(DEMO), "--quick"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"demo.sh --quick ran past {TIMEOUT_S} s; its output:\n{_tail(output or '')}")
    seconds = time.perf_counter() - started
    verdict = "within" if seconds <= BUDGET_S else "OVER"
    _report(
        pytestconfig,
        f"\ndemo.sh --quick: {seconds:.0f} s wall ({verdict} the {BUDGET_S} s budget for 2 CPU "
        f"cores; this machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})",
    )
    return done, out, seconds


@pytest.fixture(scope="module")
def store(demo) -> Path:
    done, out, _ = demo
    assert done.returncode == 0, (
        f"demo.sh --quick exited {done.returncode}\nstdout:\n{_tail(done.stdout)}\n"
        f"stderr:\n{_tail(done.stderr)}"
    )
    return out / "store"


@pytest.fixture(scope="module")
def scores(store):
    """(the demo's own eval/metrics.json, the random projection scored the same way)."""
    ours = EvalResult.from_json((store / "eval" / "metrics.json").read_text())
    torch.set_num_threads(1)
    run = open_run(store)
    fitted = load_fit(run)
    boundary = [fitted.embedding(epoch)["boundary_features"] for epoch in ours.epochs]
    projection = random_projection(run.feature_dim, seed=SEED)
    baseline = embed_linear(run, projection, ours.epochs, boundary)
    backend = load_config().knn.backend
    theirs = evaluate(run, baseline, ours.epochs, ours.k, ours.temporal_k, backend)
    train = run.samples.mask("train")
    pca = global_pca([run.features(epoch)[train] for epoch in ours.epochs])
    linear = evaluate(
        run, embed_linear(run, pca, ours.epochs, boundary), ours.epochs, ours.k, ours.temporal_k,
        backend,
    )  # fmt: skip
    for split in ours.splits:
        print(
            f"{split}: nnpv({ours.k}) fit {ours.value('nnpv', split):.3f} vs random projection "
            f"{theirs.value('nnpv', split):.3f}; ppr fit {_series(ours, 'ppr', split)} vs random "
            f"projection {_series(theirs, 'ppr', split)}; global PCA nnpv "
            f"{linear.value('nnpv', split):.3f}, temp_l {linear.value('temp_l', split):.3f}"
        )
    return ours, theirs, linear


def _series(result: EvalResult, metric: str, split: str) -> str:
    pairs = zip(result.epochs, result.series(metric, split), strict=True)
    return "{" + ", ".join(f"{epoch}: {value:.3f}" for epoch, value in pairs) + "}"


# --------------------------------------------------------------------------- cheap


def test_an_unknown_option_fails_before_any_setup():
    done = subprocess.run(
        ["bash", str(DEMO), "--quik"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unknown option --quik" in done.stderr and "[--quick]" in done.stderr


# --------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_demo_ends_by_printing_where_the_outputs_are(demo, store):
    done, _, _ = demo
    last = [line for line in done.stdout.splitlines() if line.strip()][-3:]
    printed = [Path(line.split(":", 1)[1].split("(")[0].strip()) for line in last]
    assert printed == [
        store / "render" / "training.gif",
        store / "render" / "index.html",
        store / "eval" / "metrics.md",
    ], "\n".join(last)
    assert all(path.is_file() for path in printed)


@pytest.mark.slow
def test_store_holds_epochs_0_to_5(store):
    run = open_run(store)
    assert run.epochs == EPOCHS
    assert run.feature_dim == 512
    assert int(run.samples.mask("train").sum()) == 1500
    assert int(run.samples.mask("test").sum()) == 297
    test = run.samples.mask("test")
    accuracy = (run.logits(EPOCHS[-1], split="test").argmax(1) == run.samples.label[test]).mean()
    assert accuracy > 0.9, f"the demo's CNN did not learn (test accuracy {accuracy:.2f})"


@pytest.mark.slow
def test_fit_outputs(store):
    fit_dir = store / "fit"
    for name in ("projector.pt", "embedding.h5", "fit.json"):
        assert (fit_dir / name).is_file(), name
    saved = torch.load(fit_dir / "projector.pt", map_location="cpu", weights_only=True)
    assert saved["epochs"] == EPOCHS
    report = json.loads((fit_dir / "fit.json").read_text())
    assert report["run_id"] == open_run(store).run_id
    assert load_fit(open_run(store)).epochs == EPOCHS


@pytest.mark.slow
def test_one_frame_of_the_configured_size_per_epoch(store):
    render = store / "render"
    size = tomllib.loads((render / "config.toml").read_text())["render"]["size_px"]
    frames = sorted(render.glob("epoch_*.png"))
    assert [p.name for p in frames] == [f"epoch_{e:04d}.png" for e in EPOCHS]
    for frame in frames:
        with Image.open(frame) as image:
            assert image.size == (size, size), frame.name


@pytest.mark.slow
def test_gif_has_one_frame_per_epoch(store):
    with Image.open(store / "render" / "training.gif") as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == len(EPOCHS)


@pytest.mark.slow
def test_html_page_is_self_contained(store):
    page = (store / "render" / "index.html").read_text(encoding="utf-8")
    assert len(page) > 10_000 and "<html" in page.lower()
    remote = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//[^"'\s>]*""", page, re.I)
    assert not remote, f"index.html loads from the network: {remote[:5]}"
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", page, re.I)


@pytest.mark.slow
def test_eval_outputs(store):
    eval_dir = store / "eval"
    for name in ("metrics.json", "metrics.md", "metrics.png"):
        assert (eval_dir / name).is_file(), name
    result = EvalResult.from_json((eval_dir / "metrics.json").read_text())
    assert result.epochs == EPOCHS and result.splits == ["train", "test"]
    table = (eval_dir / "metrics.md").read_text()
    assert "## Train" in table and "## Test" in table and "nnpv(15)" in table
    with Image.open(eval_dir / "metrics.png") as image:
        assert image.format == "PNG" and image.size[0] >= 800


@pytest.mark.slow
def test_neighbours_beat_a_random_projection(scores):
    ours, theirs, _ = scores
    mine, baseline = ours.value("nnpv", "train"), theirs.value("nnpv", "train")
    assert mine > baseline + NNPV_MARGIN, (
        f"mean nnpv({ours.k}) train: demo fit {mine:.3f}, random projection {baseline:.3f} "
        f"(needs > {baseline + NNPV_MARGIN:.3f})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test"])
def test_predictions_survive_the_round_trip(scores, split):
    ours, theirs, _ = scores
    late = [epoch for epoch in ours.epochs if epoch >= PPR_FROM]
    worst = min(ours.value("ppr", split, epoch) for epoch in late)
    assert worst > PPR_FLOOR, (
        f"ppr {split}, epochs >= {PPR_FROM} must be > {PPR_FLOOR}: demo fit "
        f"{_series(ours, 'ppr', split)}; random projection {_series(theirs, 'ppr', split)}"
    )


#: temp_l's spread over fit seeds on the quick demo's store (0.741, 0.756, 0.758 for seeds 2, 1, 0)
TEMP_L_SEED_SPREAD = 0.02


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["nnpv", "temp_l"])
def test_default_fit_beats_a_global_pca(scores, metric):
    """docs/faithfulness.md's floor: neighbours (space) of the default fit above one global PCA
    of all epochs, scored the same way on the same store; nearest epochs (time) no worse than
    the PCA by more than the fit's spread over seeds on this 6-epoch run (0.02 measured: temp_l
    0.741-0.758 for seeds 0-2 against the PCA's 0.767 on one recording; docs/faithfulness.md)."""
    ours, _, pca = scores
    mine, theirs = ours.value(metric, "train"), pca.value(metric, "train")
    margin = TEMP_L_SEED_SPREAD if metric == "temp_l" else 0.0
    assert mine > theirs - margin, (
        f"{metric} train: default fit {mine:.3f}, global PCA {theirs:.3f}"
    )


# --------------------------------------------------------------------------- continual learning

CONTINUAL_EPOCHS = 4  # digits 0-4 for training epochs 1-2, then digits 5-9 for epochs 3-4
CONTINUAL_TIMEOUT_S = 600


def _demo_train_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_train", REPO / "scripts" / "demo_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_sampler_gives_task_a_then_task_b():
    import numpy as np

    sampler = _demo_train_module().TaskSampler(
        [np.arange(0, 10), np.arange(100, 112)], switch=2, seed=0
    )
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen.append(list(sampler))
    assert all(len(order) == len(sampler) == 10 for order in seen)
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(10)) and seen[0] != seen[1]
    assert all(100 <= i < 112 for i in seen[2] + seen[3])


def test_continual_needs_two_epochs():
    import sys

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_train.py"), "/nonexistent", "--epochs", "1",
         "--scenario", "continual"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "needs at least 2" in done.stderr


@pytest.fixture(scope="module")
def continual(tmp_path_factory, pytestconfig) -> Path:
    """``demo_train.py --scenario continual`` on scikit-learn's digits, 2 + 2 epochs: the
    output folder (store, continual.json)."""
    import sys

    out = tmp_path_factory.mktemp("continual")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_train.py"), str(out), "--data", "digits",
         "--epochs", str(CONTINUAL_EPOCHS), "--scenario", "continual"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=CONTINUAL_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, _tail(done.stderr)
    _report(pytestconfig, f"\ncontinual digits training: {time.perf_counter() - started:.0f} s")
    return out


@pytest.mark.slow
def test_continual_tracks_every_digit_and_names_the_switch(continual):
    record = json.loads((continual / "continual.json").read_text())
    assert record["task_a"] == [0, 1, 2, 3, 4] and record["task_b"] == [5, 6, 7, 8, 9]
    assert record["last_epoch_a"] == 2 and record["first_epoch_b"] == 3
    run = open_run(continual / "store")
    assert run.epochs == list(range(CONTINUAL_EPOCHS + 1))
    for split in ("train", "test"):
        labels = run.samples.label[run.samples.mask(split)]
        assert sorted(set(labels.tolist())) == list(range(10)), split


@pytest.mark.slow
def test_continual_task_a_accuracy_drops_after_the_switch(continual):
    record = json.loads((continual / "continual.json").read_text())
    run = open_run(continual / "store")
    test = run.samples.mask("test")
    labels = run.samples.label[test]
    task_a = labels <= 4

    def accuracy(epoch: int, rows) -> float:
        return float((run.logits(epoch, "test").argmax(1)[rows] == labels[rows]).mean())

    before, after = record["last_epoch_a"], record["first_epoch_b"]
    print(
        "task-A test accuracy per epoch:",
        {epoch: round(accuracy(epoch, task_a), 3) for epoch in run.epochs},
        "task B:",
        {epoch: round(accuracy(epoch, ~task_a), 3) for epoch in run.epochs},
    )
    assert accuracy(before, task_a) > 0.85  # task A learned
    assert accuracy(after, task_a) < accuracy(before, task_a) - 0.5  # and forgotten
    assert accuracy(CONTINUAL_EPOCHS, ~task_a) > 0.7  # task B learned


@pytest.mark.slow
def test_continual_forgetting_events_peak_at_the_switch(continual):
    from click.testing import CliRunner

    from timevis_cli.cli import main

    record = json.loads((continual / "continual.json").read_text())
    store = continual / "store"
    result = CliRunner().invoke(main, ["-q", "dynamics", str(store), "--split", "both"])
    assert result.exit_code == 0, result.output
    summary = json.loads((store / "dynamics" / "summary.json").read_text())
    for split in ("train", "test"):
        per_epoch = summary["splits"][split]["per_epoch"]
        events = per_epoch["forgetting"]
        peak = per_epoch["epoch"][max(range(len(events)), key=events.__getitem__)]
        shown = dict(zip(per_epoch["epoch"], events, strict=True))
        print(split, "forgetting events per epoch:", shown)
        assert abs(peak - record["first_epoch_b"]) <= 2, (split, peak, events)
        assert max(events) > 0.3 * summary["splits"][split]["samples"] / 2


@pytest.mark.slow
def test_continual_units_turn_to_task_b(continual):
    from click.testing import CliRunner

    from timevis_cli.cli import main

    record = json.loads((continual / "continual.json").read_text())
    store = continual / "store"
    result = CliRunner().invoke(
        main, ["-q", "units", str(store), "--samples", "200", "--landmarks", "300", "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((store / "units" / "summary.json").read_text())
    per_epoch = summary["per_epoch"]
    changes = per_epoch["preference_changes"]
    late = [e for e in per_epoch["epoch"] if e >= 1]  # epoch 0 -> 1: the untrained network
    peak = max(late, key=lambda e: changes[per_epoch["epoch"].index(e)])
    assert abs(peak - record["first_epoch_b"]) <= 2, changes
    preferring = per_epoch["units_preferring"]

    def share_b(index: int) -> float:
        b = sum(preferring[str(d)][index] for d in record["task_b"])
        return b / max(1, sum(preferring[str(d)][index] for d in range(10)))

    a_end = per_epoch["epoch"].index(record["last_epoch_a"])
    assert share_b(a_end) < 0.3 < 0.7 < share_b(len(per_epoch["epoch"]) - 1), (
        share_b(a_end),
        share_b(-1),
    )
