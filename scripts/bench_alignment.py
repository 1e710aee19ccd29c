"""Benchmark: does aligning consecutive epochs (``refine.align``) remove drift, and at what cost?

    python scripts/bench_alignment.py RUN_DIR [--modes none,similarity,rigid] [--preset P]
                                      [--set key=value ...] [--k K] [--temporal-k TK]
                                      [--threads 2] [--out JSON]

Fits the run store at RUN_DIR once per alignment mode (``--modes``; default: ``none``, the
default ``refine.align``, and ``similarity``), with the same configuration and seed otherwise
(``timevis_cli.fit.pipeline.fit``, what ``timevis fit`` runs; nothing is written to RUN_DIR but
the refinement's scratch file when its memory budget is exceeded), and scores every fit with ``timevis_cli.evaluate.loop.evaluate``
(eval's own metrics, eval's k and temporal k unless given). It prints one markdown table, a row
per fitted epoch then ``mean`` and ``worst``, and per mode:

- **travel**: the distance the centroid of the epoch's train samples moved since the previous
  epoch, relative to the cloud's extent (the mean of the two epochs' extents; an epoch's extent
  is the larger side of its train samples' 5-95% quantile box); ``total`` sums it over the run;
- **rot**: the rotation (degrees) of the rigid least-squares fit carrying the epoch's train
  samples onto the previous epoch's, as drawn (what is left of rotation drift);
- **applied**: the rotation (degrees) and scale the alignment applied to the epoch (from the
  fit's ``stats["refine"]["align"]``; relative to the first epoch);
- eval's per-epoch metrics: nnpv, boundary, ppr (train), and temp_l, temp_g (that epoch's mean
  over train samples);

then the run-wide temporal metrics (temppv, temp_l, temp_g over all epochs) per mode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PER_EPOCH = ("nnpv", "boundary", "ppr", "temp_l", "temp_g")
RUN_WIDE = ("temppv", "temp_l", "temp_g")
QUANTILES = (0.05, 0.95)


@dataclass
class _Fitted:
    """A fit in memory, shaped like :class:`timevis_cli.fit.io.LoadedFit` for ``evaluate``."""

    result: Any
    path: Path

    @property
    def model(self) -> Any:
        return self.result.model

    @property
    def epochs(self) -> list[int]:
        return self.result.epochs

    def embedding(self, epoch: int) -> dict[str, np.ndarray]:
        i = self.result.epochs.index(epoch)
        boundary = np.asarray(self.result.boundary_features[i], np.float32)
        return {
            "train": self.result.train[i],
            "test": self.result.test[i],
            "boundary": self.result.boundary_points[i],
            "boundary_features": boundary,
            "boundary_pair": self.result.boundary_pairs[i],
        }


def extent(points: np.ndarray) -> float:
    low, high = np.quantile(points, QUANTILES, axis=0)
    return float(max(high - low))


def drift(train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per epoch (the first: NaN): centroid travel since the previous epoch relative to the
    clouds' extent, and the residual rotation (degrees) onto the previous epoch."""
    from timevis_cli.fit.align import similarity

    travel, rotation = [math.nan], [math.nan]
    for i in range(1, len(train)):
        moved = np.linalg.norm(train[i].mean(axis=0) - train[i - 1].mean(axis=0))
        travel.append(float(moved / (0.5 * (extent(train[i]) + extent(train[i - 1])))))
        rotation.append(similarity(train[i], train[i - 1], scale=False).angle_degrees)
    return travel, rotation


def measure(run: Any, config: Any, k: int, temporal_k: int) -> dict[str, Any]:
    from timevis_cli.evaluate.loop import evaluate
    from timevis_cli.fit.pipeline import fit

    started = time.perf_counter()
    result = fit(run, config)
    seconds = time.perf_counter() - started
    scores = evaluate(
        run, _Fitted(result, run.path / "fit"), result.epochs, k=k, temporal_k=temporal_k
    )
    travel, rotation = drift(result.train)
    applied = result.stats.get("refine", {}).get("align", {}).get("epochs", {})
    return {
        "mode": config.refine.align if config.refine.enabled else "no refinement",
        "epochs": result.epochs,
        "fit_seconds": seconds,
        "travel": travel,
        "rotation": rotation,
        "applied": [
            applied.get(str(e), {"rotation_degrees": 0.0, "scale": 1.0}) for e in result.epochs
        ],
        "per_epoch": {m: scores.series(m, "train") for m in PER_EPOCH},
        "run_wide": {m: scores.value(m, "train") for m in RUN_WIDE},
        "run_wide_test": {m: scores.value(m, "test") for m in RUN_WIDE}
        if "test" in scores.splits
        else {},
    }


def _f(value: float, spec: str = ".3f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _worst(values: list[float], higher_is_better: bool) -> float:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan
    return min(kept) if higher_is_better else max(kept)


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: per epoch, mean and worst; the run-wide temporal metrics below."""
    names = [row["mode"] for row in rows]
    header = ["epoch"]
    for name in names:
        header += [f"travel {name}", f"rot° {name}"]
    aligned = [row for row in rows if row["mode"] not in ("none", "no refinement")]
    for row in aligned:
        header += [f"applied rot°/scale {row['mode']}"]
    for metric in PER_EPOCH:
        header += [f"{metric} {name}" for name in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    epochs = rows[0]["epochs"]
    for i, epoch in enumerate(epochs):
        cells = [str(epoch)]
        for row in rows:
            cells += [_f(row["travel"][i], ".2f"), _f(abs(row["rotation"][i]), ".1f")]
        for row in aligned:
            applied = row["applied"][i]
            cells.append(f"{applied['rotation_degrees']:.1f} / {applied['scale']:.3f}")
        for metric in PER_EPOCH:
            cells += [_f(row["per_epoch"][metric][i]) for row in rows]
        lines.append("| " + " | ".join(cells) + " |")
    for label in ("mean", "worst"):
        cells = [label]
        for row in rows:
            travel = [abs(v) for v in row["travel"]]
            rotation = [abs(v) for v in row["rotation"]]
            pick = _mean if label == "mean" else (lambda v: _worst(v, False))
            cells += [_f(pick(travel), ".2f"), _f(pick(rotation), ".1f")]
        for row in aligned:
            rot = [abs(a["rotation_degrees"]) for a in row["applied"]]
            scale = [a["scale"] for a in row["applied"]]
            if label == "mean":
                cells.append(f"{np.mean(rot):.1f} / {math.exp(np.mean(np.log(scale))):.3f}")
            else:
                far = max(scale, key=lambda s: abs(math.log(s)))
                cells.append(f"{max(rot):.1f} / {far:.3f}")
        for metric in PER_EPOCH:
            pick = _mean if label == "mean" else (lambda v: _worst(v, True))
            cells += [_f(pick(row["per_epoch"][metric])) for row in rows]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["total"]
    for row in rows:
        cells += [_f(float(np.nansum(row["travel"])), ".2f"), ""]
    cells += [""] * (len(header) - len(cells))
    lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| run-wide (train; test) | " + " | ".join(names) + " |",
        "|---:" * (len(names) + 1) + "|",
    ]
    for metric in RUN_WIDE:
        values = [
            f"{_f(row['run_wide'][metric])}; {_f(row['run_wide_test'].get(metric, math.nan))}"
            for row in rows
        ]
        lines.append(f"| {metric} | " + " | ".join(values) + " |")
    lines.append("| fit s | " + " | ".join(f"{row['fit_seconds']:.1f}" for row in rows) + " |")
    return "\n".join(lines)


def main() -> None:
    from timevis_cli.config import Config

    default_mode = Config.defaults().refine.align
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run store (RUN_DIR)")
    parser.add_argument(
        "--modes",
        default=",".join(dict.fromkeys(["none", default_mode, "similarity"])),
        help="refine.align modes to fit, comma-separated (default: none, the default and similarity)",
    )
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--k", type=int, default=None, help="eval k (default: eval.k)")
    parser.add_argument(
        "--temporal-k", type=int, default=None, help="eval temporal k (default: eval.temporal_k)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    from timevis_callback import open_run
    from timevis_cli.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run = open_run(args.run_dir)
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        config = load_config(
            preset=args.preset, overrides=[*args.overrides, f"refine.align={mode}"]
        )
        k = args.k or config.eval.k
        temporal_k = args.temporal_k or config.eval.temporal_k
        rows.append(measure(run, config, k, temporal_k))
        print(
            f"fitted {args.run_dir} with refine.align={mode} in {rows[-1]['fit_seconds']:.1f} s",
            file=sys.stderr,
        )
    print(f"## {args.run_dir} (k {k}, temporal k {temporal_k}, seed {config.fit.seed})\n")
    print(table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
