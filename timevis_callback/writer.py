"""Write a run store: run.h5 once, then one atomically renamed file per epoch.

Every file is written under a hidden temporary name in its final folder, flushed, fsynced and
renamed with ``os.replace``: a reader sees a whole file or none, and a killed process leaves every
finished epoch readable. Nothing is pickled. Torch-free: arrays in, files out.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from timevis_callback import schema
from timevis_callback.errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunHeader:
    """What run.h5 records about a run besides its samples."""

    run_id: str
    feature_layer: str
    feature_io: str  # "input" or "output" of feature_layer
    feature_dim: int
    num_classes: int
    class_names: list[str]
    head_spec: list[dict[str, Any]]
    callback_config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # timevis/torch/lightning


@dataclass(frozen=True)
class Boundary:
    """Boundary points of one epoch: representations [B, D] and their class pairs [B, 2]."""

    features: np.ndarray
    pair: np.ndarray


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """Open a new HDF5 file that appears at ``path`` only once it is complete and on disk."""
    path = Path(path)
    tmp = path.with_name(schema.tmp_name(path.name, f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
    try:
        with h5py.File(tmp, "w") as f:
            yield f
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_run(
    run_dir: str | os.PathLike,
    header: RunHeader,
    ids: np.ndarray,
    splits: np.ndarray,
    labels: np.ndarray,
    thumbnails: np.ndarray | None = None,
) -> Path:
    """Write ``RUN_DIR/run.h5`` (atomically) and create ``epochs/``; returns the file's path.

    ids, splits, labels: arrays of shape (n_samples,); thumbnails uint8 (n_samples, h, w[, c]).
    """
    run_dir = Path(run_dir)
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    splits = np.asarray(splits, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if splits.shape != (n,) or labels.shape != (n,):
        raise StoreError(
            f"ids, splits and labels must all have shape ({n},); got {splits.shape} and {labels.shape}"
        )
    if len(header.class_names) != header.num_classes:
        raise StoreError(
            f"class_names has {len(header.class_names)} names for num_classes={header.num_classes}"
        )
    (run_dir / schema.EPOCHS_DIR).mkdir(parents=True, exist_ok=True)
    path = run_dir / schema.RUN_FILE
    with atomic_h5(path) as f:
        f.attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME
        f.attrs[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION
        f.attrs[schema.ATTR_RUN_ID] = header.run_id
        f.attrs[schema.ATTR_CREATED] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key, attr in (
            ("timevis", schema.ATTR_TIMEVIS_VERSION),
            ("torch", schema.ATTR_TORCH_VERSION),
            ("lightning", schema.ATTR_LIGHTNING_VERSION),
        ):
            f.attrs[attr] = str(header.versions.get(key, ""))
        f.attrs[schema.ATTR_FEATURE_LAYER] = header.feature_layer
        f.attrs[schema.ATTR_FEATURE_IO] = header.feature_io
        f.attrs[schema.ATTR_FEATURE_DIM] = int(header.feature_dim)
        f.attrs[schema.ATTR_NUM_CLASSES] = int(header.num_classes)
        f.attrs[schema.ATTR_CLASS_NAMES] = json.dumps(list(header.class_names))
        f.attrs[schema.ATTR_HEAD_SPEC] = json.dumps(header.head_spec)
        f.attrs[schema.ATTR_CALLBACK_CONFIG] = json.dumps(header.callback_config, default=str)
        f.create_dataset(schema.SAMPLES_ID, data=ids)
        f.create_dataset(schema.SAMPLES_SPLIT, data=splits)
        f.create_dataset(schema.SAMPLES_LABEL, data=labels)
        if thumbnails is not None:
            thumbnails = np.asarray(thumbnails)
            if thumbnails.dtype != np.uint8 or len(thumbnails) != n:
                raise StoreError(
                    f"thumbnails must be uint8 with {n} rows; got {thumbnails.dtype} {thumbnails.shape}"
                )
            if max(thumbnails.shape[1:3]) > schema.THUMBNAIL_MAX_SIZE:
                raise StoreError(
                    f"thumbnails of shape {thumbnails.shape[1:]} exceed "
                    f"{schema.THUMBNAIL_MAX_SIZE}x{schema.THUMBNAIL_MAX_SIZE}"
                )
            f.create_dataset(schema.SAMPLES_THUMBNAIL, data=thumbnails)
    log.debug("wrote %s (%d samples)", path, n)
    return path


def write_epoch(
    run_dir: str | os.PathLike,
    epoch: int,
    *,
    features: np.ndarray,
    logits: np.ndarray,
    head_state: Mapping[str, np.ndarray],
    global_step: int = 0,
    wall_time: float | None = None,
    metrics: Mapping[str, float] | None = None,
    boundary: Boundary | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write ``RUN_DIR/epochs/epoch_EEEE.h5`` atomically; returns its path.

    features: float16|float32 (n_samples, feature_dim); logits: (n_samples, n_classes), stored
    float32; head_state and weights: name -> array (floating arrays of the head stored float32).
    """
    features = np.asarray(features)
    if features.dtype.name not in schema.FEATURE_DTYPES:
        raise StoreError(f"features dtype {features.dtype} must be one of {schema.FEATURE_DTYPES}")
    logits = np.asarray(logits, dtype=np.float32)
    if features.ndim != 2 or logits.ndim != 2 or len(features) != len(logits):
        raise StoreError(
            f"features {features.shape} and logits {logits.shape} must be 2-D with equal rows"
        )
    path = Path(run_dir) / schema.EPOCHS_DIR / schema.epoch_filename(epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path) as f:
        f.attrs[schema.ATTR_EPOCH] = int(epoch)
        f.attrs[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION
        f.attrs[schema.ATTR_GLOBAL_STEP] = int(global_step)
        f.attrs[schema.ATTR_WALL_TIME] = float(time.time() if wall_time is None else wall_time)
        f.attrs[schema.ATTR_METRICS] = json.dumps(dict(metrics or {}))
        f.create_dataset(schema.FEATURES, data=features)
        f.create_dataset(schema.LOGITS, data=logits)
        head = f.create_group(schema.HEAD_GROUP)
        for name, value in head_state.items():
            head.create_dataset(name, data=np.asarray(value, dtype=np.float32))
        if boundary is not None and len(boundary.features):
            f.create_dataset(schema.BOUNDARY_FEATURES, data=np.asarray(boundary.features))
            f.create_dataset(schema.BOUNDARY_PAIR, data=np.asarray(boundary.pair, dtype=np.int64))
        if weights is not None:
            group = f.create_group(schema.WEIGHTS_GROUP)
            for name, value in weights.items():
                group.create_dataset(name, data=np.asarray(value))
    log.debug("wrote %s", path)
    return path


def remove_epochs_after(run_dir: str | os.PathLike, epoch: int) -> list[int]:
    """Delete the epoch files numbered above ``epoch`` (and stale temp files); returns those removed."""
    folder = Path(run_dir) / schema.EPOCHS_DIR
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        number = schema.parse_epoch_filename(path.name)
        if number is not None and number > epoch:
            path.unlink()
            removed.append(number)
        elif path.name.startswith(schema.TMP_PREFIX) and path.name.endswith(schema.TMP_SUFFIX):
            path.unlink()
    return sorted(removed)


def clear_store(run_dir: str | os.PathLike) -> None:
    """Remove run.h5 and epochs/ of a store (outputs of the CLI are left in place)."""
    run_dir = Path(run_dir)
    if (run_dir / schema.EPOCHS_DIR).exists():
        shutil.rmtree(run_dir / schema.EPOCHS_DIR)
    (run_dir / schema.RUN_FILE).unlink(missing_ok=True)
