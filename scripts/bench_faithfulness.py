"""Benchmark: is the fit faithful in space AND in time? timevis against three simple baselines.

    python scripts/bench_faithfulness.py [STORE ...] [--preset P] [--set key=value ...]
                                         [--methods timevis,dvi,pca,umap,aligned]
                                         [--variant "key=value key=value" ...] [--epochs RANGE]
                                         [--threads 2] [--out JSON]

For each run store (default ``/work/runs/mnist/store``, the demo's MNIST-5k run) it fits

- **timevis**: ``timevis_cli.fit.pipeline.fit`` with the resolved configuration (defaults < ``--preset``
  < ``--set``), exactly what ``timevis fit`` runs; each ``--variant`` adds one more timevis row
  with those ``key=value`` overrides on top (for lever studies);
- **DVI**: the DeepVisualInsight baseline, ``fit.method = "dvi"`` with the same configuration
  (``[dvi]`` from ``--set``; docs/dvi.md): one model per epoch, each warm-started from the
  previous one, positions and inverse from that epoch's own encoder and decoder;
- **global PCA**: one 2-D PCA fitted on every fitted epoch's training features at once; test
  samples and boundary points are projected with it, the inverse is its linear inverse;
- **per-epoch UMAP** (umap-learn, one model per epoch, ``n_neighbors`` = eval k, seeded): test
  samples and boundary points go through that epoch's ``UMAP.transform``; the inverse (for ppr
  and recon) is a kNN regression (the inverse-distance weighted mean of the features of the
  ``k`` training samples nearest in 2-D), because ``UMAP.inverse_transform`` takes minutes per
  epoch on 4 000 points (``--umap-inverse umap`` uses it anyway);
- **AlignedUMAP** (umap-learn, one model over all epochs, relations = identity by sample id
  between consecutive epochs): it has no ``transform``, so test samples and boundary points are
  placed by kNN regression in feature space (the inverse-distance weighted mean of the 2-D
  positions of the ``k`` nearest training samples of that epoch), and its inverse is the same
  kNN regression as for per-epoch UMAP;

and scores every method with the project's own ``timevis_cli.evaluate.loop.evaluate`` (same k, same
temporal k, same splits, same boundary points: the store's, as the timevis fit uses them), then
prints ONE markdown table per store: method x {fit seconds, nnpv(k) train/test, boundary(k)
train, temp_l(tk) train, temp_g train, temppv train, ppr train/test, landscape test}. ppr (the
decoder's round trip) and landscape (the agreement of the landscape ``timevis render`` draws, with
its sample lift made from the train samples: 1 on train by construction, so the test samples'
share is the measurement) are the mean over ALL
fitted epochs, with the worst epoch's value and number in brackets (an early, barely trained
epoch counts like any other: a map that is wrong there is wrong where users look). Spatial
metrics are averaged over all epochs; the temporal ones are over the whole run (the eval
convention). Below the table, a per-epoch table of each timevis row: ppr train/test, landscape
train/test and nnpv train/test at every fitted epoch (and of the DVI row). "fit s" is, for timevis, reduction + complex
+ temporal + mixing + training + refine (the fit-time target; embedding every sample is left out), for
DVI complex + npr + training over its epochs, for the other baselines the time to fit and embed the
training samples.

Baselines are measurement only: umap-learn is a dev dependency, never imported by timevis_cli.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEFAULT_STORE = Path("/work/runs/mnist/store")
METHODS = ("timevis", "dvi", "pca", "umap", "aligned")
LABELS = {
    "timevis": "timevis",
    "dvi": "DVI",
    "pca": "global PCA",
    "umap": "per-epoch UMAP",
    "aligned": "AlignedUMAP",
}
TIMEVIS_FIT_STAGES = ("reduction", "complex", "temporal", "mixing", "training", "refine")
DVI_FIT_STAGES = ("complex", "npr", "training")  # timevis_cli.fit.dvi.FIT_STAGES


# --------------------------------------------------------------------------- method adapters


class _EpochModel:
    """``transform``/``inverse_transform`` of one method; per-epoch methods follow ``epoch``.

    :func:`timevis_cli.evaluate.loop.evaluate` reads an epoch's embedding (``fit.embedding``) before it
    decodes that epoch's positions, so :class:`MethodFit` sets ``epoch`` there.
    """

    device = "cpu"

    def __init__(self, inverse: dict[int, Any] | Any) -> None:
        self._inverse = inverse
        self.epoch: int | None = None

    def inverse_transform(self, points: np.ndarray, epoch: int | None = None) -> np.ndarray:
        fn = self._inverse[self.epoch if epoch is None else epoch] if isinstance(self._inverse, dict) else self._inverse
        return np.asarray(fn(np.asarray(points, dtype=np.float32)), dtype=np.float32)


@dataclass
class MethodFit:
    """A fitted method, shaped like :class:`timevis_cli.fit.io.LoadedFit` for ``evaluate``."""

    name: str
    model: Any
    run_id: str
    epochs: list[int]
    train: np.ndarray  # [E, n_train, 2]
    test: np.ndarray  # [E, n_test, 2]
    boundary: list[np.ndarray]  # per epoch [B, 2]
    boundary_features: list[np.ndarray]  # per epoch [B, D]
    seconds: float
    path: Path = Path(".")
    extra: dict[str, Any] = field(default_factory=dict)

    def embedding(self, epoch: int) -> dict[str, np.ndarray]:
        i = self.epochs.index(epoch)
        if isinstance(self.model, _EpochModel):
            self.model.epoch = epoch
        b = self.boundary_features[i]
        return {
            "train": self.train[i],
            "test": self.test[i],
            "boundary": self.boundary[i],
            "boundary_features": np.asarray(b, np.float32),
            "boundary_pair": np.zeros((len(b), 2), np.int64),
        }


def _knn_regressor(source: np.ndarray, target: np.ndarray, k: int):
    """A function mapping points in ``source``'s space to the IDW mean of ``target`` rows of
    their ``k`` nearest ``source`` rows (exact, float32)."""
    import torch

    src = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))
    tgt = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))

    def apply(queries: np.ndarray) -> np.ndarray:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        out = []
        for start in range(0, len(q), 2048):
            d = torch.cdist(q[start : start + 2048], src)
            dist, idx = torch.topk(d, min(k, len(src)), dim=1, largest=False)
            w = 1.0 / (dist + 1e-6)
            w = w / w.sum(dim=1, keepdim=True)
            out.append((w[:, :, None] * tgt[idx]).sum(dim=1))
        return torch.cat(out).numpy() if out else np.zeros((0, tgt.shape[1]), np.float32)

    return apply


@dataclass
class StoreData:
    """What every method needs from one store, read once: per fitted epoch."""

    run: Any
    epochs: list[int]
    train: list[np.ndarray]  # [n_train, D] float32
    test: list[np.ndarray]
    boundary: list[np.ndarray]  # the store's boundary points (what the timevis fit uses)

    def subset(self, epochs: list[int]) -> StoreData:
        return _subset(self, epochs)


def _subset(data: StoreData, epochs: list[int]) -> StoreData:
    """``data`` restricted to ``epochs`` (each one of its own); itself when they are all."""
    if list(epochs) == list(data.epochs):
        return data
    missing = sorted(set(epochs) - set(data.epochs))
    if missing:
        raise SystemExit(f"epochs {missing} are outside the benchmark's --epochs; widen it")
    rows = [data.epochs.index(e) for e in epochs]
    return StoreData(
        data.run, list(epochs), *([part[i] for i in rows] for part in (data.train, data.test, data.boundary))
    )


def read_store(run: Any, epochs: list[int]) -> StoreData:
    train_mask, test_mask = run.samples.mask("train"), run.samples.mask("test")
    train, test, boundary = [], [], []
    for epoch in epochs:
        features = run.features(epoch).astype(np.float32)
        train.append(features[train_mask])
        test.append(features[test_mask])
        stored = run.boundary(epoch)
        boundary.append(
            np.zeros((0, features.shape[1]), np.float32)
            if stored is None
            else np.asarray(stored.features, np.float32)
        )
    return StoreData(run, epochs, train, test, boundary)


def fit_timevis(data: StoreData, config: Any, name: str) -> MethodFit:
    """timevis's fit, or (``fit.method = "dvi"`` in ``config``) the DVI baseline's."""
    from timevis_cli.fit.pipeline import fit

    started = time.perf_counter()
    result = fit(data.run, config)
    wall = time.perf_counter() - started
    seconds = result.stats["seconds"]
    return MethodFit(
        name=name,
        model=result.model,
        run_id=data.run.run_id,
        epochs=result.epochs,
        train=result.train,
        test=result.test,
        boundary=result.boundary_points,
        boundary_features=[np.asarray(b, np.float32) for b in result.boundary_features],
        seconds=sum(
            seconds.get(stage, 0.0)
            for stage in (DVI_FIT_STAGES if config.fit.method == "dvi" else TIMEVIS_FIT_STAGES)
        ),
        extra={
            "stage_seconds": seconds,
            "wall": wall,
            "complex": result.stats["complex"],
            "training_epochs": result.report.epochs_run,
            "edges_per_epoch": result.report.edges_per_epoch,
        },
    )


def fit_pca(data: StoreData) -> MethodFit:
    started = time.perf_counter()
    count = sum(len(x) for x in data.train)
    mean = sum(x.sum(axis=0, dtype=np.float64) for x in data.train) / count
    scatter = sum((x - mean).T @ (x - mean) for x in (t.astype(np.float64) for t in data.train))
    _, vectors = np.linalg.eigh(scatter / count)
    components = vectors[:, ::-1][:, :2].T  # [2, D], the two leading principal axes

    def transform(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - mean) @ components.T).astype(np.float32)

    def inverse(y: np.ndarray) -> np.ndarray:
        return (y.astype(np.float64) @ components + mean).astype(np.float32)

    train = np.stack([transform(x) for x in data.train])
    seconds = time.perf_counter() - started
    test = np.stack([transform(x) for x in data.test])
    boundary = [transform(b) for b in data.boundary]
    return MethodFit(
        "pca", _EpochModel(inverse), data.run.run_id, data.epochs, train, test, boundary,
        data.boundary, seconds,
    )  # fmt: skip


def fit_umap(data: StoreData, k: int, seed: int, inverse_kind: str) -> MethodFit:
    import umap

    train, test, boundary, inverse = [], [], [], {}
    seconds = 0.0
    for epoch, x, xt, xb in zip(data.epochs, data.train, data.test, data.boundary, strict=True):
        started = time.perf_counter()
        model = umap.UMAP(n_neighbors=k, random_state=seed).fit(x)
        seconds += time.perf_counter() - started
        y = model.embedding_.astype(np.float32)
        train.append(y)
        test.append(model.transform(xt).astype(np.float32))
        boundary.append(
            model.transform(xb).astype(np.float32) if len(xb) else np.zeros((0, 2), np.float32)
        )
        if inverse_kind == "umap":
            inverse[epoch] = model.inverse_transform
        else:
            inverse[epoch] = _knn_regressor(y, x, k)
        print(f"    umap epoch {epoch} done", file=sys.stderr, flush=True)
    return MethodFit(
        "umap", _EpochModel(inverse), data.run.run_id, data.epochs, np.stack(train),
        np.stack(test), boundary, data.boundary, seconds,
    )  # fmt: skip


def fit_aligned(data: StoreData, k: int, seed: int) -> MethodFit:
    import umap

    n = len(data.train[0])
    relations = [{i: i for i in range(n)} for _ in range(len(data.epochs) - 1)]
    started = time.perf_counter()
    model = umap.AlignedUMAP(n_neighbors=k, random_state=seed).fit(data.train, relations=relations)
    seconds = time.perf_counter() - started
    train = np.stack([np.asarray(e, np.float32) for e in model.embeddings_])
    test, boundary, inverse = [], [], {}
    for i, epoch in enumerate(data.epochs):
        place = _knn_regressor(data.train[i], train[i], k)
        test.append(place(data.test[i]))
        boundary.append(place(data.boundary[i]) if len(data.boundary[i]) else np.zeros((0, 2), np.float32))
        inverse[epoch] = _knn_regressor(train[i], data.train[i], k)
    return MethodFit(
        "aligned", _EpochModel(inverse), data.run.run_id, data.epochs, train, np.stack(test),
        boundary, data.boundary, seconds,
    )  # fmt: skip


# --------------------------------------------------------------------------- scoring


def score(data: StoreData, method: MethodFit, k: int, temporal_k: int) -> dict:
    from timevis_cli.evaluate.loop import evaluate

    started = time.perf_counter()
    result = evaluate(data.run, method, data.epochs, k=k, temporal_k=temporal_k, knn_backend="auto")
    row: dict[str, Any] = {"method": method.name, "fit_seconds": method.seconds}
    row["epochs"] = list(data.epochs)
    for split in result.splits:
        row[f"nnpv_{split}"] = result.value("nnpv", split)
        row[f"boundary_{split}"] = result.value("boundary", split)
        row[f"recon_{split}"] = result.value("recon", split)
        for metric in ("temp_l", "temp_g", "temppv"):
            row[f"{metric}_{split}"] = result.value(metric, split)
        for metric in ("ppr", "landscape"):
            worst = result.worst[split][metric]
            row[f"{metric}_{split}"] = result.value(metric, split)  # the mean over every fitted epoch
            row[f"{metric}_{split}_min"] = float(worst["value"])
            row[f"{metric}_{split}_min_epoch"] = worst["epoch"]
            row[f"{metric}_{split}_all"] = result.series(metric, split)
        row[f"nnpv_{split}_per_epoch"] = result.series("nnpv", split)
    row["eval_seconds"] = time.perf_counter() - started
    row.update({f"x_{key}": value for key, value in method.extra.items()})
    return row


def _f(value: float, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _worst(row: dict, split: str, metric: str = "ppr") -> str:
    """``"0.962 (0.871 @ 2)"``: the mean over every epoch, the worst epoch's in brackets."""
    epoch = row.get(f"{metric}_{split}_min_epoch")
    at = f" @ {epoch}" if epoch is not None else ""
    return f"{_f(row.get(f'{metric}_{split}'))} ({_f(row.get(f'{metric}_{split}_min'))}{at})"


def table(rows: list[dict], k: int, temporal_k: int) -> str:
    header = [
        "method", "fit s", f"nnpv({k}) train", f"nnpv({k}) test", f"boundary({k})",
        f"temp_l({temporal_k})", "temp_g τ", "temppv ↓", "ppr train (worst @ epoch)",
        "ppr test (worst @ epoch)", "landscape test (worst @ epoch)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cells = [
            r["method"],
            _f(r["fit_seconds"], ".1f"),
            _f(r.get("nnpv_train")),
            _f(r.get("nnpv_test")),
            _f(r.get("boundary_train")),
            _f(r.get("temp_l_train")),
            _f(r.get("temp_g_train")),
            _f(r.get("temppv_train")),
            _worst(r, "train"),
            _worst(r, "test"),
            _worst(r, "test", "landscape"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_epoch_table(row: dict) -> str:
    """One timevis row epoch by epoch: ppr train/test, the landscape's agreement (train, 1 by
    construction with the sample lift, and test) and nnpv train/test."""
    epochs = row.get("epochs") or list(range(len(row["ppr_train_all"])))
    keys = ("ppr_train_all", "ppr_test_all", "landscape_train_all", "landscape_test_all")
    series = [row.get(key) or [] for key in keys]
    series += [row.get(f"nnpv_{split}_per_epoch") or [] for split in ("train", "test")]
    lines = [
        f"{row['method']}, per epoch:",
        "",
        "| epoch | ppr train | ppr test | landscape train | landscape test | nnpv train | nnpv test |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, epoch in enumerate(epochs):
        cells = [_f(values[i]) if i < len(values) else "n/a" for values in series]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PPR_EVERY_EPOCH = 0.95
PPR_MEAN = 0.97
EPOCH0_PPR_GAP = 0.02


def targets(rows: list[dict]) -> list[str]:
    """The targets, checked for every timevis row against the baselines present: ppr at every
    epoch and on average (train and test), nnpv at least per-epoch UMAP's, the temporal metrics
    at least the global PCA's, and the fit-time target."""
    by = {r["method"]: r for r in rows}
    umap_row, pca_row = by.get(LABELS["umap"]), by.get(LABELS["pca"])
    out = []
    for r in rows:
        if not r["method"].startswith("timevis"):
            continue
        checks = []
        for metric in ("ppr", "landscape"):
            for split in ("train", "test"):
                if r.get(f"{metric}_{split}_min") is None:
                    continue
                ok = r[f"{metric}_{split}_min"] >= PPR_EVERY_EPOCH and r[f"{metric}_{split}"] >= PPR_MEAN
                checks.append(
                    f"{metric} {split} ≥ {PPR_EVERY_EPOCH} every epoch and ≥ {PPR_MEAN} mean: "
                    f"{'yes' if ok else 'NO'}"
                )
        if umap_row:
            same = umap_row.get("epochs") == r.get("epochs")
            for split in ("train", "test"):
                if same:
                    ok = r[f"nnpv_{split}"] >= umap_row[f"nnpv_{split}"]
                    checks.append(f"nnpv {split} ≥ UMAP: {'yes' if ok else 'NO'}")
        if pca_row and pca_row.get("epochs") == r.get("epochs"):
            for metric, better in (("temp_l", 1), ("temp_g", 1), ("temppv", -1)):
                ok = better * (r[f"{metric}_train"] - pca_row[f"{metric}_train"]) >= 0
                checks.append(f"{metric} vs PCA: {'yes' if ok else 'NO'}")
        ok = r["fit_seconds"] < 60
        checks.append(f"fit < 60 s: {'yes' if ok else 'NO'}")
        out.append(f"- {r['method']}: " + "; ".join(checks))
    return out


def shared_epoch_gaps(rows: list[dict]) -> list[str]:
    """For every pair of timevis rows fitted on different epochs (e.g. with and without epoch
    0): the largest per-epoch ppr difference on the epochs they share, train and test."""
    fits = [r for r in rows if r["method"].startswith("timevis")]
    out = []
    for i, first in enumerate(fits):
        for second in fits[i + 1 :]:
            if first["epochs"] == second["epochs"]:
                continue
            shared = sorted(set(first["epochs"]) & set(second["epochs"]))
            if not shared:
                continue
            parts = []
            for split in ("train", "test"):
                a = dict(zip(first["epochs"], first[f"ppr_{split}_all"], strict=True))
                b = dict(zip(second["epochs"], second[f"ppr_{split}_all"], strict=True))
                gap, at = max((abs(a[e] - b[e]), e) for e in shared)
                parts.append(f"{split} {gap:.3f} (epoch {at})")
            ok = all(float(p.split()[1]) <= EPOCH0_PPR_GAP for p in parts)
            out.append(
                f"- {first['method']} vs {second['method']}: on the {len(shared)} shared epochs "
                f"the ppr differs by at most " + ", ".join(parts)
                + f"; ≤ {EPOCH0_PPR_GAP}: {'yes' if ok else 'NO'}"
            )
    return out


def spread_lines(report: dict) -> list[str]:
    """With several stores (e.g. one run recorded with three training seeds): each timevis
    row's spread (min-max over the stores) of mean and worst-epoch ppr and of nnpv."""
    stores = report["stores"]
    if len(stores) < 2:
        return []
    by_method: dict[str, list[dict]] = {}
    for entry in stores.values():
        for r in entry["rows"]:
            if r["method"].startswith("timevis"):
                by_method.setdefault(r["method"], []).append(r)
    out = []
    for method, rows in by_method.items():
        if len(rows) < 2:
            continue
        cells = []
        for key in (
            "ppr_train", "ppr_train_min", "ppr_test", "ppr_test_min", "landscape_test",
            "landscape_test_min", "nnpv_train", "temp_l_train",
        ):  # fmt: skip
            values = [r[key] for r in rows]
            cells.append(f"{key} {min(values):.3f}-{max(values):.3f}")
        out.append(f"- {method} over {len(rows)} stores: " + ", ".join(cells))
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stores", nargs="*", type=Path)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variant", action="append", default=[], metavar='"K=V K=V"',
                        help="one more timevis row with these overrides on top of --set")
    parser.add_argument("--no-default", action="store_true",
                        help="with --variant: skip the timevis row without variant overrides")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", default="all", help="RANGE of recorded epochs to fit and score")
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--temporal-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--umap-inverse", choices=("knn", "umap"), default="knn")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write every number as JSON")
    parser.add_argument("--rows-from", type=Path, action="append", default=[],
                        help="add the rows of an earlier --out JSON (same store) to the table")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    import logging

    import torch

    from timevis_callback import open_run
    from timevis_cli.config import load_config
    from timevis_cli.fit.pipeline import select_fit_epochs

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods {sorted(unknown)}: choose from {', '.join(METHODS)}")
    stores = args.stores or [DEFAULT_STORE]
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "stores": {}}
    for store in stores:
        run = open_run(store)
        epochs = select_fit_epochs(run, args.epochs)
        data = read_store(run, epochs)
        temporal_k = min(args.temporal_k, len(epochs) - 1)
        if temporal_k != args.temporal_k:
            print(f"  temporal k {args.temporal_k} -> {temporal_k}: only {len(epochs)} epochs",
                  file=sys.stderr)  # fmt: skip
        print(
            f"{store}: {len(data.train[0])} train, {len(data.test[0])} test, epochs "
            f"{epochs[0]}-{epochs[-1]}, {run.feature_dim}-d",
            file=sys.stderr,
            flush=True,
        )
        rows = [
            row
            for earlier in args.rows_from
            for row in json.loads(earlier.read_text())["stores"].get(str(store), {}).get("rows", [])
        ]
        for method in methods:
            fits: list[MethodFit] = []
            if method == "timevis":
                variants = ([] if args.no_default else [""]) + list(args.variant)
                for variant in variants:
                    # a variant's own fit.epochs (e.g. "fit.epochs=1-15": without epoch 0) wins
                    overrides = [f"fit.epochs={args.epochs}", *args.set, *shlex.split(variant)]
                    config = load_config(preset=args.preset, overrides=overrides)
                    name = "timevis" + (f" [{variant}]" if variant else "")
                    print(f"  fitting {name} ...", file=sys.stderr, flush=True)
                    fits.append(fit_timevis(data.subset(select_fit_epochs(run, config.fit.epochs)), config, name))
            elif method == "dvi":
                overrides = [f"fit.epochs={args.epochs}", *args.set, "fit.method=dvi"]
                config = load_config(preset=args.preset, overrides=overrides)
                print("  fitting DVI ...", file=sys.stderr, flush=True)
                fits.append(fit_timevis(data, config, "dvi"))
            elif method == "pca":
                fits.append(fit_pca(data))
            elif method == "umap":
                print("  fitting per-epoch UMAP ...", file=sys.stderr, flush=True)
                fits.append(fit_umap(data, args.k, args.seed, args.umap_inverse))
            else:
                print("  fitting AlignedUMAP ...", file=sys.stderr, flush=True)
                fits.append(fit_aligned(data, args.k, args.seed))
            for fitted in fits:
                if fitted.name in LABELS:
                    fitted.name = LABELS[fitted.name]
                scored = data.subset(fitted.epochs)
                row = score(scored, fitted, args.k, min(temporal_k, len(scored.epochs) - 1))
                rows.append(row)
                if args.out:  # after every method, so a long run keeps what it measured
                    report["stores"][str(store)] = {"epochs": epochs, "rows": rows}
                    args.out.write_text(json.dumps(report, indent=1, default=float))
                print(
                    f"  {fitted.name}: fit {fitted.seconds:.1f} s, nnpv {row['nnpv_train']:.3f}/"
                    f"{row['nnpv_test']:.3f}, boundary {row['boundary_train']:.3f}, temp_l {row['temp_l_train']:.3f}, temp_g "
                    f"{row['temp_g_train']:.3f}, temppv {row['temppv_train']:.3f}, ppr "
                    f"{row['ppr_train']:.3f}/{row['ppr_test']:.3f}, landscape test {row['landscape_test']:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
        text = table(rows, args.k, temporal_k)
        print(f"\n### {store} ({len(data.train[0])} train, {len(data.test[0])} test, epochs "
              f"{epochs[0]}-{epochs[-1]})\n")  # fmt: skip
        print(text)
        per_epoch = [
            per_epoch_table(r) for r in rows if r["method"].startswith("timevis") or r["method"] == "DVI"
        ]
        for block in per_epoch:
            print("\n" + block)
        checks = targets(rows) + shared_epoch_gaps(rows)
        if checks:
            print("\n" + "\n".join(checks))
        report["stores"][str(store)] = {
            "epochs": epochs, "rows": rows, "table": text, "per_epoch": per_epoch,
        }
        if args.out:
            args.out.write_text(json.dumps(report, indent=1, default=float))
    spread = spread_lines(report)
    if spread:
        print("\nSpread over the stores:\n" + "\n".join(spread))


if __name__ == "__main__":
    main()
