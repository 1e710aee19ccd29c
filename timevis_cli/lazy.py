"""A subpackage's public API loaded on first use (PEP 562), so importing one light module of a
stage does not load the heavy ones (torch, matplotlib) behind its public names."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_api(package: str, public: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` whose ``public`` maps each name to the
    submodule that defines it.

    >>> getattr_, names = lazy_api("timevis_cli.fit", {"fit": "pipeline"})
    >>> names, getattr_("fit").__module__
    (['fit'], 'timevis_cli.fit.pipeline')
    """

    def __getattr__(name: str) -> Any:
        if name in public:
            return getattr(import_module(f"{package}.{public[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(public)
