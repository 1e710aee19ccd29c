"""Read a run store lazily: ``open_run(RUN_DIR)`` loads run.h5; epochs are read one at a time.

Torch-free (the head is a numpy callable; ``Head.to_torch()`` builds a module on request).
Every error names the file and the key. Unreadable epoch files are skipped with a warning and
listed in ``Run.bad_epochs``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from timevis_callback import schema
from timevis_callback.errors import StoreError, StoreVersionError
from timevis_callback.head import Head, parse_head_spec
from timevis_callback.writer import Boundary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Samples:
    """The tracked samples, in the row order of every epoch's arrays."""

    id: np.ndarray  # int64 (n,): index in the source dataset
    split: np.ndarray  # uint8 (n,): schema.SPLIT_TRAIN or SPLIT_TEST
    label: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.id)

    def mask(self, split: str | None) -> np.ndarray:
        """Boolean row mask of a split ("train", "test") or of all rows (None)."""
        if split is None:
            return np.ones(len(self.id), dtype=bool)
        if split not in schema.SPLIT_CODES:
            raise ValueError(f"split={split!r} must be one of {sorted(schema.SPLIT_CODES)} or None")
        return self.split == schema.SPLIT_CODES[split]


@dataclass(frozen=True)
class EpochContents:
    """What one epoch file holds, read from metadata only (no arrays loaded)."""

    feature_dtype: str
    n_boundary: int
    has_weights: bool


@dataclass(frozen=True)
class EpochInfo:
    """The attributes of one epoch file."""

    epoch: int
    global_step: int
    wall_time: float
    metrics: dict[str, float]


def _check_run_attrs(path: Path, attrs: h5py.AttributeManager) -> None:
    fmt = attrs.get(schema.ATTR_FORMAT)
    if fmt != schema.FORMAT_NAME:
        raise StoreError(
            f"{path}: attribute {schema.ATTR_FORMAT!r} is {fmt!r}, not {schema.FORMAT_NAME!r}; "
            "this file was not written by timevis"
        )
    raw_version = attrs.get(schema.ATTR_SCHEMA_VERSION, -1)
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        raise StoreError(
            f"{path}: attribute {schema.ATTR_SCHEMA_VERSION!r} is {_plain(raw_version)!r}, not an "
            "integer; the file is corrupted"
        ) from None
    if version > schema.SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path}: schema_version {version} is newer than this timevis reads "
            f"({schema.SCHEMA_VERSION}); upgrade with: pip install -U timevis"
        )
    missing = [key for key in schema.RUN_REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise StoreError(f"{path}: missing attributes {missing}; the file is incomplete")


def probe_epoch_file(path: Path) -> str | None:
    """None when the epoch file opens and has every required key, else the reason it does not."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in schema.EPOCH_REQUIRED_KEYS if k not in f]
            missing += [a for a in schema.EPOCH_REQUIRED_ATTRS if a not in f.attrs]
            if missing:
                return f"missing {missing}"
            version = int(f.attrs[schema.ATTR_SCHEMA_VERSION])
            if version > schema.SCHEMA_VERSION:
                return f"schema_version {version} is newer than {schema.SCHEMA_VERSION}"
            f[schema.FEATURES].shape  # noqa: B018 - touching the header detects truncation early
    except OSError as exc:
        return f"cannot be read ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
    return None


class Run:
    """A run store on disk. Cheap to open: only run.h5's header and sample arrays are loaded."""

    def __init__(self, run_dir: str | os.PathLike, warn_unreadable: bool = True):
        self.path = Path(run_dir)
        self._warn_unreadable = warn_unreadable
        if not self.path.exists():
            raise StoreError(f"run directory {self.path} does not exist")
        if not self.path.is_dir():
            raise StoreError(f"{self.path} is a file; pass the run directory that holds run.h5")
        self.run_file = self.path / schema.RUN_FILE
        if not self.run_file.exists():
            raise StoreError(
                f"{self.path} is not a timevis run store: {schema.RUN_FILE} is missing "
                "(TimeVisCallback writes it when training starts)"
            )
        try:
            with h5py.File(self.run_file, "r") as f:
                _check_run_attrs(self.run_file, f.attrs)
                self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items()}
                self.samples = Samples(
                    id=self._read(f, schema.SAMPLES_ID, np.int64),
                    split=self._read(f, schema.SAMPLES_SPLIT, np.uint8),
                    label=self._read(f, schema.SAMPLES_LABEL, np.int64),
                )
                self.has_thumbnails = schema.SAMPLES_THUMBNAIL in f
        except OSError as exc:
            raise StoreError(f"{self.run_file} cannot be read: {exc}") from exc
        try:
            self.head_spec = parse_head_spec(self.attrs[schema.ATTR_HEAD_SPEC])
        except (StoreError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise StoreError(
                f"{self.run_file}: attribute {schema.ATTR_HEAD_SPEC!r} is invalid: {exc}"
            ) from exc
        try:
            names = json.loads(self.attrs[schema.ATTR_CLASS_NAMES])
            if not isinstance(names, list) or len(names) != self.num_classes:
                raise ValueError(f"expected a JSON list of {self.num_classes} names")
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise StoreError(
                f"{self.run_file}: attribute {schema.ATTR_CLASS_NAMES!r} is invalid: {exc}"
            ) from exc
        self._scan()

    def _read(self, f: h5py.File, key: str, dtype: Any) -> np.ndarray:
        if key not in f:
            raise StoreError(f"{self.run_file}: dataset {key!r} is missing")
        return np.asarray(f[key][...], dtype=dtype)

    def _scan(self) -> None:
        """Find epoch files; skip (with a warning) the ones that cannot be read."""
        self.bad_epochs: dict[int, str] = {}
        good = []
        folder = self.path / schema.EPOCHS_DIR
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            epoch = schema.parse_epoch_filename(path.name)
            if epoch is None:
                continue
            reason = probe_epoch_file(path)
            if reason is None:
                good.append(epoch)
            else:
                self.bad_epochs[epoch] = reason
                level = logging.WARNING if self._warn_unreadable else logging.DEBUG
                log.log(level, "skipping %s: %s", path, reason)
        self.epochs: list[int] = good

    def refresh(self) -> list[int]:
        """Re-scan epochs/ (training may still be writing); returns the readable epochs."""
        self._scan()
        return self.epochs

    # --- run-level attributes -------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return str(self.attrs[schema.ATTR_RUN_ID])

    @property
    def feature_layer(self) -> str:
        return str(self.attrs[schema.ATTR_FEATURE_LAYER])

    @property
    def feature_io(self) -> str:
        """Whether the features are the "input" or the "output" of ``feature_layer``."""
        return str(self.attrs[schema.ATTR_FEATURE_IO])

    @property
    def feature_dim(self) -> int:
        return int(self.attrs[schema.ATTR_FEATURE_DIM])

    @property
    def num_classes(self) -> int:
        return int(self.attrs[schema.ATTR_NUM_CLASSES])

    @cached_property
    def class_names(self) -> list[str]:
        return list(json.loads(self.attrs[schema.ATTR_CLASS_NAMES]))

    @cached_property
    def callback_config(self) -> dict[str, Any]:
        return dict(json.loads(self.attrs.get(schema.ATTR_CALLBACK_CONFIG, "{}")))

    def thumbnails(self) -> np.ndarray | None:
        """uint8 (n, h, w[, c]) thumbnails in sample order, or None when none were recorded."""
        if not self.has_thumbnails:
            return None
        with h5py.File(self.run_file, "r") as f:
            return np.asarray(f[schema.SAMPLES_THUMBNAIL][...])

    # --- per-epoch access -----------------------------------------------------------------
    def epoch_path(self, epoch: int) -> Path:
        return self.path / schema.EPOCHS_DIR / schema.epoch_filename(epoch)

    @contextmanager
    def _open_epoch(self, epoch: int) -> Iterator[h5py.File]:
        if epoch not in self.epochs:
            extra = f"; epoch {epoch} is unreadable: {self.bad_epochs[epoch]}" if (
                epoch in self.bad_epochs
            ) else ""
            raise StoreError(
                f"{self.path}: epoch {epoch} is not recorded; present: {format_epochs(self.epochs)}"
                + extra
            )
        path = self.epoch_path(epoch)
        try:
            with h5py.File(path, "r") as f:
                yield f
        except OSError as exc:
            raise StoreError(f"{path} cannot be read: {exc}") from exc

    def _checked(self, f: h5py.File, key: str, width: int | None = None) -> h5py.Dataset:
        """The dataset ``key`` of an epoch file, present and (with ``width``) [N, width]."""
        if key not in f:
            raise StoreError(f"{f.filename}: dataset {key!r} is missing")
        data = f[key]
        if width is not None and data.shape != (len(self.samples), width):
            raise StoreError(
                f"{f.filename}: dataset {key!r} has shape {data.shape}, expected "
                f"({len(self.samples)}, {width}) from {self.run_file.name}; the epoch file is "
                "corrupted or belongs to another run"
            )
        return data

    def _dataset(
        self, f: h5py.File, key: str, rows: np.ndarray | None, width: int | None = None
    ) -> np.ndarray:
        data = _read_selection(f, key, self._checked(f, key, width), Ellipsis)
        return data if rows is None else data[rows]

    def features(self, epoch: int, split: str | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Features (n, feature_dim) of one epoch, rows in sample order (of ``split`` if given)."""
        rows = None if split is None else self.samples.mask(split)
        with self._open_epoch(epoch) as f:
            data = self._dataset(f, schema.FEATURES, rows, width=self.feature_dim)
            return np.asarray(data, dtype=dtype)

    def feature_rows(
        self, epochs: list[int], rows: np.ndarray, dtype: Any = np.float32
    ) -> np.ndarray:
        """Features [len(epochs), len(rows), D] of the given store rows (ascending) at every
        listed epoch: one sample block's trajectories, read without loading whole epochs.
        For many blocks, :meth:`feature_reader` locates each epoch's features once."""
        with self.feature_reader(epochs) as reader:
            return reader.read(rows, dtype)

    def feature_reader(self, epochs: list[int]) -> FeatureRows:
        """A reader of sample blocks' features at every listed epoch: each epoch file is checked
        and its features located once, then every block is plain reads (:class:`FeatureRows`)."""
        return FeatureRows(self, epochs)

    def logits(self, epoch: int, split: str | None = None) -> np.ndarray:
        """Logits float32 (n, num_classes) of one epoch."""
        rows = None if split is None else self.samples.mask(split)
        with self._open_epoch(epoch) as f:
            data = self._dataset(f, schema.LOGITS, rows, width=self.num_classes)
            return np.asarray(data, dtype=np.float32)

    def head(self, epoch: int) -> Head:
        """The classifier head of one epoch: ``head(features) -> logits`` (numpy)."""
        with self._open_epoch(epoch) as f:
            group = f[schema.HEAD_GROUP]
            state = {name: np.asarray(group[name][...]) for name in group}
        try:
            return Head(self.head_spec, state)
        except StoreError as exc:
            raise StoreError(f"{self.epoch_path(epoch)}: group {schema.HEAD_GROUP!r}: {exc}") from exc

    def boundary(self, epoch: int, dtype: Any = np.float32) -> Boundary | None:
        """The epoch's input-space boundary points, or None when none were recorded."""
        with self._open_epoch(epoch) as f:
            if schema.BOUNDARY_FEATURES not in f:
                return None
            return Boundary(
                features=np.asarray(self._dataset(f, schema.BOUNDARY_FEATURES, None), dtype=dtype),
                pair=np.asarray(self._dataset(f, schema.BOUNDARY_PAIR, None), dtype=np.int64),
            )

    def weights(self, epoch: int) -> dict[str, np.ndarray] | None:
        """The model's state_dict arrays of one epoch, or None when only the head was recorded."""
        with self._open_epoch(epoch) as f:
            if schema.WEIGHTS_GROUP not in f:
                return None
            group = f[schema.WEIGHTS_GROUP]
            return {name: np.asarray(group[name][...]) for name in group}

    def epoch_info(self, epoch: int) -> EpochInfo:
        """Epoch number, global step, wall time and the trainer's logged metrics."""
        with self._open_epoch(epoch) as f:
            a = f.attrs
            return EpochInfo(
                epoch=int(a[schema.ATTR_EPOCH]),
                global_step=int(a.get(schema.ATTR_GLOBAL_STEP, 0)),
                wall_time=float(a.get(schema.ATTR_WALL_TIME, 0.0)),
                metrics=dict(json.loads(a.get(schema.ATTR_METRICS, "{}"))),
            )

    def contents(self, epoch: int) -> EpochContents:
        """Feature dtype, boundary point count and whether weights are present (no data read)."""
        with self._open_epoch(epoch) as f:
            return EpochContents(
                feature_dtype=str(f[schema.FEATURES].dtype),
                n_boundary=int(f[schema.BOUNDARY_FEATURES].shape[0])
                if schema.BOUNDARY_FEATURES in f
                else 0,
                has_weights=schema.WEIGHTS_GROUP in f,
            )

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per part: samples, features, logits, head, boundary, weights, other."""
        usage = dict.fromkeys(
            ("samples", "features", "logits", "head", "boundary", "weights", "other"), 0
        )
        parts = {
            schema.FEATURES: "features",
            schema.LOGITS: "logits",
            schema.HEAD_GROUP: "head",
            schema.BOUNDARY_FEATURES.split("/")[0]: "boundary",
            schema.WEIGHTS_GROUP: "weights",
        }
        usage["samples"] = self.run_file.stat().st_size
        for epoch in self.epochs:
            path = self.epoch_path(epoch)
            counted = 0
            with h5py.File(path, "r") as f:

                def visit(name: str, obj: Any, _f: h5py.File = f) -> None:
                    nonlocal counted
                    if isinstance(obj, h5py.Dataset):
                        size = obj.id.get_storage_size()
                        usage[parts.get(name.split("/")[0], "other")] += size
                        counted += size

                f.visititems(visit)
            usage["other"] += max(0, path.stat().st_size - counted)
        return usage

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, samples={len(self.samples)}, "
            f"epochs={format_epochs(self.epochs)}, feature_dim={self.feature_dim})"
        )


@dataclass(frozen=True)
class _FeatureLayout:
    """Where one epoch file keeps its features: a contiguous, uncompressed dataset is read by
    byte offset (``offset`` None: through HDF5)."""

    path: Path
    dtype: np.dtype
    offset: int | None


class FeatureRows:
    """Blocks of samples' features at every listed epoch, from :meth:`Run.feature_reader`.

    Each epoch file is opened with HDF5 once, here, to check its features and find where they
    lie; the callback writes them contiguous and uncompressed, so a block of rows is then one
    plain read at a byte offset (opening an HDF5 file costs ~0.7 ms, and a trajectory pass over
    N samples in blocks of B reads every epoch N / B times). No file stays open between reads.
    Features stored otherwise (chunked, compressed) are read through HDF5 each time.
    """

    def __init__(self, run: Run, epochs: list[int]):
        self.run = run
        self.epochs = list(epochs)
        self._layout: dict[int, _FeatureLayout] = {}
        for epoch in self.epochs:
            if epoch not in self._layout:
                with run._open_epoch(epoch) as f:
                    data = run._checked(f, schema.FEATURES, run.feature_dim)
                    # chunked (and so possibly filtered) data, or none allocated: through HDF5
                    offset = data.id.get_offset() if data.chunks is None else None
                    self._layout[epoch] = _FeatureLayout(Path(f.filename), data.dtype, offset)
        self._closed = False

    def read(self, rows: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Features [len(epochs), len(rows), D] in ``dtype`` of the given store rows (ascending),
        whatever each epoch stores (float16, or float32 where the callback kept an epoch whose
        values overflow float16).

        Each epoch is read as the contiguous span of the rows when it is at most twice as long
        as the block (then picked), else as the rows themselves (an HDF5 point selection).
        """
        if self._closed:
            raise ValueError("this FeatureRows reader is closed")
        run = self.run
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(self.epochs), len(rows), run.feature_dim), dtype)
        if len(rows) == 0:
            return out
        first, last = int(rows[0]), int(rows[-1]) + 1
        span = last - first <= 2 * len(rows)
        pick = None if last - first == len(rows) else rows - first
        for index, epoch in enumerate(self.epochs):
            layout = self._layout[epoch]
            if span and layout.offset is not None:
                values = self._read_span(layout, first, last)
                out[index] = values if pick is None else values[pick]
                continue
            with run._open_epoch(epoch) as f:
                data = run._checked(f, schema.FEATURES, run.feature_dim)
                if span:
                    values = _read_selection(f, schema.FEATURES, data, slice(first, last))
                    out[index] = values if pick is None else values[pick]
                else:
                    out[index] = _read_selection(f, schema.FEATURES, data, rows)
        return out

    def _read_span(self, layout: _FeatureLayout, first: int, last: int) -> np.ndarray:
        dim = self.run.feature_dim
        count = (last - first) * dim
        try:
            with open(layout.path, "rb") as f:
                f.seek(layout.offset + first * dim * layout.dtype.itemsize)
                values = np.fromfile(f, dtype=layout.dtype, count=count)
        except OSError as exc:
            raise StoreError(
                f"{layout.path}: dataset {schema.FEATURES!r} cannot be read: {exc}"
            ) from exc
        if values.size != count:
            raise StoreError(
                f"{layout.path}: dataset {schema.FEATURES!r} ends early (rows {first}-{last - 1} "
                "asked); the epoch file is truncated or was replaced while reading"
            )
        return values.reshape(last - first, dim)

    def close(self) -> None:
        """Nothing stays open between reads; after close, reading is an error."""
        self._closed = True

    def __enter__(self) -> FeatureRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_selection(f: h5py.File, key: str, data: h5py.Dataset, selection: Any) -> np.ndarray:
    """``data[selection]``, a read failure reported as a StoreError naming the file and key."""
    try:
        return data[selection]
    except OSError as exc:
        raise StoreError(f"{f.filename}: dataset {key!r} cannot be read: {exc}") from exc


def _plain(value: Any) -> Any:
    """h5py attribute values as plain Python values."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_epochs(epochs: list[int]) -> str:
    """Compact text of sorted epoch numbers: ``0-3, 5, 7-9`` (``none`` when empty)."""
    if not epochs:
        return "none"
    parts, start, prev = [], epochs[0], epochs[0]
    for e in [*epochs[1:], None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(parts)


def open_run(run_dir: str | os.PathLike, warn_unreadable: bool = True) -> Run:
    """Open the run store in ``run_dir`` (raises StoreError naming what is wrong).

    Unreadable epoch files are skipped with a warning each (a debug line with
    ``warn_unreadable=False``: for a process that opens a store its parent already reported).
    """
    return Run(run_dir, warn_unreadable)
