"""Stage 4, ``timevis eval``: how faithful the fitted maps are.

Modules: ``metrics`` (the faithfulness metrics as pure functions) and ``loop`` (the evaluation
over epochs and splits, streaming the temporal metrics, and the ``eval/`` outputs).

The public API is importable from here (``from timevis_cli.evaluate import evaluate``); it is
loaded on first use.
"""

from __future__ import annotations

from timevis_cli.lazy import lazy_api

_PUBLIC = {
    "evaluate": "loop",
    "EvalResult": "loop",
    "write_eval": "loop",
    "select_eval_epochs": "loop",
}

__getattr__, __all__ = lazy_api(__name__, _PUBLIC)
