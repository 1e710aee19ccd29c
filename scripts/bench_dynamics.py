"""Benchmark: `timevis dynamics`: the measures and the whole command on a large store.

    python scripts/bench_dynamics.py [RUN_DIR] [--samples 10000] [--epochs 200] [--classes 10]
                                     [--split train|test|both] [--repeats 3] [--workdir DIR]

Without RUN_DIR it builds (or reuses, under ``--workdir``) a synthetic run store of ``--samples``
training samples x ``--epochs`` epochs x ``--classes`` classes (``scripts/make_synthetic_store.py``;
16-d features, since only the logits are read; no test split, no boundary points) and measures
all its epochs (``--epochs-range``: others; of a RUN_DIR, the command's default). It times, as
medians over ``--repeats`` runs:

- reading the chosen epochs' logits from the store (one epoch at a time, as the command does);
- the measures on logits already in memory (``dynamics_from_logits``: the numpy work alone);
- the measures from the store (``compute_dynamics``: reading and numpy work), the target: under
  5 s for 10 000 samples x 200 epochs on 2 cores;
- the whole command (``timevis dynamics RUN_DIR``: the measures and writing ``dynamics/``:
  samples.csv, datamap.png, events.png, summary.json);

and prints one markdown table with the machine (its load average at the start: other jobs
inflate the timings) and this process's peak memory. Given a RUN_DIR with a ``flipped.json``
beside the store (``scripts/demo_train.py --flip-labels``: in RUN_DIR or its parent folder), it
also reports the suspect ranking's recall of the flipped training samples among its top k
(k = the number flipped).
"""

from __future__ import annotations

import argparse
import json
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

TARGET_S = 5.0  # the measures, 10 000 samples x 200 epochs, on 2 cores
FEATURE_DIM = 16  # the synthetic store's: the measures never read features


def _median(fn, repeats: int, *args) -> tuple[float, object]:
    """(median seconds of ``fn(*args)`` over ``repeats`` calls, its last value)."""
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def flipped_record(run_dir: Path) -> dict | None:
    """``flipped.json`` in RUN_DIR or beside it (demo_train.py writes OUT_DIR/flipped.json for
    the store OUT_DIR/store), or None."""
    for folder in (run_dir, run_dir.parent):
        path = folder / "flipped.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def suspect_recall(result, record: dict) -> tuple[int, float]:
    """(k, the fraction of the flipped training ids among the k most suspect training samples)."""
    flipped = {int(i) for i in record["ids"]}
    k = len(flipped)
    ranked = result.ranking()
    train = ranked[result.split[ranked] == "train"][:k]
    found = len(flipped & {int(i) for i in result.ids[train]})
    return k, found / k if k else float("nan")


def benchmark(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    """(head rows, measurement rows) of the table."""
    from click.testing import CliRunner

    from timevis_callback import open_run
    from timevis_cli.dynamics.command import dynamics_command
    from timevis_cli.dynamics.measures import (
        compute_dynamics,
        dynamics_from_logits,
        select_epochs,
        split_rows,
    )

    with tempfile.TemporaryDirectory(prefix="bench_dynamics_") as tmp:
        if args.run_dir is None:
            spec = SyntheticSpec(n_train=args.samples, epochs=args.epochs, dim=FEATURE_DIM,
                                 classes=args.classes, n_test=0, boundary_fraction=0.0,
                                 seed=args.seed)  # fmt: skip
            workdir = args.workdir or Path(tmp)
            store = workdir / f"dynamics_{spec.n_train}x{spec.epochs}x{spec.classes}_s{spec.seed}"
            started = time.perf_counter()
            store, reused = ensure_store(store, spec)
            made = "reused" if reused else f"written in {time.perf_counter() - started:.0f} s"
            described = f"{spec.describe()} ({made})"
            args.epochs_range = args.epochs_range or "all"  # all 200 epochs, 0 included
        else:
            store = args.run_dir
            described = str(store)
        run = open_run(store)
        epochs = select_epochs(run, args.epochs_range)
        rows = split_rows(run, args.split)
        labels = run.samples.label[rows]

        def read() -> list:
            return [run.logits(epoch)[rows] for epoch in epochs]

        read_s, in_memory = _median(read, args.repeats)
        numpy_s, _ = _median(dynamics_from_logits, args.repeats, in_memory, labels, epochs)
        del in_memory  # the bench's own [E, N, C] copy (the command never holds one)
        measures_s, result = _median(
            lambda: compute_dynamics(run, epochs, args.split), args.repeats
        )
        runner = CliRunner()
        command = [str(store), "--split", args.split]
        if args.epochs_range:
            command += ["--epochs", args.epochs_range]

        def whole() -> None:
            done = runner.invoke(dynamics_command, command)
            if done.exit_code != 0:
                raise SystemExit(f"timevis dynamics failed: {done.output}")

        command_s, _ = _median(whole, args.repeats)

    n, e = len(rows), len(epochs)
    verdict = "yes" if measures_s < TARGET_S else "NO"
    scale = f" (target for 10 000 x 200; this run: {n:,} x {e})" if (n, e) != (10_000, 200) else ""
    head = [
        ["machine", machine_description()],
        ["store", described],
        ["measured", f"{n:,} samples ({args.split}) x {e} epochs x {run.num_classes} classes, "
                     f"median of {args.repeats}"],
    ]  # fmt: skip
    table = [
        ["read logits (one epoch at a time)", f"{read_s:.2f} s"],
        ["measures on logits in memory (numpy)", f"{numpy_s:.2f} s"],
        ["measures from the store (compute_dynamics)",
         f"{measures_s:.2f} s, < {TARGET_S:.0f} s: {verdict}{scale}"],
        ["whole command (measures + dynamics/ written)", f"{command_s:.2f} s"],
        ["peak memory of this process", f"{peak_rss_mb():.0f} MB"],
        ["regions (easy / ambiguous / hard)",
         " / ".join(str(v) for v in result.region_counts().values())],
    ]  # fmt: skip
    record = flipped_record(Path(store))
    if record is not None:
        k, recall = suspect_recall(result, record)
        table.append([f"suspect recall@{k} (flipped.json)", f"{recall:.3f}"])
    return head, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=None,
                        help="a run store to measure (default: a synthetic one)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=10_000, help="synthetic training samples")
    parser.add_argument("--epochs", type=int, default=200, help="synthetic recorded epochs")
    parser.add_argument("--classes", type=int, default=10, help="synthetic classes")
    parser.add_argument("--epochs-range", default=None, metavar="RANGE",
                        help="--epochs of timevis dynamics (default: all of a synthetic store; "
                             "the command's default, every epoch but 0, of a RUN_DIR)")  # fmt: skip
    parser.add_argument("--split", default="train", choices=["train", "test", "both"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the synthetic store goes here and is reused (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")
    head, table = benchmark(args)
    print(markdown_table(["measure", "value"], head + table))


if __name__ == "__main__":
    main()
