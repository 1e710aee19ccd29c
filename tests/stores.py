"""Small synthetic run stores written with the real writer (for fit, render and eval tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from timevis_callback.writer import Boundary, RunHeader, write_epoch, write_run


def drifting_clusters(
    path: Path,
    *,
    n_train: int = 300,
    n_test: int = 60,
    dim: int = 16,
    classes: int = 3,
    epochs: int = 5,
    drift: float = 1.5,
    boundary: bool = False,
    seed: int = 0,
    one_class: bool = False,
) -> Path:
    """A store whose class clusters separate and drift over the epochs.

    Train sample 0 never moves in feature space (its row is the same in every epoch). The head
    is a Linear layer scoring each class by its current centre. With ``boundary=True`` each
    epoch stores midpoints between samples of two classes as input-space boundary points.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = np.zeros(n, np.int64) if one_class else rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)) * 3
    direction = rng.normal(size=(classes, dim))
    # each class lies near its own random 2-D plane, so neighbourhoods are low-dimensional
    planes = rng.normal(size=(classes, 2, dim)) / np.sqrt(dim) * 2
    latent = rng.normal(size=(n, 2))
    noise = np.einsum("nk,nkd->nd", latent, planes[labels]) + 0.05 * rng.normal(size=(n, dim))
    header = RunHeader(
        run_id=f"synthetic-{seed}",
        feature_layer="fc",
        feature_io="input",
        feature_dim=dim,
        num_classes=classes,
        class_names=[f"class {c}" for c in range(classes)],
        head_spec=[
            {"type": "Linear", "name": "fc", "in_features": dim, "out_features": classes, "bias": True}
        ],
    )
    write_run(
        path,
        header,
        ids=np.r_[np.arange(n_train), np.arange(n_test)],
        splits=np.r_[np.zeros(n_train), np.ones(n_test)],
        labels=labels,
    )
    stationary = None
    for epoch in range(epochs):
        spread = 1.0 / (1 + 0.5 * epoch)  # clusters tighten as "training" goes on
        now = centres + drift * epoch * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        features = now[labels] + spread * noise
        if stationary is None:
            stationary = features[0].copy()
        features[0] = stationary
        weight = now
        bias = -0.5 * (now**2).sum(axis=1)  # logits = -|x - c|^2 / 2 + const
        logits = features @ weight.T + bias
        stored_boundary = None
        if boundary:
            a = rng.integers(0, n_train, 40)
            b = rng.integers(0, n_train, 40)
            keep = labels[a] != labels[b]
            mids = 0.5 * (features[a[keep]] + features[b[keep]])
            pairs = np.stack([labels[a[keep]], labels[b[keep]]], axis=1)
            stored_boundary = Boundary(mids.astype(np.float16), pairs)
        write_epoch(
            path,
            epoch,
            features=features.astype(np.float32),
            logits=logits,
            head_state={"0.weight": weight, "0.bias": bias},
            boundary=stored_boundary,
            metrics={"val_acc": min(1.0, 0.5 + 0.1 * epoch)} if epoch else {},
        )
    return path
