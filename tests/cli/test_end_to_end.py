"""fit -> render -> eval through the CLI on a tiny synthetic store, and render/eval bad inputs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image
from stores import drifting_clusters

from timevis_cli.cli import main


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
    import os

    real_access = os.access
    monkeypatch.setattr(
        "timevis_cli.cli.os.access", lambda path, mode: mode != os.W_OK and real_access(path, mode)
    )
    result = invoke("render", store, "--no-gif")
    assert result.exit_code == 1 and "not writable" in result.output


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
