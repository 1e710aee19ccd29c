"""``timevis info`` through click's CliRunner, on stores made by the writer."""

from __future__ import annotations

import io
import json
import logging

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from timevis_callback import schema
from timevis_callback.writer import Boundary, RunHeader, write_epoch, write_run
from timevis_cli.cli import main


def make_store(path, epochs=(0, 1, 2), n_train=40, n_test=10, dim=6, classes=3):
    rng = np.random.default_rng(0)
    n = n_train + n_test
    header = RunHeader(
        run_id="abc123",
        feature_layer="fc",
        feature_io="input",
        feature_dim=dim,
        num_classes=classes,
        class_names=["cat", "dog", "emu"],
        head_spec=[{"type": "Linear", "name": "fc", "in_features": dim, "out_features": classes, "bias": True}],
    )
    write_run(
        path,
        header,
        ids=np.r_[np.arange(n_train), np.arange(n_test)],
        splits=np.r_[np.zeros(n_train), np.ones(n_test)],
        labels=rng.integers(0, classes, n),
        thumbnails=rng.integers(0, 255, (n, 8, 8), dtype=np.uint8),
    )
    for epoch in epochs:
        write_epoch(
            path,
            epoch,
            features=rng.normal(size=(n, dim)).astype(np.float16),
            logits=rng.normal(size=(n, classes)),
            head_state={"0.weight": rng.normal(size=(classes, dim)), "0.bias": np.zeros(classes)},
            boundary=Boundary(rng.normal(size=(4, dim)).astype(np.float16), np.array([[0, 1]] * 4)),
            weights={"fc.weight": rng.normal(size=(classes, dim))} if epoch else None,
            metrics={"val_acc": 0.5},
        )
    return path


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_info_reports_what_is_recorded(tmp_path):
    store = make_store(tmp_path / "s")
    result = invoke("info", store)
    assert result.exit_code == 0, result.output
    assert "0-2 (3 readable)" in result.output
    assert "40 train, 10 test" in result.output
    assert "3: cat, dog, emu" in result.output
    assert "input of 'fc' (dim 6)" in result.output
    assert "12 points in 3 of 3 epochs" in result.output
    assert "full model state in 2 of 3 epochs" in result.output
    assert "UNREADABLE" not in result.output


def test_info_json_has_sizes_per_part(tmp_path):
    store = make_store(tmp_path / "s")
    result = invoke("info", store, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["epochs"] == [0, 1, 2]
    assert info["samples"] == {"train": 40, "test": 10}
    usage = info["disk_bytes"]
    assert usage["features"] >= 3 * 50 * 6 * 2  # float16
    assert usage["weights"] > 0 and usage["boundary"] > 0
    assert info["thumbnail_shape"] == [8, 8]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_info_reports_unreadable_epochs_and_keeps_the_rest(tmp_path, damage):
    store = make_store(tmp_path / "s")
    path = store / schema.EPOCHS_DIR / schema.epoch_filename(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    result = invoke("info", store)
    assert result.exit_code == 0, result.output
    assert "UNREADABLE" in result.output and "epoch 1" in result.output
    assert "0, 2 (2 readable)" in result.output


def test_info_on_a_folder_that_is_not_a_store(tmp_path):
    result = invoke("info", tmp_path)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "not a timevis run store" in result.output and "run.h5" in result.output


def test_info_on_a_missing_folder(tmp_path):
    result = invoke("info", tmp_path / "nope")
    assert result.exit_code == 1 and "does not exist" in result.output


def test_info_on_a_newer_schema(tmp_path):
    store = make_store(tmp_path / "s")
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        f.attrs[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION + 1
    result = invoke("info", store)
    assert result.exit_code == 1
    assert "schema_version 2" in result.output and "pip install -U timevis" in result.output


def test_usage_error_exit_code_is_2():
    assert invoke("info").exit_code == 2
    assert invoke("no-such-command").exit_code == 2


@pytest.mark.parametrize(("flags", "level"), [([], "INFO"), (["-v"], "DEBUG"), (["-q"], "WARNING")])
def test_verbosity_flags_set_the_log_level(tmp_path, flags, level):
    store = make_store(tmp_path / "s")
    result = invoke(*flags, "info", store)
    assert result.exit_code == 0, result.output
    assert logging.getLevelName(logging.getLogger("timevis_cli").level) == level


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_on_a_terminal_clears_the_progress_bar_line_first():
    from timevis_cli.cli import _LineHandler

    record = logging.LogRecord("timevis_cli", logging.INFO, __file__, 1, "kNN: FaissCPU", None, None)
    terminal, pipe = _Terminal(), io.StringIO()
    _LineHandler(terminal).emit(record)
    _LineHandler(pipe).emit(record)
    assert terminal.getvalue() == "\r\x1b[2KkNN: FaissCPU\n"  # the bar's partial line erased
    assert pipe.getvalue() == "kNN: FaissCPU\n"  # a log file gets the plain line
