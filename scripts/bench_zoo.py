"""Benchmark: the model zoo of tests/test_zoo.py, recorded, fitted, rendered and scored.

    python scripts/bench_zoo.py [--models vit,mlp,...] [--fit-defaults] [--workdir DIR]
                                [--json OUT]

Trains every model of ``tests/zoo_models.py`` (a small ViT, an MLP, a CNN with global average
pooling, a 1-D CNN, forwards returning a tuple and a dict, heads ``Sequential(Dropout, Linear)``
and ``Sequential(BatchNorm1d, Linear)``) 3 epochs on 600/150 of scikit-learn's 8x8 digits with
one ``TimeVisCallback`` line, runs ``timevis fit``, ``render`` and ``eval`` on each store with the
test's small settings (``--fit-defaults``: the fit's default settings instead), and prints one
markdown table (docs/models.md): the feature layer the callback detected and its dimension, the
last epoch's test accuracy (from the stored logits), ppr on train (mean over the epochs, and the
worst epoch), nnpv on train (mean), and the frame fill (the smallest, over every frame and both
axes, of the 5-95% extent of that epoch's training positions over the frame's extent, the frame
being the one ``timevis render`` draws), with the seconds of each stage and the machine's load.
A stage that fails is reported in the table with its one-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import zoo_models  # noqa: E402


def _fit_defaults(args: list[str]) -> list[str]:
    """A fit command line without the small ``--set`` settings."""
    kept, skip = [], False
    for part in args:
        if skip:
            skip = False
            continue
        if part == "--set":
            skip = True
            continue
        kept.append(part)
    return kept


def run_model(name: str, workdir: Path, fit_defaults: bool) -> dict:
    """Train, fit, render and score one model: its measures, or the stage that failed."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    store = zoo_models.record(zoo_models.BY_NAME[name], workdir / name)
    seconds["train"] = time.perf_counter() - started
    for args in zoo_models.commands(store):
        if fit_defaults and args[0] == "fit":
            args = _fit_defaults(args)
        started = time.perf_counter()
        code, output = zoo_models.run_cli(args)
        seconds[args[0]] = time.perf_counter() - started
        if code != 0:
            last = output.strip().splitlines()[-1] if output.strip() else f"exit {code}"
            return {"name": name, "failed": f"{args[0]}: {last}", "seconds": seconds}
    measures = zoo_models.measure(name, store)
    row = asdict(measures)
    row["fill"] = {str(epoch): xy for epoch, xy in measures.fill.items()}
    return {"name": name, "measures": measures, "row": row, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(m.name for m in zoo_models.ZOO),
        help="comma-separated names (default: all)",
    )
    parser.add_argument("--fit-defaults", action="store_true", help="default fit settings")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in zoo_models.BY_NAME]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(zoo_models.BY_NAME)}")

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        results = [run_model(name, workdir, args.fit_defaults) for name in names]

    measured = [r["measures"] for r in results if "measures" in r]
    print(zoo_models.table(measured))
    for r in results:
        if "failed" in r:
            print(f"\n{r['name']} failed at {r['failed']}")
    print()
    print("seconds (train / fit / render / eval):")
    for r in results:
        shown = " / ".join(
            f"{r['seconds'].get(stage, float('nan')):.1f}"
            for stage in ("train", "fit", "render", "eval")
        )
        print(f"  {r['name']}: {shown}")
    fit = "default fit settings" if args.fit_defaults else "fit " + " ".join(zoo_models.FIT_SETTINGS)
    print(f"\n{fit}; load average at the start {load:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        rows = [{k: v for k, v in r.items() if k != "measures"} for r in results]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
