"""The exceptions of the offline tools. The CLI prints any TimeVisError as one line, exit 1."""

from __future__ import annotations

from timevis_callback.errors import StoreError, StoreVersionError, TimeVisError

__all__ = ["TimeVisError", "StoreError", "StoreVersionError", "ConfigError", "InputError"]


class ConfigError(TimeVisError, ValueError):
    """A configuration key or value (file, preset, --set, flag) cannot be used."""


class InputError(TimeVisError, ValueError):
    """Data handed to a computation cannot be used (wrong shape, NaN, too few points)."""
