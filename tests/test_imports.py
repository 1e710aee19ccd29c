"""A training script's ``timevis_callback`` imports pull in none of the offline tools' packages.

Each check runs in a fresh interpreter (this one's, in a subprocess), since the test process has
imported everything already. Lightning itself may import some of these packages when they are
installed (torchmetrics loads matplotlib, scipy and Pillow if present), so the callback's check
imports lightning first and then looks at what timevis adds, and at every import statement run
by a ``timevis_callback`` module.
"""

from __future__ import annotations

import json
import subprocess
import sys

OFFLINE_ONLY = frozenset(
    {"faiss", "matplotlib", "click", "scipy", "PIL", "pynndescent", "imageio", "timevis_cli"}
)
"""Top-level packages only the ``timevis`` command may import."""

READER_CODE = """
import json, sys
import timevis_callback
from timevis_callback import open_run
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""

CALLBACK_CODE = """
import builtins, json, sys

OFFLINE_ONLY = set(sys.argv[1].split(","))
direct = []
_import = builtins.__import__


def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and name.partition(".")[0] in OFFLINE_ONLY and importer.startswith("timevis_callback"):
        direct.append(f"{importer} imports {name}")
    return _import(name, globals, locals, fromlist, level)


builtins.__import__ = recording_import
import lightning.pytorch  # what the callback needs anyway, with whatever it loads itself

before = set(sys.modules)
import timevis_callback
from timevis_callback import TimeVisCallback, open_run

added = sorted({name.partition(".")[0] for name in set(sys.modules) - before})
print(json.dumps({"added": added, "direct": direct}))
"""


def _run(code: str, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_open_run_imports_neither_lightning_nor_the_offline_tools():
    loaded = set(_run(READER_CODE))
    assert "timevis_callback" in loaded
    unwanted = loaded & (OFFLINE_ONLY | {"lightning"})
    assert not unwanted, sorted(unwanted)


def test_the_callback_imports_none_of_the_offline_tools():
    found = _run(CALLBACK_CODE, ",".join(sorted(OFFLINE_ONLY)))
    assert "timevis_callback" in found["added"]
    assert not set(found["added"]) & OFFLINE_ONLY, found["added"]
    assert found["direct"] == []
