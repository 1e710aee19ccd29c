"""Bad inputs through the CLI: every one is exit 1 (2 for click usage errors) with a one-line
message naming the problem, no traceback, and no earlier output (store, fit/, render/, eval/)
changed. Each case breaks a fresh copy of one small fitted store.

Commands run with ``-q``: the progress log lines (INFO) are by design and not part of the error.
Where a store holds an unreadable epoch file, the reader's one ``WARNING ... skipping`` line per
file is expected before the error (``reader_warnings``); a case may expect other WARNING lines
(``warns``), such as a fit set aside by a killed writer being put back.

The slow tests SIGKILL a real training (tests/digits_model.py) and read the store while the
training process is still writing it.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_cli.cli import main
from timevis_cli.errors import TimeVisError
from timevis_cli.fit.io import load_fit

SCRIPT = Path(__file__).resolve().parents[1] / "digits_model.py"
FAST = (
    "--set", "training.max_epochs=1",
    "--set", "reduction.init_size=50",
    "--set", "training.edges_per_epoch_factor=1",
    "--set", "projector.hidden=32",
)  # fmt: skip
READER_WARNING = re.compile(r"^WARNING timevis_callback\.reader: skipping .*epoch_\d{4}\.h5: ")
USAGE_LINES = ("Usage: ", "Try '", "Error: ")


def invoke(*args: object):
    return CliRunner().invoke(main, ["-q", *(str(a) for a in args)])


# --- the store every case starts from -------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """4 epochs, fitted, rendered (frames + GIF) and evaluated: every output a case may damage."""
    store = drifting_clusters(
        tmp_path_factory.mktemp("bad_inputs") / "store", n_train=100, n_test=20, epochs=4
    )
    for args in (
        ("fit", store, *FAST),
        ("render", store, "--resolution", "16", "--jobs", "1"),
        ("eval", store, "--k", "5", "--temporal-k", "2"),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    return store


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root with its bytes ("<dir>" for folders)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else "<dir>")
        for p in sorted(root.rglob("*"))
    }


def epoch_file(store: Path, epoch: int) -> Path:
    return store / "epochs" / f"epoch_{epoch:04d}.h5"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garbage(path: Path, size: int = 6000) -> None:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())


def set_attr(path: Path, key: str, value: object) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value


def replace_features(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    with h5py.File(path, "r+") as f:
        data = change(f["features"][...])
        del f["features"]
        f["features"] = data


# --- the cases --------------------------------------------------------------------------------
Setup = Callable[[Path, Path, pytest.MonkeyPatch], "Path | None"]


def _nothing(store: Path, tmp: Path, mp: pytest.MonkeyPatch) -> None:
    return None


@dataclass(frozen=True)
class Case:
    """``args`` use RUN for the run directory handed to the command and TMP for tmp_path."""

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the error line (of the output when exit 0)
    setup: Setup = _nothing  # breaks the store; may return another RUN
    exit: int = 1
    reader_warnings: bool = False  # the store has unreadable epochs: WARNING lines are expected
    warns: str = ""  # a regular expression of other WARNING lines expected before the error
    writes: tuple[str, ...] = ()  # outputs (relative to tmp_path) the command may replace
    check: Callable[[Path], None] | None = None  # more assertions on the store afterwards


def _missing_folder(store, tmp, mp):
    return tmp / "nope"


def _a_file(store, tmp, mp):
    path = tmp / "store.h5"
    path.write_text("not a folder")
    return path


def _empty_folder(store, tmp, mp):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _run_attr(key: str, value: object) -> Setup:
    def setup(store, tmp, mp):
        set_attr(store / "run.h5", key, value)

    return setup


def _drop_labels(store, tmp, mp):
    with h5py.File(store / "run.h5", "r+") as f:
        del f["samples/label"]


def _truncate_epoch(*epochs: int) -> Setup:
    def setup(store, tmp, mp):
        for epoch in epochs:
            truncate(epoch_file(store, epoch))

    return setup


def _garbage_epoch(store, tmp, mp):
    garbage(epoch_file(store, 1))


def _no_epochs(store, tmp, mp):
    shutil.rmtree(store / "epochs")


def _nan_features(store, tmp, mp):
    def change(x):
        x[:4, 1] = np.nan
        return x

    replace_features(epoch_file(store, 2), change)


def _features_of_another_run(store, tmp, mp):
    replace_features(epoch_file(store, 2), lambda x: x[:50])


def _features_of_another_dim(store, tmp, mp):
    replace_features(epoch_file(store, 2), lambda x: x[:, :8])


def _config(text: str) -> Setup:
    def setup(store, tmp, mp):
        (tmp / "config.toml").write_text(text)

    return setup


def _config_folder(store, tmp, mp):
    (tmp / "configs").mkdir()


def _no_cuda(store, tmp, mp):
    mp.setattr(torch.cuda, "is_available", lambda: False)


def _faiss_without_gpu(store, tmp, mp):
    pytest.importorskip("faiss")
    mp.setattr("timevis_cli.fit.neighbors._faiss_gpu_count", lambda faiss: 0)


def _not_installed(module: str) -> Setup:
    def setup(store, tmp, mp):
        mp.setitem(sys.modules, module, None)  # import raises ImportError

    return setup


def _training_fails(store, tmp, mp):
    def fail(*args, **kwargs):
        kwargs["progress"]({"epoch": 0, "loss": 1.0})  # midway: training has started
        raise TimeVisError("simulated failure during training")

    mp.setattr("timevis_cli.fit.pipeline.fit_projector", fail)


def _ctrl_c_in_training(store, tmp, mp):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    mp.setattr("timevis_cli.fit.pipeline.fit_projector", interrupt)


def _disk_full_while_saving(store, tmp, mp):
    # fit/config.toml is the last file written into the temporary folder
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr("timevis_cli.config.Config.to_toml", full)


def _swap_fails(store, tmp, mp):
    real_rename = Path.rename

    def rename(self, target):
        if self.name.endswith(".tmp") and Path(target).name == "fit":
            raise OSError(errno.EIO, "Input/output error (simulated)")
        return real_rename(self, target)

    mp.setattr(Path, "rename", rename)


def _fit_is_a_file(store, tmp, mp):
    shutil.rmtree(store / "fit")
    (store / "fit").write_text("my notes, not a fit")


def _no_fit(store, tmp, mp):
    shutil.rmtree(store / "fit")


def _fit_of_another_store(store, tmp, mp):
    other = drifting_clusters(tmp / "other", n_train=100, n_test=20, epochs=4, seed=5)
    shutil.copytree(store / "fit", other / "fit")
    return other


def _epoch_deleted_after_fit(store, tmp, mp):
    epoch_file(store, 3).unlink()


def _fit_file(name: str, damage: Callable[[Path], None]) -> Setup:
    def setup(store, tmp, mp):
        damage(store / "fit" / name)

    return setup


def _render_is_a_file(store, tmp, mp):
    shutil.rmtree(store / "render")
    (store / "render").write_text("not a folder")


def _no_video_extra(store, tmp, mp):
    import timevis_cli.render.animate as animate

    def missing():
        raise animate.MissingVideoDependencyError(
            'MP4 output needs imageio and imageio-ffmpeg; install them with: pip install "timevis[video]"'
        )

    mp.setattr(animate, "_import_video_writer", missing)


def _computing_fails(mp: pytest.MonkeyPatch) -> None:
    """Computing a fit, an eval or a render's landscapes raises AssertionError (not a one-line
    error): a case passes only when the command refuses before it computes anything."""

    def compute(*args, **kwargs):
        raise AssertionError("computed before checking that the output can be written")

    mp.setattr("timevis_cli.fit.pipeline.fit", compute)
    mp.setattr("timevis_cli.evaluate.loop.evaluate", compute)
    mp.setattr("timevis_cli.render.playback.GridLandscapes", compute)


def _read_only(name: str) -> Setup:
    """RUN_DIR refuses new folders for ``name`` (as a read-only file system would: tests run as
    root, where permissions do not stop writes)."""

    def setup(store, tmp, mp):
        mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if self.name.startswith(f".{name}."):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return mkdir(self, *args, **kwargs)

        mp.setattr(Path, "mkdir", refuse)
        if name != "render":  # render draws inside its temporary folder: nothing comes before
            _computing_fails(mp)

    return setup


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _disk_full_after_frames(count: int) -> Setup:
    def setup(store, tmp, mp):
        from timevis_cli.render.frames import FrameRenderer

        real, written = FrameRenderer.save_png, []

        def save_png(self, frame, path):
            if len(written) == count:
                raise _disk_full()
            written.append(path)
            return real(self, frame, path)

        mp.setattr(FrameRenderer, "save_png", save_png)

    return setup


def _disk_full_writing_the_gif(store, tmp, mp):
    def write_gif(*args, **kwargs):
        raise _disk_full()

    mp.setattr("timevis_cli.render.animate.write_gif", write_gif)


def _disk_full_writing_the_plot(store, tmp, mp):
    def plot(self, path):
        Path(path).write_bytes(b"half a PNG")
        raise _disk_full()

    mp.setattr("timevis_cli.evaluate.loop.EvalResult.plot", plot)


def _eval_is_a_file(store, tmp, mp):
    shutil.rmtree(store / "eval")
    (store / "eval").write_text("my notes, not an eval")
    _computing_fails(mp)


def _edit_projector(change: Callable[[dict], None]) -> Setup:
    def setup(store, tmp, mp):
        path = store / "fit" / "projector.pt"
        saved = torch.load(path, weights_only=True)
        change(saved)
        torch.save(saved, path)

    return setup


def _drop_weight(saved: dict) -> None:
    state = saved["projector"]["state_dict"]
    del state[sorted(state)[0]]


def _fewer_rows(key: str, keep: int) -> Setup:
    def setup(store, tmp, mp):
        with h5py.File(store / "fit" / "embedding.h5", "r+") as f:
            data = f[key][:, :keep]
            del f[key]
            f[key] = data

    return setup


def _fit_set_aside(store, tmp, mp):
    """A fit killed between its two renames: the previous fit/ set aside, no fit/ in place."""
    (store / "fit").rename(store / ".fit.old-0123abcd")
    _computing_fails(mp)


def _fit_restored(store: Path) -> None:
    assert not (store / ".fit.old-0123abcd").exists()
    assert load_fit(open_run(store)).epochs == [0, 1, 2, 3]


def _config_bytes(data: bytes) -> Setup:
    def setup(store, tmp, mp):
        (tmp / "config.toml").write_bytes(data)

    return setup


def _store_without_test_samples(store, tmp, mp):
    other = drifting_clusters(tmp / "train_only", n_train=100, n_test=0, epochs=4)
    result = invoke("fit", other, *FAST, "--set", "refine.enabled=false")
    assert result.exit_code == 0, result.output
    return other


def _fitted_epochs(*epochs: int) -> Callable[[Path], None]:
    def check(store: Path) -> None:
        assert json.loads((store / "fit" / "fit.json").read_text())["epochs"] == list(epochs)
        assert load_fit(open_run(store)).epochs == list(epochs)

    return check


CASES = [
    # where the store is
    Case("missing-folder", ("info", "RUN"), ("run directory", "nope", "does not exist"), _missing_folder),
    Case("file-not-folder", ("fit", "RUN"), ("store.h5 is a file", "pass the run directory"), _a_file),
    Case(
        "folder-not-a-store",
        ("render", "RUN"),
        ("is not a timevis run store", "run.h5 is missing"),
        _empty_folder,
    ),
    # run.h5
    Case("run.h5-truncated", ("info", "RUN"), ("run.h5 cannot be read", "truncated file"),
         lambda store, tmp, mp: truncate(store / "run.h5")),
    Case("run.h5-garbage", ("fit", "RUN"), ("run.h5 cannot be read", "file signature not found"),
         lambda store, tmp, mp: garbage(store / "run.h5")),
    Case(
        "run.h5-newer-schema",
        ("fit", "RUN", "--overwrite"),
        ("schema_version 2 is newer than this timevis reads (1)", "pip install -U timevis"),
        _run_attr("schema_version", 2),
    ),
    Case(
        "run.h5-wrong-format",
        ("info", "RUN"),
        ("'format' is 'keras-run', not 'timevis-run'", "not written by timevis"),
        _run_attr("format", "keras-run"),
    ),
    Case(
        "run.h5-schema-version-not-a-number",
        ("info", "RUN"),
        ("run.h5", "schema_version"),
        _run_attr("schema_version", "one"),
    ),
    Case(
        "run.h5-class-names-corrupted",
        ("info", "RUN"),
        ("run.h5", "class_names"),
        _run_attr("class_names", '["class 0", "class'),
    ),
    Case("run.h5-head-spec-corrupted", ("info", "RUN"), ("attribute 'head_spec' is invalid",),
         _run_attr("head_spec", "[{]")),
    Case("run.h5-without-labels", ("info", "RUN"), ("dataset 'samples/label' is missing",), _drop_labels),
    # epoch files
    Case(
        "epoch-truncated-info",
        ("info", "RUN"),
        ("0-1, 3 (3 readable)", "UNREADABLE", "epoch 2: cannot be read", "truncated file"),
        _truncate_epoch(2),
        exit=0,
        reader_warnings=False,  # info lists it once, as UNREADABLE
    ),
    Case(
        "epoch-truncated-fit-uses-the-rest",
        ("fit", "RUN", "--overwrite", *FAST),
        ("fitted 3 epochs",),
        _truncate_epoch(2),
        exit=0,
        reader_warnings=True,
        writes=("store/fit",),
        check=_fitted_epochs(0, 1, 3),
    ),
    Case(
        "epoch-garbage-info",
        ("info", "RUN"),
        ("0, 2-3 (3 readable)", "epoch 1: cannot be read", "file signature not found"),
        _garbage_epoch,
        exit=0,
        reader_warnings=False,  # info lists it once, as UNREADABLE
    ),
    Case(
        "epoch-garbage-under-a-fit",
        ("render", "RUN", "--jobs", "1"),
        ("covers epochs [1] that the store no longer has", "--overwrite"),
        _garbage_epoch,
        reader_warnings=True,
    ),
    Case(
        "epoch-garbage-named-by-range",
        ("fit", "RUN", "--overwrite", "--epochs", "0-3"),
        ("epoch", "1", "unreadable"),
        _garbage_epoch,
        reader_warnings=True,
    ),
    Case(
        "one-readable-epoch",
        ("fit", "RUN", "--overwrite"),
        ("select 1 epoch ([0])", "at least two"),
        _truncate_epoch(1, 2, 3),
        reader_warnings=True,
    ),
    Case("no-epoch-at-all", ("fit", "RUN", "--overwrite"), ("holds no readable epoch yet",), _no_epochs),
    Case(
        "nan-features",
        ("fit", "RUN", "--overwrite", *FAST),
        ("epoch 2 has 4 samples with NaN", "--epochs"),
        _nan_features,
    ),
    Case(
        "epoch-features-of-another-run",
        ("fit", "RUN", "--overwrite", *FAST),
        ("fitted 3 epochs",),
        _features_of_another_run,
        exit=0,
        reader_warnings=True,
        writes=("store/fit",),
        check=_fitted_epochs(0, 1, 3),
    ),
    Case(
        "epoch-features-of-another-dim",
        ("fit", "RUN", "--overwrite", "--epochs", "0-3"),
        ("names unreadable epoch files (2; epoch 2:", "features"),
        _features_of_another_dim,
        reader_warnings=True,
    ),
    # epoch ranges
    Case("range-not-a-range", ("fit", "RUN", "--overwrite", "--epochs", "3-x"),
         ('fit.epochs = "3-x"', "epoch RANGE")),
    Case("range-inverted", ("fit", "RUN", "--overwrite", "--epochs", "5-2"),
         ("'5-2' is inverted; write 2-5",)),
    Case("range-not-recorded", ("fit", "RUN", "--overwrite", "--epochs", "99"),
         ("not recorded (99); recorded: 0-3",)),
    Case("range-step-zero", ("eval", "RUN", "--epochs", "0-3:0"), ('eval.epochs = "0-3:0"',)),
    Case("render-range-not-fitted", ("render", "RUN", "--epochs", "7"), ("not recorded (7)",)),
    # configuration
    Case("set-unknown-key", ("fit", "RUN", "--set", "training.max_epoch=3"),
         ("unknown key 'training.max_epoch'", "did you mean 'training.max_epochs'?")),
    Case("set-wrong-type", ("fit", "RUN", "--set", "training.max_epochs=abc"),
         ("training.max_epochs", "wrong type: expected an integer")),
    Case("set-out-of-range", ("fit", "RUN", "--set", "training.lr=-1"),
         ("training.lr = -1.0", "out of range: it must be > 0")),
    Case("set-not-finite", ("fit", "RUN", "--set", "training.lr=nan"), ("must be a finite number",)),
    Case("set-without-equals", ("fit", "RUN", "--set", "training.lr"),
         ("must look like section.key=value",)),
    Case("set-ambiguous-key", ("fit", "RUN", "--set", "epochs=1-2"),
         ("'epochs'", "is ambiguous", "fit.epochs")),
    Case("unknown-preset", ("fit", "RUN", "--preset", "mnsit"),
         ("unknown preset 'mnsit'", "did you mean 'mnist'?")),
    Case("config-file-missing", ("fit", "RUN", "--config", "TMP/nope.toml"),
         ("config file", "nope.toml does not exist")),
    Case("config-unknown-section", ("fit", "RUN", "--config", "TMP/config.toml"),
         ("unknown section [foo]", "sections: knn"), _config("[foo]\n")),
    Case("config-misspelt-section", ("fit", "RUN", "--config", "TMP/config.toml"),
         ("unknown key 'trainig.lr'", "did you mean 'training.lr'?"), _config("[trainig]\nlr = 0.1\n")),
    Case("config-not-toml", ("render", "RUN", "--config", "TMP/config.toml"),
         ("config.toml is not valid TOML", "line 1"), _config("[training\nlr = = 0.1\n")),
    Case("config-key-outside-section", ("fit", "RUN", "--config", "TMP/config.toml"),
         ("must be inside a section", "training.lr"), _config("lr = 0.1\n")),
    Case("config-is-a-folder", ("fit", "RUN", "--config", "TMP/configs"), ("is a directory",),
         _config_folder, exit=2),
    # devices and kNN backends
    Case(
        "knn-neighbours-beyond-an-epoch",
        ("fit", "RUN", "--overwrite", *FAST, "--set", "knn.n_neighbors=500"),
        ("knn.n_neighbors=500 needs more points than epoch",),
    ),
    Case("device-cuda-without-gpu", ("fit", "RUN", "--overwrite", "--device", "cuda"),
         ("device='cuda'", "no CUDA GPU is available"), _no_cuda),
    Case("device-unknown", ("fit", "RUN", "--overwrite", "--device", "tpu"),
         ('fit.device = "tpu"', "auto, cpu, cuda or cuda:<i>")),
    Case("knn-faiss-gpu-without-gpu", ("fit", "RUN", "--overwrite", "--knn", "faiss-gpu"),
         ("knn='faiss-gpu' needs a CUDA GPU",), _faiss_without_gpu),
    Case(
        "knn-faiss-cpu-not-installed",
        ("fit", "RUN", "--overwrite", *FAST, "--knn", "faiss-cpu"),
        ("needs FAISS", 'pip install "timevis[cpu]"'),
        _not_installed("faiss"),
    ),
    Case(
        "knn-pynndescent-not-installed",
        ("fit", "RUN", "--overwrite", *FAST, "--knn", "pynndescent"),
        ("needs pynndescent", 'pip install "timevis[nndescent]"'),
        _not_installed("pynndescent"),
    ),
    Case("knn-unknown-choice", ("fit", "RUN", "--knn", "annoy"), ("'annoy' is not one of",), exit=2),
    Case("unknown-option", ("fit", "RUN", "--bogus"), ("No such option '--bogus'",), exit=2),
    Case("resolution-not-a-number", ("render", "RUN", "--resolution", "abc"),
         ("'abc' is not a valid integer",), exit=2),
    # fit outputs
    Case("fit-exists-without-overwrite", ("fit", "RUN", *FAST), ("already exists; pass --overwrite",)),
    Case(
        "fit-fails-during-training",
        ("fit", "RUN", "--overwrite", *FAST),
        ("simulated failure during training",),
        _training_fails,
    ),
    Case("fit-interrupted-by-ctrl-c", ("fit", "RUN", "--overwrite", *FAST), ("Aborted!",),
         _ctrl_c_in_training),
    Case(
        "fit-disk-full-while-saving",
        ("fit", "RUN", "--overwrite", *FAST),
        ("No space left on device",),
        _disk_full_while_saving,
    ),
    Case(
        "fit-swap-fails",
        ("fit", "RUN", "--overwrite", *FAST),
        ("Input/output error",),
        _swap_fails,
    ),
    Case(
        "fit-path-is-a-file-overwrite",
        ("fit", "RUN", "--overwrite", *FAST),
        ("fitted 4 epochs",),
        _fit_is_a_file,
        exit=0,
        writes=("store/fit",),
        check=_fitted_epochs(0, 1, 2, 3),
    ),
    # render and eval
    Case("render-without-fit", ("render", "RUN"), ("has no fit yet; run: timevis fit",), _no_fit),
    Case("eval-without-fit", ("eval", "RUN"), ("has no fit yet; run: timevis fit",), _no_fit),
    Case("render-fit-of-another-store", ("render", "RUN"),
         ("was fitted on another run", "--overwrite"), _fit_of_another_store),
    Case("render-epoch-deleted-after-fit", ("render", "RUN"),
         ("covers epochs [3] that the store no longer has",), _epoch_deleted_after_fit),
    Case("render-embedding-truncated", ("render", "RUN"), ("fit cannot be read", "refit with"),
         _fit_file("embedding.h5", truncate)),
    Case("eval-projector-truncated", ("eval", "RUN"), ("fit cannot be read", "refit with"),
         _fit_file("projector.pt", truncate)),
    Case(
        "render-projector-garbage",
        ("render", "RUN"),
        ("fit cannot be read", "refit with"),
        _fit_file("projector.pt", garbage),
    ),
    Case("render-resolution-5", ("render", "RUN", "--resolution", "5"),
         ("render.resolution = 5", "[16, 2048]")),
    Case("render-jobs-negative", ("render", "RUN", "--jobs", "-1"), ("render.jobs = -1",)),
    Case("render-device-cuda-without-gpu", ("render", "RUN", "--device", "cuda"),
         ("device='cuda'", "no CUDA GPU is available"), _no_cuda),
    Case("render-device-unknown", ("render", "RUN", "--device", "cuda:x"),
         ('render.device = "cuda:x"', "auto, cpu, cuda or cuda:<i>")),
    Case("render-track-unknown-id", ("render", "RUN", "--html", "--track", "9999"),
         ("train sample id 9999 is not drawn",)),
    Case("render-track-unreadable", ("render", "RUN", "--html", "--track", "3,x7"),
         ("cannot read 'x7'",)),
    Case("render-track-without-html", ("render", "RUN", "--track", "3"), ("add --html",)),
    Case(
        "render-folder-is-a-file",
        ("render", "RUN", "--resolution", "16", "--jobs", "1"),
        ("render", "not a folder"),
        _render_is_a_file,
    ),
    Case(
        "render-mp4-without-video-extra",
        ("render", "RUN", "--mp4", "--no-gif", "--resolution", "20", "--jobs", "1"),
        ('pip install "timevis[video]"',),
        _no_video_extra,
    ),
    Case("eval-k-too-large", ("eval", "RUN", "--k", "1000"), ("k=1000 needs more than",)),
    Case("eval-k-zero", ("eval", "RUN", "--k", "0"), ("eval.k = 0", "must be in [1, 1000]")),
    Case("eval-temporal-k-too-large", ("eval", "RUN", "--temporal-k", "9"),
         ("temporal_k=9 must be <= 3",)),
    # writing outputs: a read-only RUN_DIR is found before computing, a full disk keeps the
    # previous output whole
    Case("fit-run-dir-read-only", ("fit", "RUN", "--overwrite", *FAST),
         ("cannot write", "fit (Read-only file system); nothing was computed; make", "writable"),
         _read_only("fit")),
    Case("eval-run-dir-read-only", ("eval", "RUN", "--k", "5", "--temporal-k", "2"),
         ("cannot write", "eval (Read-only file system); nothing was computed",),
         _read_only("eval")),
    Case("render-run-dir-read-only", ("render", "RUN", "--resolution", "24", "--jobs", "1"),
         ("cannot write", "render (Read-only file system); the previous render/ is kept"),
         _read_only("render")),
    Case("render-disk-full-midway", ("render", "RUN", "--resolution", "24", "--jobs", "1"),
         ("render (No space left on device); the previous render/ is kept", "free space"),
         _disk_full_after_frames(2)),
    Case("render-disk-full-writing-the-gif", ("render", "RUN", "--resolution", "24", "--jobs", "1"),
         ("render (No space left on device); the previous render/ is kept",),
         _disk_full_writing_the_gif),
    Case("eval-disk-full-while-writing", ("eval", "RUN", "--k", "4", "--temporal-k", "2"),
         ("eval (No space left on device); the previous eval/ is kept", "free space"),
         _disk_full_writing_the_plot),
    Case("eval-folder-is-a-file", ("eval", "RUN", "--k", "5", "--temporal-k", "2"),
         ("eval is a file, not a folder; move it away",), _eval_is_a_file),
    # huge epoch ranges: refused at once, naming what is recorded
    Case("range-huge-fit", ("fit", "RUN", "--overwrite", "--epochs", "0-2000000000"),
         ("not recorded (4-2000000000); recorded: 0-3",)),
    Case("range-huge-render", ("render", "RUN", "--epochs", "2-2000000000"),
         ("not recorded (4-2000000000); recorded: 0-3",)),
    Case("range-huge-eval", ("eval", "RUN", "--epochs", "1-2000000000:2"),
         ("not recorded (5-1999999999:2); recorded: 0-3",)),
    # damaged or half-replaced fits
    Case("render-projector-without-its-weights", ("render", "RUN"),
         ("projector.pt has no 'projector' entry", "refit with"),
         _edit_projector(lambda saved: saved.pop("projector"))),
    Case("eval-projector-missing-a-weight", ("eval", "RUN"),
         ("projector.pt cannot be used", "Missing key(s)", "refit with"),
         _edit_projector(_drop_weight)),
    Case("render-projector-deleted", ("render", "RUN"),
         ("projector.pt is missing, so the fit in", "refit with"),
         lambda store, tmp, mp: (store / "fit" / "projector.pt").unlink()),
    Case("render-embedding-fewer-rows", ("render", "RUN"),
         ("embedding.h5 holds 50 train samples per epoch, but the store tracks 100", "refit with"),
         _fewer_rows("train", 50)),
    Case("eval-embedding-fewer-test-rows", ("eval", "RUN"),
         ("embedding.h5 holds 5 test samples per epoch, but the store tracks 20", "refit with"),
         _fewer_rows("test", 5)),
    Case("render-fit-set-aside-by-a-killed-fit", ("render", "RUN"),
         (".fit.old-0123abcd holds the fit", "put it back with: mv"), _fit_set_aside),
    Case("fit-set-aside-by-a-killed-fit", ("fit", "RUN", *FAST),
         ("fit already exists; pass --overwrite",), _fit_set_aside,
         warns="restoring fit/ from", writes=("store/fit", "store/.fit.old-0123abcd"),
         check=_fit_restored),
    # configuration: encodings, absurd sizes, a split the store lacks
    Case("config-utf16", ("fit", "RUN", "--config", "TMP/config.toml"),
         ("config.toml is not UTF-8 text (it looks like UTF-16)", "re-save it as UTF-8"),
         _config_bytes("[training]\nlr = 0.1\n".encode("utf-16"))),
    Case("config-latin1", ("render", "RUN", "--config", "TMP/config.toml"),
         ("config.toml is not UTF-8 text (byte 14 is 0xe9)", "iconv"),
         _config_bytes("[render]\n# caf\u00e9\n".encode("latin-1"))),
    Case("set-hidden-absurd", ("fit", "RUN", "--set", "projector.hidden=2e9"),
         ("projector.hidden = 2000000000 in --set is out of range", "[2, 8192]")),
    Case("set-neighbours-absurd", ("fit", "RUN", "--set", "knn.n_neighbors=1000000"),
         ("knn.n_neighbors = 1000000", "[2, 1000]")),
    Case("config-projector-too-large", ("fit", "RUN", "--config", "TMP/config.toml"),
         ("makes 1,073,741,824 hidden-layer weights", "keep 2 x depth x hidden^2"),
         _config("[projector]\nhidden = 8192\ndepth = 8\n")),
    Case("render-split-test-without-test-samples", ("render", "RUN", "--split", "test"),
         ('render.split = "test"', "tracks no test samples (100 train); use --split train"),
         _store_without_test_samples),
]  # fmt: skip


def _param(case: Case):
    return pytest.param(case, id=case.id)


def test_the_corpus_is_large_and_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 24


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input(case: Case, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = tmp_path / "store"
    shutil.copytree(source, store)
    run = case.setup(store, tmp_path, monkeypatch) or store
    args = [str(run) if a == "RUN" else a.replace("TMP", str(tmp_path)) for a in case.args]
    before = snapshot(tmp_path)

    result = invoke(*args)

    out = result.output
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == case.exit, out
    lines = out.strip().splitlines()
    if case.reader_warnings:
        warnings = [line for line in lines if READER_WARNING.match(line)]
        assert warnings, out
        lines = [line for line in lines if not READER_WARNING.match(line)]
    if case.warns:
        warned = [line for line in lines if re.match(f"WARNING .*{case.warns}", line)]
        assert warned, out
        lines = [line for line in lines if line not in warned]
    if case.exit == 0:
        for text in case.expect:
            assert text in out, out
    else:
        if case.exit == 2:  # click's usage block: Usage, Try ... --help, then one Error line
            assert all(line.startswith(USAGE_LINES) for line in lines if line), out
            lines = [line for line in lines if line.startswith("Error: ")]
        assert len(lines) == 1, out
        assert lines[0].startswith(("Error: ", "Aborted!")), out
        for text in case.expect:
            assert text in lines[0], out

    after = snapshot(tmp_path)

    def kept(paths):
        return {p: b for p, b in paths.items() if not p.startswith(case.writes or ("\0",))}

    old, new = kept(before), kept(after)
    changed = sorted(p for p in set(old) | set(new) if old.get(p, "<none>") != new.get(p, "<none>"))
    assert not changed, f"earlier outputs changed: {changed}"
    if store.is_dir():  # no temporary folder left behind (a case may have made hidden ones)
        left = {p for p in after if p.startswith("store/.") and "/" not in p[len("store/") :]}
        assert left <= set(before), sorted(left - set(before))
    if case.check is not None:
        case.check(store)


def test_a_crash_in_training_keeps_the_previous_fit(source, tmp_path, monkeypatch):
    """An unexpected error (not a TimeVisError) midway through training: fit/ untouched."""
    store = tmp_path / "store"
    shutil.copytree(source, store)

    def crash(*args, **kwargs):
        kwargs["progress"]({"epoch": 0, "loss": 1.0})
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr("timevis_cli.fit.pipeline.fit_projector", crash)
    before = snapshot(store)
    result = invoke("fit", store, "--overwrite", *FAST)
    assert result.exit_code != 0
    assert snapshot(store) == before
    assert not [p.name for p in store.iterdir() if p.name.startswith(".")]


def test_disk_full_while_saving_keeps_the_previous_fit(source, tmp_path, monkeypatch):
    """Whatever the message, a failed save leaves the previous fit and no temporary folder."""
    store = tmp_path / "store"
    shutil.copytree(source, store)
    _disk_full_while_saving(store, tmp_path, monkeypatch)
    before = snapshot(store)
    result = invoke("fit", store, "--overwrite", *FAST)
    assert result.exit_code == 1
    assert snapshot(store) == before
    assert not [p.name for p in store.iterdir() if p.name.startswith(".")]
    assert load_fit(open_run(store)).epochs == [0, 1, 2, 3]


# --- real training in another process ----------------------------------------------------------
SLOW_FIT = (
    "--set", "training.max_epochs=2",
    "--set", "reduction.init_size=100",
    "--set", "training.edges_per_epoch_factor=1",
    "--set", "projector.hidden=64",
)  # fmt: skip


class Training:
    """tests/digits_model.py in a subprocess; ``wait_epoch(n)`` returns once epoch n is written."""

    def __init__(self, out: Path, epochs: int, sleep: float):
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(out), "--epochs", str(epochs), "--sleep", str(sleep)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.done: queue.Queue[int | None] = queue.Queue()
        self.last = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("EPOCH_DONE "):
                self.done.put(int(line.split()[1]))
        self.done.put(None)

    def wait_epoch(self, n: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.last < n:
            got = self.done.get(timeout=max(0.1, deadline - time.monotonic()))
            if got is None:
                raise AssertionError(f"training ended (rc {self.proc.wait()}) before epoch {n}")
            self.last = got

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def __enter__(self) -> Training:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def info_json(store: Path) -> dict:
    result = CliRunner().invoke(main, ["-q", "info", str(store), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_info_and_fit_on_what_is_there(tmp_path, seed):
    rng = random.Random(seed)
    stop_after = rng.randint(1, 3)
    with Training(tmp_path, epochs=30, sleep=0.3) as training:
        training.wait_epoch(stop_after)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the next epoch, maybe mid-write
    assert training.proc.returncode == -signal.SIGKILL
    store = tmp_path / "store"

    summary = info_json(store)
    epochs = summary["epochs"]
    assert summary["unreadable_epochs"] == {}
    assert epochs == list(range(len(epochs))) and len(epochs) >= stop_after + 1, epochs
    run = open_run(store)
    for epoch in epochs:
        assert run.features(epoch).shape == (len(run.samples), run.feature_dim)

    assert len(epochs) >= 2
    result = invoke("fit", store, *SLOW_FIT)
    assert result.exit_code == 0, result.output
    assert f"fitted {len(epochs)} epochs" in result.output
    assert load_fit(open_run(store)).epochs == epochs


@pytest.mark.slow
def test_fit_and_render_while_training_still_writes(tmp_path):
    store = tmp_path / "store"
    with Training(tmp_path, epochs=40, sleep=1.0) as training:
        training.wait_epoch(2)
        first = {e: epoch_file(store, e).read_bytes() for e in range(3)}

        result = invoke("fit", store, "--epochs", "0-2", *SLOW_FIT)
        assert result.exit_code == 0, result.output
        assert "fitted 3 epochs" in result.output
        result = invoke(
            "render", store, "--epochs", "0-2", "--resolution", "32", "--jobs", "1", "--no-gif"
        )
        assert result.exit_code == 0, result.output
        assert "3 frames" in result.output

        assert training.proc.poll() is None, "training stopped while fit and render ran"
        written = len(open_run(store).epochs)
        training.wait_epoch(written)  # training goes on writing after the render
    assert training.proc.returncode == -signal.SIGKILL

    summary = info_json(store)
    epochs = summary["epochs"]
    assert summary["unreadable_epochs"] == {}
    assert epochs == list(range(len(epochs))) and len(epochs) > written, (epochs, written)
    assert {e: epoch_file(store, e).read_bytes() for e in range(3)} == first
    assert load_fit(open_run(store)).epochs == [0, 1, 2]
    frames = sorted(p.name for p in (store / "render").glob("epoch_*.png"))
    assert frames == [f"epoch_{e:04d}.png" for e in range(3)]
    assert summary["outputs"] == {"fit": True, "render": True, "eval": False}
