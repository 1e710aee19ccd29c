"""The tracked samples: which items of a dataset are followed, and how their inputs are read.

Items are read with ``dataset[i]`` in fixed batches (no DataLoader, so no draw from the global
random state: the callback never changes the user's training randomness).
"""

from __future__ import annotations

import inspect
import logging
import re
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from timevis_callback.errors import CallbackConfigError
from timevis_callback.schema import THUMBNAIL_MAX_SIZE

log = logging.getLogger(__name__)

UnpackItem = Callable[[Any], tuple[Any, Any]]
_INPUT_KEYS = ("input", "inputs", "image", "images", "x", "data", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def default_unpack_item(item: Any) -> tuple[Any, Any]:
    """``(input, label)`` of a dataset item: a tuple/list (first two entries) or a dict."""
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, dict):
        x = next((item[k] for k in _INPUT_KEYS if k in item), None)
        y = next((item[k] for k in _LABEL_KEYS if k in item), None)
        if x is not None and y is not None:
            return x, y
        raise TypeError(
            f"dict item with keys {sorted(item)} has no input key ({'/'.join(_INPUT_KEYS)}) "
            f"or no label key ({'/'.join(_LABEL_KEYS)})"
        )
    raise TypeError(f"item of type {type(item).__name__} is not an (input, label) pair")


def unpack(dataset: Any, index: int, unpack_item: UnpackItem, role: str) -> tuple[Any, int]:
    """``(input, int label)`` of ``dataset[index]``, with an error that says how to adapt."""
    item = dataset[index]
    try:
        x, y = unpack_item(item)
        label = int(y.item() if isinstance(y, (torch.Tensor, np.ndarray)) else y)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise CallbackConfigError(
            f"{role} item {index} cannot be read as (input, label): {exc}; pass "
            "unpack_item=lambda item: (item[...], item[...]) to TimeVisCallback to adapt it"
        ) from exc
    return x, label


def dataset_labels(dataset: Any, unpack_item: UnpackItem, role: str) -> np.ndarray:
    """int64 labels of every item of ``dataset`` (from ``targets``/``labels`` when present)."""
    n = len(dataset)
    fast = unpack_item is default_unpack_item  # a custom unpack_item decides what a label is
    if fast and isinstance(dataset, torch.utils.data.Subset):
        parent = dataset_labels(dataset.dataset, unpack_item, role)
        return parent[np.asarray(dataset.indices, dtype=np.int64)]
    if (
        fast
        and isinstance(dataset, torch.utils.data.TensorDataset)
        and len(dataset.tensors) >= 2
        and dataset.tensors[1].numel() == n  # (n,) or (n, 1); one-hot labels are read per item
    ):
        return np.asarray(dataset.tensors[1].reshape(n).cpu().numpy(), dtype=np.int64)
    for attr in ("targets", "labels") if fast else ():
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            try:
                array = np.asarray(
                    values.cpu().numpy() if isinstance(values, torch.Tensor) else values
                )
            except (TypeError, ValueError):
                continue
            if array.shape == (n,) and np.issubdtype(array.dtype, np.integer):
                return array.astype(np.int64)
    log.info("timevis: reading the labels of %d %s items one by one", n, role)
    return np.array([unpack(dataset, i, unpack_item, role)[1] for i in range(n)], dtype=np.int64)


_RANDOM_NAME = re.compile(
    r"random|augment|augmix|jitter|erasing|noise|mixup|cutmix|elastic|blur|dropout", re.IGNORECASE
)
_TRANSFORM_ATTRS = ("transform", "transforms", "augment", "augmentation", "augmentations")


def random_transforms(dataset: Any) -> list[str]:
    """Names of the transforms of ``dataset`` that look random, so that its items differ at
    every read: classes or functions named like torchvision's and albumentations' random
    transforms (``RandomCrop``, ``ColorJitter``, ``RandAugment``, ``GaussianBlur``, ...) and
    transforms applied with a probability ``p`` below 1. Looks through wrapping datasets
    (``.dataset``, ``.datasets``: Subset, ConcatDataset) and composed transforms
    (``.transforms``, ``nn.Sequential``, lists). A plain ``TensorDataset`` has none; a custom
    callable is not inspected."""
    found: list[str] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > 8 or id(obj) in seen or isinstance(obj, (str, bytes)):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
            return
        if callable(obj) and not _is_dataset(obj):
            plain = isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type))
            name = obj.__name__ if plain else type(obj).__name__
            p = _static(obj, "p")
            chance = isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p < 1
            if (_RANDOM_NAME.search(name) or chance) and name not in found:
                found.append(name)
        if isinstance(obj, torch.nn.Module):
            for child in obj.children():
                visit(child, depth + 1)
        for attr in (*_TRANSFORM_ATTRS, "dataset", "datasets", "func"):
            child = _static(obj, attr)
            if child is not None and not isinstance(child, (torch.Tensor, np.ndarray)):
                visit(child, depth + 1)

    visit(dataset, 0)
    return found


def _static(obj: Any, name: str) -> Any:
    """``obj.name`` without running a property or ``__getattr__`` (None when absent): looking
    for transforms must not have side effects on the user's dataset."""
    value = inspect.getattr_static(obj, name, None)
    return None if isinstance(value, (property, staticmethod, classmethod)) else value


def _is_dataset(obj: Any) -> bool:
    return _static(obj, "__getitem__") is not None and _static(obj, "__len__") is not None


def stratified_subset(labels: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of at most ``max_samples`` items, classes in their proportions.

    All indices when there are no more than ``max_samples``; otherwise each class gets its share
    by largest remainder, drawn without replacement.
    """
    n = len(labels)
    if n <= max_samples:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (max_samples / n)
    take = np.floor(exact).astype(np.int64)
    short = max_samples - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
        if t > 0
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


def iter_batches(
    dataset: Any, indices: Sequence[int], batch_size: int, unpack_item: UnpackItem, role: str
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield ``(inputs, labels)`` batches of the given items, in order."""
    for start in range(0, len(indices), batch_size):
        pairs = [unpack(dataset, int(i), unpack_item, role) for i in indices[start : start + batch_size]]
        try:
            inputs = torch.stack([_as_tensor(x) for x, _ in pairs])
        except (RuntimeError, TypeError) as exc:
            raise CallbackConfigError(
                f"{role} inputs cannot be stacked into a batch ({exc}); pass unpack_item= to "
                "return one tensor input of a fixed shape per item"
            ) from exc
        yield inputs, np.array([y for _, y in pairs], dtype=np.int64)


def make_thumbnails(inputs: torch.Tensor) -> np.ndarray | None:
    """uint8 thumbnails (n, h, w) or (n, h, w, 3), at most 32×32, of image inputs; else None.

    Images are (n, C, H, W) with C in {1, 3} or (n, H, W) with H, W >= 8; each is min-max scaled.
    """
    x = inputs.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape[2:]) < 8:
        return None
    h, w = x.shape[2:]
    scale = min(1.0, THUMBNAIL_MAX_SIZE / max(h, w))
    size = (max(1, int(h * scale)), max(1, int(w * scale)))
    if size != (h, w):
        x = F.adaptive_avg_pool2d(x, size)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - low) / (high - low).clamp_min(1e-12) * 255.0).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x
