"""The epoch RANGE syntax shared by fit, render and eval.

``all`` | ``5`` | ``1-160`` | ``1,5,10-20`` | ``10-`` (from 10 on) | ``-20`` (up to 20) |
``0-200:10`` (every 10th). Numbers are the store's epochs (epoch n = after n training epochs).
Closed ranges and single numbers must name recorded epochs; open ranges take what is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from timevis_callback.reader import format_epochs
from timevis_cli.errors import InputError

_PART = re.compile(r"^(?P<start>\d*)(?P<dash>-?)(?P<stop>\d*)(?::(?P<step>\d+))?$")
ALL = "all"


def parse_range(
    text: str, present: Sequence[int], unreadable: Mapping[int, str] | None = None
) -> list[int]:
    """Sorted epochs selected by ``text`` among the ``present`` ones.

    >>> parse_range("1-3,7-", [0, 1, 2, 3, 4, 7, 8])
    [1, 2, 3, 7, 8]
    >>> parse_range("0-8:4", [0, 2, 4, 6, 8])
    [0, 4, 8]
    """
    present_set = set(present)
    text = text.strip().replace(" ", "")
    if text.lower() == ALL or text == "":
        chosen = set(present_set)
    else:
        chosen, missing = set(), set()
        for part in text.split(","):
            wanted, absent = _parse_part(part, text, present_set)
            chosen |= wanted
            missing |= absent
        _refuse_missing(sorted(missing), text, present_set, unreadable or {})
    if not chosen:
        raise InputError(
            f"epoch range {text!r} selects no recorded epoch; recorded: {format_epochs(sorted(present_set))}"
        )
    return sorted(chosen)


def _parse_part(part: str, text: str, present: set[int]) -> tuple[set[int], set[int]]:
    """The epochs one comma-separated part selects, and those it names that are not present
    (always none for an open range, which takes what is recorded)."""
    match = _PART.match(part)
    if not part or match is None or not (match["start"] or match["stop"]):
        raise InputError(
            f"epoch range {text!r}: cannot read {part!r}; use e.g. 5, 1-160, 1,5,10-20, 10-, -20, "
            "0-200:10 or all"
        )
    step = int(match["step"]) if match["step"] else 1
    if step == 0:
        raise InputError(f"epoch range {text!r}: step 0 in {part!r}; use a step >= 1")
    if not match["dash"]:
        if match["step"]:
            raise InputError(f"epoch range {text!r}: a step needs a range, e.g. 0-200:10")
        wanted = {int(match["start"])}
        closed = True
    else:
        start = int(match["start"]) if match["start"] else min(present, default=0)
        stop = int(match["stop"]) if match["stop"] else max(present, default=0)
        if start > stop and match["start"] and match["stop"]:
            raise InputError(f"epoch range {text!r}: {part!r} is inverted; write {stop}-{start}")
        wanted = set(range(start, stop + 1, step))
        closed = bool(match["start"] and match["stop"])
    if not closed:
        return wanted & present, set()
    return wanted & present, wanted - present


def _refuse_missing(
    missing: list[int], text: str, present: set[int], unreadable: Mapping[int, str]
) -> None:
    broken = [epoch for epoch in missing if epoch in unreadable]
    if broken:
        raise InputError(
            f"epoch range {text!r} names unreadable epoch files ({format_epochs(broken)}; epoch "
            f"{broken[0]}: {unreadable[broken[0]]}); readable: {format_epochs(sorted(present))}"
        )
    if missing:
        raise InputError(
            f"epoch range {text!r} names epochs that are not recorded ({format_epochs(missing)}); "
            f"recorded: {format_epochs(sorted(present))}"
        )
