"""Damaged run stores through the CLI.

One damaged epoch file (an attribute of the wrong type, a dataset of the wrong dtype or shape, a
head that does not fit run.h5's head_spec or holds NaN) is listed as UNREADABLE by ``timevis
info``, named once (file and problem) by every command, and ``fit``, ``render`` and ``eval`` go
on with the other epochs. A damaged run.h5 (the file every epoch depends on) is a one-line
error naming it; an informational attribute that is not text still gives a readable summary.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from stores import drifting_clusters

from timevis_callback import schema
from timevis_cli.cli import main

DAMAGED = 2  # the epoch each case damages; epochs 0, 1 and 3 stay whole
FAST = (
    "--set", "training.max_epochs=1",
    "--set", "training.min_edges_per_epoch=2000",
    "--set", "reduction.init_size=30",
    "--set", "projector.hidden=16",
    "--set", "refine.enabled=false",
    "--set", "knn.n_neighbors=5",
)  # fmt: skip


def invoke(*args: object):
    return CliRunner().invoke(main, ["-q", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A whole 4-epoch store with boundary points (each case damages a copy)."""
    return drifting_clusters(
        tmp_path_factory.mktemp("damaged") / "store", n_train=60, n_test=12, epochs=4, boundary=True
    )


@pytest.fixture
def store(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "store"))


def epoch_file(store: Path, epoch: int = DAMAGED) -> Path:
    return store / schema.EPOCHS_DIR / schema.epoch_filename(epoch)


# --- ways to damage one epoch file ---------------------------------------------------------
def set_attr(key: str, value: object) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        f.attrs[key] = value

    return damage


def replace(key: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        data = change(f[key][...])
        del f[key]
        f[key] = data

    return damage


def delete(key: str) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        del f[key]

    return damage


def head_as_dataset(f: h5py.File) -> None:
    del f[schema.HEAD_GROUP]
    f[schema.HEAD_GROUP] = np.zeros(3, np.float32)


def weights_as_dataset(f: h5py.File) -> None:
    f[schema.WEIGHTS_GROUP] = np.zeros(3, np.float32)


def with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flat[[0, 5]] = np.nan
    return x


def with_inf(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[0] = np.inf
    return x


@dataclass(frozen=True)
class Case:
    id: str
    damage: Callable[[h5py.File], None]
    problem: str  # the reason named for the damaged file


CASES = [
    Case("schema-version-text", set_attr("schema_version", "one"),
         "attribute 'schema_version' is 'one', not an integer"),
    Case("schema-version-float", set_attr("schema_version", 1.0),
         "attribute 'schema_version' is 1.0, not an integer"),
    Case("schema-version-newer", set_attr("schema_version", 7),
         "schema_version 7 is newer than this timevis reads (1); upgrade with: pip install -U timevis"),
    Case("epoch-attribute-text", set_attr("epoch", "two"), "attribute 'epoch' is 'two', not an integer"),
    Case("epoch-attribute-of-another-file", set_attr("epoch", 5),
         "attribute 'epoch' is 5, but the file is named for epoch 2"),
    Case("global-step-text", set_attr("global_step", "many"),
         "attribute 'global_step' is 'many', not an integer"),
    Case("wall-time-text", set_attr("wall_time", "yesterday"),
         "attribute 'wall_time' is 'yesterday', not a number"),
    Case("metrics-not-json", set_attr("metrics", "{val_acc: 0.9"), "attribute 'metrics' is not valid JSON"),
    Case("metrics-not-numbers", set_attr("metrics", '{"val_acc": "high"}'),
         "attribute 'metrics' is '{\"val_acc\": \"high\"}', not a JSON object of numbers"),
    Case("features-as-strings", replace("features", lambda x: x.astype("S8")),
         "dataset 'features' has dtype |S8, not float16 or float32"),
    Case("features-float64", replace("features", lambda x: x.astype(np.float64)),
         "dataset 'features' has dtype float64, not float16 or float32"),
    Case("features-fewer-samples", replace("features", lambda x: x[:50]),
         "dataset 'features' has shape (50, 16), expected (72, 16) (72 samples x feature_dim 16"),
    Case("features-another-dim", replace("features", lambda x: x[:, :8]),
         "dataset 'features' has shape (72, 8), expected (72, 16)"),
    Case("features-1d", replace("features", lambda x: x.ravel()),
         "dataset 'features' has shape (1152,), expected (72, 16)"),
    Case("logits-integers", replace("logits", lambda x: x.astype(np.int64)),
         "dataset 'logits' has dtype int64, not floating point"),
    Case("logits-fewer-samples", replace("logits", lambda x: x[:-1]),
         "dataset 'logits' has shape (71, 3), expected (72, 3)"),
    Case("head-weight-wrong-shape", replace("head/0.weight", lambda x: x[:, :5]),
         "dataset 'head/0.weight' has shape (3, 5), expected (3, 16) (run.h5's head_spec)"),
    Case("head-weight-as-strings", replace("head/0.weight", lambda x: x.astype("S4")),
         "dataset 'head/0.weight' has dtype |S4, not floating point"),
    Case("head-weight-nan", replace("head/0.weight", with_nan),
         "head parameter 'head/0.weight' holds 2 NaN or inf values"),
    Case("head-bias-inf", replace("head/0.bias", with_inf), "head parameter 'head/0.bias' holds 1 NaN or inf"),
    Case("head-bias-missing", delete("head/0.bias"),
         "head parameters ['0.bias'] are missing (present: ['0.weight'])"),
    Case("head-is-a-dataset", head_as_dataset, "'head' is a dataset, not a group"),
    Case("boundary-pairs-missing", delete("boundary/pair"),
         "'boundary/features' is stored without 'boundary/pair'"),
    Case("boundary-pair-of-unknown-class", replace("boundary/pair", lambda x: x + 5),
         "dataset 'boundary/pair' names classes 5 to 7, outside the run's 3 classes"),
    Case("boundary-pairs-fewer", replace("boundary/pair", lambda x: x[:3]),
         "dataset 'boundary/pair' has shape (3, 2), expected ("),
    Case("boundary-features-another-dim", replace("boundary/features", lambda x: x[:, :4]),
         "dataset 'boundary/features' has shape ("),
    Case("weights-is-a-dataset", weights_as_dataset, "'weights' is a dataset, not a group"),
]  # fmt: skip


def damage(store: Path, case: Case) -> Path:
    path = epoch_file(store)
    with h5py.File(path, "r+") as f:
        case.damage(f)
    return path


def assert_named_once(text: str, path: Path, problem: str) -> None:
    """The file is named once, on the line that names the problem once."""
    assert text.count(str(path)) == 1, text
    assert text.count(problem) == 1, text
    line = next(line for line in text.splitlines() if str(path) in line)
    assert problem in line, text
    assert "Traceback" not in text, text


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_damaged_epoch_is_listed_unreadable_and_fit_uses_the_others(store: Path, case: Case):
    path = damage(store, case)

    info = invoke("info", store)
    assert info.exit_code == 0, info.output
    assert "0-1, 3 (3 readable)" in info.stdout, info.output
    assert_named_once(info.stdout, path, case.problem)
    assert info.stderr.count(str(path)) <= 1, info.stderr  # the reader's warning, if any
    unreadable = next(line for line in info.stdout.splitlines() if line.startswith("UNREADABLE"))
    assert f"epoch {DAMAGED}: " in unreadable

    as_json = invoke("info", store, "--json")
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["epochs"] == [0, 1, 3]
    assert case.problem in summary["unreadable_epochs"][str(DAMAGED)]
    assert summary["unreadable_files"] == {str(DAMAGED): str(path)}

    fit = invoke("fit", store, *FAST)
    assert fit.exit_code == 0, fit.output
    assert "fitted 3 epochs" in fit.output, fit.output
    assert_named_once(fit.output, path, case.problem)
    assert json.loads((store / "fit" / "fit.json").read_text())["epochs"] == [0, 1, 3]


@pytest.mark.parametrize(
    "case",
    [case for case in CASES if case.id in ("features-as-strings", "metrics-not-json", "head-weight-nan")],
    ids=lambda case: case.id,
)
def test_render_and_eval_go_on_with_the_other_epochs(store: Path, case: Case):
    path = damage(store, case)
    assert invoke("fit", store, *FAST).exit_code == 0

    render = invoke("render", store, "--resolution", "16", "--jobs", "2", "--no-gif")
    assert render.exit_code == 0, render.output
    assert_named_once(render.output, path, case.problem)
    frames = sorted(p.name for p in (store / "render").glob("epoch_*.png"))
    assert frames == ["epoch_0000.png", "epoch_0001.png", "epoch_0003.png"]

    evaluated = invoke("eval", store, "--k", "5", "--temporal-k", "1")
    assert evaluated.exit_code == 0, evaluated.output
    assert_named_once(evaluated.output, path, case.problem)
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    assert metrics["epochs"] == [0, 1, 3]


def test_a_head_spec_asking_for_terabytes_is_one_line_naming_run_h5(store: Path):
    spec = [{"type": "Linear", "name": "fc", "in_features": 10**6, "out_features": 10**6, "bias": True}]
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        f.attrs[schema.ATTR_HEAD_SPEC] = json.dumps(spec)
    for command in ("info", "fit", "render", "eval"):
        result = invoke(command, store)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1, result.output
        assert str(store / schema.RUN_FILE) in result.output
        assert (
            "'head_spec' is invalid: head_spec layer 0 (Linear) takes in_features=1000000, but its "
            "input has 16 values per sample (feature_dim=16)"
        ) in result.output


def test_a_consistent_head_spec_with_a_huge_layer_leaves_every_epoch_unreadable(store: Path):
    spec = [
        {"type": "Linear", "name": "a", "in_features": 16, "out_features": 10**9, "bias": False},
        {"type": "Linear", "name": "b", "in_features": 10**9, "out_features": 3, "bias": False},
    ]
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        f.attrs[schema.ATTR_HEAD_SPEC] = json.dumps(spec)
    info = invoke("info", store)
    assert info.exit_code == 0, info.output
    assert "none (0 readable)" in info.stdout
    assert info.stdout.count("head parameters ['1.weight'] are missing") == 4
    fit = invoke("fit", store)
    assert fit.exit_code == 1 and "holds no readable epoch yet" in fit.output


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (schema.SAMPLES_LABEL, lambda x: x[:-3], "dataset 'samples/label' has shape (69,), but 'samples/id' has (72,)"),
        (schema.SAMPLES_SPLIT, lambda x: x + 7, "dataset 'samples/split' holds values other than [0, 1]"),
        (schema.SAMPLES_LABEL, lambda x: x + 3, "dataset 'samples/label' ranges over [3, 5], outside the 3"),
        (schema.SAMPLES_ID, lambda x: x.astype("S4"), "dataset 'samples/id' is dtype |S4, not integer"),
    ],
    ids=["labels-shorter", "split-unknown", "labels-beyond-classes", "ids-as-strings"],
)
def test_damaged_sample_arrays_are_one_line_naming_run_h5(store: Path, key, value, problem):
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        data = value(f[key][...])
        del f[key]
        f[key] = data
    result = invoke("info", store)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and problem in result.output, result.output
    assert str(store / schema.RUN_FILE) in result.output


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (schema.ATTR_FEATURE_DIM, "sixteen", "attribute 'feature_dim' is 'sixteen', not an int >= 1"),
        (schema.ATTR_CLASS_NAMES, json.dumps([1, 2, 3]), "'class_names' is invalid: the names must be strings"),
        (schema.ATTR_CALLBACK_CONFIG, "{not json", "'callback_config' is invalid"),
    ],
    ids=["feature-dim-text", "class-names-numbers", "callback-config-not-json"],
)
def test_damaged_run_attributes_are_one_line_naming_run_h5(store: Path, key, value, problem):
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        f.attrs[key] = value
    result = invoke("info", store)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and problem in result.output, result.output


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (np.arange(3), "[0, 1, 2]"),
        (np.bytes_(b"2024-\xff\xfe"), "2024-\ufffd\ufffd"),
        (np.complex128(1 + 2j), "(1+2j)"),
        (np.void(b"\x00\x01"), "0001"),
        (h5py.Empty("f"), ""),
    ],
    ids=["array", "bytes-not-utf8", "complex", "opaque", "empty"],
)
def test_info_json_shows_a_non_text_attribute_readably(store: Path, value, shown):
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        f.attrs[schema.ATTR_CREATED] = value
        f.attrs[schema.ATTR_TORCH_VERSION] = value
    as_json = invoke("info", store, "--json")
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["created"] == shown and summary["versions"]["torch"] == shown
    text = invoke("info", store)
    assert text.exit_code == 0, text.output
    assert f"torch {shown}," in text.stdout


def test_damaged_thumbnails_are_ignored_with_one_warning(store: Path):
    with h5py.File(store / schema.RUN_FILE, "r+") as f:
        f[schema.SAMPLES_THUMBNAIL] = np.zeros((72, 4), np.float32)
    result = invoke("info", store, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["thumbnail_shape"] is None
    assert result.stderr.count("ignoring 'samples/thumbnail'") == 1, result.stderr
