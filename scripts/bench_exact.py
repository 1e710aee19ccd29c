"""Benchmark: the exact decision regions of ``timevis render --exact``, per epoch.

    python scripts/bench_exact.py [RUN_DIR] [--epochs RANGE] [--workdir DIR] [--threads N] [--full]

RUN_DIR: a fitted run store (``timevis fit`` done). Without it, the quick digits run is built
(or reused, under ``--workdir``): ``scripts/demo_train.py --data digits --epochs 3`` (scikit-
learn's 8x8 digits, a small CNN, 512-d features, a linear head) and a quick fit
(``training.max_epochs=1``) with the default decoder (2 -> 256 -> 256 -> 256 -> 256 -> 512).
For every chosen epoch, on the canvas ``timevis render`` plans for it (the default ``follow``
bounds), it times :func:`~timevis_cli.render.exact.exact_landscape` (the decoder's and head's
chain read the way render reads it) and prints one markdown table: seconds per epoch (wall
clock and this process's CPU time) split into the stages (partition, class pieces, merge), the
linear regions the partition enumerated and the polygons it proved one class before splitting
them further (pruning, docs/exact.md), the class pieces and the class regions (connected
components per class), and the boundary length as a fraction of the canvas diagonal, against
the target of 5 s per epoch on 2 cores. ``--full`` also times the partition without pruning
(every linear region of the canvas enumerated) and checks that both give the same class
regions and boundary. The load average at the start and at the end is printed: other jobs on
the machine inflate the wall-clock timings (the CPU time less so).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TARGET_S = 5.0  # per epoch, on 2 cores
QUICK_FIT = ["training.max_epochs=1"]


def ensure_digits_run(workdir: Path) -> Path:
    """The quick digits run store under ``workdir``, recorded and fitted once."""
    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.fit.io import FIT_DIR, save_fit
    from timevis_cli.fit.pipeline import fit

    store = workdir / "digits" / "store"
    if not (store / "run.h5").exists():
        print(f"recording the digits run into {store.parent} ...", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, str(HERE / "demo_train.py"), str(store.parent), "--data", "digits",
             "--epochs", "3"], check=True, stdout=sys.stderr,
        )  # fmt: skip
    if not (store / FIT_DIR).exists():
        print(f"quick fit of {store} ({' '.join(QUICK_FIT)}) ...", file=sys.stderr, flush=True)
        save_fit(store, fit(open_run(store), load_config(overrides=QUICK_FIT)), overwrite=True)
    return store


def measure(store: Path, epochs: str, full: bool = False) -> list[dict]:
    """One row per chosen epoch: seconds (total and per stage) and the figures; with ``full``
    also the unpruned partition's seconds and linear-region count."""
    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.fit.io import load_fit
    from timevis_cli.render.exact import cpwl_chain, exact_landscape
    from timevis_cli.render.playback import plan_render

    run = open_run(store)
    fit = load_fit(run)
    plan = plan_render(run, fit, load_config(overrides=[f"render.epochs={epochs}"]).render)
    rows = []
    for epoch in plan.epochs:
        started, cpu = time.perf_counter(), time.process_time()
        head = run.head(epoch)
        chain = cpwl_chain(fit.model.decoder_layers(epoch), head.spec, head.state)
        exact = exact_landscape(chain, plan.bounds[epoch])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        row = {"epoch": epoch, "seconds": seconds, "cpu": cpu, **exact.seconds, **exact.summary()}
        if full:
            started = time.perf_counter()
            whole = exact_landscape(chain, plan.bounds[epoch], prune=False)
            row["full_seconds"] = time.perf_counter() - started
            row["full_regions"] = whole.linear_regions
            same = whole.class_regions == exact.class_regions and math.isclose(
                whole.boundary_length, exact.boundary_length, rel_tol=1e-6
            )
            if not same:
                raise SystemExit(
                    f"epoch {epoch}: the pruned partition differs from the full one "
                    f"({exact.class_regions} vs {whole.class_regions} class regions, boundary "
                    f"{exact.boundary_length} vs {whole.boundary_length})"
                )
        rows.append(row)
        print(
            f"epoch {epoch}: {seconds:.2f} s, {exact.linear_regions} linear regions, "
            f"{len(exact.proven_class)} proven polygons", file=sys.stderr, flush=True,
        )  # fmt: skip
    return rows


def table(rows: list[dict], widths: list[int]) -> str:
    lines = [
        f"decoder widths {' -> '.join(map(str, widths))}; target <= {TARGET_S:.0f} s per epoch "
        f"on 2 cores",
        "",
        "| epoch | seconds | CPU s | partition / classes / merge (s) | linear regions | "
        "proven polygons | class pieces | class regions | boundary / diagonal | slivers |"
        + (" unpruned: seconds | unpruned: linear regions |" if "full_seconds" in rows[0] else ""),
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if "full_seconds" in rows[0] else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['epoch']} | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['regions']:.2f} / "
            f"{r['classes']:.2f} / {r['merge']:.2f} | {r['linear_regions']} | "
            f"{r['proven_polygons']} | {r['class_pieces']} | {r['class_regions']} | "
            f"{r['boundary_fraction']:.3f} | {r['slivers']} |"
            + (f" {r['full_seconds']:.2f} | {r['full_regions']} |" if "full_seconds" in r else "")
        )
    mean = sum(r["seconds"] for r in rows) / max(len(rows), 1)
    verdict = "meets" if mean <= TARGET_S else "misses"
    lines += ["", f"mean {mean:.2f} s per epoch: {verdict} the target"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a fitted run store")
    parser.add_argument("--epochs", default="all", help="epochs to time (RANGE, default all)")
    parser.add_argument("--workdir", type=Path, help="keep the digits run here for the next run")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (default 2)")
    parser.add_argument(
        "--full", action="store_true", help="also time the partition without pruning"
    )
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if args.run_dir is not None:
        store = args.run_dir
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_exact_"))
        store = ensure_digits_run(workdir)
    rows = measure(store, args.epochs, full=args.full)
    from timevis_callback import open_run
    from timevis_cli.fit.io import load_fit

    fit = load_fit(open_run(store))
    layers = fit.model.decoder_layers(fit.epochs[0])
    widths = [int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _ in layers]
    print(f"{store}: load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(table(rows, widths))


if __name__ == "__main__":
    main()
