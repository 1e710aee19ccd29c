"""Baseline maps scored exactly as ``timevis eval`` scores a fit (tests import it as ``baselines``).

:class:`Embedded` is shaped like :class:`~timevis_cli.fit.io.LoadedFit`, so
:func:`timevis_cli.evaluate.loop.evaluate` scores a timevis fit held in memory or a baseline map the
same way. :class:`LinearMap` is a linear 2-D map with its inverse (a global PCA, a random
projection); :func:`embed_linear` projects every epoch of a run store with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timevis_callback.reader import Run


class LinearMap:
    """``transform(x) = (x - mean) @ forward.T``, ``inverse_transform(y) = y @ backward.T + mean``.

    forward: [2, D]; backward: [D, 2] (default: ``forward.T``, the inverse for orthonormal rows);
    mean: [D] (default 0). Shaped like :class:`~timevis_cli.fit.pipeline.FitModel` for ``evaluate``.
    """

    device = "cpu"

    def __init__(
        self,
        forward: np.ndarray,
        backward: np.ndarray | None = None,
        mean: np.ndarray | None = None,
    ) -> None:
        self.forward = np.asarray(forward, np.float64)
        self.backward = self.forward.T if backward is None else np.asarray(backward, np.float64)
        self.mean = (
            np.zeros(self.forward.shape[1]) if mean is None else np.asarray(mean, np.float64)
        )

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) @ self.forward.T).astype(np.float32)

    def inverse_transform(self, y: np.ndarray, epoch: int | None = None) -> np.ndarray:
        return (np.asarray(y, np.float64) @ self.backward.T + self.mean).astype(np.float32)


def global_pca(features: Sequence[np.ndarray]) -> LinearMap:
    """The first two principal axes of all the given feature arrays stacked (one per epoch)."""
    stacked = np.concatenate([np.asarray(f, np.float64) for f in features])
    mean = stacked.mean(axis=0)
    _, _, vh = np.linalg.svd(stacked - mean, full_matrices=False)
    return LinearMap(vh[:2], mean=mean)


def random_projection(dim: int, seed: int = 0) -> LinearMap:
    """A fixed seeded Gaussian ``dim -> 2`` matrix; its pseudo-inverse is the inverse map."""
    forward = np.random.default_rng(seed).standard_normal((2, dim))
    return LinearMap(forward, backward=np.linalg.pinv(forward))


@dataclass
class Embedded:
    """A fitted map shaped like :class:`~timevis_cli.fit.io.LoadedFit`, for ``evaluate``."""

    model: object
    run_id: str
    epochs: list[int]
    train: np.ndarray  # [E, n_train, 2]
    test: np.ndarray  # [E, n_test, 2]
    boundary: list[np.ndarray]  # per epoch [B, 2]
    boundary_features: list[np.ndarray]  # per epoch [B, D]
    path: Path = field(default=Path("."))

    def embedding(self, epoch: int) -> dict[str, np.ndarray]:
        i = self.epochs.index(epoch)
        features = np.asarray(self.boundary_features[i], np.float32)
        return {
            "train": self.train[i],
            "test": self.test[i],
            "boundary": self.boundary[i],
            "boundary_features": features,
            "boundary_pair": np.zeros((len(features), 2), np.int64),
        }


def embed_linear(
    run: Run, linear: LinearMap, epochs: Sequence[int], boundary_features: Sequence[np.ndarray]
) -> Embedded:
    """Every epoch's train and test features of ``run``, and that epoch's boundary points (the
    fit's, so both maps are scored against the same ones), projected with ``linear``."""
    train, test = run.samples.mask("train"), run.samples.mask("test")
    positions = {"train": [], "test": []}
    for epoch in epochs:
        features = run.features(epoch).astype(np.float64)
        positions["train"].append(linear.transform(features[train]))
        positions["test"].append(linear.transform(features[test]))
    return Embedded(
        linear,
        run.run_id,
        list(epochs),
        np.stack(positions["train"]),
        np.stack(positions["test"]),
        [linear.transform(b) for b in boundary_features],
        [np.asarray(b, np.float32) for b in boundary_features],
    )
