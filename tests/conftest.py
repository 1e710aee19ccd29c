"""Shared test setup: tests import tests/digits_model.py as ``digits_model``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import os  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def flipped_digits(tmp_path_factory) -> Path:
    """The quick digits run (5 epochs, on the CPU) with 5% of its training labels flipped,
    recorded once per session by ``scripts/demo_train.py``: OUT with ``store/`` and
    ``flipped.json``."""
    out = tmp_path_factory.mktemp("flipped") / "digits"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_train.py"), str(out), "--data", "digits",
         "--epochs", "5", "--flip-labels", "0.05"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out
