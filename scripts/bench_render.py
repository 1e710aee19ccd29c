"""Benchmark: `timevis render`: seconds per frame per core and for a whole animation.

    python scripts/bench_render.py [--epochs 200] [--points 10000] [--dim 512] [--size 800]
                                   [--resolution 200] [--jobs N] [--device auto|cpu|cuda[:i]]
                                   [--workdir DIR] [--repeats 5] [--threads 1]

Builds (or reuses, under ``--workdir``) a CIFAR-like synthetic run store of ``--points`` training
samples x ``--epochs`` epochs (``scripts/make_synthetic_store.py``) and fits it QUICKLY
(``training.max_epochs=1``, reduction on): this benchmark times rendering, not fit quality, so the
map and landscapes it draws are rough. The fit is done once and reused with the store. Then, the
way ``timevis render`` does it (``plan_render``, ``GridLandscapes`` on ``--device`` in this
process, ``FrameBuilder`` + ``render_epochs`` in workers, ``write_gif``), it times:

- in the parent, on the device (torch set to 1 thread when it is the CPU): the grid decode (R x R
  points through the decoder, once with global bounds) and one epoch's head on the decoded grid
  (class argmax + margin, copied back to the CPU); reading the epoch's 2-D positions. Medians
  over ``--repeats`` epochs;
- in a worker (in-process here, one core): opening the store; one frame's data (predictions,
  labels, metrics) and colouring the grid (``FrameBuilder(epoch, FrameInput)``); drawing it
  (``FrameRenderer.render``); encoding the PNG: medians over ``--repeats`` epochs. With the
  parent's share (the positions, and the head when the device is the CPU, which then shares the
  cores with the workers) their sum is the steady-state cost per frame per core;
- ``render_epochs`` over all epochs with ``--jobs`` worker processes (default: one per core), the
  parent streaming every epoch's landscape to them while they draw; this adds the pool's start-up;
- the GIF (``write_gif``, as ``timevis render`` calls it).

and prints one markdown table against the targets: <= 0.3 s per frame per core, and 200 epochs
in under a minute on 2 cores (frames + GIF; projected from the per-frame cost when fewer epochs
or other core counts are run). The load average at the start and at the end is in the table:
other jobs on the machine inflate the timings. ``benchmark(...)`` (the same arguments) runs it and
returns the measurements as a dict, this table's rows included (``scripts/bench.py`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
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
)

FRAME_TARGET_S = 0.3  # per frame per core
ANIMATION_TARGET_S = 60.0  # 200 epochs on 2 cores
TARGET_EPOCHS, TARGET_CORES = 200, 2
QUICK_FIT = ["training.max_epochs=1", "reduction.enabled=true"]
FIT_MARKER = "bench_render_fit.json"


def ensure_fit(store: Path, overrides: list[str]) -> tuple[float | None, dict]:
    """Fit ``store`` quickly unless a fit with the same overrides is there; (seconds or None, stats)."""
    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.fit.io import FIT_DIR, REPORT_FILE, save_fit
    from timevis_cli.fit.pipeline import fit

    marker = store / FIT_DIR / FIT_MARKER
    if marker.exists() and json.loads(marker.read_text()) == overrides:
        return None, json.loads((store / FIT_DIR / REPORT_FILE).read_text())
    print(f"quick fit of {store} ({' '.join(overrides)}) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = fit(open_run(store), load_config(overrides=overrides))
    path = save_fit(store, result, overwrite=True)
    seconds = time.perf_counter() - started
    (path / FIT_MARKER).write_text(json.dumps(overrides))
    return seconds, result.stats


def _timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


class Stage:
    """Wall-clock and CPU seconds (this process) of repeated calls; medians in the table."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return value

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    def text(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}f} s (CPU {self.median_cpu:.{digits}f} s)"


def _save_png(image, path: Path) -> None:
    """The PNG encode of ``FrameRenderer.save_png``."""
    from PIL import Image

    from timevis_cli.render.frames import PNG_COMPRESS_LEVEL

    Image.fromarray(image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the pool's workers)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def benchmark(
    epochs: int = 200,
    points: int = 10_000,
    dim: int = 512,
    classes: int = 10,
    size: int = 800,
    resolution: int = 200,
    jobs: int = 0,
    device: str = "auto",
    repeats: int = 5,
    workdir: Path | None = None,
    fit_set: list[str] | tuple[str, ...] = (),
    threads: int = 0,
    seed: int = 0,
) -> dict:
    """Run the benchmark (the arguments are the command line's); its measurements as a plain
    dict: ``per_frame_s`` (steady state, per frame per core), ``animation_s`` (measured, or
    projected to 200 epochs on 2 cores), their verdicts, ... and ``head`` + ``rows``, this
    script's table."""
    args = argparse.Namespace(
        epochs=epochs, points=points, dim=dim, classes=classes, size=size, resolution=resolution,
        jobs=jobs, device=device, repeats=repeats, workdir=workdir, fit_set=list(fit_set),
        threads=threads, seed=seed,
    )  # fmt: skip
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    jobs = args.jobs or os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        workdir = args.workdir or Path(tmp)
        spec = SyntheticSpec(
            n_train=args.points, epochs=args.epochs, dim=args.dim, classes=args.classes,
            seed=args.seed,
        )  # fmt: skip
        store = workdir / f"synthetic_{spec.n_train}x{spec.epochs}x{spec.dim}_s{spec.seed}"
        started = time.perf_counter()
        store, reused = ensure_store(store, spec)
        store_s = None if reused else time.perf_counter() - started
        fit_s, fit_stats = ensure_fit(store, [*QUICK_FIT, *args.fit_set])
        result = measure(args, store, jobs)

    import torch

    made = "reused" if store_s is None else f"written in {store_s:.0f} s"
    fitted = "reused" if fit_s is None else f"fitted in {fit_s:.0f} s"
    result["head"] = [
        ["machine", machine_description(f"torch {torch.__version__}")],
        ["store", f"{spec.describe()} ({made})"],
        ["fit (not timed here)", f"QUICK: {' '.join([*QUICK_FIT, *args.fit_set])}, "
         f"{fit_stats['complex']['vertices']:,} complex vertices ({fitted}); times rendering, "
         "not fit quality"],
        ["frame", f"{args.size} x {args.size} px, landscape grid {args.resolution} x "
         f"{args.resolution}, {args.points:,} training points drawn"],
    ]  # fmt: skip
    result["store"] = spec.describe()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="epochs in the store (all rendered)")
    parser.add_argument("--points", type=int, default=10_000, help="training samples (all drawn)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension of the store")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=800, help="frame width and height (pixels)")
    parser.add_argument("--resolution", type=int, default=200, help="landscape grid R (R x R)")
    parser.add_argument("--jobs", type=int, default=0, help="render workers (0: one per core)")
    parser.add_argument("--device", default="auto",
                        help="device of the grid decode and heads: auto, cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed in-process (median)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="store, fit and frames go here and are reused (default: a temp dir)")
    parser.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for the quick fit (repeatable)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the quick fit (0: torch's default; rendering uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = benchmark(**vars(args))
    print(markdown_table(["measure", "value"], result["head"] + result["rows"]))


def measure(args: argparse.Namespace, store: Path, jobs: int) -> dict:
    import numpy as np
    import torch

    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.device import resolve_device
    from timevis_cli.fit.io import load_fit
    from timevis_cli.render.animate import write_gif
    from timevis_cli.render.frames import FrameRenderer, render_epochs
    from timevis_cli.render.playback import (
        FrameBuilder,
        FrameInput,
        GridLandscapes,
        frame_inputs,
        plan_render,
    )

    torch.set_num_threads(1)  # rendering: one thread per process (the parent and each worker)
    device = resolve_device(args.device)
    settings = load_config(
        overrides=[f"render.resolution={args.resolution}", f"render.size_px={args.size}",
                   f"render.max_points={max(args.points, 1)}"]
    ).render  # fmt: skip
    run = open_run(store)
    fit = load_fit(run)
    plan_s, plan = _timed(plan_render, run, fit, settings)
    renderer_options = {
        "class_names": run.class_names,
        "size_px": (settings.size_px, settings.size_px),
        "dpi": settings.dpi,
        "show_test": len(plan.test_rows) > 0,
    }
    epochs = plan.epochs
    picks = [epochs[int(i)] for i in np.linspace(0, len(epochs) - 1, min(args.repeats, len(epochs)))]

    # the parent: the landscape on the device
    landscapes = GridLandscapes(run, fit, plan, device)
    per_epoch_decoder = fit.model.decode_index(picks[0]) is not None
    decode = Stage()
    if not per_epoch_decoder:  # a shared decoder decodes the canvas once; else every epoch
        decode(landscapes.decoded, plan.bounds[picks[0]])
    landscapes.grid(picks[0])  # warm-up: device context, kernels
    heads, positions = Stage(), Stage()
    inputs = {}
    for epoch in picks:
        emb = positions(fit.embedding, epoch)
        classes, margins = heads(landscapes.grid, epoch)
        train, test = emb["train"][plan.train_rows], emb["test"][plan.test_rows]
        inputs[epoch] = FrameInput(classes, margins, train, test)
    memory = ""
    if device.type == "cuda":
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"

    # a worker (in-process, one core)
    builder = FrameBuilder(plan)  # as a render worker gets it
    opening = Stage()
    opening(builder._open)
    renderer = FrameRenderer(**renderer_options)
    first = Stage()
    first(renderer.render, builder(picks[0], inputs[picks[0]]))  # lays out the figure once
    colour, data, draw, encode = Stage(), Stage(), Stage(), Stage()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame.png"
        for epoch in picks:
            colour(builder.background, inputs[epoch].classes, inputs[epoch].margins)
            frame = data(builder, epoch, inputs[epoch])
            image = draw(renderer.render, frame)
            encode(_save_png, image, path)
    renderer.close()
    worker_frame = data.median + draw.median + encode.median
    worker_cpu = data.median_cpu + draw.median_cpu + encode.median_cpu
    on_cpu = device.type == "cpu"
    parent_frame = positions.median + (heads.median if on_cpu else 0.0)  # on the CPU cores
    parent_frame_cpu = positions.median_cpu + (heads.median_cpu if on_cpu else 0.0)
    per_frame = worker_frame + parent_frame  # core time per frame
    per_frame_cpu = worker_cpu + parent_frame_cpu

    out = store / "render"
    workers = min(jobs, len(epochs))
    print(f"rendering {len(epochs)} epochs with {workers} workers ...", file=sys.stderr, flush=True)
    streamed = GridLandscapes(run, fit, plan, device)
    children_before, parent_before = _children_cpu(), time.process_time()
    pool_s, paths = _timed(
        lambda: render_epochs(
            FrameBuilder(plan), epochs, out, renderer_options, jobs,
            inputs=frame_inputs(streamed, fit),
        )
    )  # fmt: skip
    parent_cpu = time.process_time() - parent_before
    workers_cpu = _children_cpu() - children_before
    gif = Stage()
    gif_path = out / "training.gif"
    gif(lambda: write_gif(paths, gif_path, frame_ms=int(1000 / settings.fps)))
    gif_s = gif.median
    pool_per_frame_core = pool_s * workers / len(epochs)
    total = pool_s + gif_s
    pool_cpu = parent_cpu + workers_cpu
    idle_total = pool_cpu / workers + gif.median_cpu  # what an idle machine would take
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # pool start-up (spawned interpreters importing matplotlib and h5py, each worker's store
    # opening, the parent's grid decode): what the pool took beyond its frames' steady-state cost
    overhead = max(pool_s - per_frame * len(epochs) / workers, 0.0)
    gif_per_frame = gif_s / len(epochs)
    projected = per_frame * TARGET_EPOCHS / TARGET_CORES + overhead + gif_per_frame * TARGET_EPOCHS
    exact = len(epochs) == TARGET_EPOCHS and workers == TARGET_CORES
    met = "met" if (total if exact else projected) < ANIMATION_TARGET_S else "MISSED"
    idle_met = "met" if idle_total < ANIMATION_TARGET_S else "MISSED"
    frame_met = "met" if per_frame <= FRAME_TARGET_S else "MISSED"
    frame_cpu_met = "met" if per_frame_cpu <= FRAME_TARGET_S else "MISSED"
    png_mb = sum(p.stat().st_size for p in paths) / 2**20
    where = "shares the cores with the workers" if on_cpu else "off the CPU cores"
    rows = [
        ["timings", "wall-clock seconds; (CPU s) = this process's CPU time, what an idle core "
         "would take"],
        ["device (grid decode + heads, parent)", f"{device} ({args.device}){memory}"],
        ["plan_render (epochs, bounds, subset)", f"{plan_s:.3f} s"],
        ["parent: grid decode on the device (R² points, once)",
         "per epoch (the fit's decoder has one bias per epoch): in the next row"
         if per_epoch_decoder else decode.text()],
        ["parent: per epoch: head on the device (read head, argmax + margin, to CPU)"
         + (f"; with the landscape decoded on every {plan.landscape_step}th row and column and "
            "at class borders" if per_epoch_decoder else ""),
         f"{heads.text(4)} (median of {len(picks)}; {where})"],
        ["parent: the epoch's 2-D positions (fit embedding)", positions.text(4)],
        ["worker: open the store (once per worker; no torch)", opening.text()],
        ["worker: frame data (predictions, labels, colour grid)",
         f"{data.text()} (of which colouring {colour.text()})"],
        ["worker: draw (FrameRenderer.render)",
         f"{draw.text()} (first frame {first.text()}: lays out the figure)"],
        ["worker: PNG encode", encode.text()],
        ["per frame per core, steady state", f"{per_frame:.3f} s (CPU {per_frame_cpu:.3f} s): "
         f"worker {worker_frame:.3f} s + parent {parent_frame:.3f} s"
         + (" (positions, head on the CPU)" if on_cpu else " (positions)")],
        [f"render_epochs: {len(epochs)} frames, {workers} workers", f"{pool_s:.1f} s wall = "
         f"{pool_per_frame_core:.3f} s per frame per core, of which ~{overhead:.1f} s beyond the "
         "frames' steady-state cost (start-up: spawned workers' imports, store opening, the "
         "parent's grid decode; and other jobs' load); CPU: parent "
         f"{parent_cpu:.1f} s (device heads: {streamed.seconds['heads']:.1f} s wall) + workers "
         f"{workers_cpu:.1f} s = {pool_cpu / len(epochs):.3f} s per frame; {png_mb:.1f} MiB of PNGs"],
        ["GIF (write_gif)", f"{gif.text(1)} ({gif_path.stat().st_size / 2**20:.1f} MiB)"],
        ["total: frames + GIF", f"{total:.1f} s wall (load average {end_load:.1f} at the end); "
         f"{idle_total:.1f} s on idle cores (CPU of the pool / {workers} + the GIF's)"],
        [f"target: <= {FRAME_TARGET_S} s per frame per core",
         f"{per_frame:.3f} s steady state ({frame_met}), CPU {per_frame_cpu:.3f} s "
         f"({frame_cpu_met}); {pool_per_frame_core:.3f} s in this pool run, start-up included"],
        [f"target: {TARGET_EPOCHS} epochs < {ANIMATION_TARGET_S:.0f} s on {TARGET_CORES} cores",
         (f"{total:.1f} s measured ({met})" if exact else
          f"{projected:.1f} s projected ({met}; measured {len(epochs)} epochs on {workers} "
          f"workers: steady-state per-frame cost x {TARGET_EPOCHS} / {TARGET_CORES} + this run's "
          "pool overhead + GIF per frame)") + f"; {idle_total:.1f} s on idle cores ({idle_met})"],
    ]  # fmt: skip
    return {
        "device": str(device),
        "epochs": len(epochs),
        "workers": workers,
        "size_px": args.size,
        "resolution": args.resolution,
        "points": args.points,
        "per_frame_s": per_frame,
        "per_frame_cpu_s": per_frame_cpu,
        "frame_met": frame_met == "met",
        "pool_s": pool_s,
        "pool_per_frame_core_s": pool_per_frame_core,
        "gif_s": gif_s,
        "total_s": total,
        "animation_measured": exact,
        "animation_s": total if exact else projected,
        "animation_met": met == "met",
        "idle_total_s": idle_total,
        "load_end": end_load,
        "rows": rows,
    }


if __name__ == "__main__":
    main()
