"""Benchmark: `timevis units` (M-PHATE of the feature layer's units) on a large store.

    python scripts/bench_units.py [RUN_DIR] [--units 512] [--epochs 200] [--samples 1000]
                                  [--describe 500] [--threads 2] [--repeats 1] [--workdir DIR]

Without RUN_DIR it builds (or reuses, under ``--workdir``) a synthetic run store of ``--samples``
training samples x ``--epochs`` epochs x ``--units`` feature dimensions
(``scripts/make_synthetic_store.py``: post-ReLU features of 10 classes separating over the
epochs; no test split, no boundary points) and embeds every unit at every epoch, each described
by ``--describe`` samples, with ``--threads`` CPU threads (torch, BLAS). It times, as medians over
``--repeats`` runs:

- the units from the store (``compute_units``: reading, class preference, z-scores, and the
  embedding's stages: PCA, the multislice kernel, landmarks, t, potential, MDS, placing every
  point), the target: under 60 s for 512 units x 200 epochs on 2 cores;
- writing ``units/`` (units.npz, units.csv, units.png, units.gif, index.html, summary.json);

and prints one markdown table with the machine (its load average at the start: other jobs
inflate the timings), the CPU time of the units (what the load does not inflate much: on idle
cores the wall time is about CPU time / threads) and this process's peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from make_synthetic_store import (  # noqa: E402
    SyntheticSpec,
    ensure_store,
    machine_description,
    markdown_table,
    peak_rss_mb,
)

TARGET_S = 60.0  # compute_units, 512 units x 200 epochs, on 2 cores
STAGES = ("read", "pca", "kernel", "landmarks", "operator", "t", "potential", "mds", "interpolate")


def benchmark(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    """(head rows, measurement rows) of the table."""
    from timevis_callback import open_run
    from timevis_cli.threads import limit_threads
    from timevis_cli.units.mphate import MPhateSettings
    from timevis_cli.units.outputs import write_units
    from timevis_cli.units.pipeline import compute_units, select_epochs

    threads = limit_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_units_") as tmp:
        if args.run_dir is None:
            spec = SyntheticSpec(n_train=args.samples, epochs=args.epochs, dim=args.units,
                                 classes=10, n_test=0, boundary_fraction=0.0,
                                 seed=args.seed)  # fmt: skip
            workdir = args.workdir or Path(tmp)
            store = workdir / f"units_{spec.n_train}x{spec.epochs}x{spec.dim}_s{spec.seed}"
            started = time.perf_counter()
            store, reused = ensure_store(store, spec)
            made = "reused" if reused else f"written in {time.perf_counter() - started:.0f} s"
            described = f"{spec.describe()} ({made})"
        else:
            store = args.run_dir
            described = str(store)
        run = open_run(store)
        epochs = select_epochs(run, args.epochs_range)
        settings = MPhateSettings(landmarks=args.landmarks, seed=args.seed)
        totals, cpu, stages, result = [], [], {}, None
        for _ in range(args.repeats):
            started, used = time.perf_counter(), time.process_time()
            result = compute_units(run, epochs, samples=args.describe, settings=settings)
            totals.append(time.perf_counter() - started)
            cpu.append(time.process_time() - used)
            for name, seconds in result.seconds.items():
                stages.setdefault(name, []).append(seconds)
        with tempfile.TemporaryDirectory(prefix="bench_units_out_") as out:
            started = time.perf_counter()
            write_units(Path(out), result)
            write_s = time.perf_counter() - started

    total = statistics.median(totals)
    verdict = "yes" if total < TARGET_S else "NO"
    points = result.units * len(result.epochs)
    size = (result.units, len(result.epochs))
    scale = (
        f" (target for 512 x 200; this run: {size[0]} x {size[1]})" if size != (512, 200) else ""
    )
    head = [
        ["machine", machine_description(f"{threads} thread(s)")],
        ["store", described],
        ["measured", f"{result.units} units x {len(result.epochs)} epochs = {points:,} points, "
                     f"described by {len(result.sample_rows)} samples; median of {args.repeats}"],
    ]  # fmt: skip
    table = [
        [f"  {name}", f"{statistics.median(stages[name]):.2f} s"]
        for name in STAGES
        if name in stages
    ]
    embedding = result.embedding
    table = [
        ["units from the store (compute_units)", f"{total:.1f} s, < {TARGET_S:.0f} s: {verdict}{scale}"],
        ["  its CPU time (every thread of this process)", f"{statistics.median(cpu):.1f} s"],
        *table,
        ["write units/ (npz, csv, png, gif, html, json)", f"{write_s:.1f} s"],
        ["landmarks, t, MDS iterations",
         f"{embedding.landmarks}, {embedding.t}, {embedding.mds_iterations}"],
        ["peak memory of this process", f"{peak_rss_mb():.0f} MB"],
    ]  # fmt: skip
    return head, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=None,
                        help="a run store to measure (default: a synthetic one)")  # fmt: skip
    parser.add_argument("--units", type=int, default=512, help="synthetic feature dimensions")
    parser.add_argument("--epochs", type=int, default=200, help="synthetic recorded epochs")
    parser.add_argument("--samples", type=int, default=1000, help="synthetic training samples")
    parser.add_argument("--describe", type=int, default=500,
                        help="samples describing each unit (timevis units --samples)")  # fmt: skip
    parser.add_argument("--epochs-range", default=None, metavar="RANGE",
                        help="--epochs of timevis units (default: every epoch)")  # fmt: skip
    parser.add_argument("--landmarks", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: every usable core)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="the synthetic store goes here and is reused (default: a temp dir)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")
    head, table = benchmark(args)
    print(markdown_table(["measure", "value"], head + table))


if __name__ == "__main__":
    main()
