"""A zoo of small classifiers on scikit-learn's 8x8 digits, recorded with one callback line each.

Shared by ``tests/test_zoo.py`` and ``scripts/bench_zoo.py``: the model definitions
(:data:`ZOO`, each with the feature layer the callback must detect), the training run
(:func:`record`), the command line of fit, render and eval on the store (:func:`fit_render_eval`)
and the measurements of the table in docs/models.md (:func:`measure`, :func:`frame_fill`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_TRAIN, N_TEST = 600, 150
EPOCHS = 3  # training epochs; the store holds epochs 0 (before training) to EPOCHS
NUM_CLASSES = 10

#: fit, render and eval settings small enough for a 2-core CI machine (``--set`` of each command)
FIT_SETTINGS = (
    "training.max_epochs=1",
    "training.min_edges_per_epoch=20000",
    "reduction.init_size=100",
    "projector.hidden=64",
    "refine.epochs=40",
    "refine.decoder_steps=100",
)
RENDER_SETTINGS = ("render.resolution=60", "render.size_px=300", "render.jobs=1")
EVAL_SETTINGS = ("eval.k=10", "eval.temporal_k=2")
#: the fraction of a frame that one epoch's training positions (5-95% quantiles) must span
FILL_QUANTILES = (0.05, 0.95)


def digits(n_train: int = N_TRAIN, n_test: int = N_TEST) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) of 8x8 digit images (1, 8, 8) in [0, 1]: a seeded, shuffled subset."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))[: n_train + n_test]
    x = torch.tensor(data.images[order, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[order], dtype=torch.int64)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


class ZooClassifier(L.LightningModule):
    """Cross-entropy training of ``self.net`` (or ``forward``); ``logits`` picks the logits out
    of ``forward``'s output, as a user's ``training_step`` does for a tuple or dict."""

    lr = 0.01

    def logits(self, output: Any) -> torch.Tensor:
        return output

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.logits(self(x)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.logits(self(x))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class TinyViT(ZooClassifier):
    """The 8x8 image as 16 patches of 2x2, a CLS token, 2 (pre-norm) encoder layers of width 64,
    and a head ``Sequential(LayerNorm, Linear)`` on the CLS token. A transformer this small
    learns slowly: about 50% test accuracy after 3 epochs."""

    lr = 0.003

    def __init__(self, width: int = 64, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        tokens = (8 // patch) ** 2
        self.embed = nn.Linear(patch * patch, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens + 1, width))
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).reshape(len(x), -1, p * p)  # (n, 16, 4)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(patches)], dim=1)
        return self.head(self.encoder(tokens + self.position)[:, 0])


class MLP(ZooClassifier):
    """Flatten, Linear, ReLU, Linear, ReLU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GapCNN(ZooClassifier):
    """Two 3x3 convolutions with batch norm, global average pooling (AdaptiveAvgPool2d(1)),
    Flatten, Linear."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


class Conv1dNet(ZooClassifier):
    """The digit as a sequence of 8 rows of 8 channels: two Conv1d, global average pooling,
    Linear."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(8, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].transpose(1, 2)  # (n, 8 columns as channels, 8 rows as the sequence)
        return self.fc(self.features(rows))


class _Body(ZooClassifier):
    """An MLP body of 64 features shared by the output-format and head variants below."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU()
        )


class TupleOutput(_Body):
    """forward returns ``(logits, aux)``; the auxiliary head is a Linear that runs after the
    classifier (so it is the last Linear to run, not the classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, NUM_CLASSES)
        self.aux = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.fc(h), self.aux(h)

    def logits(self, output: Any) -> torch.Tensor:
        return output[0]


class DictOutput(_Body):
    """forward returns ``{"logits": ..., "aux": ...}`` (aux: the features' squared norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"logits": self.fc(h), "aux": h.pow(2).sum(1)}

    def logits(self, output: Any) -> torch.Tensor:
        return output["logits"]


class AuxFirstOutput(_Body):
    """forward returns ``(aux, logits)``: the logits are not the first item, so the callback
    needs ``logits_key=1``."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(64, 4)
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.aux(h), self.fc(h)

    def logits(self, output: Any) -> torch.Tensor:
        return output[1]


class DropoutHead(_Body):
    """head = Sequential(Dropout, Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class BatchNormHead(_Body):
    """head = Sequential(BatchNorm1d, Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.BatchNorm1d(64), nn.Linear(64, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo and what the callback must detect on it."""

    name: str
    build: Callable[[], ZooClassifier]
    feature_layer: str  # the module whose input ("auto") is recorded
    feature_dim: int
    callback_kwargs: dict[str, Any] = field(default_factory=dict)


ZOO: tuple[ZooModel, ...] = (
    ZooModel("vit", TinyViT, "head.1", 64),
    ZooModel("mlp", MLP, "net.5", 64),
    ZooModel("cnn-gap", GapCNN, "fc", 32),
    ZooModel("conv1d", Conv1dNet, "fc", 32),
    ZooModel("tuple-output", TupleOutput, "fc", 64),
    ZooModel("dict-output", DictOutput, "fc", 64),
    ZooModel("dropout-head", DropoutHead, "head.1", 64),
    ZooModel("batchnorm-head", BatchNormHead, "head.1", 64),
)
BY_NAME = {model.name: model for model in ZOO}


def record(model: ZooModel, out: Path, epochs: int = EPOCHS, seed: int = 0) -> Path:
    """Train ``model`` on the digits subset with the callback; the run store's path."""
    from timevis_callback import TimeVisCallback

    L.seed_everything(seed, workers=True)
    train, test = digits()
    store = out / "store"
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[
            TimeVisCallback(
                store, train_data=train, test_data=test, overwrite=True, **model.callback_kwargs
            )
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
        accelerator="cpu",
        devices=1,
        deterministic=True,
    )
    trainer.fit(
        model.build(),
        DataLoader(train, batch_size=16, shuffle=True),
        DataLoader(test, batch_size=256),
    )
    return store


def commands(store: Path) -> list[list[str]]:
    """The ``timevis`` command lines (without the program name) that fit, render and score
    ``store`` with the zoo's small settings."""

    def settings(values: Sequence[str]) -> list[str]:
        return [part for value in values for part in ("--set", value)]

    return [
        ["fit", str(store), "--overwrite", *settings(FIT_SETTINGS)],
        ["render", str(store), *settings(RENDER_SETTINGS)],
        ["eval", str(store), *settings(EVAL_SETTINGS)],
    ]


def run_cli(args: Sequence[str]) -> tuple[int, str]:
    """``timevis ARGS`` in this process: (exit code, output; a traceback when it raised)."""
    import traceback

    from click.testing import CliRunner

    from timevis_cli.cli import main

    result = CliRunner().invoke(main, list(args))
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(result.exception))
    return result.exit_code, output


def frame_fill(store: Path) -> dict[int, tuple[float, float]]:
    """Per rendered frame, how much of it one epoch's training positions fill on x and y: the
    5-95% extent of that epoch's positions (fit/embedding.h5) over the frame's extent.

    The frame is asked of the renderer's own planning (``plan_render``) with the settings the
    render was made with (render/config.toml), so the measurement follows the renderer's
    framing when its default changes."""
    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.fit import load_fit
    from timevis_cli.render.playback import plan_render

    run = open_run(store)
    fitted = load_fit(run)
    settings = load_config(store / "render" / "config.toml").render
    plan = plan_render(run, fitted, settings)
    fill = {}
    for epoch in plan.epochs:
        points = np.asarray(fitted.embedding(epoch)["train"], dtype=np.float64)
        low, high = np.quantile(points, FILL_QUANTILES, axis=0)
        bounds = plan.bounds[epoch]
        fill[epoch] = (
            float((high[0] - low[0]) / (bounds.xmax - bounds.xmin)),
            float((high[1] - low[1]) / (bounds.ymax - bounds.ymin)),
        )
    return fill


@dataclass(frozen=True)
class Measures:
    """One row of the table in docs/models.md."""

    name: str
    feature_layer: str
    feature_io: str  # "input" or "output" of feature_layer
    feature_dim: int
    test_accuracy: float  # of the last recorded epoch, from the stored logits
    ppr_mean: float  # train, over every scored epoch
    ppr_worst: float
    ppr_worst_epoch: int
    nnpv_mean: float  # train, nnpv(k) as eval reports it ("paper")
    fill: dict[int, tuple[float, float]]  # per frame: (x, y)

    @property
    def fill_worst_epoch(self) -> int:
        return min(self.fill, key=lambda epoch: min(self.fill[epoch]))

    @property
    def fill_min(self) -> float:
        return min(self.fill[self.fill_worst_epoch])


def measure(name: str, store: Path) -> Measures:
    """The table row of a store that was fitted, rendered and scored (eval/metrics.json)."""
    from timevis_callback import open_run

    run = open_run(store)
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    train = [row for row in metrics["per_epoch"] if row["split"] == "train"]
    ppr = {row["epoch"]: _value(row["ppr"]) for row in train}
    worst = min(ppr, key=lambda epoch: ppr[epoch])
    last = run.epochs[-1]
    test = run.samples.mask("test")
    predicted = run.logits(last, split="test").argmax(axis=1)
    return Measures(
        name=name,
        feature_layer=run.feature_layer,
        feature_io=run.feature_io,
        feature_dim=run.feature_dim,
        test_accuracy=float((predicted == run.samples.label[test]).mean()),
        ppr_mean=float(np.mean(list(ppr.values()))),
        ppr_worst=ppr[worst],
        ppr_worst_epoch=worst,
        nnpv_mean=float(np.mean([_value(row["nnpv"]) for row in train])),
        fill=frame_fill(store),
    )


def _value(entry: Any) -> float:
    """A metric of metrics.json: a dict of conventions of which "paper" is eval's number."""
    value = entry["paper"] if isinstance(entry, dict) else entry
    if value is None or not math.isfinite(value):
        raise ValueError(f"metric {entry!r} has no finite value")
    return float(value)


def table(rows: Sequence[Measures]) -> str:
    """The markdown table of docs/models.md."""
    lines = [
        "| model | feature layer | dim | test acc | ppr train mean | ppr train worst (epoch) "
        "| nnpv train mean | fill min (epoch) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.feature_io} of `{r.feature_layer}` | {r.feature_dim} "
            f"| {r.test_accuracy:.2f} | {r.ppr_mean:.3f} | {r.ppr_worst:.3f} ({r.ppr_worst_epoch}) "
            f"| {r.nnpv_mean:.3f} | {r.fill_min:.2f} ({r.fill_worst_epoch}) |"
        )
    return "\n".join(lines)
