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
from timevis_callback.errors import StoreError, StoreVersionError, one_line
from timevis_callback.head import Head, param_shapes, parse_head_spec
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


def _int_attr(attrs: h5py.AttributeManager, key: str) -> int | str:
    """The integer attribute ``key``, or the reason it is not one."""
    value = attrs[key]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return f"attribute {key!r} is {_shown(value)}, not an integer"


def _shown(value: Any) -> str:
    """A short repr of a stored value for a one-line message."""
    text = repr(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _array_problem(
    f: h5py.File, key: str, dtypes: str | tuple[str, ...], shape: tuple[int, ...], source: str
) -> str | None:
    """Why ``f[key]`` is not a dataset of ``shape`` whose dtype is one of ``dtypes`` (names)
    or of a kind in ``dtypes`` ("f": floating point, "iu": integer), or None when it is.
    ``source`` says where the expected shape comes from."""
    data = f[key]
    if not isinstance(data, h5py.Dataset):
        return f"{key!r} is a group, not a dataset"
    if isinstance(dtypes, tuple):
        ok, wanted = data.dtype.name in dtypes, " or ".join(dtypes)
    else:
        ok, wanted = data.dtype.kind in dtypes, {"f": "floating point", "iu": "integer"}[dtypes]
    if not ok:
        return f"dataset {key!r} has dtype {data.dtype}, not {wanted}"
    if data.shape != shape:
        return f"dataset {key!r} has shape {data.shape}, expected {shape} ({source})"
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
                self.has_thumbnails = self._thumbnails_usable(f)
        except OSError as exc:
            raise StoreError(f"{self.run_file} cannot be read: {one_line(exc)}") from exc
        self._check_run()
        self._scan()

    def _check_run(self) -> None:
        """Refuse a run.h5 whose sizes, samples, class names or head do not fit together (the
        whole store depends on it); every epoch file is then checked against it."""
        for key in (schema.ATTR_FEATURE_DIM, schema.ATTR_NUM_CLASSES):
            value = self.attrs[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StoreError(
                    f"{self.run_file}: attribute {key!r} is {_shown(value)}, not an int >= 1; "
                    "the file is corrupted"
                )
        n = len(self.samples.id)
        for key, values in (
            (schema.SAMPLES_ID, self.samples.id),
            (schema.SAMPLES_SPLIT, self.samples.split),
            (schema.SAMPLES_LABEL, self.samples.label),
        ):
            if values.shape != (n,):
                raise StoreError(
                    f"{self.run_file}: dataset {key!r} has shape {values.shape}, but "
                    f"{schema.SAMPLES_ID!r} has ({n},): the sample arrays must be 1-D and of one "
                    "length; the file is corrupted"
                )
        if not np.isin(self.samples.split, list(schema.SPLIT_CODES.values())).all():
            raise StoreError(
                f"{self.run_file}: dataset {schema.SAMPLES_SPLIT!r} holds values other than "
                f"{sorted(schema.SPLIT_CODES.values())} (train, test); the file is corrupted"
            )
        if n and (self.samples.label.min() < 0 or self.samples.label.max() >= self.num_classes):
            raise StoreError(
                f"{self.run_file}: dataset {schema.SAMPLES_LABEL!r} ranges over "
                f"[{self.samples.label.min()}, {self.samples.label.max()}], outside the "
                f"{self.num_classes} classes; the file is corrupted"
            )
        try:
            self.head_spec = parse_head_spec(self.attrs[schema.ATTR_HEAD_SPEC])
            self.head_shapes = param_shapes(self.head_spec, self.feature_dim, self.num_classes)
        except (StoreError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise StoreError(
                f"{self.run_file}: attribute {schema.ATTR_HEAD_SPEC!r} is invalid: {exc}"
            ) from exc
        try:
            names = json.loads(self.attrs[schema.ATTR_CLASS_NAMES])
            if not isinstance(names, list) or len(names) != self.num_classes:
                raise ValueError(f"expected a JSON list of {self.num_classes} names")
            if not all(isinstance(name, str) for name in names):
                raise ValueError("the names must be strings")
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise StoreError(
                f"{self.run_file}: attribute {schema.ATTR_CLASS_NAMES!r} is invalid: {exc}"
            ) from exc
        try:
            config = json.loads(self.attrs.get(schema.ATTR_CALLBACK_CONFIG, "{}"))
            if not isinstance(config, dict):
                raise ValueError("expected a JSON object")
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"{self.run_file}: attribute {schema.ATTR_CALLBACK_CONFIG!r} is invalid: {exc}"
            ) from exc

    def _read(self, f: h5py.File, key: str, dtype: Any) -> np.ndarray:
        if key not in f:
            raise StoreError(f"{self.run_file}: dataset {key!r} is missing")
        data = f[key]
        if not isinstance(data, h5py.Dataset) or data.dtype.kind not in "iu":
            kind = f"dtype {data.dtype}" if isinstance(data, h5py.Dataset) else "a group"
            raise StoreError(
                f"{self.run_file}: dataset {key!r} is {kind}, not integer; the file is corrupted"
            )
        return np.asarray(data[...], dtype=dtype)

    def _thumbnails_usable(self, f: h5py.File) -> bool:
        """Whether run.h5 holds thumbnails the viewer can show; damaged ones are ignored with
        a warning (they only decorate the viewer)."""
        if schema.SAMPLES_THUMBNAIL not in f:
            return False
        data = f[schema.SAMPLES_THUMBNAIL]
        n = len(self.samples.id)
        if (
            isinstance(data, h5py.Dataset)
            and data.dtype == np.uint8
            and data.ndim in (3, 4)
            and data.shape[0] == n
            and (data.ndim == 3 or data.shape[3] == 3)
        ):
            return True
        found = f"{data.dtype} {data.shape}" if isinstance(data, h5py.Dataset) else "a group"
        log.warning(
            "%s: ignoring %r, which is %s, not uint8 (%d, h, w[, 3]); the viewer shows no thumbnails",
            self.run_file,
            schema.SAMPLES_THUMBNAIL,
            found,
            n,
        )
        return False

    def _scan(self) -> None:
        """Find epoch files; skip (with a warning) the ones that cannot be read."""
        self.bad_epochs: dict[int, str] = {}
        good = []
        folder = self.path / schema.EPOCHS_DIR
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            epoch = schema.parse_epoch_filename(path.name)
            if epoch is None:
                continue
            reason = self.check_epoch_file(path, epoch)
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

    def check_epoch_file(self, path: Path, epoch: int) -> str | None:
        """None when the epoch file at ``path`` can be used, else what is wrong with it (one
        line; the caller names the file). The one check every epoch passes before any command
        reads it: the file opens, its attributes have their types, its arrays their dtypes and
        this run's shapes, its head parameters the shapes of run.h5's head_spec and finite
        values. Reads metadata, the head parameters and the boundary pairs, never the
        features."""
        try:
            with h5py.File(path, "r") as f:
                return self._epoch_problem(f, epoch)
        except OSError as exc:
            return f"cannot be read ({exc.__class__.__name__}: {one_line(exc)})"
        except (TypeError, ValueError) as exc:  # an attribute or dataset h5py cannot convert
            return f"cannot be read ({exc.__class__.__name__}: {one_line(exc)})"

    def _epoch_problem(self, f: h5py.File, epoch: int) -> str | None:
        missing = [k for k in schema.EPOCH_REQUIRED_KEYS if k not in f]
        missing += [a for a in schema.EPOCH_REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            return f"missing {missing}; the file is incomplete"
        return (
            self._attrs_problem(f.attrs, epoch)
            or _array_problem(
                f,
                schema.FEATURES,
                schema.FEATURE_DTYPES,
                (len(self.samples), self.feature_dim),
                f"{len(self.samples)} samples x feature_dim {self.feature_dim} of {schema.RUN_FILE}",
            )
            or _array_problem(
                f,
                schema.LOGITS,
                "f",
                (len(self.samples), self.num_classes),
                f"{len(self.samples)} samples x {self.num_classes} classes of {schema.RUN_FILE}",
            )
            or self._head_problem(f)
            or self._boundary_problem(f)
            or (
                f"{schema.WEIGHTS_GROUP!r} is a dataset, not a group"
                if isinstance(f.get(schema.WEIGHTS_GROUP), h5py.Dataset)
                else None
            )
        )

    @staticmethod
    def _attrs_problem(attrs: h5py.AttributeManager, epoch: int) -> str | None:
        version = _int_attr(attrs, schema.ATTR_SCHEMA_VERSION)
        if isinstance(version, str):
            return version
        if version > schema.SCHEMA_VERSION:
            return (
                f"schema_version {version} is newer than this timevis reads "
                f"({schema.SCHEMA_VERSION}); upgrade with: pip install -U timevis"
            )
        number = _int_attr(attrs, schema.ATTR_EPOCH)
        if isinstance(number, str):
            return number
        if number != epoch:
            return (
                f"attribute {schema.ATTR_EPOCH!r} is {number}, but the file is named for epoch "
                f"{epoch}"
            )
        if schema.ATTR_GLOBAL_STEP in attrs:
            step = _int_attr(attrs, schema.ATTR_GLOBAL_STEP)
            if isinstance(step, str):
                return step
        if schema.ATTR_WALL_TIME in attrs:
            wall = _plain(attrs[schema.ATTR_WALL_TIME])
            if not isinstance(wall, (int, float)) or isinstance(wall, bool):
                return f"attribute {schema.ATTR_WALL_TIME!r} is {_shown(wall)}, not a number"
        if schema.ATTR_METRICS in attrs:
            return _metrics_problem(attrs[schema.ATTR_METRICS])
        return None

    def _head_problem(self, f: h5py.File) -> str | None:
        group = f[schema.HEAD_GROUP]
        if not isinstance(group, h5py.Group):
            return f"{schema.HEAD_GROUP!r} is a dataset, not a group"
        missing = [name for name in self.head_shapes if name not in group]
        if missing:
            return f"head parameters {missing} are missing (present: {sorted(group)})"
        for name, shape in self.head_shapes.items():
            key = f"{schema.HEAD_GROUP}/{name}"
            problem = _array_problem(
                f, key, "f", shape, f"{schema.RUN_FILE}'s {schema.ATTR_HEAD_SPEC}"
            )
            if problem:
                return problem
            values = f[key][...]
            bad = int(values.size - np.isfinite(values).sum())
            if bad:
                return (
                    f"head parameter {key!r} holds {bad} NaN or inf values (training diverged "
                    "by this epoch?), so its predictions are undefined"
                )
        return None

    def _boundary_problem(self, f: h5py.File) -> str | None:
        group = schema.BOUNDARY_FEATURES.split("/")[0]
        if group not in f:
            return None
        if not isinstance(f[group], h5py.Group):
            return f"{group!r} is a dataset, not a group"
        present = [k for k in (schema.BOUNDARY_FEATURES, schema.BOUNDARY_PAIR) if k in f]
        if len(present) == 1:
            absent = ({schema.BOUNDARY_FEATURES, schema.BOUNDARY_PAIR} - set(present)).pop()
            return f"{present[0]!r} is stored without {absent!r}"
        if not present:
            return None
        points = f[schema.BOUNDARY_FEATURES]
        count = points.shape[0] if isinstance(points, h5py.Dataset) and points.ndim else 0
        problem = _array_problem(
            f,
            schema.BOUNDARY_FEATURES,
            schema.FEATURE_DTYPES,
            (count, self.feature_dim),
            f"feature_dim {self.feature_dim} of {schema.RUN_FILE}",
        ) or _array_problem(f, schema.BOUNDARY_PAIR, "iu", (count, 2), f"{count} boundary points")
        if problem:
            return problem
        pair = f[schema.BOUNDARY_PAIR][...]
        if pair.size and (pair.min() < 0 or pair.max() >= self.num_classes):
            return (
                f"dataset {schema.BOUNDARY_PAIR!r} names classes {int(pair.min())} to "
                f"{int(pair.max())}, outside the run's {self.num_classes} classes"
            )
        return None

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


def _metrics_problem(value: Any) -> str | None:
    """Why the ``metrics`` attribute is not a JSON object of numbers, or None when it is."""
    text = _plain(value)
    try:
        metrics = json.loads(text) if isinstance(text, str) else None
    except ValueError as exc:  # json.JSONDecodeError
        return f"attribute {schema.ATTR_METRICS!r} is not valid JSON ({exc}): {_shown(value)}"
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        return f"attribute {schema.ATTR_METRICS!r} is {_shown(value)}, not a JSON object of numbers"
    return None


def _plain(value: Any) -> Any:
    """h5py attribute values as plain Python values: str, int, float, bool, None or lists of
    them (bytes that are not UTF-8 keep their other characters; other values become text)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value[()])
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.void):
        return _plain(value.item()) if value.dtype.names else value.tobytes().hex()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


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
