"""Stage 2, ``timevis fit``: one visualization model for every recorded epoch.

Modules, in pipeline order: ``neighbors`` (exact kNN backends), ``reduction`` (k-center
selection of the samples the complex is built on), ``complex`` (fuzzy spatial, boundary and
temporal edges), ``losses`` and ``projector`` (the autoencoder), ``trainer`` (edge sampling and
the training loop), ``refine`` and ``blocks`` (the refinement and its bounded-memory edge
blocks), ``pipeline`` (the whole fit, returning values) and ``io`` (the ``fit/`` folder).

The public API is importable from here (``from timevis_cli.fit import fit, load_fit``); it is
loaded on first use so that importing a light module of this package does not load torch.
"""

from __future__ import annotations

from timevis_cli.lazy import lazy_api

_PUBLIC = {
    "fit": "pipeline",
    "FitModel": "pipeline",
    "FitResult": "pipeline",
    "Reporter": "pipeline",
    "load_fit": "io",
    "save_fit": "io",
    "LoadedFit": "io",
}

__getattr__, __all__ = lazy_api(__name__, _PUBLIC)
