"""A tiny CNN on scikit-learn's digits (real data shipped in the package) for callback tests.

Also runnable as a script, so tests can train in a separate process (SIGKILL, DDP):
``python tests/digits_model.py OUT_DIR --epochs 3 [--sleep S] [--ckpt-every 1] [--resume CKPT]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def digits_datasets(n_test: int = 297) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of 8×8 digit images (1, 8, 8) scaled to [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    return TensorDataset(x[n_test:], y[n_test:]), TensorDataset(x[:n_test], y[:n_test])


class DigitsCNN(L.LightningModule):
    """conv → BN → ReLU → conv → ReLU → global average pool → Linear(32, 10)."""

    def __init__(self, lr: float = 0.01, width: int = 32, batchnorm: bool = True):
        super().__init__()
        self.lr = lr
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16) if batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(16, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    train, test = digits_datasets()
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(test, batch_size=256),
    )


class SlowDown(L.Callback):
    """Sleeps after every epoch (so a test can kill training mid-run) and reports progress."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module):
        print(f"EPOCH_DONE {trainer.current_epoch + 1}", flush=True)
        time.sleep(self.seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--no-bn", action="store_true")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--resume", type=str, default=None)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from timevis_callback import TimeVisCallback

    L.seed_everything(0, workers=True)
    model = DigitsCNN(lr=args.lr, batchnorm=not args.no_bn)
    train_loader, val_loader = loaders()
    callbacks: list[L.Callback] = [TimeVisCallback(args.out / "store", overwrite=args.resume is None)]
    if args.sleep:
        callbacks.append(SlowDown(args.sleep))
    if args.ckpt_every:
        callbacks.append(
            L.callbacks.ModelCheckpoint(args.out / "ckpt", every_n_epochs=args.ckpt_every, save_top_k=-1)
        )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp_spawn" if args.devices > 1 else "auto",
        enable_checkpointing=bool(args.ckpt_every),
        deterministic=True,
    )
    trainer.fit(model, train_loader, val_loader, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
