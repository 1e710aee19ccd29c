"""TimeVisCallback: record a fixed set of samples' features, logits and head at every epoch."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from timevis_callback import schema
from timevis_callback.boundary import bisect, select_pairs
from timevis_callback.capture import (
    AUTO,
    HeadInfo,
    LogitsKey,
    capture_features,
    head_state,
    resolve_head,
    select_logits,
)
from timevis_callback.errors import CallbackConfigError, StoreError, one_line
from timevis_callback.samples import (
    UnpackItem,
    dataset_labels,
    default_unpack_item,
    iter_batches,
    make_thumbnails,
    random_transforms,
    stratified_subset,
)
from timevis_callback.writer import (
    Boundary,
    RunHeader,
    clear_store,
    remove_epochs_after,
    write_epoch,
    write_run,
)

log = logging.getLogger(__name__)

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_CACHE_LIMIT_BYTES = 1 << 30  # inputs of the tracked samples are kept in memory below this size
_BOUNDARY_ROUNDS = 3  # bisection rounds to reach the requested count (failed pairs are redrawn)


@dataclass
class _Tracked:
    """The tracked samples of one split: dataset, row indices into it, and their labels."""

    role: str  # "train" or "test"
    dataset: Any
    ids: np.ndarray
    labels: np.ndarray
    inputs: list[torch.Tensor] | None = None  # cached CPU input batches, after the first pass


class TimeVisCallback(Callback):
    """Record what timevis needs, every epoch, into a run store (see docs/store-format.md).

    Add it to a Trainer in one line: ``L.Trainer(callbacks=[TimeVisCallback()])``. When
    training starts it logs (INFO) the absolute path of the store; a script that configures no
    logging still sees timevis's INFO lines on stderr, as it does Lightning's.

    Args:
        dirpath: the run store folder; default ``<trainer.log_dir or default_root_dir>/timevis``.
        train_data, test_data: datasets of ``(input, label)`` items with eval transforms; by
            default the trainer's train dataset and first validation dataset.
        max_train_samples, max_test_samples: how many samples to track (stratified, seeded).
        feature_layer: ``"auto"`` (the input of the last ``nn.Linear``; of the one whose output
            is the logits when another runs after it) or a module name whose output is the
            feature vector.
        logits_key: where the logits are in what the model's forward returns: ``None`` (the
            output itself; a tuple or list's first item; a dict's or ``ModelOutput``'s
            ``"logits"``), an index (``1`` for ``(aux, logits)``), a key or attribute name, or a
            function ``output -> logits``.
        every_n_epochs: record after every n-th training epoch.
        record_initial: record epoch 0, before any training.
        boundary_fraction: boundary points per epoch, as a fraction of tracked train samples.
        boundary_l_bound: lower end of the mixing coefficient's bisection interval.
        weights: ``"full"`` stores the model's state_dict per epoch, ``"head"`` only the head.
        dtype: ``"float16"`` or ``"float32"`` storage of features.
        class_names: names of the classes; default the dataset's ``classes`` or ``"0"``, ``"1"``…
        batch_size: batch size of the recording passes.
        seed: seed of the sample subset and of the boundary pairs.
        thumbnails: store ≤32×32 thumbnails of image inputs (for hover in the viewer).
        unpack_item: ``item -> (input, label)`` for datasets of other item shapes.
        overwrite: replace a store of another run found in ``dirpath``.
        strict: raise when the store cannot be created or an epoch cannot be written,
            instead of reporting it once (an error log line naming the path and the fix)
            and training on without it.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        *,
        train_data: Any = None,
        test_data: Any = None,
        max_train_samples: int = 10_000,
        max_test_samples: int = 2_000,
        feature_layer: str = AUTO,
        logits_key: LogitsKey = None,
        every_n_epochs: int = 1,
        record_initial: bool = True,
        boundary_fraction: float = 0.1,
        boundary_l_bound: float = 0.5,
        weights: str = "full",
        dtype: str = "float16",
        class_names: Sequence[str] | None = None,
        batch_size: int = 256,
        seed: int = 0,
        thumbnails: bool = True,
        unpack_item: UnpackItem | None = None,
        overwrite: bool = False,
        strict: bool = False,
    ) -> None:
        self._dirpath_arg = dirpath
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.train_data = train_data
        self.test_data = test_data
        self.max_train_samples = max_train_samples
        self.max_test_samples = max_test_samples
        self.feature_layer = feature_layer
        self.logits_key = logits_key
        self.every_n_epochs = every_n_epochs
        self.record_initial = record_initial
        self.boundary_fraction = boundary_fraction
        self.boundary_l_bound = boundary_l_bound
        self.weights = weights
        self.dtype = dtype
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = batch_size
        self.seed = seed
        self.thumbnails = thumbnails
        self.unpack_item = unpack_item or default_unpack_item
        self.overwrite = overwrite
        self.strict = strict
        self._validate()

        self.run_id: str | None = None
        self.last_epoch: int | None = None
        self.failed_epochs: list[int] = []
        self.store_error: str | None = None  # why the store could not be created: record nothing
        self._resume_state: dict[str, Any] | None = None
        self._tracked: list[_Tracked] = []
        self._head: HeadInfo | None = None
        self._feature_module: torch.nn.Module | None = None
        self._warned: set[str] = set()
        # seconds per recorded epoch: feature pass, boundary search, writing (preparing the
        # arrays and the file); and the samples forwarded during the boundary search and the
        # forward passes they took (scripts/bench_callback.py reads these)
        self.timings: list[dict[str, float]] = []

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise CallbackConfigError(message)

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        need(
            is_int(self.max_train_samples) and self.max_train_samples > 0,
            f"max_train_samples={self.max_train_samples!r} must be an int > 0 "
            "(e.g. 10000: timevis fits its map on tracked training samples)",
        )
        need(
            is_int(self.max_test_samples) and self.max_test_samples >= 0,
            f"max_test_samples={self.max_test_samples!r} must be an int >= 0 (0 tracks no test samples)",
        )
        need(
            is_int(self.every_n_epochs) and self.every_n_epochs >= 1,
            f"every_n_epochs={self.every_n_epochs!r} must be an int >= 1",
        )
        need(
            isinstance(self.boundary_fraction, (int, float)) and 0 <= self.boundary_fraction <= 1,
            f"boundary_fraction={self.boundary_fraction!r} must be in [0, 1] (0 disables boundary points)",
        )
        need(
            isinstance(self.boundary_l_bound, (int, float)) and 0 <= self.boundary_l_bound < 1,
            f"boundary_l_bound={self.boundary_l_bound!r} must be in [0, 1) (0.5 by default)",
        )
        need(
            self.weights in ("full", "head"),
            f"weights={self.weights!r} must be 'full' (whole state_dict per epoch) or 'head'",
        )
        need(
            self.dtype in schema.FEATURE_DTYPES,
            f"dtype={self.dtype!r} must be one of {', '.join(schema.FEATURE_DTYPES)}",
        )
        need(
            is_int(self.batch_size) and self.batch_size > 0,
            f"batch_size={self.batch_size!r} must be an int > 0",
        )
        need(is_int(self.seed), f"seed={self.seed!r} must be an int")
        need(
            isinstance(self.feature_layer, str) and bool(self.feature_layer),
            f"feature_layer={self.feature_layer!r} must be 'auto' or a module name such as 'avgpool'",
        )
        need(
            self.logits_key is None
            or callable(self.logits_key)
            or (isinstance(self.logits_key, str) and bool(self.logits_key))
            or is_int(self.logits_key),
            f"logits_key={self.logits_key!r} must be None (forward's output, a tuple's first "
            "item or a dict's 'logits'), an int index, a str key or a function output -> logits",
        )
        need(callable(self.unpack_item), f"unpack_item={self.unpack_item!r} must be callable")
        if self.class_names is not None:
            need(
                all(isinstance(n, str) for n in self.class_names),
                f"class_names={self.class_names!r} must be a sequence of str",
            )
        for name in ("train_data", "test_data"):
            data = getattr(self, name)
            need(
                data is None or (hasattr(data, "__getitem__") and hasattr(data, "__len__")),
                f"{name}={type(data).__name__} must be a map-style dataset (with __getitem__ and "
                "__len__); wrap an iterable in a list or TensorDataset",
            )

    # --- decisions ------------------------------------------------------------------------
    def _should_skip(self, trainer: pl.Trainer) -> bool:
        if trainer.fast_dev_run:
            self._warn_once("fast_dev_run", "timevis: fast_dev_run is set; nothing is recorded")
            return True
        return trainer.sanity_checking or trainer.state.fn != "fit"

    def _should_record(self, epoch: int) -> bool:
        return epoch % self.every_n_epochs == 0 if epoch > 0 else self.record_initial

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # --- Lightning hooks ------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer):
            return
        resuming = self._resume_state is not None and trainer.ckpt_path is not None
        if self.dirpath is None:
            self.dirpath = Path(self._resume_state["dirpath"]) if resuming else (
                Path(trainer.log_dir or trainer.default_root_dir) / "timevis"
            )
        self.dirpath = Path(trainer.strategy.broadcast(str(self.dirpath), src=0))
        if not resuming:
            self.run_id = trainer.strategy.broadcast(uuid.uuid4().hex, src=0)
        if trainer.is_global_zero:
            _show_info_lines()
            log.info(
                "timevis: %s run %s in %s",
                "resuming" if resuming else "recording",
                self.run_id,
                self.dirpath.absolute(),
            )
        self._run_on_rank_zero(trainer, self._start, trainer, pl_module, resuming)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer):
            return
        epoch = trainer.current_epoch + 1
        if self._should_record(epoch):
            self._run_on_rank_zero(trainer, self._record, trainer, pl_module, epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.failed_epochs:
            log.warning(
                "timevis: epochs %s could not be written to %s (see the first error above)",
                self.failed_epochs,
                self.dirpath,
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "dirpath": str(self.dirpath) if self.dirpath is not None else None,
            "run_id": self.run_id,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = dict(state_dict)
        self.run_id = state_dict.get("run_id")
        self.last_epoch = state_dict.get("last_epoch")

    # --- rank-zero work ---------------------------------------------------------------------
    def _run_on_rank_zero(self, trainer: pl.Trainer, fn: Any, *args: Any) -> None:
        """Run ``fn`` on global rank 0; every rank then raises the same error, if any."""
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                fn(*args)
            except Exception as exc:  # re-raised below, on every rank
                error = exc
        if trainer.world_size > 1:
            shared = trainer.strategy.broadcast(
                None if error is None else f"{type(error).__name__}: {error}", src=0
            )
            if shared is not None and error is None:
                raise RuntimeError(f"timevis failed on rank 0: {shared}")
        if error is not None:
            raise error

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, resuming: bool) -> None:
        assert self.dirpath is not None  # set in on_train_start
        run_file = self.dirpath / schema.RUN_FILE
        if resuming:
            self._resume(trainer, pl_module)
            return
        if run_file.exists():
            if not self.overwrite:
                raise CallbackConfigError(
                    f"dirpath={str(self.dirpath)!r} already holds a timevis store of another run; "
                    "pass overwrite=True to replace it, or choose another dirpath"
                )
            log.warning("timevis: overwriting the store in %s", self.dirpath)
            try:
                clear_store(self.dirpath)
            except OSError as exc:
                self._store_failed(exc)
                return
        self._select_samples(trainer)
        self._resolve(trainer, pl_module)
        try:
            self._write_header(trainer, pl_module)
        except OSError as exc:
            self._store_failed(exc)
            return
        if self._should_record(0):
            self._record(trainer, pl_module, 0)

    def _store_failed(self, exc: OSError) -> None:
        """The store cannot be created: report once and record nothing (raise when strict)."""
        problem = f"timevis cannot create its store in {self.dirpath}: {self._why(exc)}"
        self.store_error = problem
        if self.strict:
            raise StoreError(problem) from exc
        log.error(
            "%s; training goes on without recording (pass strict=True to stop instead)", problem
        )

    def _why(self, exc: OSError) -> str:
        """What went wrong writing under dirpath, on one line, with the fix."""
        blocker = next(
            (p for p in (self.dirpath, *self.dirpath.parents) if p.exists() and not p.is_dir()), None
        )
        if blocker == self.dirpath:
            return f"{blocker} is a file, not a folder; pass dirpath= a folder"
        if blocker is not None:
            return f"{blocker} is a file, so no folder can be made under it; pass another dirpath="
        fix = {
            errno.ENOSPC: "free disk space or pass dirpath= on another disk",
            errno.EDQUOT: "free disk space or pass dirpath= on another disk",
            errno.EACCES: "fix the folder's permissions or pass another dirpath=",
            errno.EPERM: "fix the folder's permissions or pass another dirpath=",
            errno.EROFS: "the file system is read-only; pass dirpath= on a writable disk",
        }.get(_errno(exc), "free space, fix permissions or pass another dirpath=")
        return f"{one_line(exc)}; {fix}"

    def _resume(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from timevis_callback.reader import open_run

        run = open_run(self.dirpath)
        if run.run_id != self.run_id:
            raise StoreError(
                f"{run.run_file}: holds run {run.run_id}, but the checkpoint is of run "
                f"{self.run_id}; resume with the store the checkpoint was written with"
            )
        completed = trainer.current_epoch
        removed = remove_epochs_after(self.dirpath, completed)
        if removed:
            log.info("timevis: resuming after epoch %d; removed later epochs %s", completed, removed)
        datasets = self._datasets(trainer)
        self._tracked = []
        for role, code in schema.SPLIT_CODES.items():
            rows = run.samples.split == code
            if rows.any():
                dataset = datasets[role]
                ids = run.samples.id[rows]
                if dataset is None or len(dataset) <= int(ids.max()):
                    raise StoreError(
                        f"{run.run_file}: {role} sample ids go up to {int(ids.max())}, but the "
                        f"{role} dataset has {0 if dataset is None else len(dataset)} items"
                    )
                self._tracked.append(_Tracked(role, dataset, ids, run.samples.label[rows]))
        self._resolve(trainer, pl_module)
        if completed not in run.refresh() and self._should_record(completed):
            # the checkpoint was saved before this epoch was recorded: the weights are the same
            self._record(trainer, pl_module, completed)

    def _datasets(self, trainer: pl.Trainer) -> dict[str, Any]:
        train, test = self.train_data, self.test_data
        if train is None:
            loaders = trainer.train_dataloader
            train = getattr(loaders, "dataset", None)
            if train is None:
                raise CallbackConfigError(
                    f"the trainer's train dataloader ({type(loaders).__name__}) has no single "
                    "dataset; pass train_data= to TimeVisCallback"
                )
            randomness = random_transforms(train)
            if randomness:
                self._warn_once(
                    "train_aug",
                    "timevis: tracking the trainer's train dataset, whose transforms look random "
                    "(%s): each recorded epoch then sees other versions of the samples; pass "
                    "train_data= the same data with eval transforms",
                    ", ".join(randomness),
                )
        if test is None and self.max_test_samples > 0:
            if trainer.val_dataloaders is None:
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            loaders = trainer.val_dataloaders
            if isinstance(loaders, (list, tuple)):
                loaders = loaders[0] if loaders else None
            test = getattr(loaders, "dataset", None)
            if test is None:
                self._warn_once(
                    "no_test", "timevis: no validation dataset; pass test_data= to track test samples"
                )
        return {"train": train, "test": test if self.max_test_samples > 0 else None}

    def _select_samples(self, trainer: pl.Trainer) -> None:
        datasets = self._datasets(trainer)
        rng = np.random.default_rng(self.seed)
        limits = {"train": self.max_train_samples, "test": self.max_test_samples}
        self._tracked = []
        for role, dataset in datasets.items():
            if dataset is None:
                continue
            if len(dataset) == 0:
                raise CallbackConfigError(f"the {role} dataset is empty; pass {role}_data= with items")
            labels = dataset_labels(dataset, self.unpack_item, role)
            rows = stratified_subset(labels, limits[role], rng)
            self._tracked.append(_Tracked(role, dataset, rows, labels[rows]))
            log.info("timevis: tracking %d of %d %s samples", len(rows), len(dataset), role)

    def _resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the feature layer and head with one traced forward pass on two samples."""
        first = self._tracked[0]
        inputs, _ = next(
            iter_batches(first.dataset, first.ids[:2], 2, self.unpack_item, first.role)
        )
        with self._eval_mode(trainer, pl_module):
            self._head = resolve_head(
                pl_module,
                self.feature_layer,
                lambda: pl_module(self._to_device(trainer, pl_module, inputs)),
                self.logits_key,
            )
        self._feature_module = dict(pl_module.named_modules())[self._head.feature_layer]

    def _write_header(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._head is not None and self.run_id is not None
        names = self.class_names or getattr(self._tracked[0].dataset, "classes", None)
        num_classes = self._head.num_classes
        if names is None or len(names) != num_classes:
            if self.class_names is not None:
                raise CallbackConfigError(
                    f"class_names has {len(self.class_names)} names but the model outputs "
                    f"{num_classes} logits; pass {num_classes} names" + self._logits_hint()
                )
            names = [str(i) for i in range(num_classes)]
        labels = np.concatenate([t.labels for t in self._tracked])
        if labels.min() < 0 or labels.max() >= num_classes:
            raise CallbackConfigError(
                f"labels range over [{labels.min()}, {labels.max()}] but the model outputs "
                f"{num_classes} logits; labels must be class indices in [0, {num_classes})"
                + self._logits_hint()
            )
        thumbnails = self._thumbnails() if self.thumbnails else None
        header = RunHeader(
            run_id=self.run_id,
            feature_layer=self._head.feature_layer,
            feature_io="input" if self._head.from_input else "output",
            feature_dim=self._head.feature_dim,
            num_classes=num_classes,
            class_names=[str(n) for n in names],
            head_spec=self._head.spec,
            callback_config=self._config(),
            versions={
                "timevis": _timevis_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
            },
        )
        self.dirpath.mkdir(parents=True, exist_ok=True)
        write_run(
            self.dirpath,
            header,
            ids=np.concatenate([t.ids for t in self._tracked]),
            splits=np.concatenate(
                [np.full(len(t.ids), schema.SPLIT_CODES[t.role], np.uint8) for t in self._tracked]
            ),
            labels=labels,
            thumbnails=thumbnails,
        )

    def _logits_hint(self) -> str:
        """For a count of logits that does not fit: where they were taken from, when forward
        returns more than the logits and ``logits_key`` was not given."""
        assert self._head is not None
        if self.logits_key is not None or self._head.logits_from == "forward's output":
            return ""
        return (
            f" (the logits were taken from {self._head.logits_from}: if they are elsewhere, "
            "pass logits_key= their index or key)"
        )

    def _config(self) -> dict[str, Any]:
        return {
            "max_train_samples": self.max_train_samples,
            "max_test_samples": self.max_test_samples,
            "feature_layer": self.feature_layer,
            "logits_key": (
                self.logits_key
                if self.logits_key is None or isinstance(self.logits_key, (int, str))
                else getattr(self.logits_key, "__qualname__", repr(self.logits_key))
            ),
            "every_n_epochs": self.every_n_epochs,
            "record_initial": self.record_initial,
            "boundary_fraction": self.boundary_fraction,
            "boundary_l_bound": self.boundary_l_bound,
            "weights": self.weights,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def _thumbnails(self) -> np.ndarray | None:
        parts = []
        for tracked in self._tracked:
            for inputs, _ in iter_batches(
                tracked.dataset, tracked.ids, self.batch_size, self.unpack_item, tracked.role
            ):
                thumbs = make_thumbnails(inputs)
                if thumbs is None:
                    return None
                parts.append(thumbs)
        return np.concatenate(parts)

    # --- the recording pass ---------------------------------------------------------------
    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if self.store_error is not None:
            return  # reported once when the store could not be created
        started = time.perf_counter()
        with self._eval_mode(trainer, pl_module):
            features, logits = self._feature_pass(trainer, pl_module)
            featured = time.perf_counter()
            boundary, forwarded, passes = self._boundary(trainer, pl_module, logits, epoch)
        computed = time.perf_counter()
        # everything from here on is the cost of writing: the arrays to store, then the file
        stored = self._storage_dtype(features, epoch)
        head_arrays = head_state(self._head.spec, self._head.head_modules)
        weights = None
        if self.weights == "full":
            weights = {
                k: _to_numpy(v) for k, v in pl_module.state_dict().items() if isinstance(v, torch.Tensor)
            }
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _is_scalar(v)}
        try:
            write_epoch(
                self.dirpath,
                epoch,
                features=features.numpy().astype(stored),
                logits=logits.numpy(),
                head_state=head_arrays,
                global_step=trainer.global_step,
                metrics=metrics,
                boundary=None
                if boundary is None
                else Boundary(boundary.features.astype(stored), boundary.pair),
                weights=weights,
            )
        except OSError as exc:
            self._write_failed(epoch, exc)
            return
        self.last_epoch = epoch
        timing = {
            "epoch": epoch,
            "features": featured - started,
            "boundary": computed - featured,
            "write": time.perf_counter() - computed,
            "boundary_forwarded": forwarded,
            "boundary_passes": passes,
        }
        self.timings.append(timing)
        log.debug("timevis: epoch %d recorded %s", epoch, timing)

    def _write_failed(self, epoch: int, exc: OSError) -> None:
        self.failed_epochs.append(epoch)
        if self.strict:
            raise StoreError(
                f"timevis could not write epoch {epoch} to {self.dirpath}: {self._why(exc)}"
            ) from exc
        if len(self.failed_epochs) == 1:
            log.error(
                "timevis could not write epoch %d to %s: %s; training goes on without it "
                "(pass strict=True to stop instead; once fixed, the next epochs are recorded)",
                epoch,
                self.dirpath,
                self._why(exc),
            )
        else:
            log.debug("timevis could not write epoch %d: %s", epoch, one_line(exc))

    def _storage_dtype(self, features: torch.Tensor, epoch: int) -> str:
        if self.dtype == "float16" and features.numel():
            peak = float(features.abs().max())
            if math.isfinite(peak) and peak > _FLOAT16_MAX:
                log.warning(
                    "timevis: epoch %d features reach %.3g, beyond float16's range; stored as "
                    "float32 (pass dtype='float32' to always do so)",
                    epoch,
                    peak,
                )
                return "float32"
        return self.dtype

    def _feature_pass(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features float32 (n, D) and logits float32 (n, C) of all tracked samples, on the CPU."""
        features, logits = [], []
        for tracked in self._tracked:
            for inputs in self._inputs(tracked):
                out, feats = self._forward(trainer, pl_module, inputs)
                features.append(feats.float().cpu())
                logits.append(out.float().cpu())
        return torch.cat(features), torch.cat(logits)

    def _inputs(self, tracked: _Tracked) -> list[torch.Tensor]:
        """The tracked samples' input batches, read once and cached when they fit in memory."""
        if tracked.inputs is not None:
            return tracked.inputs
        batches = [
            x
            for x, _ in iter_batches(
                tracked.dataset, tracked.ids, self.batch_size, self.unpack_item, tracked.role
            )
        ]
        size = sum(b.element_size() * b.numel() for b in batches)
        if size <= _CACHE_LIMIT_BYTES:
            tracked.inputs = batches
        else:
            self._warn_once(
                "no_cache",
                "timevis: %s inputs take %.1f GB; they are re-read every epoch",
                tracked.role,
                size / 1e9,
            )
        return batches

    def _forward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._head is not None and self._feature_module is not None
        with capture_features(self._feature_module, self._head.from_input) as captured:
            out = select_logits(
                pl_module(self._to_device(trainer, pl_module, inputs)), self.logits_key
            )
        return out, captured[0]

    def _boundary(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, logits: torch.Tensor, epoch: int
    ) -> tuple[Boundary | None, int, int]:
        """The epoch's boundary points (None when there are none), samples forwarded, passes."""
        train = next((t for t in self._tracked if t.role == "train"), None)
        wanted = int(round(self.boundary_fraction * (len(train.ids) if train else 0)))
        if wanted == 0:
            return None, 0, 0
        inputs = torch.cat(self._inputs(train))
        if not inputs.is_floating_point():
            self._warn_once(
                "boundary_dtype",
                "timevis: inputs are %s, not floating point, so they cannot be mixed; boundary "
                "points are skipped (pass boundary_fraction=0 to silence this)",
                inputs.dtype,
            )
            return None, 0, 0
        train_logits = logits[: len(train.ids)].numpy()
        if len(np.unique(train_logits.argmax(axis=1))) < 2:
            log.warning("timevis: epoch %d predicts one class only; no boundary points", epoch)
            return None, 0, 0
        rng = np.random.default_rng([self.seed, epoch])
        found_feats: list[torch.Tensor] = []
        found_pairs: list[np.ndarray] = []
        found = attempted = forwarded = passes = 0
        for _ in range(_BOUNDARY_ROUNDS):
            # size each round by the success rate so far: a direction whose boundary lies
            # beyond l_bound cannot be reached, so about half the candidates fail
            rate = max(found / attempted, 0.1) if attempted else 0.5
            n_pairs = min(math.ceil((wanted - found) / (2 * rate)), 2 * wanted)
            a, b, pairs = select_pairs(train_logits, n_pairs, rng)
            source = torch.cat([inputs[a], inputs[b]])
            target = torch.cat([inputs[b], inputs[a]])
            result = bisect(
                lambda x: self._forward(trainer, pl_module, x),
                source,
                target,
                np.concatenate([pairs[:, 0], pairs[:, 1]]),
                np.concatenate([pairs[:, 1], pairs[:, 0]]),
                l_bound=self.boundary_l_bound,
                batch_size=self.batch_size,
            )
            found_feats.append(result.features.float().cpu())
            found_pairs.append(result.pair)
            found += len(result.pair)
            attempted += result.attempted
            forwarded += result.forwarded
            passes += result.passes
            if found >= wanted:
                break
        if not found:
            log.warning("timevis: epoch %d: no boundary point found", epoch)
            return None, forwarded, passes
        features = torch.cat([f for f in found_feats if len(f)])[:wanted]
        log.debug("timevis: epoch %d: %d of %d boundary points", epoch, len(features), wanted)
        return Boundary(features.numpy(), np.concatenate(found_pairs)[:wanted]), forwarded, passes

    # --- helpers ----------------------------------------------------------------------------
    def _to_device(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: torch.Tensor
    ) -> torch.Tensor:
        x = inputs.to(pl_module.device, non_blocking=True)
        return trainer.precision_plugin.convert_input(x) if x.is_floating_point() else x

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self._dirpath_arg))

    @staticmethod
    @contextmanager
    def _eval_mode(trainer: pl.Trainer, module: torch.nn.Module) -> Iterator[None]:
        """eval(), no_grad and the trainer's precision context; restores every module's mode."""
        modes = {m: m.training for m in module.modules()}
        module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                yield
        finally:
            for m, mode in modes.items():
                m.train(mode)


def _errno(exc: OSError) -> int | None:
    """The errno of an OSError, also when HDF5 reports it only in its text (h5py raises
    ``OSError: [Errno 28] Unable to synchronously create file (... errno = 28 ...)``)."""
    if exc.errno is not None:
        return exc.errno
    match = re.search(r"errno = (\d+)", str(exc))
    return int(match.group(1)) if match else None


def _show_info_lines() -> None:
    """Let a plain training script see timevis's INFO lines (where the store goes, what is
    tracked), as Lightning does for its own: when no logging is configured at all, timevis's
    logger gets its own stderr handler. A script or tool that configures logging decides."""
    package = logging.getLogger("timevis_callback")
    if not package.hasHandlers():
        package.addHandler(logging.StreamHandler())
        package.setLevel(logging.INFO)
        package.propagate = False


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timevis_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("timevis")
    except PackageNotFoundError:
        return "0+unknown"
