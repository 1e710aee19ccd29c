"""Benchmark: `timevis fit`: seconds per stage, complex size and peak memory, against the targets.

    python scripts/bench_fit.py [STORE ...] [--synthetic N,E,D ...] [--device auto|cpu|cuda]
                                [--preset P] [--set key=value ...] [--threads T] [--workdir DIR]
                                [--method timevis|dvi]
    python scripts/bench_fit.py --memory-scaling [--synthetic N,E,D] [--scaling-epochs 10,20,40]

Runs ``timevis_cli.fit.pipeline.fit`` (what ``timevis fit`` runs, without writing ``fit/``) on each run store
and prints ONE markdown table, a column per store: the store's shape, device, kNN backend, seconds
per stage (reduction, complex = spatial + boundary edges, temporal, mixing, training, embedding),
training epochs run, complex size (vertices, edges by kind), peak resident memory and, on CUDA,
peak GPU memory, beside the issue's targets:

- CPU fit (complex + training + refinement) of MNIST-5k (~4 000 train x 16 epochs) under 60 s on 2 cores;
- CPU fit of 10 000 train x 100 epochs x 512 in at most 6 minutes on 2 cores (x 200: 12 minutes),
  peak memory at most 3 GB;
- CIFAR-scale (50 000 x 200 x 512) on one H100 under 10 minutes;
- memory flat in the number of epochs (``--memory-scaling``).

Stores: the paths given; ``--synthetic N,E,D`` adds a CIFAR-like synthetic store of N training
samples x E epochs x D features (``scripts/make_synthetic_store.py``, written under ``--workdir``
and reused there); with neither, ``/work/runs/mnist/store`` (the demo's MNIST-5k run). Use
``--preset mnist`` for the MNIST-5k target and ``--preset cifar10`` for the CIFAR-scale one (the
presets those runs are fitted with). A store being recorded is fitted on the epochs present.
``--method dvi`` (``--set fit.method=dvi``) times the DVI baseline instead (docs/dvi.md): its
stages are complex, npr and training (per epoch, summed) and embedding.

Every fit runs in a fresh Python process, so its peak memory is its own: peak RSS is that process's
high-water mark (Linux VmHWM), the imports included; "RSS before fit" is what the process held
after importing torch and opening the store. ``--memory-scaling`` fits synthetic stores of the
same N and D with E = 10, 20, 40 epochs (default N = 2 000, D = 512, and training.max_epochs=1
unless set: every training epoch allocates the same, so the peak is reached in the first) and prints
peak memory per E, its slope per epoch and what the complex accounts for. ``benchmark(store, ...)``
fits one store that way and returns its measurements as a dict (``scripts/bench.py`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from make_synthetic_store import (  # noqa: E402
    SyntheticSpec,
    machine_description,
    markdown_table,
    parse_triple,
    peak_rss_mb,
    rss_mb,
)

DEFAULT_STORE = Path("/work/runs/mnist/store")
STAGES = ("reduction", "complex", "temporal", "mixing", "npr", "training", "refine", "embedding")
BUILD_STAGES = ("reduction", "complex", "temporal", "mixing", "npr")
# what the CPU target times: everything but embedding the samples (refinement included: it
# places them, and the fit is not done without it)
TARGET_STAGES = (*BUILD_STAGES, "training", "refine")
MNIST_TARGET_S = 60.0
LARGE_CPU_TARGET_S = 360.0  # per 100 epochs of 10 000 train samples on 2 CPU cores
LARGE_CPU_TARGET_MB = 3 * 1024
CIFAR_TARGET_S = 600.0
# memory beyond the complex growing by less than this fraction of one epoch's float32 features
# per recorded epoch counts as flat (streaming would hold every epoch: a slope of 1.0 or more)
FLAT_SLOPE_OF_EPOCH = 0.1


# --- the worker: one fit in this (fresh) process ---------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    """Fit ``args.stores[0]`` and write what was measured as JSON to ``args.worker_json``."""
    import logging

    import torch

    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.fit.pipeline import fit

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = {"fit.device": args.device}
    config = load_config(preset=args.preset, overrides=args.set, flags=flags)
    run = open_run(args.stores[0])
    train = run.samples.mask("train")
    if config.fit.device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fit(run, config)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    stats = result.stats
    dvi = config.fit.method == "dvi"
    out = {
        "method": config.fit.method,
        "store": str(run.path),
        "n_train": int(train.sum()),
        "n_test": int((~train).sum()),
        "epochs": len(result.epochs),
        "epoch_range": f"{result.epochs[0]}-{result.epochs[-1]}",
        "dim": run.feature_dim,
        "classes": run.num_classes,
        "device": stats["device"],
        "gpu": torch.cuda.get_device_name(0) if stats["device"].startswith("cuda") else "",
        "knn_backend": stats["knn_backend"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": stats["seconds"],
        "wall": wall,
        "cpu": cpu,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "complex": stats["complex"],
        "refine": stats.get("refine"),
        "training": {
            "epochs_run": result.report.epochs_run,
            # DVI: passes over all its per-epoch models, at most dvi.max_passes each
            "max_epochs": config.dvi.max_passes * len(result.epochs) if dvi else config.training.max_epochs,
            "stopped_early": result.report.stopped_early,
            "edges_per_epoch": result.report.edges_per_epoch,
        },
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "fit_peak_memory_mb": stats.get("peak_memory_mb"),
        "stage_peaks": stats.get("peak_memory_mb_after"),
        "peak_gpu_mb": stats.get("peak_gpu_memory_mb"),
        "peak_gpu_reserved_mb": (
            torch.cuda.max_memory_reserved() / 2**20 if stats["device"].startswith("cuda") else None
        ),
        "feature_bytes": int(train.size) * run.feature_dim * 2 * len(result.epochs),
    }
    Path(args.worker_json).write_text(json.dumps(out, indent=1))


# --- the parent: stores, workers, the table --------------------------------------------------


def ensure_synthetic(spec: SyntheticSpec, workdir: Path, verbose: bool) -> Path:
    """The synthetic store of ``spec`` under ``workdir`` (written in a subprocess, or reused)."""
    path = workdir / f"synthetic_{spec.n_train}x{spec.epochs}x{spec.dim}_s{spec.seed}"
    command = [
        sys.executable, str(HERE / "make_synthetic_store.py"), str(path),
        "--samples", str(spec.n_train), "--epochs", str(spec.epochs), "--dim", str(spec.dim),
        "--seed", str(spec.seed),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=not verbose, text=True)
    if done.returncode != 0:
        raise SystemExit(f"could not write {path}:\n{done.stderr}")
    return path


def fit_in_subprocess(store: Path, args: argparse.Namespace, overrides: list[str]) -> dict:
    """Run the worker on ``store`` in a fresh interpreter; its JSON, or ``{"error": ...}``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), str(store),
                   "--worker-json", str(out), "--device", args.device]  # fmt: skip
        if args.preset:
            command += ["--preset", args.preset]
        for item in overrides:
            command += ["--set", item]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.verbose:
            command.append("--verbose")
        print(f"fitting {store} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, stderr=None if args.verbose else subprocess.PIPE, text=True)
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or "").strip().splitlines()
            return {"store": str(store), "error": tail[-1] if tail else f"exit {done.returncode}"}
        result = json.loads(out.read_text())
        print(f"  done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        return result


def benchmark(
    store: Path,
    *,
    device: str = "auto",
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    threads: int = 0,
    verbose: bool = False,
) -> dict:
    """Fit ``store`` once in a fresh process; its measurements as a plain dict (the worker's
    JSON: ``seconds`` per stage, ``wall``, ``complex``, ``training``, ``peak_rss_mb``, ...), or
    ``{"store": ..., "error": ...}``. What ``main`` runs per store."""
    args = argparse.Namespace(device=device, preset=preset, threads=threads, verbose=verbose)
    return fit_in_subprocess(Path(store), args, list(overrides))


def _threads(n: int) -> str:
    return f"{n} torch thread{'s' if n != 1 else ''}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def _s(value: float) -> str:
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def _edges(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in counts.items()) + f" (total {sum(counts.values()):,})"


def _per_epoch_range(values: dict[str, int]) -> str:
    numbers = list(values.values())
    return f"{min(numbers):,}-{max(numbers):,}" if numbers else "0"


def mnist_verdict(r: dict) -> str:
    if not (r["device"] == "cpu" and 3_000 <= r["n_train"] <= 5_000 and 10 <= r["epochs"] <= 25):
        return "n/a (not an MNIST-5k-sized store fitted on the CPU)"
    build = sum(r["seconds"].get(k, 0.0) for k in TARGET_STAGES)
    met = "met" if build < MNIST_TARGET_S else "MISSED"
    cores = "" if r["threads"] == 2 else f"; ran with {r['threads']} torch threads, target is 2"
    return f"{_s(build)} ({met}{cores})"


def large_cpu_verdict(r: dict) -> str:
    if not (r["device"] == "cpu" and r["n_train"] >= 10_000 and r["epochs"] >= 100):
        return "n/a (not a 10 000 x 100 store fitted on the CPU)"
    build = sum(r["seconds"].get(k, 0.0) for k in TARGET_STAGES)
    target = LARGE_CPU_TARGET_S * r["epochs"] / 100
    time_met = "met" if build <= target else "MISSED"
    memory_met = "met" if r["peak_rss_mb"] <= LARGE_CPU_TARGET_MB else "MISSED"
    cores = "" if r["threads"] == 2 else f"; ran with {r['threads']} torch threads, target is 2"
    return (f"{build / 60:.1f} min of {target / 60:.0f} ({time_met}{cores}); peak RSS "
            f"{_mb(r['peak_rss_mb'])} of {_mb(LARGE_CPU_TARGET_MB)} ({memory_met})")


def _refine_parts(r: dict) -> str:
    seconds = (r.get("refine") or {}).get("seconds")
    if not seconds:
        return "no refinement"
    return (f"graph {_s(seconds.get('graph', 0.0))}, trajectory targets "
            f"{_s(seconds.get('trajectories', 0.0))}, layout {_s(seconds.get('layout', 0.0))}, "
            f"decoder {_s(seconds.get('decoder', 0.0))}")


def _stage_peaks(r: dict) -> str:
    """The process's high-water mark at the end of each stage, in stage order."""
    peaks = dict(r.get("stage_peaks") or {})
    refine = peaks.pop("refine", None)
    parts = [f"{stage} {_mb(mb)}" for stage, mb in peaks.items()]
    inner = (r.get("refine") or {}).get("peak_memory_mb_after") or {}
    parts += [f"refinement's {stage} {_mb(mb)}" for stage, mb in inner.items()]
    if refine is not None and not inner:
        parts.append(f"refine {_mb(refine)}")
    return ", ".join(parts) or "n/a"


def cifar_verdict(r: dict) -> str:
    if not (r["device"].startswith("cuda") and r["n_train"] >= 50_000 and r["epochs"] >= 200
            and r["dim"] >= 512):  # fmt: skip
        return "n/a (not a CIFAR-scale store fitted on a GPU)"
    total = sum(r["seconds"].values())
    return f"{total / 60:.1f} min ({'met' if total < CIFAR_TARGET_S else 'MISSED'}; {r['gpu']})"


def store_rows(results: list[dict], config_text: str) -> tuple[list[str], list[list[str]]]:
    """The measure x store table."""
    ok = [r for r in results if "error" not in r]
    first = ok[0] if ok else {}
    extra = f"torch {first['torch']}, {_threads(first['threads'])}" if first else ""
    header = ["measure"] + ["/".join(Path(r["store"]).parts[-2:]) for r in results]

    def row(name: str, fn) -> list[str]:
        return [name] + [("FAILED: " + r["error"]) if "error" in r else fn(r) for r in results]

    rows = [
        ["machine", machine_description(extra)] + ["same"] * (len(results) - 1),
        ["config", config_text] + ["same"] * (len(results) - 1),
        row("store", lambda r: r["store"]),
        row("method", lambda r: r.get("method", "timevis")),
        row("samples x epochs x D", lambda r: f"{r['n_train']:,} train (+{r['n_test']:,} test) x "
            f"{r['epochs']} (epochs {r['epoch_range']}) x {r['dim']}, {r['classes']} classes"),
        row("device / kNN backend", lambda r: f"{r['device']}{' (' + r['gpu'] + ')' if r['gpu'] else ''}"
            f" / {r['knn_backend']}"),
    ]
    labels = {
        "reduction": "reduction (k-center greedy)",
        "complex": "complex (spatial + boundary edges)",
        "temporal": "temporal edges",
        "mixing": "mixing",
        "npr": "npr (DVI: kNN overlap of consecutive epochs)",
        "training": "training (projector; DVI: every epoch's model)",
        "refine": "refinement (layout of all samples, all epochs, and the decoder fit)",
        "embedding": "embedding (all samples, all epochs; without refinement)",
    }
    for stage in STAGES:
        rows.append(row(f"s: {labels[stage]}", lambda r, s=stage: _s(r["seconds"].get(s, 0.0))))
    rows += [
        row("s: refinement's parts", _refine_parts),
        row("s: complex + training + refinement (all but embedding; DVI: complex + npr + training)", lambda r: _s(
            sum(r["seconds"].get(k, 0.0) for k in TARGET_STAGES))),
        row("s: total (fit() wall)", lambda r: _s(r["wall"])),
        row("s: CPU time of fit(), all threads; 1-min load average at its end", lambda r: (
            f"{_s(r['cpu'])}; load {r['load']:.1f}" if r.get("cpu") is not None and r.get("load") is not None
            else "n/a")),
        row("training epochs run", lambda r: f"{r['training']['epochs_run']} of max "
            f"{r['training']['max_epochs']}{' (stopped early)' if r['training']['stopped_early'] else ''}"
            f", {r['training']['edges_per_epoch']:,} edges sampled per epoch"),
        row("complex vertices", lambda r: f"{r['complex']['vertices']:,} (per epoch: "
            f"{_per_epoch_range(r['complex']['selected_per_epoch'])} selected + "
            f"{_per_epoch_range(r['complex']['boundary_per_epoch'])} boundary)"),
        row("boundary points from", lambda r: ", ".join(
            f"{src} x{list(r['complex']['boundary_source'].values()).count(src)}"
            for src in sorted(set(r["complex"]["boundary_source"].values())))),
        row("edges before mixing", lambda r: _edges(r["complex"]["edges_before_mixing"])),
        row("edges after mixing", lambda r: _edges(r["complex"]["edges"])),
        row("RSS before fit (torch + store opened)", lambda r: _mb(r["rss_before_mb"])),
        row("peak RSS (process high-water mark)", lambda r: _mb(r["peak_rss_mb"])),
        row("high-water mark at the end of each stage", _stage_peaks),
        row("peak RSS as fit.json reports it (ru_maxrss)", lambda r: _mb(r["fit_peak_memory_mb"])),
        row("the complex in memory (features, attention, edges pre/post mixing, draws)", lambda r: _mb(_complex_mb(r))),
        row("refinement: points / edges / trajectory pairs", lambda r: "no refinement" if not r["refine"]
            else f"{r['refine']['points']:,} / {r['refine']['edges']:,} / {r['refine']['trajectory_pairs']:,}"),
        row("refinement: edges and trajectory targets (refine.memory_mb)", _blocks),
        row("peak GPU memory allocated / reserved", lambda r: "n/a (CPU)" if r["peak_gpu_mb"] is None
            else f"{_mb(r['peak_gpu_mb'])} / {_mb(r['peak_gpu_reserved_mb'])}"),
        row("all epochs' features, float16 (never loaded at once)",
            lambda r: _mb(r["feature_bytes"] / 2**20)),
        row(f"target: CPU fit (complex + training + refinement) of MNIST-5k < {MNIST_TARGET_S:.0f} s on 2 cores",
            mnist_verdict),
        row(f"target: CPU fit of 10 000 x 100 x 512 <= {LARGE_CPU_TARGET_S / 60:.0f} min (x 200: "
            f"{2 * LARGE_CPU_TARGET_S / 60:.0f} min) on 2 cores, peak RSS <= 3 GB", large_cpu_verdict),
        row("target: CIFAR-scale (50 000 x 200 x 512) on one H100 < 10 min", cifar_verdict),
        ["target: memory flat in the number of epochs", "see --memory-scaling"]
        + ["same"] * (len(results) - 1),
    ]
    return header, rows


def memory_scaling(args: argparse.Namespace, workdir: Path, overrides: list[str]) -> None:
    n, _, d = args.synthetic[0] if args.synthetic else (2_000, 0, 512)
    epochs = [int(e) for e in args.scaling_epochs.split(",")]
    if not any(item.split("=")[0].strip() in ("training.max_epochs", "max_epochs") for item in overrides):
        overrides = [*overrides, "training.max_epochs=1"]
    results = []
    for e in epochs:
        store = ensure_synthetic(SyntheticSpec(n_train=n, epochs=e, dim=d), workdir, args.verbose)
        results.append((e, fit_in_subprocess(store, args, overrides)))
    ok = [(e, r) for e, r in results if "error" not in r]
    extra = f"torch {ok[0][1]['torch']}, {_threads(ok[0][1]['threads'])}" if ok else ""
    header = ["epochs E", "features, all epochs (f16)", "complex vertices", "edges (mixed)",
              "fit s (total)", "RSS before fit", "peak RSS", "peak - before", "complex",
              "refinement blocks", "peak - before - complex - blocks in memory",
              "peak GPU"]  # fmt: skip
    rows = []
    for e, r in results:
        if "error" in r:
            rows.append([str(e), "FAILED: " + r["error"]] + [""] * (len(header) - 2))
            continue
        rows.append([
            str(e), _mb(r["feature_bytes"] / 2**20), f"{r['complex']['vertices']:,}",
            f"{sum(r['complex']['edges'].values()):,}", _s(r["wall"]), _mb(r["rss_before_mb"]),
            _mb(r["peak_rss_mb"]), _mb(r["peak_rss_mb"] - (r["rss_before_mb"] or 0.0)),
            _mb(_complex_mb(r)), _blocks(r), _mb(_beyond_complex_mb(r)),
            "n/a (CPU)" if r["peak_gpu_mb"] is None else _mb(r["peak_gpu_mb"]),
        ])  # fmt: skip
    print(f"machine: {machine_description(extra)}")
    print(f"stores: synthetic {n:,} train (+{n // 5:,} test) x E x {d}; device {args.device}; "
          f"preset {args.preset or 'none'}; --set {' '.join(overrides) or 'none'}; "
          "each fit in a fresh process\n")
    print(markdown_table(header, rows))
    if len(ok) >= 2:
        (e0, a), (e1, b) = ok[0], ok[-1]
        xs = [float(e) for e, _ in ok]
        ys = [r["peak_rss_mb"] for _, r in ok]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        epoch_f32 = a["feature_bytes"] / e0 * 2 / 2**20
        beyond = [_beyond_complex_mb(r) for _, r in ok]
        growth = (beyond[-1] - beyond[0]) / (e1 - e0)
        verdict = "met" if growth < FLAT_SLOPE_OF_EPOCH * epoch_f32 else "MISSED"
        print(
            f"\ntarget: memory flat in the number of epochs beyond the reduced complex -> E {e0} -> "
            f"{e1}: peak RSS {a['peak_rss_mb']:,.0f} -> {b['peak_rss_mb']:,.0f} MB (slope "
            f"{slope:.1f} MB per epoch, least squares); the complex itself (vertex features, "
            f"attention, edges before and after mixing, an epoch's draws) {_complex_mb(a):,.0f} -> "
            f"{_complex_mb(b):,.0f} MB, the refinement's blocks held in memory (bounded by "
            f"refine.memory_mb) {_resident_blocks_mb(a):,.0f} -> {_resident_blocks_mb(b):,.0f} MB; "
            f"the rest (peak - RSS before - complex - blocks in memory) "
            f"{' -> '.join(f'{x:,.0f}' for x in beyond)} MB = {growth:+.2f} MB per epoch ({verdict}: "
            f"flat means under {FLAT_SLOPE_OF_EPOCH:g} x one epoch of the store's features as "
            f"float32, {epoch_f32:.1f} MB). Linear projection to 200 epochs: "
            f"{b['peak_rss_mb'] + slope * (200 - e1):,.0f} MB."
        )
        if b["peak_gpu_mb"] is not None and a["peak_gpu_mb"]:
            print(f"peak GPU memory E {e0} -> {e1}: x{b['peak_gpu_mb'] / a['peak_gpu_mb']:.2f}")


def _complex_mb(result: dict) -> float:
    """The complex's resident bytes at their largest, as fit.json reports them: vertex features,
    attention, the edges before and after mixing (both alive while mixing), and one training
    epoch's draws from them."""
    draws = result["training"]["edges_per_epoch"] * 3 * 8  # an epoch's drawn ids, heads, tails
    return (sum(result["complex"].get("bytes", {}).values()) + draws) / 2**20


def _resident_blocks_mb(result: dict) -> float:
    """The refinement's edges and trajectory targets when held in memory (at most
    refine.memory_mb; 0 when they went to the scratch file or the refinement was off)."""
    refine = result.get("refine") or {}
    return refine.get("resident_bytes", 0) / 2**20


def _blocks(result: dict) -> str:
    refine = result.get("refine")
    if not refine:
        return "no refinement"
    resident = refine.get("resident_bytes", 0)
    where = "in memory" if resident == refine["blocks_bytes"] else f"{_mb(resident / 2**20)} of it in memory"
    return f"{_mb(refine['blocks_bytes'] / 2**20)} ({where if resident else 'scratch file'})"


def _beyond_complex_mb(result: dict) -> float:
    return (
        result["peak_rss_mb"]
        - (result["rss_before_mb"] or 0.0)
        - _complex_mb(result)
        - _resident_blocks_mb(result)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="*", type=Path, help="run store folders (RUN_DIR)")
    parser.add_argument("--synthetic", action="append", type=parse_triple, default=[],
                        metavar="N,E,D", help="add a synthetic store (repeatable)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--preset", default=None, help="config preset (mnist, fmnist, cifar10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as timevis fit --set (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--method", choices=("timevis", "dvi"), default=None,
                        help="fit.method (as --set fit.method=...): timevis or the DVI baseline")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where synthetic stores are written and reused (default: a temp dir)")
    parser.add_argument("--memory-scaling", action="store_true",
                        help="peak memory of fits of E = --scaling-epochs epochs, same N and D")
    parser.add_argument("--scaling-epochs", default="10,20,40", help="epoch counts to compare")
    parser.add_argument("--verbose", "-v", action="store_true", help="show the fits' logs")
    parser.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.method:
        args.set = [*args.set, f"fit.method={args.method}"]
    if args.worker_json:
        run_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.memory_scaling:
            memory_scaling(args, workdir, list(args.set))
            return
        stores = list(args.stores)
        for n, e, d in args.synthetic:
            stores.append(ensure_synthetic(SyntheticSpec(n, e, d), workdir, args.verbose))
        if not stores:
            if not (DEFAULT_STORE / "run.h5").exists():
                raise SystemExit(
                    f"no store given and {DEFAULT_STORE} does not exist; record the MNIST-5k one with\n"
                    "  python scripts/demo_train.py /work/runs/mnist --data mnist --epochs 16\n"
                    "or benchmark a synthetic store: --synthetic 4000,17,512"
                )
            stores = [DEFAULT_STORE]
        results = [
            benchmark(store, device=args.device, preset=args.preset, overrides=args.set,
                      threads=args.threads, verbose=args.verbose)
            for store in stores
        ]  # fmt: skip
        config_text = (f"preset {args.preset or 'none (defaults)'}; --set "
                       f"{' '.join(args.set) or 'none'}; device {args.device}; each fit in a fresh "
                       "process")  # fmt: skip
        header, rows = store_rows(results, config_text)
        print(markdown_table(header, rows))
        if any("error" in r for r in results):
            sys.exit(1)


if __name__ == "__main__":
    main()
