"""The fit outputs in ``RUN_DIR/fit/``: written into a temporary folder and renamed at the end.

``projector.pt``: ``{"projector": Projector.checkpoint(), "config": resolved config dict,
"run_id", "epochs"}``, loadable with ``torch.load(..., weights_only=True)``; a DVI fit
(``fit.method = "dvi"``) holds ``"epoch_projectors"``, one checkpoint per fitted epoch in
``"epochs"`` order, instead of ``"projector"``.
``embedding.h5``: every epoch's 2-D positions (keys below). ``fit.json``: config, versions,
device, kNN backend, complex sizes, seconds per stage, peak memory. ``config.toml``: the
resolved configuration. Every key is defined here once; render and eval read through
:func:`load_fit`.
"""

from __future__ import annotations

import functools
import json
import pickle
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from timevis_callback.reader import Run
from timevis_cli.config import Config
from timevis_cli.errors import InputError, StoreError, TimeVisError
from timevis_cli.fit.pipeline import FitModel, FitResult, ModelTransforms, TrackedSamples
from timevis_cli.fit.projector import Projector
from timevis_cli.outputs import OutputExists, replaced_folder, set_aside, write_error

FIT_DIR = "fit"
PROJECTOR_FILE = "projector.pt"
EMBEDDING_FILE = "embedding.h5"
REPORT_FILE = "fit.json"
CONFIG_FILE = "config.toml"

# projector.pt
SAVED_PROJECTOR = "projector"  # Projector.checkpoint() of timevis's one model
SAVED_EPOCH_PROJECTORS = "epoch_projectors"  # DVI: one Projector.checkpoint() per fitted epoch
SAVED_CONFIG = "config"  # Config.to_dict(); its fit.method says which of the two is there
SAVED_RUN_ID = "run_id"
SAVED_EPOCHS = "epochs"
# fit.json
REPORT_METHOD = "method"  # "timevis" | "dvi"

# embedding.h5
ATTR_RUN_ID = "run_id"
EPOCHS = "epochs"  # int64 [E]
TRAIN = "train"  # float32 [E, n_train, 2]
TEST = "test"  # float32 [E, n_test, 2]
BOUNDARY_POINTS = "boundary/points"  # float32 [sum B, 2]
BOUNDARY_FEATURES = "boundary/features"  # float16 [sum B, D]
BOUNDARY_PAIR = "boundary/pair"  # int64 [sum B, 2]
BOUNDARY_OFFSETS = "boundary/offsets"  # int64 [E + 1]: epoch i is rows offsets[i]:offsets[i+1]
ATTR_BOUNDARY_SOURCE = "boundary_source"  # JSON list per epoch: "store" | "feature" | "none"
SELECTED_IDS = "selected/ids"  # int64 [sum S]: train sample ids in the complex
SELECTED_OFFSETS = "selected/offsets"  # int64 [E + 1]


def _offsets(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("timevis", "faiss-cpu", "faiss-gpu", "h5py"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def save_fit(run_dir: Path, result: FitResult, overwrite: bool) -> Path:
    """Write ``RUN_DIR/fit/`` atomically; an existing fit is kept unless ``overwrite``."""
    run_dir = Path(run_dir)
    final = run_dir / FIT_DIR
    try:
        with replaced_folder(run_dir, FIT_DIR, overwrite, replace_file=True) as tmp:
            torch.save(
                {
                    **_saved_projectors(result.model),
                    SAVED_CONFIG: result.config.to_dict(),
                    SAVED_RUN_ID: result.run_id,
                    SAVED_EPOCHS: list(result.epochs),
                },
                tmp / PROJECTOR_FILE,
            )
            with h5py.File(tmp / EMBEDDING_FILE, "w") as f:
                f.attrs[ATTR_RUN_ID] = result.run_id
                f.create_dataset(EPOCHS, data=np.asarray(result.epochs, dtype=np.int64))
                f.create_dataset(TRAIN, data=result.train)
                f.create_dataset(TEST, data=result.test)
                points = _concat(result.boundary_points, (0, 2), np.float32)
                f.create_dataset(BOUNDARY_POINTS, data=points)
                dim = result.model.projector.input_dim
                f.create_dataset(
                    BOUNDARY_FEATURES, data=_concat(result.boundary_features, (0, dim), np.float16)
                )
                pairs = _concat(result.boundary_pairs, (0, 2), np.int64)
                f.create_dataset(BOUNDARY_PAIR, data=pairs)
                f.create_dataset(BOUNDARY_OFFSETS, data=_offsets(result.boundary_points))
                f.attrs[ATTR_BOUNDARY_SOURCE] = json.dumps(result.boundary_source)
                selected = [result.selected_ids[e] for e in result.epochs]
                f.create_dataset(SELECTED_IDS, data=_concat(selected, (0,), np.int64))
                f.create_dataset(SELECTED_OFFSETS, data=_offsets(selected))
            report = {
                "run_id": result.run_id,
                REPORT_METHOD: result.config.fit.method,
                "versions": _versions(),
                **result.stats,
                "training": result.report.as_dict(),
                "config": result.config.to_dict(),
            }
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=_json_default))
            (tmp / CONFIG_FILE).write_text(result.config.to_toml())
    except OutputExists as exc:
        raise InputError(f"{final} already exists; pass --overwrite to replace it") from exc
    except OSError as exc:  # HDF5's and torch's failures to write, raised inside the block
        raise write_error(final, exc) from exc
    return final


def _saved_projectors(model: FitModel) -> dict[str, Any]:
    """projector.pt's model entry: timevis's one projector, or a DVI fit's one per epoch."""
    if model.epoch_projectors is not None:
        return {SAVED_EPOCH_PROJECTORS: [p.checkpoint() for p in model.epoch_projectors]}
    return {SAVED_PROJECTOR: model.projector.checkpoint()}


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    parts = [np.asarray(p, dtype=dtype) for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass
class LoadedFit(ModelTransforms):
    """A fit read back from ``RUN_DIR/fit/``."""

    model: FitModel
    config: Config
    run_id: str
    epochs: list[int]
    path: Path

    def embedding(self, epoch: int) -> dict[str, np.ndarray]:
        """2-D positions of one epoch: ``train`` [n_train, 2], ``test``, ``boundary`` [B, 2],
        ``boundary_features`` [B, D], ``boundary_pair`` [B, 2]."""
        if epoch not in self.epochs:
            raise InputError(f"epoch {epoch} is not in the fit (fitted epochs: {self.epochs}); refit")
        i = self.epochs.index(epoch)
        with h5py.File(self.path / EMBEDDING_FILE, "r") as f:
            lo, hi = f[BOUNDARY_OFFSETS][i : i + 2]
            return {
                "train": f[TRAIN][i],
                "test": f[TEST][i],
                "boundary": f[BOUNDARY_POINTS][lo:hi],
                "boundary_features": f[BOUNDARY_FEATURES][lo:hi].astype(np.float32),
                "boundary_pair": f[BOUNDARY_PAIR][lo:hi],
            }


def load_fit(run: Run, device: torch.device | None = None) -> LoadedFit:
    """The fit of ``run``; every error is one line naming the file and the fix (run ``timevis
    fit`` when there is none, refit when it is damaged, stale or of another store)."""
    path = run.path / FIT_DIR
    refit = f"refit with: timevis fit {run.path} --overwrite"
    if not path.is_dir():
        aside = set_aside(run.path, FIT_DIR)
        if aside:
            raise StoreError(
                f"{path} is missing, but {aside[-1]} holds the fit a stopped `timevis fit` set "
                f"aside while replacing it; put it back with: mv {aside[-1]} {path}"
            )
        raise InputError(f"{run.path} has no fit yet; run: timevis fit {run.path}")
    files = [path / PROJECTOR_FILE, path / EMBEDDING_FILE]
    absent = [file for file in files if not file.is_file()]
    if len(absent) == len(files):
        raise InputError(f"{run.path} has no fit yet; run: timevis fit {run.path}")
    if absent:
        raise StoreError(f"{absent[0]} is missing, so the fit in {path} is incomplete; {refit}")
    try:
        saved = torch.load(path / PROJECTOR_FILE, map_location="cpu", weights_only=True)
        with h5py.File(path / EMBEDDING_FILE, "r") as f:
            run_id = str(f.attrs[ATTR_RUN_ID])
            epochs = [int(e) for e in f[EPOCHS][...]]
            shapes = {key: f[key].shape for key in _SHAPED}
            offsets = f[BOUNDARY_OFFSETS][...]
    except (OSError, KeyError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreError(f"{path} cannot be read ({reason}); {refit}") from exc
    if run_id != run.run_id:
        raise InputError(
            f"{path} was fitted on another run ({run_id[:12]}, this store is {run.run_id[:12]}); "
            f"{refit}"
        )
    missing = sorted(set(epochs) - set(run.epochs))
    if missing:
        raise InputError(f"{path} covers epochs {missing} that the store no longer has; {refit}")
    _check_embedding(run, path / EMBEDDING_FILE, len(epochs), shapes, offsets, refit)
    projector_file = path / PROJECTOR_FILE
    if not isinstance(saved, dict):
        raise StoreError(
            f"{projector_file} holds a {type(saved).__name__}, not a timevis fit; {refit}"
        )

    def entry(key: str) -> Any:
        if key not in saved:
            raise StoreError(
                f"{projector_file} has no {key!r} entry (keys: {', '.join(map(str, saved))}); "
                f"{refit}"
            )
        return saved[key]

    device = device or torch.device("cpu")
    try:
        config = Config.from_dict(entry(SAVED_CONFIG), source=str(projector_file))
        dvi = config.fit.method == "dvi"
        checkpoints = entry(SAVED_EPOCH_PROJECTORS) if dvi else [entry(SAVED_PROJECTOR)]
        if dvi and (not isinstance(checkpoints, list) or len(checkpoints) != len(epochs)):
            held = len(checkpoints) if isinstance(checkpoints, list) else type(checkpoints).__name__
            raise StoreError(
                f"{projector_file} holds {held} per-epoch models for {len(epochs)} fitted "
                f"epochs; {refit}"
            )
        projectors = [Projector.from_checkpoint(c, map_location=device).eval() for c in checkpoints]
    except StoreError:
        raise
    except (TimeVisError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise StoreError(f"{projector_file} cannot be used ({reason}); {refit}") from exc
    for projector in projectors:
        if projector.input_dim != run.feature_dim:
            raise StoreError(
                f"{projector_file} maps {projector.input_dim}-d features, but the store's are "
                f"{run.feature_dim}-d; {refit}"
            )
    model = FitModel(
        projectors[-1], device, list(epochs), epoch_projectors=projectors if dvi else None
    )
    if config.refine.enabled and not dvi:  # transform places new samples among the refined ones
        model.tracked = TrackedSamples(
            run, list(epochs), functools.partial(_saved_positions, path / EMBEDDING_FILE)
        )
    return LoadedFit(
        model=model,
        config=config,
        run_id=run_id,
        epochs=epochs,
        path=path,
    )


def _saved_positions(file: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The train and test positions of fitted epoch ``index`` in ``embedding.h5``."""
    with h5py.File(file, "r") as f:
        return f[TRAIN][index], f[TEST][index]


#: embedding.h5 datasets whose shapes are checked against the store and each other on load
_SHAPED = (TRAIN, TEST, BOUNDARY_POINTS, BOUNDARY_FEATURES, BOUNDARY_PAIR)


def _check_embedding(
    run: Run,
    file: Path,
    n_epochs: int,
    shapes: dict[str, tuple[int, ...]],
    offsets: np.ndarray,
    refit: str,
) -> None:
    """StoreError unless ``embedding.h5``'s arrays fit the store: every epoch's positions of
    every tracked sample, and boundary rows that the offsets index."""
    for key in (TRAIN, TEST):
        tracked = int(run.samples.mask(key).sum())
        shape = shapes[key]
        if len(shape) != 3 or shape[2] != 2:
            raise StoreError(
                f"{file}: {key!r} has shape {shape}, not (epochs, samples, 2); {refit}"
            )
        if shape[0] != n_epochs:
            raise StoreError(
                f"{file} holds {key} positions of {shape[0]} epochs but lists {n_epochs}; {refit}"
            )
        if shape[1] != tracked:
            raise StoreError(
                f"{file} holds {shape[1]} {key} samples per epoch, but the store tracks "
                f"{tracked}; {refit}"
            )
    rows = shapes[BOUNDARY_POINTS][0] if shapes[BOUNDARY_POINTS] else 0
    consistent = (
        offsets.shape == (n_epochs + 1,)
        and (offsets.size == 0 or (offsets[0] == 0 and offsets[-1] == rows))
        and bool(np.all(np.diff(offsets) >= 0))
        and all(shapes[key][:1] == (rows,) for key in (BOUNDARY_FEATURES, BOUNDARY_PAIR))
    )
    if not consistent:
        raise StoreError(
            f"{file}: the boundary points ({rows} rows) do not match their per-epoch offsets "
            f"or features; {refit}"
        )
