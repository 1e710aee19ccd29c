"""fit -> render -> eval through the CLI on a tiny synthetic store, and render/eval bad inputs;
render and eval replace their folder as a whole, and a render that stops midway (an error,
Ctrl-C, SIGKILL) leaves the previous one byte-identical."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from stores import drifting_clusters

from timevis_cli.cli import main
from timevis_cli.render.frames import FrameRenderer


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = drifting_clusters(tmp_path_factory.mktemp("e2e") / "store", n_train=150, n_test=30, epochs=6)
    result = invoke("fit", path, "--set", "training.max_epochs=3", "--set", "reduction.init_size=80")
    assert result.exit_code == 0, result.output
    return path


def test_render_writes_frames_gif_and_html(store):
    result = invoke(
        "render", store, "--split", "both", "--resolution", "40", "--html", "--track", "3,test:2",
        "--jobs", "1",
    )
    assert result.exit_code == 0, result.output
    out = store / "render"
    frames = sorted(out.glob("epoch_*.png"))
    assert [p.name for p in frames] == [f"epoch_{e:04d}.png" for e in range(6)]
    assert Image.open(frames[0]).size == (800, 800)
    gif = Image.open(out / "training.gif")
    assert gif.n_frames == 6 and gif.info.get("loop") == 0
    page = (out / "index.html").read_text()
    assert "class 2" in page and "https://" not in page
    assert (out / "config.toml").exists()


def test_render_a_range_per_epoch_bounds_in_two_processes(store):
    result = invoke("render", store, "--epochs", "2-4", "--bounds", "per-epoch", "--no-gif", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "3 frames" in result.output


def test_eval_writes_metrics(store):
    result = invoke("eval", store, "--k", "10", "--temporal-k", "3")
    assert result.exit_code == 0, result.output
    out = store / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {row["epoch"] for row in metrics["per_epoch"]} == set(range(6))
    table = (out / "metrics.md").read_text()
    assert "nnpv" in table and "ppr" in table
    assert Image.open(out / "metrics.png").size[0] >= 800
    nnpv = [row["nnpv"]["paper"] for row in metrics["per_epoch"] if row["split"] == "train"]
    assert min(nnpv) > 0.15, nnpv


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "--epochs", "9-12"], "not recorded"),
        (["render", "--epochs", "4-2"], "inverted"),
        (["render", "--resolution", "5"], "render.resolution"),
        (["render", "--track", "3"], "add --html"),
        (["eval", "--epochs", "7"], "not recorded"),
        (["eval", "--k", "1000"], "k=1000"),
    ],
)
def test_bad_render_and_eval_requests(store, args, message):
    result = invoke(args[0], store, *args[1:])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_render_without_a_fit_says_to_fit_first(tmp_path):
    path = drifting_clusters(tmp_path / "s", n_train=40, n_test=10, epochs=2)
    for command in ("render", "eval"):
        result = invoke(command, path)
        assert result.exit_code == 1
        assert f"timevis fit {path}" in result.output


def test_render_into_an_unwritable_folder(store, monkeypatch):
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # tests run as root: permissions would not stop it
        if self.parent == store:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = invoke("-q", "render", store, "--no-gif")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: cannot write {store / 'render'} (Read-only file system); "
        + ("the previous render/ is kept as it was" if (store / "render").exists() else
           "no render/ was written")
        + f"; make {store} writable, or copy the run store to a writable folder, then run again"
    )  # fmt: skip


def test_mp4_without_the_video_extra_names_the_install(store, monkeypatch):
    import timevis_cli.render.animate as animate

    def missing():
        raise animate.MissingVideoDependencyError('pip install "timevis[video]"')

    monkeypatch.setattr(animate, "_import_video_writer", missing)
    result = invoke("render", store, "--mp4", "--no-gif", "--epochs", "0-1")
    assert result.exit_code == 1 and 'pip install "timevis[video]"' in result.output


def test_a_fit_of_another_run_is_refused(store, tmp_path):
    other = drifting_clusters(tmp_path / "other", n_train=40, n_test=10, epochs=2, seed=5)
    import shutil

    shutil.copytree(store / "fit", other / "fit")
    result = invoke("render", other)
    assert result.exit_code == 1 and "another run" in result.output


# --- render and eval replace their folder as a whole --------------------------------------------
FAST_RENDER = ("--resolution", "16", "--jobs", "1")


def _copy(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "store"))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _hidden(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def test_rerendering_fewer_epochs_leaves_no_old_frames(store, tmp_path):
    run = _copy(store, tmp_path)
    result = invoke("render", run, "--html", *FAST_RENDER)
    assert result.exit_code == 0, result.output
    out = run / "render"
    assert len(_files(out)) == 10  # 6 frames, agreement, GIF, page, config
    assert (  # the paths printed are the final ones, not the temporary folder's
        f"wrote 6 frames (epoch_0000.png ... epoch_0005.png), {out / 'agreement.json'}, "
        f"{out / 'training.gif'}, {out / 'index.html'} into {out}"
    ) in result.output
    page = (out / "index.html").read_text()
    assert ".render." not in page and "epoch_0001.png" not in page  # backgrounds are embedded

    result = invoke("render", run, "--epochs", "2-3", "--no-gif", *FAST_RENDER)
    assert result.exit_code == 0, result.output
    assert sorted(_files(run / "render")) == [
        "agreement.json", "config.toml", "epoch_0002.png", "epoch_0003.png"
    ]
    assert f"replaced {run / 'render'}/ (previous: 10 files)" in result.output
    assert (
        f"wrote 2 frames (epoch_0002.png ... epoch_0003.png), {run / 'render' / 'agreement.json'} "
        f"into {run / 'render'}"
    ) in (
        result.output
    )
    assert "/.render." not in result.output  # every path printed or logged is the final one
    assert _hidden(run) == []


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt(), RuntimeError("boom")],
    ids=["disk-full", "ctrl-c", "crash"],
)
def test_a_render_that_stops_midway_keeps_the_previous_render_byte_identical(
    store, tmp_path, monkeypatch, error
):
    run = _copy(store, tmp_path)
    assert invoke("render", run, "--html", *FAST_RENDER).exit_code == 0
    before = _files(run / "render")
    real, drawn = FrameRenderer.save_png, []

    def fails_after_two_frames(self, frame, path):
        if len(drawn) == 2:
            raise error
        drawn.append(Path(path))
        return real(self, frame, path)

    monkeypatch.setattr(FrameRenderer, "save_png", fails_after_two_frames)
    # other frames than the previous render's (another resolution), fewer epochs, no page
    result = invoke("-q", "render", run, "--epochs", "1-4", "--resolution", "24", "--jobs", "1")
    assert result.exit_code == 1, result.output
    assert len(drawn) == 2 and all(path.parent.name.startswith(".render.") for path in drawn)
    assert _files(run / "render") == before
    assert _hidden(run) == []
    if isinstance(error, OSError):
        assert result.output.strip().startswith(
            f"Error: cannot write {run / 'render'} (No space left on device); the previous "
            "render/ is kept as it was; free space on the disk of"
        )


KILLED_RENDER = """
import sys, time
from timevis_cli.render.frames import FrameRenderer

real = FrameRenderer.save_png


def save_then_hang(self, frame, path):
    written = real(self, frame, path)
    print(path, flush=True)
    time.sleep(600)  # SIGKILLed here, after its first frame
    return written


FrameRenderer.save_png = save_then_hang
from timevis_cli.cli import main

main(["-q", "render", sys.argv[1], "--epochs", "1-4", "--resolution", "24", "--jobs", "1"])
"""


def test_a_sigkilled_render_keeps_the_previous_render_and_the_next_cleans_up(store, tmp_path):
    run = _copy(store, tmp_path)
    assert invoke("render", run, *FAST_RENDER).exit_code == 0
    before = _files(run / "render")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RENDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        frame = Path(proc.stdout.readline().strip())  # the first new frame is on disk
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert frame.name == "epoch_0001.png" and frame.is_file()
    assert frame.parent.parent == run and frame.parent.name.startswith(".render.")
    assert _files(run / "render") == before
    assert _hidden(run) == [frame.parent.name]

    result = invoke("render", run, "--epochs", "1-2", "--no-gif", *FAST_RENDER)
    assert result.exit_code == 0, result.output
    assert f"removing {frame.parent}, left by a writer of render/" in result.output
    assert _hidden(run) == []
    assert sorted(_files(run / "render")) == [
        "agreement.json", "config.toml", "epoch_0001.png", "epoch_0002.png"
    ]


def test_eval_rerun_with_other_options_leaves_only_the_new_files(store, tmp_path):
    run = _copy(store, tmp_path)
    assert invoke("eval", run, "--k", "10", "--temporal-k", "3").exit_code == 0
    (run / "eval" / "notes.txt").write_text("written into eval/ by hand")

    result = invoke("eval", run, "--epochs", "2-4", "--k", "5", "--temporal-k", "1")
    assert result.exit_code == 0, result.output
    assert sorted(_files(run / "eval")) == ["metrics.json", "metrics.md", "metrics.png"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {row["epoch"] for row in metrics["per_epoch"]} == {2, 3, 4}
    assert f"replaced {run / 'eval'}/ (previous: 4 files)" in result.output
    assert _hidden(run) == []


@pytest.mark.parametrize("command", ["render", "eval"])
def test_render_and_eval_help_say_they_replace_their_folder(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"replaces RUN_DIR/{command}/ as a whole (no --overwrite" in text
    assert "untouched until the new one is complete" in text


def test_render_writes_the_agreement_and_summarises_it(store):
    result = invoke("-q", "render", store, "--resolution", "40", "--no-gif", "--jobs", "1")
    assert result.exit_code == 0, result.output
    agreement = json.loads((store / "render" / "agreement.json").read_text())
    assert sorted(agreement) == [str(e) for e in range(6)]
    assert all(0.0 <= v <= 1.0 for v in agreement.values())
    low = min(agreement.values())
    assert f"agreement min {low:.3f}"[:-1] in result.output.replace("\n", " ")


def test_no_agreement_flag_leaves_the_corner_empty(store):
    shown = invoke("-q", "render", store, "--epochs", "3", "--resolution", "40", "--no-gif", "--jobs", "1")
    assert shown.exit_code == 0, shown.output
    with_badge = np.asarray(Image.open(store / "render" / "epoch_0003.png").convert("RGB"))
    hidden = invoke(
        "-q", "render", store, "--epochs", "3", "--resolution", "40", "--no-gif", "--jobs", "1",
        "--no-agreement",
    )
    assert hidden.exit_code == 0, hidden.output
    without = np.asarray(Image.open(store / "render" / "epoch_0003.png").convert("RGB"))
    assert not np.array_equal(with_badge, without)


def test_eval_prints_each_metrics_mean_and_worst_epoch(store):
    result = invoke("-q", "eval", store, "--k", "10", "--temporal-k", "3")
    assert result.exit_code == 0, result.output
    assert "worst" in result.output and "(epoch " in result.output
