"""Benchmark: `timevis render`: seconds per frame per core and for a whole animation.

    python scripts/bench_render.py [--epochs 200] [--points 10000] [--dim 512] [--size 800]
                                   [--resolution 200] [--jobs N] [--workdir DIR] [--repeats 5]

Builds (or reuses, under ``--workdir``) a CIFAR-like synthetic run store of ``--points`` training
samples x ``--epochs`` epochs (``scripts/make_synthetic_store.py``) and fits it QUICKLY
(``training.max_epochs=1``, reduction on): this benchmark times rendering, not fit quality, so the
map and landscapes it draws are rough. The fit is done once and reused with the store. Then, the
way ``timevis render`` does it (``plan_render``, ``FrameBuilder``, ``render_epochs``,
``write_gif``), it times:

- opening the store and loading the fit in a fresh ``FrameBuilder`` (torch set to 1 thread, as in a
  render worker);
- decoding the canvas grid (R x R points through the decoder; once per worker with global bounds);
- one epoch's background (that epoch's head on the decoded grid, coloured);
- one frame's data (background, embedding, predictions: ``FrameBuilder(epoch)``), drawing it
  (``FrameRenderer.render``) and encoding the PNG: medians over ``--repeats`` epochs, in-process,
  one core: their sum is the steady-state cost per frame per core;
- ``render_epochs`` over all epochs with ``--jobs`` worker processes (default: one per core),
  which adds the pool's start-up and every worker's own grid decode;
- the GIF (``write_gif``, as ``timevis render`` calls it).

and prints one markdown table against the targets: <= 0.3 s per frame per core, and 200 epochs
in under a minute on 2 cores (frames + GIF; projected from the per-frame cost when fewer epochs
or other core counts are run).
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
    from timevis_cli.fit import fit
    from timevis_cli.fit_io import FIT_DIR, REPORT_FILE, save_fit

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="epochs in the store (all rendered)")
    parser.add_argument("--points", type=int, default=10_000, help="training samples (all drawn)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension of the store")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=800, help="frame width and height (pixels)")
    parser.add_argument("--resolution", type=int, default=200, help="landscape grid R (R x R)")
    parser.add_argument("--jobs", type=int, default=0, help="render workers (0: one per core)")
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed in-process (median)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="store, fit and frames go here and are reused (default: a temp dir)")
    parser.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for the quick fit (repeatable)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the quick fit (0: torch's default; rendering uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
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
        rows = measure(args, store, jobs)

    import torch

    made = "reused" if store_s is None else f"written in {store_s:.0f} s"
    fitted = "reused" if fit_s is None else f"fitted in {fit_s:.0f} s"
    head = [
        ["machine", machine_description(f"torch {torch.__version__}")],
        ["store", f"{spec.describe()} ({made})"],
        ["fit (not timed here)", f"QUICK: {' '.join([*QUICK_FIT, *args.fit_set])}, "
         f"{fit_stats['complex']['vertices']:,} complex vertices ({fitted}); times rendering, "
         "not fit quality"],
        ["frame", f"{args.size} x {args.size} px, landscape grid {args.resolution} x "
         f"{args.resolution}, {args.points:,} training points drawn"],
    ]  # fmt: skip
    print(markdown_table(["measure", "value"], head + rows))


def measure(args: argparse.Namespace, store: Path, jobs: int) -> list[list[str]]:
    import numpy as np
    from PIL import Image

    from timevis_callback import open_run
    from timevis_cli.animate import write_gif
    from timevis_cli.config import load_config
    from timevis_cli.fit_io import load_fit
    from timevis_cli.playback import FrameBuilder, plan_render
    from timevis_cli.render import FrameRenderer, render_epochs

    settings = load_config(
        overrides=[f"render.resolution={args.resolution}", f"render.size_px={args.size}",
                   f"render.max_points={max(args.points, 1)}"]
    ).render  # fmt: skip
    run = open_run(store)
    plan_s, plan = _timed(plan_render, run, load_fit(run), settings)
    renderer_options = {
        "class_names": run.class_names,
        "size_px": (settings.size_px, settings.size_px),
        "dpi": settings.dpi,
        "show_test": len(plan.test_rows) > 0,
    }
    epochs = plan.epochs
    picks = [epochs[int(i)] for i in np.linspace(0, len(epochs) - 1, min(args.repeats, len(epochs)))]

    builder = FrameBuilder(plan)  # as a render worker gets it
    open_s, _ = _timed(builder._open)
    decode_s, _ = _timed(builder.decoded, plan.bounds[epochs[0]])
    background = statistics.median(_timed(builder.background, e)[0] for e in picks)

    renderer = FrameRenderer(**renderer_options)
    first_frame = builder(picks[0])
    first_draw_s, _ = _timed(renderer.render, first_frame)  # lays out the figure once
    data, draw, encode = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in picks:
            seconds, frame = _timed(builder, epoch)
            data.append(seconds)
            seconds, image = _timed(renderer.render, frame)
            draw.append(seconds)
            path = Path(tmp) / "frame.png"
            seconds, _ = _timed(
                lambda img, p: Image.fromarray(img).save(p, format="PNG", compress_level=3),
                image, path,
            )  # fmt: skip
            encode.append(seconds)
    renderer.close()
    data_s, draw_s, encode_s = (statistics.median(x) for x in (data, draw, encode))
    per_frame = data_s + draw_s + encode_s

    out = store / "render"
    workers = min(jobs, len(epochs))
    print(f"rendering {len(epochs)} epochs with {workers} workers ...", file=sys.stderr, flush=True)
    pool_s, paths = _timed(render_epochs, FrameBuilder(plan), epochs, out, renderer_options, jobs)
    gif_path = out / "training.gif"
    gif_s, _ = _timed(lambda: write_gif(paths, gif_path, frame_ms=int(1000 / settings.fps)))
    pool_per_frame_core = pool_s * workers / len(epochs)
    total = pool_s + gif_s

    # pool start-up (spawned interpreters importing torch and matplotlib, each worker's own store
    # opening and grid decode): what the pool took beyond the steady-state cost of its frames
    overhead = max(pool_s - per_frame * len(epochs) / workers, 0.0)
    gif_per_frame = gif_s / len(epochs)
    projected = per_frame * TARGET_EPOCHS / TARGET_CORES + overhead + gif_per_frame * TARGET_EPOCHS
    exact = len(epochs) == TARGET_EPOCHS and workers == TARGET_CORES
    met = "met" if (total if exact else projected) < ANIMATION_TARGET_S else "MISSED"
    frame_met = "met" if per_frame <= FRAME_TARGET_S else "MISSED"
    png_mb = sum(p.stat().st_size for p in paths) / 2**20
    return [
        ["plan_render (epochs, bounds, subset)", f"{plan_s:.3f} s"],
        ["open store + load fit (per worker)", f"{open_s:.3f} s"],
        ["grid decode (R² points, once per worker)", f"{decode_s:.3f} s"],
        ["background: head on grid + colours (per epoch)", f"{background:.3f} s (median of {len(picks)})"],
        ["frame data incl. background (FrameBuilder)", f"{data_s:.3f} s (median)"],
        ["draw (FrameRenderer.render)", f"{draw_s:.3f} s (median; first frame {first_draw_s:.3f} s, "
         "lays out the figure)"],
        ["PNG encode", f"{encode_s:.3f} s (median)"],
        ["per frame per core, in-process steady state", f"{per_frame:.3f} s"],
        [f"render_epochs: {len(epochs)} frames, {workers} workers", f"{pool_s:.1f} s wall = "
         f"{pool_per_frame_core:.3f} s per frame per core, of which pool start-up ~{overhead:.1f} s "
         f"(spawned workers' imports, store opening, grid decode); {png_mb:.1f} MiB of PNGs"],
        ["GIF (write_gif)", f"{gif_s:.1f} s ({gif_path.stat().st_size / 2**20:.1f} MiB)"],
        ["total: frames + GIF", f"{total:.1f} s"],
        [f"target: <= {FRAME_TARGET_S} s per frame per core",
         f"{per_frame:.3f} s steady state ({frame_met}); {pool_per_frame_core:.3f} s in this pool "
         f"run, start-up included"],
        [f"target: {TARGET_EPOCHS} epochs < {ANIMATION_TARGET_S:.0f} s on {TARGET_CORES} cores",
         (f"{total:.1f} s measured ({met})" if exact else
          f"{projected:.1f} s projected ({met}; measured {len(epochs)} epochs on {workers} "
          f"workers: steady-state per-frame cost x {TARGET_EPOCHS} / {TARGET_CORES} + this run's "
          "pool overhead + GIF per frame)")],
    ]  # fmt: skip


if __name__ == "__main__":
    main()
