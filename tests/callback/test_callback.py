"""TimeVisCallback in a real Lightning Trainer on scikit-learn's digits."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import h5py
import lightning.pytorch as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from digits_model import DigitsCNN, digits_datasets, loaders
from timevis_callback import CallbackConfigError, StoreError, TimeVisCallback, open_run
from timevis_callback.writer import write_epoch as real_write_epoch


def make_trainer(tmp_path: Path, callback: TimeVisCallback | None, epochs: int = 2, **kwargs) -> L.Trainer:
    settings = dict(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
    )
    settings.update(kwargs)
    return L.Trainer(callbacks=[callback] if callback is not None else [], **settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch digits run with the callback added in one line; returns (store, model)."""
    tmp = tmp_path_factory.mktemp("digits")
    L.seed_everything(0)
    model = DigitsCNN()
    train_loader, val_loader = loaders()
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[TimeVisCallback(tmp / "store")],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
    )
    trainer.fit(model, train_loader, val_loader)
    return open_run(tmp / "store"), model


def test_records_epochs_zero_to_three(trained):
    run, _ = trained
    assert run.epochs == [0, 1, 2, 3]
    assert run.bad_epochs == {}
    assert run.feature_dim == 32 and run.num_classes == 10
    assert run.feature_layer == "fc" and run.feature_io == "input"
    assert [layer["type"] for layer in run.head_spec] == ["Linear"]
    for epoch in run.epochs:
        assert run.features(epoch).shape == (1797, 32)
        assert run.logits(epoch).shape == (1797, 10)
        assert run.epoch_info(epoch).epoch == epoch


def test_samples_are_the_datasets_items(trained):
    run, _ = trained
    train, test = digits_datasets()
    s = run.samples
    assert (s.split == 0).sum() == len(train) and (s.split == 1).sum() == len(test)
    np.testing.assert_array_equal(s.id[s.split == 0], np.arange(len(train)))
    np.testing.assert_array_equal(s.label[s.split == 0], train.tensors[1].numpy())
    np.testing.assert_array_equal(s.label[s.split == 1], test.tensors[1].numpy())
    assert run.thumbnails().shape == (1797, 8, 8)


def test_head_reproduces_logits(trained):
    run, _ = trained
    for epoch in run.epochs:
        logits = run.logits(epoch)
        rebuilt = run.head(epoch)(run.features(epoch))
        scale = np.abs(logits).max()
        # features are stored as float16: allow their rounding, nothing more
        assert np.abs(rebuilt - logits).max() <= 2e-3 * max(scale, 1.0), epoch
        torch_head = run.head(epoch).to_torch()
        out = torch_head(torch.from_numpy(run.features(epoch))).detach().numpy()
        np.testing.assert_allclose(out, rebuilt, atol=1e-4)


def test_last_epoch_matches_the_trained_model(trained):
    run, model = trained
    train, test = digits_datasets()
    x = torch.cat([train.tensors[0], test.tensors[0]])
    model.eval()
    with torch.no_grad():
        feats = model.features(x).numpy()
        logits = model(x).numpy()
    np.testing.assert_allclose(run.features(3), feats, atol=2e-3 * np.abs(feats).max())
    np.testing.assert_allclose(run.logits(3), logits, atol=1e-4, rtol=1e-4)
    weights = run.weights(3)
    np.testing.assert_allclose(weights["fc.weight"], model.fc.weight.detach().numpy())
    assert "features.1.running_mean" in weights


def test_training_changes_features_and_metrics_are_logged(trained):
    run, _ = trained
    assert not np.allclose(run.features(0), run.features(3))
    assert run.epoch_info(0).metrics == {}
    metrics = run.epoch_info(3).metrics
    assert {"train_loss", "val_loss", "val_acc"} <= set(metrics)
    assert run.epoch_info(3).global_step > run.epoch_info(1).global_step > 0
    acc = (run.logits(3).argmax(1) == run.samples.label).mean()
    assert acc > 0.3, f"the model should have learnt something, accuracy {acc}"


def test_boundary_points_sit_between_their_classes(trained):
    run, _ = trained
    boundary = run.boundary(3)
    assert boundary is not None
    assert 0 < len(boundary.features) <= 150  # 10% of 1500 tracked train samples
    assert boundary.features.shape[1] == 32
    assert (boundary.pair[:, 0] != boundary.pair[:, 1]).all()
    logits = run.head(3)(boundary.features)
    low, high = logits.min(1, keepdims=True), logits.max(1, keepdims=True)
    norm = (logits - low) / (high - low)
    rows = np.arange(len(norm))
    gap = np.abs(norm[rows, boundary.pair[:, 0]] - norm[rows, boundary.pair[:, 1]])
    # float16 storage of the features moves logits slightly: most stay within the 0.1 margin
    assert np.mean(gap < 0.15) > 0.9


def test_default_dirpath_is_under_default_root_dir(tmp_path):
    trainer = make_trainer(tmp_path, TimeVisCallback(max_train_samples=200, boundary_fraction=0), epochs=1)
    train_loader, val_loader = loaders()
    trainer.fit(DigitsCNN(), train_loader, val_loader)
    run = open_run(tmp_path / "timevis")
    assert run.epochs == [0, 1]
    assert (run.samples.split == 0).sum() == 200


def test_every_n_epochs_weights_head_and_float32(tmp_path):
    callback = TimeVisCallback(
        tmp_path / "s",
        every_n_epochs=2,
        record_initial=False,
        weights="head",
        dtype="float32",
        max_train_samples=300,
        max_test_samples=50,
        boundary_fraction=0,
    )
    train_loader, val_loader = loaders()
    make_trainer(tmp_path, callback, epochs=4).fit(DigitsCNN(), train_loader, val_loader)
    run = open_run(tmp_path / "s")
    assert run.epochs == [2, 4]
    assert run.weights(2) is None
    assert run.features(4, dtype=None).dtype == np.float32
    assert run.boundary(4) is None
    train_labels = run.samples.label[run.samples.split == 0]
    counts = np.bincount(train_labels, minlength=10)
    assert counts.sum() == 300 and counts.min() >= 27, counts  # stratified: about 30 per class
    assert (run.samples.split == 1).sum() == 50


def test_timings_split_each_recorded_epoch(tmp_path):
    callback = TimeVisCallback(
        tmp_path / "s", max_train_samples=300, max_test_samples=0, batch_size=64
    )
    train_loader, _ = loaders()
    make_trainer(tmp_path, callback, epochs=1).fit(DigitsCNN(), train_loader)
    run = open_run(tmp_path / "s")
    assert [t["epoch"] for t in callback.timings] == run.epochs == [0, 1]
    for timing in callback.timings:
        assert min(timing["features"], timing["boundary"], timing["write"]) >= 0
        passes, forwarded = timing["boundary_passes"], timing["boundary_forwarded"]
        # 30 points wanted: <= 3 rounds of <= 120 candidates, 8 steps of <= 2 passes of 64
        assert (passes > 0) == (forwarded > 0)
        assert forwarded <= 64 * passes <= 64 * 3 * 8 * 2
    assert run.boundary(1) is not None and callback.timings[1]["boundary_passes"] >= 1


def test_explicit_datasets_and_class_names(tmp_path):
    train, test = digits_datasets()
    names = [f"digit {i}" for i in range(10)]
    callback = TimeVisCallback(
        tmp_path / "s",
        train_data=torch.utils.data.Subset(train, range(100)),
        test_data=test,
        max_test_samples=40,
        class_names=names,
        boundary_fraction=0,
    )
    train_loader, _ = loaders()
    make_trainer(tmp_path, callback, epochs=1).fit(DigitsCNN(), train_loader)
    run = open_run(tmp_path / "s")
    assert run.class_names == names
    assert (run.samples.split == 0).sum() == 100 and (run.samples.split == 1).sum() == 40


def test_fast_dev_run_records_nothing(tmp_path):
    train_loader, val_loader = loaders()
    trainer = make_trainer(tmp_path, TimeVisCallback(tmp_path / "s"), fast_dev_run=True)
    trainer.fit(DigitsCNN(), train_loader, val_loader)
    assert not (tmp_path / "s").exists()


def test_validate_and_test_stages_record_nothing(tmp_path):
    _, val_loader = loaders()
    trainer = make_trainer(tmp_path, TimeVisCallback(tmp_path / "s"))
    trainer.validate(DigitsCNN(), val_loader)
    assert not (tmp_path / "s").exists()


def test_refuses_a_store_of_another_run_and_keeps_it(tmp_path):
    train_loader, val_loader = loaders()
    small = dict(max_train_samples=100, max_test_samples=20, boundary_fraction=0)
    make_trainer(tmp_path, TimeVisCallback(tmp_path / "s", **small), epochs=1).fit(
        DigitsCNN(), train_loader, val_loader
    )
    before = open_run(tmp_path / "s")
    with pytest.raises(CallbackConfigError, match="overwrite=True"):
        make_trainer(tmp_path, TimeVisCallback(tmp_path / "s", **small), epochs=1).fit(
            DigitsCNN(), train_loader, val_loader
        )
    after = open_run(tmp_path / "s")
    assert after.run_id == before.run_id and after.epochs == [0, 1]
    np.testing.assert_array_equal(after.features(1), before.features(1))

    make_trainer(
        tmp_path, TimeVisCallback(tmp_path / "s", overwrite=True, **small), epochs=2
    ).fit(DigitsCNN(), train_loader, val_loader)
    replaced = open_run(tmp_path / "s")
    assert replaced.run_id != before.run_id and replaced.epochs == [0, 1, 2]


def _failing_write(fail_epochs):
    def write(run_dir, epoch, **kwargs):
        if epoch in fail_epochs:
            raise OSError(28, "No space left on device")
        return real_write_epoch(run_dir, epoch, **kwargs)

    return write


def test_write_failure_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("timevis_callback.callback.write_epoch", _failing_write({1, 2}))
    train_loader, val_loader = loaders()
    callback = TimeVisCallback(tmp_path / "s", max_train_samples=100, boundary_fraction=0)
    trainer = make_trainer(tmp_path, callback, epochs=3)
    with caplog.at_level(logging.WARNING, logger="timevis_callback"):
        trainer.fit(DigitsCNN(), train_loader, val_loader)
    assert trainer.current_epoch == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "epoch 1" in errors[0].getMessage()
    assert "No space left" in errors[0].getMessage()
    assert open_run(tmp_path / "s").epochs == [0, 3]
    assert callback.failed_epochs == [1, 2]


def test_write_failure_raises_when_strict(tmp_path, monkeypatch):
    monkeypatch.setattr("timevis_callback.callback.write_epoch", _failing_write({1}))
    train_loader, val_loader = loaders()
    callback = TimeVisCallback(tmp_path / "s", max_train_samples=100, boundary_fraction=0, strict=True)
    with pytest.raises(StoreError, match="epoch 1"):
        make_trainer(tmp_path, callback, epochs=3).fit(DigitsCNN(), train_loader, val_loader)
    assert open_run(tmp_path / "s").epochs == [0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_train_samples": 0}, "max_train_samples=0"),
        ({"max_train_samples": -5}, "max_train_samples=-5"),
        ({"max_test_samples": -1}, "max_test_samples=-1"),
        ({"every_n_epochs": 0}, "every_n_epochs=0"),
        ({"boundary_fraction": 1.5}, "boundary_fraction=1.5"),
        ({"boundary_l_bound": 1.0}, "boundary_l_bound=1.0"),
        ({"weights": "all"}, "weights='all'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"feature_layer": ""}, "feature_layer=''"),
        ({"class_names": [1, 2]}, "class_names"),
        ({"train_data": 5}, "train_data=int"),
        ({"unpack_item": "x"}, "unpack_item='x'"),
    ],
)
def test_bad_arguments_are_refused_in_init(kwargs, pattern):
    with pytest.raises(CallbackConfigError, match=pattern.replace("[", r"\[")):
        TimeVisCallback(**kwargs)


def test_unknown_feature_layer_lists_candidates_and_writes_nothing(tmp_path):
    train_loader, val_loader = loaders()
    callback = TimeVisCallback(tmp_path / "s", feature_layer="featurs.6")
    with pytest.raises(CallbackConfigError, match=r"featurs\.6.*did you mean.*features\.6"):
        make_trainer(tmp_path, callback).fit(DigitsCNN(), train_loader, val_loader)
    assert not (tmp_path / "s" / "run.h5").exists()


def test_named_pooling_layer_records_its_output(tmp_path):
    train_loader, val_loader = loaders()
    callback = TimeVisCallback(
        tmp_path / "s", feature_layer="features.5", max_train_samples=200, boundary_fraction=0
    )
    make_trainer(tmp_path, callback, epochs=1).fit(DigitsCNN(), train_loader, val_loader)
    run = open_run(tmp_path / "s")
    assert run.feature_io == "output" and run.feature_dim == 32
    assert [layer["type"] for layer in run.head_spec] == ["Flatten", "Linear"]
    logits = run.logits(1)
    assert np.abs(run.head(1)(run.features(1)) - logits).max() < 2e-3 * np.abs(logits).max()


class NoLinear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 8)

    def forward(self, x):
        return self.conv(x).flatten(1)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_model_without_linear_is_refused(tmp_path):
    train_loader, _ = loaders()
    with pytest.raises(CallbackConfigError, match="no nn.Linear"):
        make_trainer(tmp_path, TimeVisCallback(tmp_path / "s")).fit(NoLinear(), train_loader)


class BareInputs(Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0]


class DictItems(BareInputs):
    def __getitem__(self, i):
        x, y = self.base[i]
        return {"image": x, "label": y}


def test_items_that_are_not_pairs_get_an_adapting_hint(tmp_path):
    train, _ = digits_datasets()
    train_loader, _ = loaders()
    callback = TimeVisCallback(tmp_path / "s", train_data=BareInputs(train), max_test_samples=0)
    with pytest.raises(CallbackConfigError, match="unpack_item="):
        make_trainer(tmp_path, callback).fit(DigitsCNN(), train_loader)


def test_dict_items_and_unpack_item_work(tmp_path):
    train, _ = digits_datasets()
    train_loader, _ = loaders()
    callback = TimeVisCallback(
        tmp_path / "a", train_data=DictItems(train), max_test_samples=0, max_train_samples=100
    )
    make_trainer(tmp_path, callback, epochs=1).fit(DigitsCNN(), train_loader)
    assert open_run(tmp_path / "a").epochs == [0, 1]
    adapted = TimeVisCallback(
        tmp_path / "b",
        train_data=BareInputs(train),
        unpack_item=lambda x: (x, 0),
        max_test_samples=0,
        max_train_samples=50,
        boundary_fraction=0,
    )
    make_trainer(tmp_path, adapted, epochs=1).fit(DigitsCNN(), train_loader)
    assert (open_run(tmp_path / "b").samples.label == 0).all()


class Scaled(DigitsCNN):
    """Features multiplied by 1e6: beyond float16's range."""

    def forward(self, x):
        return self.fc(self.features(x) * 1e6)


def test_float16_overflow_falls_back_to_float32(tmp_path, caplog):
    train_loader, _ = loaders()
    callback = TimeVisCallback(tmp_path / "s", max_train_samples=100, boundary_fraction=0, max_test_samples=0)
    with caplog.at_level(logging.WARNING, logger="timevis_callback"):
        make_trainer(tmp_path, callback, epochs=1).fit(Scaled(lr=0.0), train_loader)
    run = open_run(tmp_path / "s")
    assert run.features(0, dtype=None).dtype == np.float32
    assert np.isfinite(run.features(0)).all()
    assert any("float16" in r.getMessage() for r in caplog.records)


def test_bf16_mixed_precision(tmp_path):
    train_loader, val_loader = loaders()
    callback = TimeVisCallback(tmp_path / "s", max_train_samples=200, max_test_samples=50)
    make_trainer(tmp_path, callback, epochs=1, precision="bf16-mixed").fit(
        DigitsCNN(), train_loader, val_loader
    )
    run = open_run(tmp_path / "s")
    assert run.epochs == [0, 1]
    assert np.isfinite(run.features(1)).all()
    logits = run.logits(1)
    assert np.abs(run.head(1)(run.features(1)) - logits).max() < 0.05 * np.abs(logits).max()


def test_eval_mode_is_restored(tmp_path):
    model = DigitsCNN()
    model.train()
    model.features[1].eval()  # a user-frozen BatchNorm stays frozen
    trainer = make_trainer(tmp_path, None)
    with TimeVisCallback._eval_mode(trainer, model):
        assert not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
    assert model.training and model.fc.training
    assert not model.features[1].training


def test_one_class_model_skips_boundary_points_with_a_warning(tmp_path, caplog):
    x = torch.randn(64, 1, 8, 8)
    data = TensorDataset(x, torch.zeros(64, dtype=torch.int64))
    model = DigitsCNN(lr=0.0)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([100.0] + [0.0] * 9))
    callback = TimeVisCallback(tmp_path / "s", train_data=data, max_test_samples=0)
    with caplog.at_level(logging.WARNING, logger="timevis_callback"):
        make_trainer(tmp_path, callback, epochs=1).fit(model, DataLoader(data, batch_size=32))
    assert open_run(tmp_path / "s").boundary(1) is None
    assert any("one class" in r.getMessage() for r in caplog.records)


# --- the store cannot be created: training goes on, nothing is recorded -----------------------
SMALL = dict(max_train_samples=100, max_test_samples=20, boundary_fraction=0)


def _a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    return path, path


def _under_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    return path / "store", path


def _disk_full_at_creation(monkeypatch):
    real_file = h5py.File

    def full(name, mode="r", *args, **kwargs):
        if mode == "w":  # HDF5's error text spans lines
            raise OSError(
                errno.ENOSPC,
                "Unable to synchronously create file\n  (unable to open file: errno = 28, "
                "error message = 'No space left on device')",
            )
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr("timevis_callback.writer.h5py.File", full)


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("a-file", "is a file, not a folder; pass dirpath= a folder"),
        ("under-a-file", "is a file, so no folder can be made under it; pass another dirpath="),
        ("disk-full", "No space left on device'); free disk space or pass dirpath= on another disk"),
    ],
)
def test_a_store_that_cannot_be_created_is_reported_once_and_training_goes_on(
    tmp_path, monkeypatch, caplog, where, problem
):
    blocker = None
    if where == "a-file":
        dirpath, blocker = _a_file(tmp_path)
    elif where == "under-a-file":
        dirpath, blocker = _under_a_file(tmp_path)
    else:
        dirpath = tmp_path / "store"
        _disk_full_at_creation(monkeypatch)
    callback = TimeVisCallback(dirpath, **SMALL)
    train_loader, val_loader = loaders()
    trainer = make_trainer(tmp_path, callback, epochs=2)
    with caplog.at_level(logging.WARNING, logger="timevis_callback"):
        trainer.fit(DigitsCNN(), train_loader, val_loader)
    assert trainer.current_epoch == 2  # trained to the end
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert f"timevis cannot create its store in {dirpath}" in errors[0] and problem in errors[0]
    assert "training goes on without recording" in errors[0]
    assert callback.store_error and callback.failed_epochs == [] and callback.last_epoch is None
    if blocker is not None:
        assert blocker.read_text() == "my notes"
    else:
        assert not list((tmp_path / "store").rglob("*.h5"))


@pytest.mark.parametrize("where", ["a-file", "disk-full"])
def test_a_store_that_cannot_be_created_stops_training_when_strict(tmp_path, monkeypatch, where):
    if where == "a-file":
        dirpath, _ = _a_file(tmp_path)
    else:
        dirpath = tmp_path / "store"
        _disk_full_at_creation(monkeypatch)
    callback = TimeVisCallback(dirpath, strict=True, **SMALL)
    train_loader, val_loader = loaders()
    with pytest.raises(StoreError, match="timevis cannot create its store in") as info:
        make_trainer(tmp_path, callback, epochs=1).fit(DigitsCNN(), train_loader, val_loader)
    assert "\n" not in str(info.value)


def test_a_multi_line_write_error_is_reported_on_one_line(tmp_path, monkeypatch, caplog):
    def write(run_dir, epoch, **kwargs):
        if epoch == 1:
            raise OSError("Can't write data (file write failed:\n  errno = 28, error message = "
                          "'No space left on device')")
        return real_write_epoch(run_dir, epoch, **kwargs)

    monkeypatch.setattr("timevis_callback.callback.write_epoch", write)
    train_loader, val_loader = loaders()
    callback = TimeVisCallback(tmp_path / "s", **SMALL)
    with caplog.at_level(logging.WARNING, logger="timevis_callback"):
        make_trainer(tmp_path, callback, epochs=2).fit(DigitsCNN(), train_loader, val_loader)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "epoch 1" in errors[0] and "free disk space" in errors[0]
    assert open_run(tmp_path / "s").epochs == [0, 2]


# --- what the callback says at the start ----------------------------------------------------
def test_the_store_path_is_logged_once_and_absolute(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    train_loader, val_loader = loaders()
    callback = TimeVisCallback("runs/store", **SMALL)
    with caplog.at_level(logging.INFO, logger="timevis_callback"):
        make_trainer(tmp_path, callback, epochs=1).fit(DigitsCNN(), train_loader, val_loader)
    where = str(tmp_path / "runs" / "store")
    lines = [r for r in caplog.records if where in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].getMessage() == f"timevis: recording run {callback.run_id} in {where}"


def test_info_lines_reach_a_script_that_configured_no_logging():
    from timevis_callback.callback import _show_info_lines

    root, package = logging.getLogger(), logging.getLogger("timevis_callback")
    saved = root.handlers[:], package.handlers[:], package.propagate, package.level
    try:
        root.handlers[:], package.handlers[:], package.propagate = [], [], True
        package.setLevel(logging.NOTSET)
        _show_info_lines()
        assert package.isEnabledFor(logging.INFO) and not package.propagate
        assert [type(h) for h in package.handlers] == [logging.StreamHandler]
        # a script (or pytest) that configured logging keeps control
        root.handlers[:], package.handlers[:], package.propagate = [logging.NullHandler()], [], True
        package.setLevel(logging.NOTSET)
        _show_info_lines()
        assert package.handlers == [] and package.level == logging.NOTSET and package.propagate
    finally:
        root.handlers[:], package.handlers[:], package.propagate = saved[:3]
        package.setLevel(saved[3])


class RandomHorizontalFlip:
    """A random transform, as torchvision names them."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(()) < self.p else x


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = transforms

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class Transformed(Dataset):
    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.transform(x), y


@pytest.mark.parametrize("augmented", [False, True])
def test_augmentation_is_warned_about_only_for_random_transforms(tmp_path, caplog, augmented):
    train, test = digits_datasets()
    if augmented:
        train = torch.utils.data.Subset(
            Transformed(train, Compose([lambda x: x * 1.0, RandomHorizontalFlip()])),
            range(len(train)),
        )
    callback = TimeVisCallback(tmp_path / "s", **SMALL)
    with caplog.at_level(logging.WARNING, logger="timevis_callback"):
        make_trainer(tmp_path, callback, epochs=1).fit(
            DigitsCNN(), DataLoader(train, batch_size=64), DataLoader(test, batch_size=256)
        )
    warned = [r.getMessage() for r in caplog.records if "transforms look random" in r.getMessage()]
    if augmented:
        assert len(warned) == 1 and "(RandomHorizontalFlip)" in warned[0]
        assert "pass train_data=" in warned[0]
    else:
        assert warned == [] and not [r for r in caplog.records if "augmentation" in r.getMessage()]
