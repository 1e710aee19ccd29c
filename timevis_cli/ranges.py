"""The epoch RANGE syntax shared by fit, render and eval.

``all`` | ``5`` | ``1-160`` | ``1,5,10-20`` | ``10-`` (from 10 on) | ``-20`` (up to 20) |
``0-200:10`` (every 10th). Numbers are the store's epochs (epoch n = after n training epochs).
Closed ranges and single numbers must name recorded epochs; open ranges take what is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from timevis_callback.reader import format_epochs
from timevis_cli.errors import InputError

_PART = re.compile(r"^(?P<start>\d*)(?P<dash>-?)(?P<stop>\d*)(?::(?P<step>\d+))?$")
ALL = "all"


#: missing epochs are listed one by one up to this many; past it, as ranges
_LISTED = 1000
#: at most this many ranges of missing epochs are named in a message
_SHOWN = 8


@dataclass(frozen=True)
class _Span:
    """The epochs ``start, start + step, ..., <= stop`` (never materialised: a closed range may
    name billions of epochs, only the recorded ones are looked at)."""

    start: int
    stop: int
    step: int = 1

    @property
    def last(self) -> int:
        return self.start + (self.stop - self.start) // self.step * self.step

    @property
    def count(self) -> int:
        return max(0, (self.stop - self.start) // self.step + 1)

    def __contains__(self, epoch: int) -> bool:
        return self.start <= epoch <= self.stop and (epoch - self.start) % self.step == 0

    def gaps(self, present: Sequence[int]) -> list[_Span]:
        """The parts of this span that are not in ``present`` (sorted): in time linear in
        ``present``, whatever the span's length."""
        out, start = [], self.start
        for epoch in present:
            if epoch in self:
                if epoch > start:
                    out.append(_Span(start, epoch - self.step, self.step))
                start = epoch + self.step
        if start <= self.last:
            out.append(_Span(start, self.last, self.step))
        return out

    def text(self) -> str:
        if self.start == self.last:
            return str(self.start)
        suffix = f":{self.step}" if self.step > 1 else ""
        return f"{self.start}-{self.last}{suffix}"


def parse_range(
    text: str, present: Sequence[int], unreadable: Mapping[int, str] | None = None
) -> list[int]:
    """Sorted epochs selected by ``text`` among the ``present`` ones.

    Works in time linear in the number of present epochs, whatever numbers ``text`` names
    (``0-2000000000`` is refused at once for the epochs it names that are not recorded).

    >>> parse_range("1-3,7-", [0, 1, 2, 3, 4, 7, 8])
    [1, 2, 3, 7, 8]
    >>> parse_range("0-8:4", [0, 2, 4, 6, 8])
    [0, 4, 8]
    """
    recorded = sorted(set(present))
    text = text.strip().replace(" ", "")
    if text.lower() == ALL or text == "":
        chosen = set(recorded)
    else:
        chosen, missing = set(), []
        for part in text.split(","):
            span, closed = _parse_part(part, text, recorded)
            chosen.update(epoch for epoch in recorded if epoch in span)
            if closed:
                missing.extend(span.gaps(recorded))
        _refuse_missing(missing, text, recorded, unreadable or {})
    if not chosen:
        raise InputError(
            f"epoch range {text!r} selects no recorded epoch; recorded: {format_epochs(recorded)}"
        )
    return sorted(chosen)


def _parse_part(part: str, text: str, present: Sequence[int]) -> tuple[_Span, bool]:
    """The epochs one comma-separated part names, and whether it is closed (a closed range or a
    single number must name recorded epochs; an open one takes what is recorded)."""
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
        return _Span(int(match["start"]), int(match["start"])), True
    start = int(match["start"]) if match["start"] else min(present, default=0)
    stop = int(match["stop"]) if match["stop"] else max(present, default=0)
    if start > stop and match["start"] and match["stop"]:
        raise InputError(f"epoch range {text!r}: {part!r} is inverted; write {stop}-{start}")
    return _Span(start, stop, step), bool(match["start"] and match["stop"])


def _format_missing(missing: list[_Span]) -> str:
    """The missing epochs as text: listed (``21, 25-26``) when there are few, else as at most
    ``_SHOWN`` ranges (``4-2000000000``)."""
    if sum(span.count for span in missing) <= _LISTED:
        epochs = {
            epoch for span in missing for epoch in range(span.start, span.last + 1, span.step)
        }
        return format_epochs(sorted(epochs))
    spans = sorted(missing, key=lambda span: (span.start, span.last))
    shown = ", ".join(span.text() for span in spans[:_SHOWN])
    return shown + (f", ... ({len(spans) - _SHOWN} more ranges)" if len(spans) > _SHOWN else "")


def _refuse_missing(
    missing: list[_Span], text: str, present: list[int], unreadable: Mapping[int, str]
) -> None:
    broken = sorted(e for e in unreadable if any(e in span for span in missing))
    if broken:
        raise InputError(
            f"epoch range {text!r} names unreadable epoch files ({format_epochs(broken)}; epoch "
            f"{broken[0]}: {unreadable[broken[0]]}); readable: {format_epochs(present)}"
        )
    if missing:
        raise InputError(
            f"epoch range {text!r} names epochs that are not recorded "
            f"({_format_missing(missing)}); recorded: {format_epochs(present)}"
        )
