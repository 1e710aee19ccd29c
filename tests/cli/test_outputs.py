"""Output folders written whole or not at all: ``timevis_cli.outputs.replaced_folder``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from timevis_cli.outputs import replaced_folder


def _previous(run_dir: Path) -> Path:
    (run_dir / "fit").mkdir()
    (run_dir / "fit" / "a.txt").write_text("previous")
    return run_dir / "fit" / "a.txt"


def _hidden(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


def test_a_finished_block_replaces_the_previous_output(tmp_path):
    _previous(tmp_path)
    with replaced_folder(tmp_path, "fit") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".fit.") and not any(tmp.iterdir())
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in (tmp_path / "fit").iterdir()] == ["b.txt"]
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_block_keeps_the_previous_output(tmp_path, error):
    kept = _previous(tmp_path)
    with pytest.raises(type(error)), replaced_folder(tmp_path, "fit") as tmp:
        (tmp / "b.txt").write_text("half")
        raise error
    assert kept.read_text() == "previous" and _hidden(tmp_path) == []


def test_an_interrupt_between_the_renames_puts_the_previous_output_back(tmp_path, monkeypatch):
    kept = _previous(tmp_path)
    rename = Path.rename

    def interrupted(self, target):
        if self.name.endswith(".tmp"):  # the new output's rename, after the old one's
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt), replaced_folder(tmp_path, "fit") as tmp:
        (tmp / "b.txt").write_text("new")
    assert kept.read_text() == "previous" and _hidden(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_leftovers_of_killed_writers_are_cleaned_up(tmp_path):
    dead = tmp_path / f".fit.{_dead_pid()}-0123abcd.tmp"
    alive = tmp_path / f".fit.{os.getppid()}-0123abcd.tmp"  # a writer still at work
    other = tmp_path / f".eval.{_dead_pid()}-0123abcd.tmp"  # another output's: not ours to touch
    for folder in (dead, alive, other):
        folder.mkdir()
    set_aside = tmp_path / ".fit.old-0123abcd"  # killed between its two renames: no fit/ now
    set_aside.mkdir()
    (set_aside / "a.txt").write_text("previous")
    with pytest.raises(RuntimeError), replaced_folder(tmp_path, "fit"):
        raise RuntimeError("the new fit fails")
    assert (tmp_path / "fit" / "a.txt").read_text() == "previous"  # restored, then kept
    assert _hidden(tmp_path) == sorted([alive.name, other.name])
    # a set-aside folder next to a fit that made it into place is removed
    (tmp_path / ".fit.old-4567abcd").mkdir()
    with replaced_folder(tmp_path, "fit") as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in (tmp_path / "fit").iterdir()] == ["b.txt"]
    assert _hidden(tmp_path) == sorted([alive.name, other.name])
