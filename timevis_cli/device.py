"""Resolve ``--device auto|cpu|cuda[:i]`` once, with a clear error when a GPU is asked for but absent."""

from __future__ import annotations

import logging
import re

import torch

from timevis_cli.errors import ConfigError

log = logging.getLogger(__name__)
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; ``auto`` is CUDA when available, else the CPU (logged)."""
    name = name.strip().lower()
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device: auto -> %s", device)
        return device
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(name)
    if match is None:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} was asked for but no CUDA GPU is available here; use --device cpu "
            "(or auto, which falls back to the CPU)"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0"
        )
    return torch.device("cuda", index)
