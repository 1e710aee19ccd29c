"""The units of a run store's feature layer over its epochs: read, described, embedded.

Reads a fixed, seeded, label-stratified subset of the tracked samples' features at every chosen
epoch (through :meth:`~timevis_callback.reader.Run.feature_reader`, a block of epochs at a
time), measures each unit's preferred class and selectivity per epoch, z-scores each unit's
activations per epoch and embeds the units with M-PHATE (:mod:`timevis_cli.units.mphate`).
Returns values; writes nothing (see :mod:`timevis_cli.units.outputs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timevis_callback.reader import Run, format_epochs
from timevis_cli.errors import InputError
from timevis_cli.ranges import parse_range
from timevis_cli.units.mphate import Embedding, MPhateSettings, embed_units, zscore_units

log = logging.getLogger(__name__)

__all__ = [
    "NO_PREFERENCE",
    "SELECTIVITY_FORMULA",
    "Units",
    "class_preference",
    "compute_units",
    "select_epochs",
    "stratified_rows",
]

NO_PREFERENCE = -1  # a unit constant over the samples at an epoch prefers no class
SPLIT_CHOICES = ("train", "test", "both")
EPOCH_BLOCK = 16  # epochs read from the store at once
SELECTIVITY_FORMULA = (
    "(m_max - m_rest) / (|m_max| + |m_rest|): m_max the unit's largest mean activation over "
    "the classes of the sampled samples, m_rest its mean over the other classes; 0 when both "
    "are 0; in [0, 1], the class selectivity index for non-negative (ReLU) activations"
)


def select_epochs(run: Run, text: str | None = None) -> list[int]:
    """The epochs an ``--epochs RANGE`` chooses among the store's readable ones (every
    readable epoch without one, epoch 0 included: the units before training are where they
    start)."""
    if not run.epochs:
        broken = f"; unreadable: {format_epochs(sorted(run.bad_epochs))}" if run.bad_epochs else ""
        raise InputError(
            f"{run.path} holds no readable epoch{broken}; record at least one epoch with "
            "TimeVisCallback (or re-copy the epoch files)"
        )
    if text is None:
        return list(run.epochs)
    return parse_range(text, run.epochs, run.bad_epochs)


def stratified_rows(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``count`` of ``labels``, each class in its proportion
    (largest remainder), drawn without replacement with ``seed``; all when there are no more.
    (The recorder's ``timevis_callback.samples.stratified_subset`` draws alike; it imports torch,
    which the unit view does not need.)"""
    labels = np.asarray(labels)
    n = len(labels)
    if n <= count:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, 7])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (count / n)
    take = np.floor(exact).astype(np.int64)
    short = count - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
        if t > 0
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def class_preference(
    activations: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(preferred class ``[E, U]`` int16, selectivity ``[E, U]`` float32) of ``activations``
    ``[E, S, U]`` over samples of ``labels`` ``[S]``.

    The preferred class is the argmax of the unit's mean activation per class (classes with a
    sample only); :data:`NO_PREFERENCE` where the unit is constant over the samples (a dead
    ReLU: its selectivity is 0). Selectivity: :data:`SELECTIVITY_FORMULA`.
    """
    x = np.asarray(activations, dtype=np.float32)
    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) == 0 or present.min() < 0 or present.max() >= num_classes:
        raise InputError(f"labels must lie in 0..{num_classes - 1}; got {present.tolist()}")
    means = np.stack([x[:, labels == c, :].mean(axis=1) for c in present], axis=1)  # [E, C', U]
    best = np.argmax(means, axis=1)
    top = np.take_along_axis(means, best[:, None, :], axis=1)[:, 0, :]
    if len(present) > 1:
        rest = (means.sum(axis=1) - top) / (len(present) - 1)
    else:
        rest = top
    denominator = np.abs(top) + np.abs(rest)
    with np.errstate(divide="ignore", invalid="ignore"):
        selectivity = np.where(denominator > 0, (top - rest) / denominator, 0.0)
    preferred = present[best].astype(np.int16)
    constant = np.ptp(x, axis=1) <= 1e-12 * (1.0 + np.abs(x).max(axis=1))
    preferred[constant] = NO_PREFERENCE
    selectivity[constant] = 0.0
    return preferred, selectivity.astype(np.float32)


@dataclass
class Units:
    """The units of one run over its chosen epochs: positions and class preference."""

    run_id: str
    epochs: list[int]
    class_names: list[str]
    feature_layer: str
    positions: np.ndarray  # [E, U, 2] float32
    preferred: np.ndarray  # [E, U] int16, NO_PREFERENCE for a constant unit
    selectivity: np.ndarray  # [E, U] float32 in [0, 1]
    split: str  # the samples' split: train, test or both
    sample_rows: np.ndarray  # [S] the samples' rows in the store
    sample_ids: np.ndarray  # [S] their ids in their split
    sample_splits: np.ndarray  # [S] their split, "train" or "test"
    sample_labels: np.ndarray  # [S]
    embedding: Embedding
    settings: MPhateSettings
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return self.positions.shape[1]

    def displacement(self) -> np.ndarray:
        """``[E]``: the units' mean 2-D step from the epoch before (NaN at the first)."""
        out = np.full(len(self.epochs), np.nan)
        if len(self.epochs) > 1:
            steps = np.linalg.norm(np.diff(self.positions.astype(np.float64), axis=0), axis=2)
            out[1:] = steps.mean(axis=1)
        return out

    def preference_changes(self) -> np.ndarray:
        """``[E]``: how many units prefer another class than at the epoch before (0 at the
        first; a unit with no preference at either epoch is not counted)."""
        out = np.zeros(len(self.epochs), np.int64)
        if len(self.epochs) > 1:
            before, after = self.preferred[:-1], self.preferred[1:]
            counted = (before != NO_PREFERENCE) & (after != NO_PREFERENCE)
            out[1:] = ((before != after) & counted).sum(axis=1)
        return out

    def preference_counts(self) -> np.ndarray:
        """``[E, C]``: how many units prefer each class at each epoch."""
        counts = np.zeros((len(self.epochs), len(self.class_names)), np.int64)
        for index, row in enumerate(self.preferred):
            kept = row[row != NO_PREFERENCE]
            counts[index] = np.bincount(kept, minlength=len(self.class_names))
        return counts


def compute_units(
    run: Run,
    epochs: list[int],
    *,
    samples: int = 500,
    split: str = "train",
    settings: MPhateSettings | None = None,
    on_epochs: Callable[[int], Any] | None = None,
) -> Units:
    """M-PHATE of every unit of ``run``'s feature layer over ``epochs``, each unit described
    by its activations over ``samples`` tracked samples of ``split`` (train, test or both),
    stratified by label and drawn with ``settings.seed``. ``on_epochs(n)`` is called after each
    block of ``n`` epochs read."""
    settings = settings or MPhateSettings()
    if not isinstance(samples, (int, np.integer)) or samples < 2:
        raise InputError(
            f"--samples {samples}: need at least 2 samples to describe a unit, e.g. 500"
        )
    if split not in SPLIT_CHOICES:
        raise InputError(f"split={split!r} must be one of {', '.join(SPLIT_CHOICES)}")
    if not epochs:
        raise InputError("no epochs chosen; pass --epochs with at least one recorded epoch")
    mask = np.ones(len(run.samples), bool) if split == "both" else run.samples.mask(split)
    candidates = np.flatnonzero(mask)
    if len(candidates) < 2:
        other = "test" if split == "train" else "train"
        raise InputError(
            f"{run.path} tracks {len(candidates)} {split} sample(s); need at least 2 "
            f"(try --split {other} or both)"
        )
    rows = candidates[stratified_rows(run.samples.label[candidates], samples, settings.seed)]
    labels = run.samples.label[rows]
    n_units = run.feature_dim
    if n_units < 2:
        raise InputError(f"the feature layer of {run.path} has {n_units} unit; need at least 2")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    described = np.empty((len(epochs), n_units, len(rows)), np.float32)
    preferred = np.empty((len(epochs), n_units), np.int16)
    selectivity = np.empty((len(epochs), n_units), np.float32)
    for start in range(0, len(epochs), EPOCH_BLOCK):
        block = list(epochs[start : start + EPOCH_BLOCK])
        with run.feature_reader(block) as reader:
            values = reader.read(rows, np.float32)  # [e, S, U]
        finite = np.isfinite(values).all(axis=(1, 2))
        if not finite.all():
            bad = [epoch for epoch, ok in zip(block, finite, strict=True) if not ok]
            raise InputError(
                f"{run.path}: the features of epoch(s) {format_epochs(bad)} hold NaN or "
                "infinite values; leave them out with --epochs"
            )
        stop = start + len(block)
        preferred[start:stop], selectivity[start:stop] = class_preference(
            values, labels, run.num_classes
        )
        described[start:stop] = zscore_units(values)
        if on_epochs is not None:
            on_epochs(len(block))
    seconds["read"] = round(time.perf_counter() - started, 3)
    log.info(
        "units: %d units x %d epochs described by %d %s samples (read in %.1f s)",
        n_units, len(epochs), len(rows), split, seconds["read"],
    )  # fmt: skip
    embedding = embed_units(described, settings)
    seconds.update(embedding.seconds)
    from timevis_callback import schema

    names = {code: name for name, code in schema.SPLIT_CODES.items()}
    return Units(
        run_id=run.run_id,
        epochs=list(epochs),
        class_names=list(run.class_names),
        feature_layer=run.feature_layer,
        positions=embedding.positions,
        preferred=preferred,
        selectivity=selectivity,
        split=split,
        sample_rows=rows,
        sample_ids=run.samples.id[rows],
        sample_splits=np.array([names[int(code)] for code in run.samples.split[rows]]),
        sample_labels=labels,
        embedding=embedding,
        settings=settings,
        seconds=seconds,
    )
