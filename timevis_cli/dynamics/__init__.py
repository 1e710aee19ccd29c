"""``timevis dynamics``: per-sample training dynamics from the stored logits (no fit needed).

Modules: ``measures`` (the measures as pure numpy functions, the streaming pass over a store's
epochs and the :class:`~timevis_cli.dynamics.measures.Dynamics` result), ``outputs`` (the
``dynamics/`` folder: samples.csv, datamap.png, events.png, summary.json) and ``command`` (the
click command).

The public API is importable from here (``from timevis_cli.dynamics import compute_dynamics``);
it is loaded on first use.
"""

from __future__ import annotations

from timevis_cli.lazy import lazy_api

_PUBLIC = {
    "compute_dynamics": "measures",
    "dynamics_from_logits": "measures",
    "select_epochs": "measures",
    "Dynamics": "measures",
    "DynamicsSettings": "measures",
    "write_dynamics": "outputs",
}

__getattr__, __all__ = lazy_api(__name__, _PUBLIC)
