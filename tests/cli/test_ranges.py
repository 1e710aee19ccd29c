"""The RANGE syntax and device resolution."""

from __future__ import annotations

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


def test_device_resolution_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu")
