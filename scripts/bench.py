"""Benchmark: every benchmark in ONE table (callback, fit, render, faithfulness), with the machine.

    python scripts/bench.py [RUN_DIR] [--threads 2] [--skip callback,fit,render,faithfulness]
                            [--quick] [--preset mnist] [--device auto] [--workdir DIR]
                            [--out FILE.md]

RUN_DIR is a demo output folder as ``bash scripts/demo.sh`` writes it (the run store in
``RUN_DIR/store``, with ``fit/``, ``render/`` and ``eval/`` inside it), or a run store folder
itself; default ``/work/runs/mnist`` (the demo's MNIST-5k recording). It runs, each in a fresh
process as the single scripts do (so peak memory is per benchmark):

- **callback**: ``scripts/bench_callback.py``'s measurement (MNIST-5k, 3 epochs; ``--quick``:
  scikit-learn's digits, 2 epochs): epoch time without and with the callback, and the ratio of
  the callback's own time to the bare forward passes it cannot avoid (target <= 1.25);
- **fit**: ``scripts/bench_fit.py``'s measurement on RUN_DIR's store with ``--preset`` (default
  ``mnist``, what the demo fits MNIST-5k with): seconds per stage, complex + training + refinement (target:
  < 60 s for MNIST-5k on 2 cores) and peak memory;
- **render**: ``scripts/bench_render.py``'s measurement on its synthetic store (200 epochs x
  10 000 points x 512-d; ``--quick``: 20 epochs x 2 000 points, projected to 200 epochs) with
  ``--threads`` render workers: seconds per frame per core (target <= 0.3 s) and a 200-epoch
  animation on 2 cores (target < 60 s, projected from the per-frame cost when fewer epochs or
  workers ran). ``--workdir`` keeps the synthetic store and its fit for the next run;
- **faithfulness**: the demo run's metrics, READ from ``RUN_DIR/store/eval/metrics.json`` (what
  ``timevis eval`` writes; nothing is recomputed): nnpv train/test, boundary, temp_l, temp_g,
  temppv (train) and ppr train/test (the mean over every scored epoch with the worst epoch in
  brackets, as docs/faithfulness.md reports it). Without that file the table says so and how to
  write it. These have no fixed target: docs/faithfulness.md compares them with baselines.

and prints ONE markdown table ``| area | measure | value | target | met |``, preceded by one line
stating the machine (CPU model, cores available to this process, RAM, GPU, torch and Python
versions, load average at the start and at the end: other jobs inflate the timings). ``--out``
writes the same to a file. ``--threads`` sets the torch threads of every benchmark and the
render workers (pass 1 on a shared machine). Exit status 1 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_fit import MNIST_TARGET_S, STAGES, TARGET_STAGES  # noqa: E402

DEFAULT_RUN_DIR = Path("/work/runs/mnist")
AREAS = ("callback", "fit", "render", "faithfulness")
HEADER = ["area", "measure", "value", "target", "met"]
CALLBACK_TARGET = 1.25  # callback time / bare forward cost
FIT_TARGET_S = MNIST_TARGET_S  # complex + training + refinement, MNIST-5k, 2 cores
FRAME_TARGET_S = 0.3  # per frame per core
ANIMATION_TARGET_S = 60.0  # 200 epochs on 2 cores
BUILD_STAGES = TARGET_STAGES  # what the fit target times
FIT_STAGES = STAGES
EVAL_FILE = Path("eval") / "metrics.json"
FAITHFULNESS_DOC = "docs/faithfulness.md"
PPR_FROM = 0  # ppr: mean over epochs >= this: every epoch (a window would hide the early ones)
CALLBACK_RUNS = {False: {"data": "mnist", "epochs": 3}, True: {"data": "digits", "epochs": 2}}
RENDER_RUNS = {False: {}, True: {"epochs": 20, "points": 2_000, "repeats": 3}}


# --- the machine -----------------------------------------------------------------------------


def machine_info() -> dict:
    """What the machine line states (this process's view)."""
    import torch
    from make_synthetic_store import cpu_model, ram_gib

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "ram_gib": ram_gib(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_line(info: dict, load_start: list[float] | None, load_end: list[float] | None) -> str:
    """One line: CPU, cores available, RAM, GPU, versions, load average at start and end."""

    def load(values: list[float] | None) -> str:
        return "n/a" if values is None else "/".join(f"{v:.2f}" for v in values)

    cores = info.get("cores")
    total = info.get("cpu_count")
    text = f"machine: {info['cpu']}, "
    if cores is None:
        text += f"{total} cores"
    else:
        text += f"{cores} core{'s' if cores != 1 else ''} available"
        if total and total != cores:
            text += f" (of {total})"
    if info.get("ram_gib") is not None:
        text += f", {info['ram_gib']:.0f} GiB RAM"
    text += f", GPU: {info['gpu'] or 'none'}, torch {info['torch']}, Python {info['python']}"
    text += f"; load average (1/5/15 min) {load(load_start)} at start, {load(load_end)} at end"
    busy = [v for v in (load_start, load_end) if v is not None and cores and v[0] > 0.5 * cores]
    if busy:
        text += " (busy machine: timings noisy)"
    return text


# --- the table -------------------------------------------------------------------------------


def format_table(rows: list[list[str]]) -> str:
    """The markdown table ``| area | measure | value | target | met |`` with padded columns."""
    for row in rows:
        if len(row) != len(HEADER):
            raise ValueError(f"row {row!r} has {len(row)} cells, the table {len(HEADER)}")
    table = [HEADER, *[[str(cell).replace("|", "\\|") for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(table[0]), line(["-" * w for w in widths]), *map(line, table[1:])])


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def skipped_rows(area: str) -> list[list[str]]:
    return [[area, "(all)", f"skipped (--skip {area})", "", ""]]


def failed_rows(area: str, result: dict) -> list[list[str]]:
    return [[area, "(all)", f"FAILED: {result['error']}", "", ""]]


def callback_rows(r: dict) -> list[list[str]]:
    """Rows of the callback benchmark (``bench_callback.measure``'s dict)."""
    if "error" in r:
        return failed_rows("callback", r)
    own = r["callback_s"]
    bare, with_cb = r["epoch_bare_s"], r["epoch_with_s"]
    setup = (f"{r['data']}, {r['n_tracked']} tracked samples, {r['epochs']} epochs, "
             f"{_threads(r['threads'])}")  # fmt: skip
    return [
        ["callback", "training epoch without / with the callback",
         f"{bare:.2f} s / {with_cb:.2f} s (+{100 * (with_cb / bare - 1):.0f}%; {setup})", "", ""],
        ["callback", "callback per epoch: feature pass + boundary + writing",
         f"{r['callback_total_s']:.2f} s = {own['features']:.2f} + {own['boundary']:.2f} + "
         f"{own['write']:.3f} s", "", ""],
        ["callback", "ratio callback / bare forward passes (tracked + bisection)",
         f"{r['ratio']:.2f} (per epoch: {', '.join(f'{x:.2f}' for x in r['ratios'])})",
         f"<= {CALLBACK_TARGET}", _met(r["ratio"] <= CALLBACK_TARGET)],
    ]  # fmt: skip


def _mnist_5k_on_cpu(r: dict) -> bool:
    return r["device"] == "cpu" and 3_000 <= r["n_train"] <= 5_000 and 10 <= r["epochs"] <= 25


def fit_rows(r: dict, preset: str | None) -> list[list[str]]:
    """Rows of the fit benchmark (``bench_fit.benchmark``'s dict)."""
    if "error" in r:
        return failed_rows("fit", r)
    seconds = r["seconds"]
    build = sum(seconds.get(stage, 0.0) for stage in BUILD_STAGES)
    shape = (f"{r['n_train']:,} train x {r['epochs']} epochs x {r['dim']}, {r['device']}, "
             f"{_threads(r['threads'])}, preset {preset or 'none'}")  # fmt: skip
    if _mnist_5k_on_cpu(r):
        met = _met(build < FIT_TARGET_S)
        if r["threads"] != 2:
            met += f" ({_threads(r['threads'])}, target is 2)"
    else:
        met = "n/a (not an MNIST-5k-sized store fitted on the CPU)"
    order = [*FIT_STAGES, *(stage for stage in seconds if stage not in FIT_STAGES)]
    stages = ", ".join(f"{stage} {seconds[stage]:.2f}" for stage in order if stage in seconds)
    others = ", ".join(f"{stage} {seconds[stage]:.1f} s" for stage in order
                       if stage in seconds and stage not in BUILD_STAGES)  # fmt: skip
    gpu = "" if r.get("peak_gpu_mb") is None else f"; peak GPU {r['peak_gpu_mb']:,.0f} MB"
    return [
        ["fit", "seconds per stage", f"{stages} ({shape})", "", ""],
        ["fit", "complex + training + refinement (all but embedding)", f"{build:.1f} s (fit() wall "
         f"{r['wall']:.1f} s{', with ' + others if others else ''})",
         f"< {FIT_TARGET_S:.0f} s (MNIST-5k, 2 cores)", met],
        ["fit", "peak memory (process high-water mark)", f"{r['peak_rss_mb']:,.0f} MB (before "
         f"the fit: {r['rss_before_mb'] or 0:,.0f} MB){gpu}", "", ""],
    ]  # fmt: skip


def recorded_fit_rows(store: Path) -> list[list[str]]:
    """With ``--skip fit``: what the demo's own ``timevis fit`` recorded in fit/fit.json."""
    path = store / "fit" / "fit.json"
    try:
        report = json.loads(path.read_text())
        seconds = report["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return skipped_rows("fit")
    build = sum(seconds.get(stage, 0.0) for stage in BUILD_STAGES)
    memory = report.get("peak_memory_mb")
    return skipped_rows("fit") + [
        ["fit", f"recorded in {path} (not re-measured)", f"complex + training + refinement {build:.1f} s, "
         f"peak memory {memory if memory is None else f'{memory:,.0f} MB'}", "", ""],
    ]  # fmt: skip


def render_rows(r: dict) -> list[list[str]]:
    """Rows of the render benchmark (``bench_render.benchmark``'s dict)."""
    if "error" in r:
        return failed_rows("render", r)
    setup = (f"{r['size_px']} px, grid {r['resolution']}, {r['points']:,} points, "
             f"{r['device']}")  # fmt: skip
    how = ("measured" if r["animation_measured"] else
           f"projected from {r['epochs']} epochs on {r['workers']} "
           f"worker{'s' if r['workers'] != 1 else ''}")  # fmt: skip
    return [
        ["render", "per frame per core (steady state)", f"{r['per_frame_s']:.3f} s (CPU "
         f"{r['per_frame_cpu_s']:.3f} s; {setup})", f"<= {FRAME_TARGET_S} s", _met(r["frame_met"])],
        ["render", "200 epochs on 2 cores (frames + GIF)", f"{r['animation_s']:.1f} s ({how}; "
         f"this run: {r['epochs']} frames + GIF in {r['total_s']:.1f} s)",
         f"< {ANIMATION_TARGET_S:.0f} s", _met(r["animation_met"])],
    ]  # fmt: skip


def read_eval(store: Path) -> dict | None:
    """The store's ``eval/metrics.json`` (what ``timevis eval`` writes), or None when absent."""
    path = Path(store) / EVAL_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _paper(block: dict | None, metric: str) -> float | None:
    value = (block or {}).get(metric)
    if isinstance(value, dict):
        value = value.get("paper")
    return None if value is None else float(value)


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ppr_from(metrics: dict, split: str) -> tuple[float | None, float | None, int]:
    """(mean, worst, first epoch) of ppr over the split's epochs >= PPR_FROM (all when none)."""
    rows = [r for r in metrics.get("per_epoch", []) if r.get("split") == split]
    values = [(r["epoch"], _paper(r, "ppr")) for r in rows]
    values = [(e, v) for e, v in values if v is not None]
    late = [(e, v) for e, v in values if e >= PPR_FROM] or values
    if not late:
        return None, None, 0
    ppr = [v for _, v in late]
    return statistics.mean(ppr), min(ppr), min(e for e, _ in late)


def faithfulness_rows(metrics: dict | None, store: Path) -> list[list[str]]:
    """Rows of the demo run's faithfulness metrics read from its eval output (never invented)."""
    path = Path(store) / EVAL_FILE
    if metrics is None:
        fit = "" if (Path(store) / "fit").is_dir() else f"`timevis fit {store}`, then "
        return [["faithfulness", "eval metrics", f"missing: no {path}; write it with {fit}"
                 f"`timevis eval {store}` (`bash scripts/demo.sh` does both)", "", ""]]  # fmt: skip
    averages = metrics.get("averages", {})
    train, test = averages.get("train"), averages.get("test")
    k, tk = metrics.get("k", "k"), metrics.get("temporal_k", "k")
    epochs = [int(e) for e in metrics.get("epochs", [])]
    span = f"epochs {min(epochs)}-{max(epochs)}" if epochs else "epochs n/a"
    ppr_train, worst_train, _ = _ppr_from(metrics, "train")
    ppr_test, worst_test, _ = _ppr_from(metrics, "test")
    target = FAITHFULNESS_DOC
    return [
        ["faithfulness", "source", f"{path} ({span}, spatial metrics averaged over epochs)", "", ""],
        ["faithfulness", f"nnpv({k}) train / test",
         f"{_num(_paper(train, 'nnpv'))} / {_num(_paper(test, 'nnpv'))}", target, ""],
        ["faithfulness", f"boundary({k}) train", _num(_paper(train, "boundary")), target, ""],
        ["faithfulness", f"temp_l({tk}) train", _num(_paper(train, "temp_l")), target, ""],
        ["faithfulness", "temp_g (Kendall tau) train", _num(_paper(train, "temp_g")), target, ""],
        ["faithfulness", "temppv train (lower is better)", _num(_paper(train, "temppv")), target, ""],
        ["faithfulness", "ppr train / test, every epoch: mean (worst)",
         f"{_num(ppr_train)} ({_num(worst_train)}) / {_num(ppr_test)} ({_num(worst_test)})",
         target, ""],
    ]  # fmt: skip


# --- running the benchmarks ------------------------------------------------------------------


def find_store(run_dir: Path) -> Path | None:
    """The run store of RUN_DIR: ``RUN_DIR/store`` (a demo output folder) or RUN_DIR itself."""
    for candidate in (run_dir / "store", run_dir):
        if (candidate / "run.h5").is_file():
            return candidate
    return None


def resolve_store(run_dir: Path) -> Path:
    """:func:`find_store`, or exit with a one-line message saying what to give."""
    store = find_store(run_dir)
    if store is not None:
        return store
    raise SystemExit(
        f"RUN_DIR {run_dir} holds no run store (no run.h5 in it or in {run_dir / 'store'}); "
        "give a folder written by `bash scripts/demo.sh`, or --skip fit,faithfulness"
    )


def parse_skip(text: str) -> set[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(AREAS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--skip {text!r}: unknown {', '.join(unknown)}; choose from {', '.join(AREAS)}"
        )
    return names


def run_worker(name: str, kwargs: dict, out: Path) -> None:
    """In a fresh process: run one benchmark's function and write its dict as JSON."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    if name == "callback":
        import bench_callback

        result = bench_callback.measure(**kwargs)
    elif name == "render":
        import bench_render

        if kwargs.get("workdir"):
            kwargs["workdir"] = Path(kwargs["workdir"])
        result = bench_render.benchmark(**kwargs)
    else:
        raise SystemExit(f"unknown worker {name!r}")
    out.write_text(json.dumps(result, default=str))


def in_subprocess(name: str, kwargs: dict) -> dict:
    """Run benchmark ``name`` in a fresh interpreter (its output to stderr); its dict."""
    print(f"{name} benchmark ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
                   "--worker-json", str(out), "--worker-kwargs", json.dumps(kwargs)]  # fmt: skip
        done = subprocess.run(command, stdout=sys.stderr, stderr=None)
        if done.returncode != 0 or not out.exists():
            return {"error": f"exit status {done.returncode} (its log is above on stderr)"}
        result = json.loads(out.read_text())
    print(f"  {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=DEFAULT_RUN_DIR,
                        help=f"demo output folder (or run store); default {DEFAULT_RUN_DIR}")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of every benchmark and render workers (default 2)")
    parser.add_argument("--skip", type=parse_skip, default=set(),
                        help=f"comma-separated areas not to run: {','.join(AREAS)}")
    parser.add_argument("--quick", action="store_true",
                        help="small forms: callback on digits (2 epochs), render 20 x 2 000")
    parser.add_argument("--preset", default="mnist",
                        help="config preset of the fit (default mnist; 'none' for the defaults)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="device of the fit and of the render landscapes")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="render: synthetic store and its fit kept and reused here")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to FILE.md")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-json", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, json.loads(args.worker_kwargs), args.worker_json)
        return
    if args.threads < 1:
        parser.error(f"--threads {args.threads} must be at least 1")
    preset = None if args.preset.lower() == "none" else args.preset

    load_start = load_average()
    info = machine_info()
    needs_store = {"fit", "faithfulness"} - args.skip
    store = resolve_store(args.run_dir) if needs_store else None
    rows: list[list[str]] = []
    failed = False

    if "callback" in args.skip:
        rows += skipped_rows("callback")
    else:
        result = in_subprocess("callback", {**CALLBACK_RUNS[args.quick], "threads": args.threads})
        failed |= "error" in result
        rows += callback_rows(result)

    if "fit" in args.skip:
        rows += recorded_fit_rows(store or find_store(args.run_dir) or args.run_dir)
    else:
        import bench_fit

        result = bench_fit.benchmark(store, device=args.device, preset=preset, threads=args.threads)
        failed |= "error" in result
        rows += fit_rows(result, preset)

    if "render" in args.skip:
        rows += skipped_rows("render")
    else:
        kwargs = {**RENDER_RUNS[args.quick], "jobs": args.threads, "threads": args.threads,
                  "device": args.device, "workdir": str(args.workdir) if args.workdir else None}  # fmt: skip
        result = in_subprocess("render", kwargs)
        failed |= "error" in result
        rows += render_rows(result)

    if "faithfulness" in args.skip:
        rows += skipped_rows("faithfulness")
    else:
        rows += faithfulness_rows(read_eval(store), store)

    text = machine_line(info, load_start, load_average()) + "\n\n" + format_table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
