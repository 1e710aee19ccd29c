"""Tests of the tracked samples: stratified subsets, labels, item unpacking, batches, thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from timevis_callback.errors import CallbackConfigError
from timevis_callback.samples import (
    dataset_labels,
    default_unpack_item,
    iter_batches,
    make_thumbnails,
    random_transforms,
    stratified_subset,
    unpack,
)

# --- stratified_subset --------------------------------------------------------------------


def imbalanced_labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), [400, 250, 200, 101, 49])
    return rng.permutation(labels)


def test_subset_is_everything_when_small_enough() -> None:
    labels = np.array([2, 0, 1, 1])
    for max_samples in (4, 10):
        got = stratified_subset(labels, max_samples, np.random.default_rng(0))
        np.testing.assert_array_equal(got, [0, 1, 2, 3])
        assert got.dtype == np.int64


@pytest.mark.parametrize("max_samples", [1, 7, 100, 333, 999])
def test_subset_size_proportions_and_order(max_samples: int) -> None:
    labels = imbalanced_labels()
    got = stratified_subset(labels, max_samples, np.random.default_rng(1))
    assert got.dtype == np.int64 and len(got) == max_samples
    assert len(np.unique(got)) == max_samples
    assert np.all(np.diff(got) > 0)  # sorted, no repeats
    assert got.min() >= 0 and got.max() < len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    chosen = labels[got]
    for c, count in zip(classes, counts, strict=True):
        expected = count * max_samples / len(labels)
        assert abs((chosen == c).sum() - expected) < 1, (c, (chosen == c).sum(), expected)


def test_subset_is_seeded() -> None:
    labels = imbalanced_labels()
    first = stratified_subset(labels, 100, np.random.default_rng(5))
    again = stratified_subset(labels, 100, np.random.default_rng(5))
    other = stratified_subset(labels, 100, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


# --- dataset_labels -----------------------------------------------------------------------


class TargetsDataset(Dataset):
    """A dataset with a ``targets`` list whose items must not be read to get the labels."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        raise AssertionError("labels should come from .targets, not from items")


def test_labels_of_tensor_dataset() -> None:
    y = torch.tensor([3, 1, 4, 1, 5])
    dataset = TensorDataset(torch.zeros(5, 2), y)
    got = dataset_labels(dataset, default_unpack_item, "train")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [3, 1, 4, 1, 5])
    # labels stored as (n, 1) too
    column = TensorDataset(torch.zeros(5, 2), y[:, None])
    np.testing.assert_array_equal(dataset_labels(column, default_unpack_item, "train"), y.numpy())


def test_labels_from_targets_attribute() -> None:
    got = dataset_labels(TargetsDataset([2, 0, 2, 1]), default_unpack_item, "train")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [2, 0, 2, 1])
    tensor_targets = TargetsDataset([2, 0, 2, 1])
    tensor_targets.targets = torch.tensor([2, 0, 2, 1])
    np.testing.assert_array_equal(
        dataset_labels(tensor_targets, default_unpack_item, "train"), [2, 0, 2, 1]
    )


def test_labels_of_subset() -> None:
    parent = TargetsDataset([0, 1, 2, 3, 4, 5])
    subset = Subset(parent, [5, 0, 3])
    np.testing.assert_array_equal(dataset_labels(subset, default_unpack_item, "test"), [5, 0, 3])
    nested = Subset(subset, [2, 0])
    np.testing.assert_array_equal(dataset_labels(nested, default_unpack_item, "test"), [3, 5])


def test_labels_of_plain_list_read_item_by_item() -> None:
    items = [(torch.zeros(2), 1), (torch.ones(2), torch.tensor(0)), (torch.zeros(2), np.int64(2))]
    got = dataset_labels(items, default_unpack_item, "train")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [1, 0, 2])


def test_labels_of_unreadable_items_say_how_to_adapt() -> None:
    with pytest.raises(CallbackConfigError, match="unpack_item") as info:
        dataset_labels([torch.zeros(3), torch.zeros(3)], default_unpack_item, "train")
    assert "train item 0" in str(info.value)


# --- item unpacking -----------------------------------------------------------------------


def test_default_unpack_item_tuples_and_lists() -> None:
    x = torch.arange(3)
    assert default_unpack_item((x, 4)) == (x, 4)
    assert default_unpack_item([x, 4, "extra"]) == (x, 4)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"image": "img", "label": 3}, ("img", 3)),
        ({"pixel_values": "px", "labels": 0, "other": 1}, ("px", 0)),
        ({"x": "in", "y": 2}, ("in", 2)),
    ],
)
def test_default_unpack_item_dicts(item: dict, expected: tuple) -> None:
    assert default_unpack_item(item) == expected


def test_default_unpack_item_refuses_dict_without_label() -> None:
    with pytest.raises(TypeError, match="keys \\['caption', 'image'\\]"):
        default_unpack_item({"image": 1, "caption": "a cat"})


def test_bare_tensor_item_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match="Tensor"):
        default_unpack_item(torch.zeros(3))
    with pytest.raises(CallbackConfigError, match="unpack_item") as info:
        unpack([torch.zeros(3)], 0, default_unpack_item, "test")
    assert "test item 0" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


def test_custom_unpack_item() -> None:
    items = [{"pixels": torch.full((2,), float(i)), "cls": i % 2} for i in range(3)]
    x, label = unpack(items, 2, lambda item: (item["pixels"], item["cls"]), "train")
    assert label == 0 and torch.equal(x, torch.full((2,), 2.0))


# --- iter_batches -------------------------------------------------------------------------


def test_iter_batches_order_and_sizes() -> None:
    x = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    dataset = TensorDataset(x, torch.arange(10) % 4)
    indices = [9, 0, 4, 7, 2, 3, 8]
    batches = list(iter_batches(dataset, indices, 3, default_unpack_item, "train"))
    assert [len(inputs) for inputs, _ in batches] == [3, 3, 1]
    inputs = torch.cat([b[0] for b in batches])
    assert inputs.shape == (7, 3)
    np.testing.assert_array_equal(inputs[:, 0].numpy(), indices)
    labels = np.concatenate([b[1] for b in batches])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.array(indices) % 4)


def test_iter_batches_accepts_numpy_inputs_and_refuses_ragged() -> None:
    items = [(np.full((2, 2), i, np.float32), i) for i in range(4)]
    ((inputs, labels),) = list(iter_batches(items, range(4), 8, default_unpack_item, "test"))
    assert isinstance(inputs, torch.Tensor) and inputs.shape == (4, 2, 2)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    ragged = [(torch.zeros(2), 0), (torch.zeros(3), 1)]
    with pytest.raises(CallbackConfigError, match="cannot be stacked"):
        list(iter_batches(ragged, [0, 1], 2, default_unpack_item, "test"))


# --- thumbnails ---------------------------------------------------------------------------


def test_thumbnails_of_gray_images() -> None:
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 3 - 1
    got = make_thumbnails(x)
    assert got.dtype == np.uint8 and got.shape == (4, 28, 28)
    # each image is min-max scaled to the full range
    assert (got.reshape(4, -1).min(axis=1) == 0).all()
    assert (got.reshape(4, -1).max(axis=1) == 255).all()
    # monotone: the brightest pixel of the input is the brightest of the thumbnail
    flat = x.reshape(4, -1).numpy()
    assert (got.reshape(4, -1)[np.arange(4), flat.argmax(axis=1)] == 255).all()
    assert make_thumbnails(x[:, 0]).shape == (4, 28, 28)  # (n, H, W) too


def test_thumbnails_of_rgb_images_are_downscaled() -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    x[1, 0] += 5.0  # a red image
    got = make_thumbnails(x)
    assert got.dtype == np.uint8 and got.shape == (2, 32, 32, 3)
    red = got[1].reshape(-1, 3).mean(axis=0)
    assert red[0] > 2 * red[1] and red[0] > 2 * red[2]


@pytest.mark.parametrize("shape", [(3, 784), (3, 5, 16, 16), (3, 1, 4, 4)])
def test_no_thumbnails_of_non_images(shape: tuple[int, ...]) -> None:
    assert make_thumbnails(torch.rand(*shape)) is None


def test_labels_of_one_hot_tensor_dataset_follow_unpack_item() -> None:
    y = torch.tensor([2, 0, 1, 2])
    dataset = TensorDataset(torch.zeros(4, 2), torch.nn.functional.one_hot(y, 3).float())
    got = dataset_labels(dataset, lambda item: (item[0], item[1].argmax()), "train")
    np.testing.assert_array_equal(got, [2, 0, 1, 2])


# --- random_transforms ----------------------------------------------------------------------
class ColorJitter:
    def __call__(self, x):
        return x * (1 + 0.1 * torch.rand(()))


class Flip:
    """Random by its probability ``p``, whatever its name (albumentations style)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x):
        return x.flip(-1) if torch.rand(()) < self.p else x


class Normalize:
    def __call__(self, x):
        return (x - 0.5) / 0.5


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class WithTransform(Dataset):
    def __init__(self, transform) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return self.transform(torch.zeros(2)), 0

    @property
    def classes(self):  # a property is never run by the search
        raise AssertionError("random_transforms ran a property")


def add_noise(x):
    return x + torch.randn_like(x)


@pytest.mark.parametrize(
    ("dataset", "found"),
    [
        (TensorDataset(torch.zeros(4, 2), torch.zeros(4)), []),
        (WithTransform(Compose([Normalize(), Flip(p=1.0)])), []),
        (WithTransform(lambda x: x * 2), []),
        (WithTransform(Compose([Normalize(), ColorJitter()])), ["ColorJitter"]),
        (WithTransform(Compose([Flip(p=0.5)])), ["Flip"]),
        (WithTransform(add_noise), ["add_noise"]),
        (WithTransform(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Dropout(0.2))), ["Dropout"]),
        (Subset(ConcatDataset([TensorDataset(torch.zeros(4, 2)), WithTransform(ColorJitter())]), [0]),
         ["ColorJitter"]),
    ],
    ids=["tensor-dataset", "deterministic", "lambda", "jitter", "probability", "noise-function",
         "module", "wrapped"],
)  # fmt: skip
def test_random_transforms_are_found_through_wrappers(dataset, found) -> None:
    assert random_transforms(dataset) == found
