"""Tests of the run store: writer -> reader round trips, atomic writes and reader errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timevis_callback import schema
from timevis_callback.errors import StoreError, StoreVersionError
from timevis_callback.reader import Run, format_epochs, open_run
from timevis_callback.writer import (
    Boundary,
    RunHeader,
    atomic_h5,
    clear_store,
    remove_epochs_after,
    write_epoch,
    write_run,
)

N_TRAIN, N_TEST, DIM, N_CLASSES = 12, 5, 6, 3


def make_header(
    feature_dim: int = DIM, num_classes: int = N_CLASSES, head_spec: list | None = None
) -> RunHeader:
    spec = head_spec or [
        {"type": "Linear", "name": "fc", "in_features": feature_dim, "out_features": num_classes}
    ]
    return RunHeader(
        run_id="run-abc",
        feature_layer="fc",
        feature_io="input",
        feature_dim=feature_dim,
        num_classes=num_classes,
        class_names=[f"class {c}" for c in range(num_classes)],
        head_spec=spec,
        callback_config={"every_n_epochs": 1, "dtype": "float16", "dirpath": Path("/x")},
        versions={"timevis": "0.1.0", "torch": "2.x", "lightning": "2.y"},
    )


def sample_arrays(n_train: int = N_TRAIN, n_test: int = N_TEST, num_classes: int = N_CLASSES):
    n = n_train + n_test
    ids = np.concatenate([np.arange(100, 100 + n_train), np.arange(n_test)]).astype(np.int64)
    splits = np.array([schema.SPLIT_TRAIN] * n_train + [schema.SPLIT_TEST] * n_test)
    labels = np.arange(n) % num_classes
    return ids, splits, labels


def linear_state(rng: np.random.Generator, dim: int = DIM, num_classes: int = N_CLASSES):
    return {
        "0.weight": rng.normal(size=(num_classes, dim)).astype(np.float32),
        "0.bias": rng.normal(size=num_classes).astype(np.float32),
    }


def write_demo_epoch(run_dir: Path, epoch: int, seed: int = 0, **kwargs) -> dict:
    """Write one epoch of random arrays (n = N_TRAIN + N_TEST rows); returns what was written."""
    rng = np.random.default_rng(seed + epoch)
    n = N_TRAIN + N_TEST
    arrays = {
        "features": rng.normal(size=(n, DIM)).astype(kwargs.pop("dtype", np.float32)),
        "logits": rng.normal(size=(n, N_CLASSES)).astype(np.float32),
        "head_state": linear_state(rng),
    }
    write_epoch(run_dir, epoch, **arrays, **kwargs)
    return arrays


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with samples and epochs 0, 1, 2 (epoch 1 with boundary points and weights)."""
    ids, splits, labels = sample_arrays()
    write_run(tmp_path, make_header(), ids, splits, labels)
    write_demo_epoch(tmp_path, 0)
    rng = np.random.default_rng(1)
    write_demo_epoch(
        tmp_path,
        1,
        boundary=Boundary(
            features=rng.normal(size=(4, DIM)).astype(np.float16),
            pair=np.array([[0, 1], [1, 0], [0, 2], [2, 1]]),
        ),
        weights={"fc.weight": np.ones((N_CLASSES, DIM), np.float32)},
    )
    write_demo_epoch(tmp_path, 2)
    return tmp_path


# --- round trip ---------------------------------------------------------------------------


def test_run_file_round_trip(tmp_path: Path) -> None:
    ids, splits, labels = sample_arrays()
    header = make_header()
    path = write_run(tmp_path, header, ids, splits, labels)
    assert path == tmp_path / schema.RUN_FILE
    assert (tmp_path / schema.EPOCHS_DIR).is_dir()

    run = open_run(tmp_path)
    assert isinstance(run, Run)
    assert run.samples.id.dtype == np.int64 and run.samples.split.dtype == np.uint8
    assert run.samples.label.dtype == np.int64
    np.testing.assert_array_equal(run.samples.id, ids)
    np.testing.assert_array_equal(run.samples.split, splits)
    np.testing.assert_array_equal(run.samples.label, labels)
    assert len(run.samples) == N_TRAIN + N_TEST
    assert run.run_id == "run-abc"
    assert run.feature_layer == "fc" and run.feature_io == "input"
    assert run.feature_dim == DIM and run.num_classes == N_CLASSES
    assert run.class_names == ["class 0", "class 1", "class 2"]
    assert run.head_spec == header.head_spec
    assert run.callback_config == {"every_n_epochs": 1, "dtype": "float16", "dirpath": "/x"}
    assert run.attrs[schema.ATTR_FORMAT] == schema.FORMAT_NAME
    assert run.attrs[schema.ATTR_SCHEMA_VERSION] == schema.SCHEMA_VERSION
    assert run.attrs[schema.ATTR_TORCH_VERSION] == "2.x"
    assert run.attrs[schema.ATTR_LIGHTNING_VERSION] == "2.y"
    assert run.attrs[schema.ATTR_TIMEVIS_VERSION] == "0.1.0"
    assert run.epochs == [] and run.bad_epochs == {}
    assert run.thumbnails() is None
    # the JSON attributes are stored as JSON text, readable without timevis
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs[schema.ATTR_HEAD_SPEC]) == header.head_spec
        assert json.loads(f.attrs[schema.ATTR_CLASS_NAMES]) == header.class_names


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_epoch_round_trip(tmp_path: Path, dtype: type) -> None:
    ids, splits, labels = sample_arrays()
    write_run(tmp_path, make_header(), ids, splits, labels)
    rng = np.random.default_rng(3)
    n = len(ids)
    features = rng.normal(size=(n, DIM)).astype(dtype)
    logits = rng.normal(size=(n, N_CLASSES))  # float64 in, float32 stored
    state = linear_state(rng)
    path = write_epoch(
        tmp_path,
        4,
        features=features,
        logits=logits,
        head_state=state,
        global_step=123,
        wall_time=1700000000.5,
        metrics={"train_loss": 0.25, "val_acc": 0.875},
    )
    assert path == tmp_path / schema.EPOCHS_DIR / "epoch_0004.h5"
    with h5py.File(path, "r") as f:
        assert f[schema.FEATURES].dtype == dtype
        assert f[schema.LOGITS].dtype == np.float32
        assert f["head/0.weight"].dtype == np.float32

    run = open_run(tmp_path)
    assert run.epochs == [4]
    got = run.features(4, dtype=None)
    assert got.dtype == dtype and got.shape == (n, DIM)
    np.testing.assert_array_equal(got, features)
    assert run.features(4).dtype == np.float32
    np.testing.assert_array_equal(run.logits(4), logits.astype(np.float32))
    info = run.epoch_info(4)
    assert (info.epoch, info.global_step, info.wall_time) == (4, 123, 1700000000.5)
    assert info.metrics == {"train_loss": 0.25, "val_acc": 0.875}
    head = run.head(4)
    np.testing.assert_allclose(
        head(got.astype(np.float32)),
        got.astype(np.float64) @ state["0.weight"].T.astype(np.float64) + state["0.bias"],
        rtol=1e-5,
        atol=1e-5,
    )
    assert run.boundary(4) is None
    assert run.weights(4) is None


def test_boundary_and_weights_round_trip(store: Path) -> None:
    run = open_run(store)
    boundary = run.boundary(1)
    assert boundary is not None
    assert boundary.features.shape == (4, DIM) and boundary.features.dtype == np.float32
    np.testing.assert_array_equal(boundary.pair, [[0, 1], [1, 0], [0, 2], [2, 1]])
    assert boundary.pair.dtype == np.int64
    assert run.boundary(1, dtype=np.float16).features.dtype == np.float16
    weights = run.weights(1)
    assert weights is not None and sorted(weights) == ["fc.weight"]
    np.testing.assert_array_equal(weights["fc.weight"], np.ones((N_CLASSES, DIM)))
    # epochs without them
    assert run.boundary(0) is None and run.weights(0) is None
    contents = run.contents(1)
    assert (contents.feature_dtype, contents.n_boundary, contents.has_weights) == (
        "float32",
        4,
        True,
    )
    contents = run.contents(0)
    assert (contents.n_boundary, contents.has_weights) == (0, False)


def test_empty_boundary_is_not_written(tmp_path: Path) -> None:
    write_run(tmp_path, make_header(), *sample_arrays())
    empty = Boundary(features=np.zeros((0, DIM), np.float32), pair=np.zeros((0, 2), np.int64))
    write_demo_epoch(tmp_path, 0, boundary=empty)
    assert open_run(tmp_path).boundary(0) is None


def test_weights_keep_their_dtypes(tmp_path: Path) -> None:
    write_run(tmp_path, make_header(), *sample_arrays())
    weights = {
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "conv.weight": np.arange(6, dtype=np.float16).reshape(2, 3),
    }
    write_demo_epoch(tmp_path, 0, weights=weights)
    got = open_run(tmp_path).weights(0)
    assert got["bn.num_batches_tracked"].dtype == np.int64
    assert int(got["bn.num_batches_tracked"]) == 7
    assert got["conv.weight"].dtype == np.float16
    np.testing.assert_array_equal(got["conv.weight"], weights["conv.weight"])


@pytest.mark.parametrize("shape", [(N_TRAIN + N_TEST, 28, 28), (N_TRAIN + N_TEST, 32, 32, 3)])
def test_thumbnails_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    thumbs = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    write_run(tmp_path, make_header(), *sample_arrays(), thumbnails=thumbs)
    run = open_run(tmp_path)
    assert run.has_thumbnails
    got = run.thumbnails()
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, thumbs)


def test_write_run_refuses_bad_inputs(tmp_path: Path) -> None:
    ids, splits, labels = sample_arrays()
    with pytest.raises(StoreError, match="shape"):
        write_run(tmp_path, make_header(), ids, splits[:-1], labels)
    bad_names = dataclasses.replace(make_header(), class_names=["a", "b"])
    with pytest.raises(StoreError, match="class_names has 2 names for num_classes=3"):
        write_run(tmp_path, bad_names, ids, splits, labels)
    n = len(ids)
    with pytest.raises(StoreError, match="uint8"):
        write_run(tmp_path, make_header(), ids, splits, labels, np.zeros((n, 8, 8), np.float32))
    with pytest.raises(StoreError, match="exceed 32x32"):
        write_run(tmp_path, make_header(), ids, splits, labels, np.zeros((n, 64, 64), np.uint8))
    assert not (tmp_path / schema.RUN_FILE).exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []


def test_write_epoch_refuses_bad_inputs(tmp_path: Path) -> None:
    write_run(tmp_path, make_header(), *sample_arrays())
    n = N_TRAIN + N_TEST
    state = linear_state(np.random.default_rng(0))
    with pytest.raises(StoreError, match="float64"):
        write_epoch(
            tmp_path, 0, features=np.zeros((n, DIM)), logits=np.zeros((n, 3)), head_state=state
        )
    with pytest.raises(StoreError, match="equal rows"):
        write_epoch(
            tmp_path,
            0,
            features=np.zeros((n, DIM), np.float32),
            logits=np.zeros((n - 1, 3)),
            head_state=state,
        )
    assert list((tmp_path / schema.EPOCHS_DIR).iterdir()) == []


@settings(max_examples=25, deadline=None)
@given(
    n_train=st.integers(0, 20),
    n_test=st.integers(1, 20),
    dim=st.integers(1, 40),
    num_classes=st.integers(2, 12),
    n_boundary=st.integers(0, 10),
    dtype=st.sampled_from(["float16", "float32"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_property(
    n_train: int, n_test: int, dim: int, num_classes: int, n_boundary: int, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    ids, splits, labels = sample_arrays(n_train, n_test, num_classes)
    features = rng.normal(size=(n, dim)).astype(dtype)
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    boundary = Boundary(
        features=rng.normal(size=(n_boundary, dim)).astype(dtype),
        pair=rng.integers(0, num_classes, size=(n_boundary, 2)),
    )
    with tempfile.TemporaryDirectory() as folder:
        write_run(folder, make_header(dim, num_classes), ids, splits, labels)
        write_epoch(
            folder,
            0,
            features=features,
            logits=logits,
            head_state=linear_state(rng, dim, num_classes),
            boundary=boundary,
        )
        run = open_run(folder)
        assert run.epochs == [0]
        assert (run.feature_dim, run.num_classes) == (dim, num_classes)
        np.testing.assert_array_equal(run.features(0, dtype=None), features)
        assert run.features(0, dtype=None).dtype == np.dtype(dtype)
        np.testing.assert_array_equal(run.logits(0), logits)
        train = run.samples.split == schema.SPLIT_TRAIN
        np.testing.assert_array_equal(run.features(0, split="train", dtype=None), features[train])
        np.testing.assert_array_equal(run.logits(0, split="test"), logits[~train])
        assert run.head(0)(features).shape == (n, num_classes)
        got = run.boundary(0, dtype=None)
        if n_boundary == 0:
            assert got is None
        else:
            assert got.features.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got.features, boundary.features)
            np.testing.assert_array_equal(got.pair, boundary.pair)


def test_split_selects_rows(store: Path) -> None:
    run = open_run(store)
    features = run.features(0)
    logits = run.logits(0)
    train = run.features(0, split="train")
    test = run.features(0, split="test")
    assert train.shape == (N_TRAIN, DIM) and test.shape == (N_TEST, DIM)
    np.testing.assert_array_equal(train, features[:N_TRAIN])
    np.testing.assert_array_equal(test, features[N_TRAIN:])
    np.testing.assert_array_equal(run.logits(0, split="test"), logits[N_TRAIN:])
    assert run.samples.mask(None).all()
    assert run.samples.mask("train").sum() == N_TRAIN
    with pytest.raises(ValueError, match="split='val'"):
        run.features(0, split="val")


def _open_file_names() -> set[str]:
    """The HDF5 files this process holds open."""
    ids = h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)
    return {Path(i.name.decode()).name for i in ids}


def _rechunk(path: Path) -> None:
    """Rewrite an epoch file's features chunked and compressed (not how the callback writes
    them): the reader must take them through HDF5."""
    with h5py.File(path, "r+") as f:
        values = f[schema.FEATURES][...]
        del f[schema.FEATURES]
        f.create_dataset(schema.FEATURES, data=values, chunks=(7, DIM), compression="gzip")


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_feature_reader_reads_blocks_of_rows(tmp_path: Path, chunked: bool, dtype: type) -> None:
    ids, splits, labels = sample_arrays()
    write_run(tmp_path, make_header(), ids, splits, labels)
    written = {e: write_demo_epoch(tmp_path, e, dtype=dtype)["features"] for e in range(4)}
    if chunked:
        _rechunk(tmp_path / schema.EPOCHS_DIR / schema.epoch_filename(2))
    run = open_run(tmp_path)
    epochs = [3, 0, 2]  # any order
    with run.feature_reader(epochs) as reader:
        assert _open_file_names() == set()  # nothing held open between reads
        assert [reader._layout[e].offset is None for e in epochs] == [False, False, chunked]
        n = N_TRAIN + N_TEST
        for rows in (np.arange(n), np.arange(5, 9), np.array([5, 6, 8]), np.array([0, 3, n - 1])):
            block = reader.read(rows)
            assert block.dtype == np.float32 and block.shape == (3, len(rows), DIM)
            for index, epoch in enumerate(epochs):
                np.testing.assert_array_equal(block[index], written[epoch][rows].astype(np.float32))
            stored = reader.read(rows, dtype=dtype)  # as written: no rounding on the way
            assert stored.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(stored[1], written[0][rows])
            np.testing.assert_array_equal(stored[2], written[2][rows])
        assert reader.read(np.array([], np.int64)).shape == (3, 0, DIM)
        assert _open_file_names() == set()
    with pytest.raises(ValueError, match="closed"):
        reader.read(np.arange(3))
    np.testing.assert_array_equal(run.feature_rows([1], np.array([2, 4]))[0], written[1][[2, 4]])


def test_feature_reader_keeps_float32_epochs_of_a_float16_run(tmp_path: Path) -> None:
    # the callback stores an epoch as float32 when its values overflow float16
    ids, splits, labels = sample_arrays()
    write_run(tmp_path, make_header(), ids, splits, labels)
    small = write_demo_epoch(tmp_path, 0, dtype=np.float16)["features"]
    rng = np.random.default_rng(9)
    large = (rng.normal(size=(N_TRAIN + N_TEST, DIM)) * 1e5).astype(np.float32)
    write_epoch(tmp_path, 1, features=large, logits=np.zeros((N_TRAIN + N_TEST, N_CLASSES)),
                head_state=linear_state(rng))  # fmt: skip
    with open_run(tmp_path).feature_reader([0, 1]) as reader:
        block = reader.read(np.arange(10))
    assert block.dtype == np.float32 and np.isfinite(block).all()
    np.testing.assert_array_equal(block[0], small[:10].astype(np.float32))
    np.testing.assert_array_equal(block[1], large[:10])


def test_feature_reader_of_a_truncated_epoch_names_it(tmp_path: Path) -> None:
    ids, splits, labels = sample_arrays()
    write_run(tmp_path, make_header(), ids, splits, labels)
    for epoch in range(2):
        write_demo_epoch(tmp_path, epoch)
    reader = open_run(tmp_path).feature_reader([0, 1])
    path = tmp_path / schema.EPOCHS_DIR / schema.epoch_filename(1)
    layout = reader._layout[1]
    # cut the file inside its features, after the reader located them
    with open(path, "r+b") as f:
        f.truncate(layout.offset + 10 * DIM * 4)
    assert np.isfinite(reader.read(np.arange(10))).all()  # the rows before the cut
    with pytest.raises(StoreError, match=r"epoch_0001\.h5: dataset 'features' ends early"):
        reader.read(np.arange(N_TRAIN + N_TEST))


def test_feature_reader_of_an_absent_epoch_names_it_and_closes(store: Path) -> None:
    run = open_run(store)
    with pytest.raises(StoreError, match="epoch 7 is not recorded; present: 0-2$"):
        run.feature_reader([0, 1, 7])
    assert _open_file_names() == set()


# --- atomic writing -----------------------------------------------------------------------


def test_atomic_h5_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "epoch_0001.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_h5(target) as f:
            f.create_dataset("x", data=np.arange(10))
            assert any(p.name.endswith(schema.TMP_SUFFIX) for p in tmp_path.iterdir())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_h5_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "run.h5"
    with atomic_h5(target) as f:
        f.attrs["version"] = 1
    with pytest.raises(RuntimeError):
        with atomic_h5(target) as f:
            f.attrs["version"] = 2
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]
    with h5py.File(target, "r") as f:
        assert f.attrs["version"] == 1


def test_no_temp_files_after_success(store: Path) -> None:
    names = [p.name for p in store.rglob("*")]
    assert not [n for n in names if n.endswith(schema.TMP_SUFFIX)], names
    assert sorted(p.name for p in (store / schema.EPOCHS_DIR).iterdir()) == [
        "epoch_0000.h5",
        "epoch_0001.h5",
        "epoch_0002.h5",
    ]


def test_temp_files_are_not_epochs(store: Path) -> None:
    tmp = store / schema.EPOCHS_DIR / schema.tmp_name("epoch_0007.h5", "123-abc")
    tmp.write_bytes(b"partial")
    run = open_run(store)
    assert run.epochs == [0, 1, 2] and run.bad_epochs == {}


def test_remove_epochs_after(store: Path) -> None:
    tmp = store / schema.EPOCHS_DIR / schema.tmp_name("epoch_0003.h5", "99-deadbeef")
    tmp.write_bytes(b"partial")
    assert remove_epochs_after(store, 0) == [1, 2]
    assert not tmp.exists()
    assert open_run(store).epochs == [0]
    assert remove_epochs_after(store, 5) == []
    assert remove_epochs_after(store / "nowhere", 0) == []
    # a resumed run rewrites the removed epoch, never duplicates it
    write_demo_epoch(store, 1, seed=9)
    assert open_run(store).epochs == [0, 1]


def test_clear_store_keeps_cli_outputs(store: Path) -> None:
    (store / "fit").mkdir()
    (store / "fit" / "model.pt").write_bytes(b"x")
    clear_store(store)
    assert not (store / schema.RUN_FILE).exists()
    assert not (store / schema.EPOCHS_DIR).exists()
    assert (store / "fit" / "model.pt").exists()
    clear_store(store)  # idempotent
    with pytest.raises(StoreError, match="run.h5 is missing"):
        open_run(store)


# --- reader errors ------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StoreError, match="does not exist") as info:
        open_run(missing)
    assert str(missing) in str(info.value)


def test_file_instead_of_directory(store: Path) -> None:
    with pytest.raises(StoreError, match="is a file") as info:
        open_run(store / schema.RUN_FILE)
    assert str(store / schema.RUN_FILE) in str(info.value)


def test_directory_without_run_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run.h5 is missing") as info:
        open_run(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_wrong_format_attribute(store: Path) -> None:
    with h5py.File(store / schema.RUN_FILE, "a") as f:
        f.attrs[schema.ATTR_FORMAT] = "something-else"
    with pytest.raises(StoreError, match="'format' is 'something-else'") as info:
        open_run(store)
    assert str(store / schema.RUN_FILE) in str(info.value)
    assert not isinstance(info.value, StoreVersionError)


def test_newer_schema_version_is_refused(store: Path) -> None:
    with h5py.File(store / schema.RUN_FILE, "a") as f:
        f.attrs[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION + 1
    with pytest.raises(StoreVersionError, match="upgrade") as info:
        open_run(store)
    assert str(store / schema.RUN_FILE) in str(info.value)
    assert "schema_version 2" in str(info.value)


def test_missing_attribute_and_dataset_are_named(store: Path) -> None:
    with h5py.File(store / schema.RUN_FILE, "a") as f:
        del f.attrs[schema.ATTR_HEAD_SPEC]
    with pytest.raises(StoreError, match="missing attributes \\['head_spec'\\]"):
        open_run(store)
    write_run(store, make_header(), *sample_arrays())
    with h5py.File(store / schema.RUN_FILE, "a") as f:
        del f[schema.SAMPLES_LABEL]
    with pytest.raises(StoreError, match="'samples/label' is missing") as info:
        open_run(store)
    assert str(store / schema.RUN_FILE) in str(info.value)


def test_garbage_run_file(store: Path) -> None:
    (store / schema.RUN_FILE).write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(StoreError, match="cannot be read") as info:
        open_run(store)
    assert str(store / schema.RUN_FILE) in str(info.value)


def corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_unreadable_epoch_is_skipped(
    store: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = open_run(store).features(2)
    corrupt(store / schema.EPOCHS_DIR / "epoch_0001.h5", how)
    with caplog.at_level(logging.WARNING, logger="timevis_callback.reader"):
        run = open_run(store)
    assert run.epochs == [0, 2]
    assert list(run.bad_epochs) == [1]
    assert "cannot be read" in run.bad_epochs[1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "epoch_0001.h5" in warnings[0].getMessage()
    np.testing.assert_array_equal(run.features(2), expected)
    assert run.logits(0).shape == (N_TRAIN + N_TEST, N_CLASSES)
    with pytest.raises(StoreError) as info:
        run.features(1)
    message = str(info.value)
    assert "epoch 1" in message and "present: 0, 2" in message and "unreadable" in message
    # a process that re-opens the store (a render worker) skips it without a second warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="timevis_callback.reader"):
        again = open_run(store, warn_unreadable=False)
    assert again.epochs == [0, 2] and list(again.bad_epochs) == [1] and not caplog.records


def test_epoch_without_logits_is_skipped(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = store / schema.EPOCHS_DIR / "epoch_0005.h5"
    with h5py.File(path, "w") as f:
        f.attrs[schema.ATTR_EPOCH] = 5
        f.attrs[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION
        f.create_dataset(schema.FEATURES, data=np.zeros((N_TRAIN + N_TEST, DIM), np.float32))
        f.create_group(schema.HEAD_GROUP)
    with caplog.at_level(logging.WARNING, logger="timevis_callback.reader"):
        run = open_run(store)
    assert run.epochs == [0, 1, 2]
    assert "logits" in run.bad_epochs[5]
    assert any("epoch_0005.h5" in r.getMessage() for r in caplog.records)
    with pytest.raises(StoreError, match="epoch 5 is not recorded; present: 0-2"):
        run.logits(5)


def test_epoch_never_written_lists_present(store: Path) -> None:
    with pytest.raises(StoreError, match="epoch 9 is not recorded; present: 0-2$"):
        open_run(store).head(9)


@pytest.mark.parametrize(
    ("epochs", "text"),
    [
        ([], "none"),
        ([0], "0"),
        ([0, 1], "0-1"),
        ([2, 4], "2, 4"),
        ([0, 1, 2, 3, 5, 7, 8, 9], "0-3, 5, 7-9"),
        ([1, 3, 4, 10], "1, 3-4, 10"),
    ],
)
def test_format_epochs(epochs: list[int], text: str) -> None:
    assert format_epochs(epochs) == text


def test_disk_usage(store: Path) -> None:
    usage = open_run(store).disk_usage()
    assert set(usage) == {"samples", "features", "logits", "head", "boundary", "weights", "other"}
    for part in ("samples", "features", "logits", "head", "boundary", "weights"):
        assert usage[part] > 0, (part, usage)
    n = N_TRAIN + N_TEST
    assert usage["features"] == 3 * n * DIM * 4
    assert usage["logits"] == 3 * n * N_CLASSES * 4
    assert usage["boundary"] == 4 * DIM * 2 + 4 * 2 * 8
    assert usage["weights"] == N_CLASSES * DIM * 4
    total = sum(p.stat().st_size for p in store.rglob("*.h5"))
    assert sum(usage.values()) == total


def test_disk_usage_without_weights_or_boundary(tmp_path: Path) -> None:
    write_run(tmp_path, make_header(), *sample_arrays())
    write_demo_epoch(tmp_path, 0, dtype=np.float16)
    usage = open_run(tmp_path).disk_usage()
    assert usage["weights"] == 0 and usage["boundary"] == 0
    assert usage["features"] == (N_TRAIN + N_TEST) * DIM * 2
    assert usage["head"] > 0 and usage["samples"] > 0


def test_refresh_picks_up_new_epochs(store: Path) -> None:
    run = open_run(store)
    assert run.epochs == [0, 1, 2]
    written = write_demo_epoch(store, 3, seed=5)
    assert run.epochs == [0, 1, 2]
    assert run.refresh() == [0, 1, 2, 3]
    np.testing.assert_array_equal(run.features(3), written["features"])
    assert "epochs=0-3" in repr(run)


@pytest.mark.parametrize("head_spec", ["not json", json.dumps([{"type": "Softmax"}])])
def test_bad_head_spec_names_the_file_and_key(store: Path, head_spec: str) -> None:
    with h5py.File(store / schema.RUN_FILE, "a") as f:
        f.attrs[schema.ATTR_HEAD_SPEC] = head_spec
    with pytest.raises(StoreError) as info:
        open_run(store)
    assert str(store / schema.RUN_FILE) in str(info.value)
    assert "head_spec" in str(info.value)


def test_missing_head_parameter_makes_the_epoch_unreadable(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    path = write_epoch(
        store,
        3,
        features=rng.normal(size=(n, DIM)).astype(np.float32),
        logits=rng.normal(size=(n, N_CLASSES)),
        head_state={"0.weight": rng.normal(size=(N_CLASSES, DIM))},
    )
    with caplog.at_level(logging.WARNING, logger="timevis_callback.reader"):
        run = open_run(store)
    assert run.epochs == [0, 1, 2]
    assert run.bad_epochs[3] == "head parameters ['0.bias'] are missing (present: ['0.weight'])"
    assert [r.getMessage() for r in caplog.records] == [f"skipping {path}: {run.bad_epochs[3]}"]
    with pytest.raises(StoreError, match=r"epoch 3 is not recorded.*unreadable: head parameters"):
        run.head(3)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            [{"type": "Linear", "name": "fc", "in_features": DIM + 1, "out_features": N_CLASSES}],
            f"takes in_features={DIM + 1}, but its input has {DIM} values per sample",
        ),
        (
            [{"type": "Linear", "name": "fc", "in_features": DIM, "out_features": N_CLASSES + 2}],
            f"ends with {N_CLASSES + 2} values per sample, but the run has num_classes={N_CLASSES}",
        ),
        (
            [{"type": "Linear", "name": "fc", "in_features": DIM, "out_features": "3"}],
            "layer 0 (Linear): out_features='3' must be an int > 0",
        ),
        (
            [{"type": "Flatten", "start_dim": 0}, {"type": "Linear", "in_features": DIM, "out_features": 3}],
            "layer 0 (Flatten): start_dim=0 must be 1 or -1",
        ),
        (
            [{"type": "BatchNorm1d", "num_features": DIM, "eps": -1.0},
             {"type": "Linear", "in_features": DIM, "out_features": 3}],
            "layer 0 (BatchNorm1d): eps=-1.0 must be a number > 0",
        ),
    ],
    ids=["in-features", "out-features", "text-size", "flatten-batch", "negative-eps"],
)
def test_head_spec_that_does_not_map_features_to_classes_is_refused(
    store: Path, spec: list, problem: str
) -> None:
    with h5py.File(store / schema.RUN_FILE, "a") as f:
        f.attrs[schema.ATTR_HEAD_SPEC] = json.dumps(spec)
    with pytest.raises(StoreError, match=re.escape(problem)) as info:
        open_run(store)
    assert str(store / schema.RUN_FILE) in str(info.value) and "'head_spec' is invalid" in str(info.value)


def test_epoch_check_reads_no_features(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = []
    real = h5py.Dataset.__getitem__

    def spy(self, selection):
        read.append(self.name)
        return real(self, selection)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    run = open_run(store)
    assert run.epochs == [0, 1, 2]
    assert not [name for name in read if name.startswith(("/features", "/logits", "/weights"))]
    assert "/head/0.weight" in read and "/boundary/pair" in read


def test_epoch_deleted_after_opening_names_the_file(store: Path) -> None:
    run = open_run(store)
    path = store / schema.EPOCHS_DIR / "epoch_0002.h5"
    path.unlink()
    with pytest.raises(StoreError, match="cannot be read") as info:
        run.logits(2)
    assert str(path) in str(info.value)
