"""The RANGE syntax and device resolution."""

from __future__ import annotations

import time

import pytest
import torch

from timevis_cli.device import resolve_device
from timevis_cli.errors import ConfigError, InputError
from timevis_cli.ranges import parse_range

PRESENT = list(range(0, 21))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", PRESENT),
        ("", PRESENT),
        ("5", [5]),
        ("1-4", [1, 2, 3, 4]),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        ("18-", [18, 19, 20]),
        ("-2", [0, 1, 2]),
        ("0-20:10", [0, 10, 20]),
        ("3, 4", [3, 4]),
        ("4,4,1-2", [1, 2, 4]),
    ],
)
def test_ranges_select_epochs(text, expected):
    assert parse_range(text, PRESENT) == expected


def test_open_ranges_take_what_is_recorded():
    assert parse_range("5-", [0, 4, 8, 12]) == [8, 12]
    assert parse_range("-5", [0, 4, 8, 12]) == [0, 4]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("1-160", r"not recorded \(21-160\); recorded: 0-20"),
        ("25", "not recorded"),
        ("21,25-26", r"not recorded \(21, 25-26\); recorded: 0-20"),
        ("10-5", "inverted; write 5-10"),
        ("a-b", "cannot read 'a-b'"),
        ("1--2", "cannot read"),
        ("-", "cannot read"),
        ("0-10:0", "step 0"),
        ("5:2", "a step needs a range"),
        ("30-", "selects no recorded epoch"),
    ],
)
def test_bad_ranges_say_what_is_recorded(text, pattern):
    with pytest.raises(InputError, match=pattern):
        parse_range(text, PRESENT)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("0-2000000000", "4-2000000000"),
        ("2-99999999999999999999", "4-99999999999999999999"),
        ("0-2000000000:7", "7-1999999995:7"),
        ("1,3,5-2000000000", "5-2000000000"),
    ],
)
def test_huge_ranges_are_refused_at_once_without_building_them(text, named):
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        parse_range(text, [0, 1, 2, 3])
    assert time.perf_counter() - started < 0.5
    assert str(info.value) == (
        f"epoch range {text!r} names epochs that are not recorded ({named}); recorded: 0-3"
    )


def test_huge_open_and_stepped_ranges_select_what_is_recorded_at_once():
    started = time.perf_counter()
    present = list(range(0, 200, 2))
    assert parse_range("0-:2000000000", present) == [0]
    assert parse_range("-2000000000", present) == present
    assert parse_range("2000000000-", [*present, 2_000_000_000]) == [2_000_000_000]
    with pytest.raises(InputError, match="selects no recorded epoch"):
        parse_range("2000000000-", present)
    assert time.perf_counter() - started < 0.5


def test_many_gaps_are_named_as_a_few_ranges():
    present = list(range(0, 40, 2))  # every other epoch
    with pytest.raises(InputError) as info:
        parse_range("0-2000000", present)
    assert str(info.value) == (
        "epoch range '0-2000000' names epochs that are not recorded (1, 3, 5, 7, 9, 11, 13, 15, "
        "... (12 more ranges)); recorded: " + ", ".join(map(str, present))
    )


def test_an_unreadable_epoch_inside_a_huge_range_is_named():
    with pytest.raises(InputError, match=r"names unreadable epoch files \(5; epoch 5: truncated"):
        parse_range("0-2000000000", [0, 1, 2, 3, 4], {5: "truncated file"})


def test_device_resolution_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu")
