"""``timevis units``: the hidden units of the feature layer over training, embedded with
M-PHATE (no fit needed; reads the stored features).

Modules: ``mphate`` (the multislice kernel, the diffusion, t, the potential and MDS as pure
numpy/scipy/scikit-learn functions), ``pipeline`` (the samples, reading the store, each unit's
preferred class and selectivity, :class:`~timevis_cli.units.pipeline.Units`), ``outputs`` (the
``units/`` folder: units.npz, units.csv, units.png, units.gif, summary.json), ``page``
(``units/index.html``) and ``command`` (the click command).

The public API is importable from here (``from timevis_cli.units import compute_units``); it is
loaded on first use.
"""

from __future__ import annotations

from timevis_cli.lazy import lazy_api

_PUBLIC = {
    "compute_units": "pipeline",
    "select_epochs": "pipeline",
    "Units": "pipeline",
    "MPhateSettings": "mphate",
    "embed_units": "mphate",
    "multislice_kernel": "mphate",
    "write_units": "outputs",
    "load_units": "outputs",
}

__getattr__, __all__ = lazy_api(__name__, _PUBLIC)
