"""Shared test setup: tests import tests/digits_model.py as ``digits_model``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
