"""Stage 4, ``timevis eval``: how faithful the fitted maps are.

Modules: ``metrics`` (the faithfulness metrics as pure functions) and ``loop`` (the evaluation
over epochs and splits, streaming the temporal metrics, and the ``eval/`` outputs).

The public API is importable from here (``from timevis_cli.evaluate import evaluate``); it is
loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "evaluate": "loop",
    "EvalResult": "loop",
    "write_eval": "loop",
    "select_eval_epochs": "loop",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
