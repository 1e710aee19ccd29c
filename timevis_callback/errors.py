"""The exceptions timevis raises. Every message names the value, the constraint and the fix."""

from __future__ import annotations


class TimeVisError(Exception):
    """Base class of every error timevis raises on purpose."""


class StoreError(TimeVisError):
    """A run store is missing, incomplete, corrupted or of another run."""


class StoreVersionError(StoreError):
    """A run store was written by a newer schema than this timevis can read."""


class CallbackConfigError(TimeVisError, ValueError):
    """A TimeVisCallback argument, or the model/data it was given, cannot be used."""


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (HDF5's errors can span several), for a message that
    must stay one line."""
    return " ".join(str(exc).split()) or exc.__class__.__name__
