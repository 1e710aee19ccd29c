"""A CIFAR-like synthetic run store, written with the real writer, for the fit and render benchmarks.

    python scripts/make_synthetic_store.py OUT_DIR [--samples 50000] [--epochs 200] [--dim 512]
        [--classes 10] [--test N] [--boundary-fraction 0.1] [--seed 0]

What it imitates (measured on the demo's MNIST-5k store): non-negative (post-ReLU, global average
pooled) features stored float16 whose classes start mixed at epoch 0 and separate as "training"
goes on (fast at first, then slowly), each class a low-dimensional cloud around its centre, about
10% hard samples pulled towards another class (so some stay misclassified), a slow drift of the
centres and a little per-epoch jitter (so every sample moves between epochs). The head is one
``Linear`` layer, the nearest-class-mean classifier of that epoch's features, so logits, head and
features agree. Per epoch it also stores "input-space-like" boundary points (the callback's
default, 10% of the training samples): the mix of two samples predicted as different classes at
which the head ties, moved off the segment by within-class noise, kept when the head still predicts
one of the two classes. Its fit-relevant numbers (N, E, D, C, boundary count) match a real run;
its geometry is only plausible, so use it for timings and memory, never for fit quality.

Streaming: one epoch is generated, written (``write_epoch``: atomic, fsynced) and dropped before
the next, so 50 000 x 200 x 512 never sits in memory (peak about one epoch's features, float16,
plus a few chunk-sized float32 buffers). Seeded: the same arguments give the same store.
``ensure_store`` reuses a complete store written with the same settings (``synthetic.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timevis_callback.writer import (  # noqa: E402
    Boundary,
    RunHeader,
    clear_store,
    write_epoch,
    write_run,
)

MARKER = "synthetic.json"
# the 1-minute load average when a benchmark imported this module, i.e. before its own work
START_LOAD = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
_CHUNK = 8192  # rows generated at once (float32 buffers of _CHUNK x D)


@dataclass(frozen=True)
class SyntheticSpec:
    """What the synthetic store holds. ``n_test=None``: one test sample per five train samples."""

    n_train: int = 50_000
    epochs: int = 200
    dim: int = 512
    classes: int = 10
    n_test: int | None = None
    boundary_fraction: float = 0.1
    latent_dim: int = 8
    hard_fraction: float = 0.1
    seed: int = 0

    @property
    def test_count(self) -> int:
        return self.n_train // 5 if self.n_test is None else self.n_test

    @property
    def feature_bytes(self) -> int:
        """Bytes of all epochs' float16 features (what a fit would hold if it loaded them all)."""
        return (self.n_train + self.test_count) * self.dim * 2 * self.epochs

    def describe(self) -> str:
        boundary = f"{self.boundary_fraction:g}" if self.boundary_fraction > 0 else "none"
        return (
            f"synthetic {self.n_train} train + {self.test_count} test x {self.epochs} epochs x "
            f"{self.dim}-d float16, {self.classes} classes, boundary fraction {boundary}, "
            f"seed {self.seed}"
        )

    def check(self) -> None:
        if self.n_train < 3 or self.test_count < 0 or self.epochs < 2 or self.dim < 2:
            raise SystemExit(f"{self}: needs n_train >= 3, n_test >= 0, epochs >= 2, dim >= 2")
        if not 2 <= self.classes <= self.n_train:
            raise SystemExit(f"classes={self.classes} must be in [2, n_train]")
        if not 0 <= self.boundary_fraction <= 1 or not 0 <= self.hard_fraction <= 1:
            raise SystemExit("boundary_fraction and hard_fraction must be in [0, 1]")


class _Model:
    """The per-sample and per-class parameters that stay fixed over the epochs (small)."""

    def __init__(self, spec: SyntheticSpec):
        rng = np.random.default_rng([spec.seed, 2**31])
        n, d, c, k = spec.n_train + spec.test_count, spec.dim, spec.classes, spec.latent_dim
        self.spec = spec
        self.labels = rng.permutation(np.arange(n) % c).astype(np.int64)
        self.latent = rng.normal(size=(n, k)).astype(np.float32)  # within-class position
        self.init_latent = rng.normal(size=(n, k)).astype(np.float32)  # "random network" features
        self.other = (self.labels + rng.integers(1, c, n)) % c  # the class a hard sample leans to
        self.pull = np.where(
            rng.random(n) < spec.hard_fraction, rng.uniform(0.3, 0.65, n), 0.0
        ).astype(np.float32)
        self.centres = (1.0 + rng.normal(size=(c, d))).astype(np.float32)
        self.drift = (0.3 * rng.normal(size=(c, d))).astype(np.float32)
        self.planes = (rng.normal(size=(c, k, d)) / np.sqrt(k)).astype(np.float32)
        self.init_plane = (0.5 * rng.normal(size=(k, d)) / np.sqrt(k)).astype(np.float32)

    def progress(self, epoch: int) -> float:
        """How far training has separated the classes: 0 at epoch 0, ~0.98 at the last."""
        return float(1.0 - np.exp(-4.0 * epoch / max(self.spec.epochs - 1, 1)))

    def features(self, epoch: int, rows: slice, rng: np.random.Generator) -> np.ndarray:
        """float32 [rows, D]: one chunk of one epoch's features (post-ReLU)."""
        p = self.progress(epoch)
        spread = 0.6 - 0.25 * p  # clusters tighten as training goes on
        centres = self.centres + (epoch / max(self.spec.epochs - 1, 1)) * self.drift
        labels, other, pull = self.labels[rows], self.other[rows], self.pull[rows, None]
        within = np.empty((len(labels), self.spec.dim), np.float32)
        for c in np.unique(labels):
            mask = labels == c
            within[mask] = self.latent[rows][mask] @ self.planes[c]
        learned = (1 - pull) * centres[labels] + pull * centres[other] + spread * within
        initial = 1.0 + self.init_latent[rows] @ self.init_plane + 0.01 * centres[labels]
        x = (1 - p) * initial + p * learned
        x += 0.05 * rng.standard_normal(size=x.shape, dtype=np.float32)
        scale = 0.05 + 0.6 * p  # feature norms grow during training, like a real network's
        return np.maximum(x * scale, 0.0)


def _head(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-class-mean Linear head (weight [C, D], bias [C]) of one epoch's train features."""
    sums = np.zeros((classes, features.shape[1]), np.float64)
    for start in range(0, len(features), _CHUNK):
        part, part_labels = features[start : start + _CHUNK], labels[start : start + _CHUNK]
        for c in np.unique(part_labels):
            sums[c] += part[part_labels == c].sum(axis=0, dtype=np.float64)
    means = sums / np.maximum(np.bincount(labels, minlength=classes), 1)[:, None]
    within = 0.0
    for start in range(0, len(features), _CHUNK):
        part = features[start : start + _CHUNK].astype(np.float64)
        within += ((part - means[labels[start : start + _CHUNK]]) ** 2).sum()
    temperature = max(within / len(features), 1e-12) / 3.0  # logit spreads of ~10-20, as recorded
    weight = means / temperature
    bias = -0.5 * (means**2).sum(axis=1) / temperature
    return weight.astype(np.float32), bias.astype(np.float32)


def _logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    out = np.empty((len(features), len(weight)), np.float32)
    for start in range(0, len(features), _CHUNK):
        part = features[start : start + _CHUNK].astype(np.float32)
        out[start : start + _CHUNK] = part @ weight.T + bias
    return out


def _boundary(
    model: _Model,
    train: np.ndarray,
    logits: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    spread: float,
    rng: np.random.Generator,
) -> Boundary | None:
    """Input-space-like boundary points: where the head ties on a mix, moved by within-class noise."""
    from timevis_callback.boundary import select_pairs  # imports torch: only when needed

    n_points = int(round(model.spec.boundary_fraction * len(train)))
    a, b, pair = select_pairs(logits, n_points, rng)
    if len(a) == 0:
        return None
    c1, c2 = pair[:, 0], pair[:, 1]
    rows = np.arange(len(a))
    gap_a = logits[a, c1] - logits[a, c2]  # > 0: a is predicted c1
    gap_b = logits[b, c1] - logits[b, c2]  # < 0: b is predicted c2
    lam = (-gap_b / np.maximum(gap_a - gap_b, 1e-12)).astype(np.float32)[:, None]
    mix = lam * train[a].astype(np.float32) + (1 - lam) * train[b].astype(np.float32)
    noise = rng.normal(size=(len(a), model.spec.latent_dim)).astype(np.float32)
    planes = np.where((rng.random(len(a)) < 0.5)[:, None, None], model.planes[c1], model.planes[c2])
    scale = float(np.linalg.norm(mix, axis=1).mean()) / np.sqrt(model.spec.dim)
    mix = np.maximum(mix + 0.25 * spread * scale * np.einsum("nk,nkd->nd", noise, planes), 0.0)
    pred = (mix @ weight.T + bias).argmax(axis=1)
    keep = (pred == c1) | (pred == c2)
    if not keep.any():
        return None
    return Boundary(mix[rows[keep]].astype(np.float16), pair[keep].astype(np.int64))


def _accuracy_and_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_prob = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-log_prob[np.arange(len(labels)), labels].mean())
    return float((logits.argmax(axis=1) == labels).mean()), loss


def write_store(path: str | Path, spec: SyntheticSpec, progress: bool = False) -> Path:
    """Write the store described by ``spec`` into ``path`` (streaming); returns ``path``."""
    spec.check()
    path = Path(path)
    model = _Model(spec)
    n_train, n_test = spec.n_train, spec.test_count
    splits = np.r_[np.zeros(n_train, np.uint8), np.ones(n_test, np.uint8)]
    header = RunHeader(
        run_id=f"synthetic-{spec.n_train}x{spec.epochs}x{spec.dim}-c{spec.classes}-s{spec.seed}",
        feature_layer="fc",
        feature_io="input",
        feature_dim=spec.dim,
        num_classes=spec.classes,
        class_names=[f"class {c}" for c in range(spec.classes)],
        head_spec=[
            {
                "type": "Linear",
                "name": "fc",
                "in_features": spec.dim,
                "out_features": spec.classes,
                "bias": True,
            }
        ],
        callback_config={"synthetic": asdict(spec), "dtype": "float16", "weights": "head"},
        versions={"timevis": version("timevis")},
    )
    write_run(
        path,
        header,
        ids=np.r_[np.arange(n_train), np.arange(n_test)],
        splits=splits,
        labels=model.labels,
    )
    train_labels, test_labels = model.labels[:n_train], model.labels[n_train:]
    started = time.perf_counter()
    for epoch in range(spec.epochs):
        rng = np.random.default_rng([spec.seed, epoch])
        n = n_train + n_test
        features = np.empty((n, spec.dim), np.float16)
        for start in range(0, n, _CHUNK):
            features[start : start + _CHUNK] = model.features(
                epoch, slice(start, min(start + _CHUNK, n)), rng
            )
        weight, bias = _head(features[:n_train], train_labels, spec.classes)
        logits = _logits(features, weight, bias)
        boundary = None
        if spec.boundary_fraction > 0:
            spread = 0.6 - 0.25 * model.progress(epoch)
            boundary = _boundary(
                model, features[:n_train], logits[:n_train], weight, bias, spread, rng
            )
        train_acc, train_loss = _accuracy_and_loss(logits[:n_train], train_labels)
        val_acc, val_loss = _accuracy_and_loss(logits[n_train:], test_labels)
        metrics = {"train_acc": train_acc, "train_loss": train_loss}
        if n_test:
            metrics.update(val_acc=val_acc, val_loss=val_loss)
        write_epoch(
            path,
            epoch,
            features=features,
            logits=logits,
            head_state={"0.weight": weight, "0.bias": bias},
            global_step=epoch * max(1, n_train // 128),
            metrics=metrics if epoch else {},
            boundary=boundary,
        )
        del features, logits
        tty = sys.stderr.isatty()
        if progress and (tty or (epoch + 1) % max(1, spec.epochs // 10) == 0):
            line = (
                f"epoch {epoch + 1}/{spec.epochs} written "
                f"({time.perf_counter() - started:.0f} s, train acc {train_acc:.3f})"
            )
            last = epoch + 1 == spec.epochs
            print("\r" + line if tty else line, end="\n" if last or not tty else "",
                  file=sys.stderr, flush=True)
    (path / MARKER).write_text(json.dumps(asdict(spec), indent=2))
    return path


def is_synthetic(path: Path) -> bool:
    """Whether ``path`` holds (a possibly unfinished) store written by this module."""
    if (path / MARKER).exists():
        return True
    try:
        from timevis_callback.reader import open_run

        return "synthetic" in open_run(path).callback_config
    except Exception:  # noqa: BLE001 - anything unreadable is not ours to delete
        return False


def ensure_store(path: str | Path, spec: SyntheticSpec, progress: bool = True) -> tuple[Path, bool]:
    """The store at ``path``: reused when it was completed with the same ``spec``, else written.

    Returns ``(path, reused)``. A folder that is not empty and holds no synthetic store is refused
    rather than cleared. Outputs of an earlier fit/render of a replaced store are removed.
    """
    path = Path(path)
    marker = path / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == asdict(spec):
                return path, True
        except (OSError, ValueError):
            pass
    if path.exists() and any(path.iterdir()):
        if not is_synthetic(path):
            raise SystemExit(f"{path} is not empty and holds no synthetic store; choose another path")
        marker.unlink(missing_ok=True)
        clear_store(path)
        for name in ("fit", "render", "eval"):
            shutil.rmtree(path / name, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"writing {spec.describe()} to {path}", file=sys.stderr)
    return write_store(path, spec, progress=progress), False


# --- shared by the benchmarks: machine description, memory figures, the markdown table ---------


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    """Physical memory in GiB (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine_description(extra: str = "") -> str:
    """CPU model, cores, RAM and the load average when the benchmark started (timing noise)."""
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    text = f"{cpu_model()}, {cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    ram = ram_gib()
    if ram is not None:
        text += f", {ram:.0f} GiB RAM"
    if extra:
        text += f", {extra}"
    if START_LOAD is not None:
        busy = " (busy: timings noisy)" if START_LOAD > 0.5 * usable else ""
        text += f", load {START_LOAD:.1f} at start{busy}"
    return text


def _proc_status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (MB; Linux only, else None)."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB).

    Linux: VmHWM, the high-water mark of this process's own address space. ``ru_maxrss`` is not
    used there because a process started by fork+exec inherits its parent's peak in it (the
    kernel carries the pre-exec address space's high-water mark into ``ru_maxrss``).
    """
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table with padded columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def parse_triple(text: str) -> tuple[int, int, int]:
    """``"N,E,D"`` -> (N, E, D) for ``--synthetic``."""
    try:
        n, e, d = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be N,E,D (three integers)") from None
    return n, e, d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="run store folder to write (reused when identical)")
    parser.add_argument("--samples", type=int, default=50_000, help="tracked training samples N")
    parser.add_argument("--epochs", type=int, default=200, help="recorded epochs E (0..E-1)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension D")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--test", type=int, default=None, help="test samples (default N // 5)")
    parser.add_argument("--boundary-fraction", type=float, default=0.1,
                        help="boundary points per epoch, of N (0: none; fit falls back to its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite even when identical")
    args = parser.parse_args()
    spec = SyntheticSpec(
        n_train=args.samples,
        epochs=args.epochs,
        dim=args.dim,
        classes=args.classes,
        n_test=args.test,
        boundary_fraction=args.boundary_fraction,
        seed=args.seed,
    )
    if args.force:
        (args.out / MARKER).unlink(missing_ok=True)
    started = time.perf_counter()
    path, reused = ensure_store(args.out, spec)
    verb = "reused" if reused else f"wrote in {time.perf_counter() - started:.1f} s"
    size = sum(p.stat().st_size for p in path.rglob("*.h5")) / 2**20
    print(f"{spec.describe()}: {verb}, {size:.1f} MiB on disk at {path}")


if __name__ == "__main__":
    main()
