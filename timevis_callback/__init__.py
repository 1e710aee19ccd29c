"""timevis recording side: the Lightning callback and the run store (writer and reader).

``from timevis_callback import TimeVisCallback`` imports lightning; ``open_run`` and the store
modules do not, so offline tools can read a store without the training stack.
"""

from __future__ import annotations

from typing import Any

from timevis_callback.errors import CallbackConfigError, StoreError, StoreVersionError, TimeVisError
from timevis_callback.reader import Run, open_run

__all__ = [
    "TimeVisCallback",
    "open_run",
    "Run",
    "TimeVisError",
    "StoreError",
    "StoreVersionError",
    "CallbackConfigError",
]


def __getattr__(name: str) -> Any:
    if name == "TimeVisCallback":
        from timevis_callback.callback import TimeVisCallback

        return TimeVisCallback
    raise AttributeError(f"module 'timevis_callback' has no attribute {name!r}")
