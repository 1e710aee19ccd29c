"""Every ```python block of README.md runs as written, each in its own process and folder.

A block that opens a run store (``open_run("PATH")``) finds a small synthetic store written at
PATH (relative to the block's working directory) by the real writer. A block that records with
``TimeVisCallback`` must leave the store files its comment names. Both blocks train (a Lightning
model; a fit), so they are marked slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from stores import drifting_clusters

README = Path(__file__).resolve().parents[1] / "README.md"
TIMEOUT_S = 300

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_HEADING = re.compile(r"^#+ (.+)$", re.M)
_OPEN_RUN = re.compile(r"""open_run\(\s*["']([^"']+)["']""")
_EPOCH_FILE = re.compile(r"epoch_\d{4}\.h5")


def python_blocks() -> list[tuple[str, str]]:
    """(id, code) of every ```python block, the id naming the heading above it."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for number, match in enumerate(_BLOCK.finditer(text), start=1):
        headings = _HEADING.findall(text, 0, match.start())
        heading = headings[-1] if headings else "top"
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        blocks.append((f"{number}-{slug}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_readme_has_the_python_blocks_this_module_runs():
    code = "\n".join(block for _, block in BLOCKS)
    assert len(BLOCKS) >= 2, [name for name, _ in BLOCKS]
    assert "TimeVisCallback(" in code and "open_run(" in code


@pytest.mark.slow
@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_readme_python_block_runs_as_written(code, tmp_path):
    for store in _OPEN_RUN.findall(code):
        drifting_clusters(tmp_path / store, n_train=120, n_test=30, epochs=3, boundary=True)
    script = tmp_path / "readme_block.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
    assert done.returncode == 0, f"README block failed (exit {done.returncode}):\n{code}\n{tail}"
    if "TimeVisCallback(" in code:
        stores = [path.parent for path in tmp_path.rglob("run.h5")]
        assert len(stores) == 1, stores
        promised = set(_EPOCH_FILE.findall(code))
        assert promised, "the recording block's comment names no epoch files"
        written = {path.name for path in (stores[0] / "epochs").glob("epoch_*.h5")}
        assert promised <= written, (sorted(promised), sorted(written))
