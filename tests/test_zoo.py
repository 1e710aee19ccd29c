"""Models nobody here wrote, recorded with one callback line each, then fit, render and eval.

The zoo (tests/zoo_models.py, shared with scripts/bench_zoo.py): a small ViT (CLS token,
2 encoder layers, head ``Sequential(LayerNorm, Linear)``), a plain MLP, a CNN with global average
pooling, a 1-D CNN, forwards returning a tuple ``(logits, aux)`` and a dict
``{"logits", "aux"}``, and heads ``Sequential(Dropout, Linear)`` and
``Sequential(BatchNorm1d, Linear)``; each trained 3 epochs on 600/150 of scikit-learn's digits.
For each: the feature layer the callback detects (run.h5's attributes), and ``timevis fit``,
``render`` and ``eval`` with small settings exit 0 and write their outputs. Every store is
trained and processed once per module; the ppr, nnpv and frame fill of each are printed.

``test_zoo_frames_follow_the_data`` asks that every frame be filled by its epoch's training
positions (5-95% extent >= 0.6 of the frame on both axes), the frame being the one ``timevis
render`` draws with its default framing (asked of the renderer's own planning, so the check
follows the default): frames that follow each epoch's data pass, one canvas shared by every
epoch (``--bounds global``) does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import lightning.pytorch as L
import pytest
import zoo_models
from PIL import Image
from terminal import report as _report
from torch.utils.data import DataLoader

from timevis_callback import TimeVisCallback, schema
from timevis_callback.errors import CallbackConfigError

pytestmark = pytest.mark.slow

NAMES = [model.name for model in zoo_models.ZOO]
MIN_FILL = 0.6


class Zoo:
    """Each model trained, fitted, rendered and scored once, on first request."""

    def __init__(self, root: Path, config: pytest.Config) -> None:
        self.root = root
        self.config = config
        self.stores: dict[str, Path] = {}
        self.results: dict[str, list[tuple[list[str], int, str]]] = {}

    def store(self, name: str) -> Path:
        if name not in self.stores:
            self.stores[name] = zoo_models.record(zoo_models.BY_NAME[name], self.root / name)
        return self.stores[name]

    def processed(self, name: str) -> list[tuple[list[str], int, str]]:
        """(command line, exit code, output) of fit, render and eval; stops at a failure."""
        if name not in self.results:
            store = self.store(name)
            results = []
            for args in zoo_models.commands(store):
                code, output = zoo_models.run_cli(args)
                results.append((args, code, output))
                if code != 0:
                    break
            self.results[name] = results
            if all(code == 0 for _, code, _ in results):
                m = zoo_models.measure(name, store)
                _report(
                    self.config,
                    f"zoo {name}: features {m.feature_io} of {m.feature_layer!r} "
                    f"(dim {m.feature_dim}), test acc {m.test_accuracy:.2f}, ppr train mean "
                    f"{m.ppr_mean:.3f} worst {m.ppr_worst:.3f} (epoch {m.ppr_worst_epoch}), "
                    f"nnpv train mean {m.nnpv_mean:.3f}, fill min {m.fill_min:.2f} "
                    f"(epoch {m.fill_worst_epoch})",
                )
        return self.results[name]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, pytestconfig) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"), pytestconfig)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_feature_layer_is_detected(zoo: Zoo, name: str) -> None:
    expected = zoo_models.BY_NAME[name]
    store = zoo.store(name)
    with h5py.File(store / schema.RUN_FILE, "r") as f:
        attrs = dict(f.attrs)
    assert attrs[schema.ATTR_FEATURE_LAYER] == expected.feature_layer
    assert attrs[schema.ATTR_FEATURE_IO] == "input"
    assert attrs[schema.ATTR_FEATURE_DIM] == expected.feature_dim
    epochs = sorted(p.name for p in (store / schema.EPOCHS_DIR).glob("epoch_*.h5"))
    assert epochs == [f"epoch_{e:04d}.h5" for e in range(zoo_models.EPOCHS + 1)]


@pytest.mark.parametrize("name", NAMES)
def test_zoo_fit_render_eval(zoo: Zoo, name: str) -> None:
    results = zoo.processed(name)
    for args, code, output in results:
        assert code == 0, f"timevis {' '.join(args)} exited {code}:\n{output}"
        assert "Traceback" not in output, output
    assert [args[0] for args, _, _ in results] == ["fit", "render", "eval"]
    store = zoo.store(name)
    epochs = list(range(zoo_models.EPOCHS + 1))
    for path in ("projector.pt", "embedding.h5", "fit.json", "config.toml"):
        assert (store / "fit" / path).stat().st_size > 0, path
    frames = sorted((store / "render").glob("epoch_*.png"))
    assert [p.name for p in frames] == [f"epoch_{e:04d}.png" for e in epochs]
    assert Image.open(store / "render" / "training.gif").n_frames == len(epochs)
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    train = [row for row in metrics["per_epoch"] if row["split"] == "train"]
    assert [row["epoch"] for row in train] == epochs
    for row in train:
        for metric in ("ppr", "nnpv"):
            value = row[metric]["paper"]
            assert value is not None and 0.0 <= value <= 1.0, (row["epoch"], metric, value)


def test_zoo_frames_follow_the_data(zoo: Zoo) -> None:
    """Every frame is mostly data: its epoch's training positions span >= 0.6 of it (5-95%
    quantiles) along the data's longer axis. Frames are square (the map keeps its aspect), so
    the shorter axis fills its aspect ratio times that: a cloud 0.59 times as wide as it is tall
    cannot fill 0.6 of a square frame's width without being cut off."""
    for name in NAMES:
        codes = [code for _, code, _ in zoo.processed(name)]
        assert codes == [0, 0, 0], f"{name}: fit/render/eval exited {codes}"
    fills = {name: zoo_models.frame_fill(zoo.store(name)) for name in NAMES}
    thin = [
        f"{name} epoch {epoch}: {x:.2f} x {y:.2f}"
        for name, fill in fills.items()
        for epoch, (x, y) in fill.items()
        if max(x, y) < MIN_FILL
    ]
    assert not thin, (
        f"frames whose epoch's 5-95% training extent fills < {MIN_FILL} of them along its "
        "longer axis (x x y): "
        + "; ".join(thin)
    )


def _record_aux_first(out: Path, **kwargs) -> Path:
    """AuxFirstOutput ((aux, logits) from forward) recorded for one short epoch."""
    L.seed_everything(0, workers=True)
    train, test = zoo_models.digits(n_train=100, n_test=30)
    store = out / "store"
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[TimeVisCallback(store, train_data=train, test_data=test, **kwargs)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
        accelerator="cpu",
    )
    trainer.fit(zoo_models.AuxFirstOutput(), DataLoader(train, batch_size=16), DataLoader(test))
    return store


def test_logits_that_are_not_the_first_item_need_logits_key(tmp_path: Path) -> None:
    with pytest.raises(CallbackConfigError) as info:
        _record_aux_first(tmp_path / "without")
    message = str(info.value)
    assert "\n" not in message
    assert "the model outputs 4 logits" in message
    assert "the logits were taken from item 0 of the tuple forward returns" in message
    assert "pass logits_key= their index or key" in message
    store = _record_aux_first(tmp_path / "with", logits_key=1)
    with h5py.File(store / schema.RUN_FILE, "r") as f:
        assert f.attrs[schema.ATTR_FEATURE_LAYER] == "fc"
        assert f.attrs[schema.ATTR_NUM_CLASSES] == zoo_models.NUM_CLASSES
        assert json.loads(f.attrs[schema.ATTR_CALLBACK_CONFIG])["logits_key"] == 1
