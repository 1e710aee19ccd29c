"""Output folders written whole or not at all: ``timevis_cli.outputs.replaced_folder``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from timevis_cli.outputs import OutputExists, replaced_folder


def _previous(run_dir: Path) -> Path:
    (run_dir / "fit").mkdir()
    (run_dir / "fit" / "a.txt").write_text("previous")
    return run_dir / "fit" / "a.txt"


def _hidden(run_dir: Path) -> list[str]:
    """Hidden leftovers in RUN_DIR."""
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


def test_leftovers_of_killed_writers_are_cleaned_up(tmp_path):
    killed = tmp_path / ".fit.4242-0123abcd.tmp"  # a writer killed while writing
    killed.mkdir()
    (killed / "projector.pt").write_text("half")
    other = tmp_path / ".eval.4242-0123abcd.tmp"  # another output's: not this writer's to touch
    other.mkdir()
    set_aside = tmp_path / ".fit.old-0123abcd"  # killed between its two renames: no fit/ now
    set_aside.mkdir()
    (set_aside / "a.txt").write_text("previous")
    with pytest.raises(RuntimeError), replaced_folder(tmp_path, "fit"):
        raise RuntimeError("the new fit fails")
    assert (tmp_path / "fit" / "a.txt").read_text() == "previous"  # restored, then kept
    assert _hidden(tmp_path) == [other.name]
    # a set-aside folder next to a fit that made it into place is removed
    (tmp_path / ".fit.old-4567abcd").mkdir()
    with replaced_folder(tmp_path, "fit") as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in (tmp_path / "fit").iterdir()] == ["b.txt"]
    assert _hidden(tmp_path) == [other.name]


def test_without_overwrite_an_existing_output_is_refused_after_restoring_it(tmp_path):
    # fit/ set aside by an interrupted writer is put back first, then counts as existing
    set_aside = tmp_path / ".fit.old-0123abcd"
    set_aside.mkdir()
    (set_aside / "a.txt").write_text("previous")
    with pytest.raises(OutputExists), replaced_folder(tmp_path, "fit", overwrite=False):
        pytest.fail("the block must not run")
    assert (tmp_path / "fit" / "a.txt").read_text() == "previous" and _hidden(tmp_path) == []


def test_writers_of_one_run_dir_take_turns(tmp_path):
    # a second writer waits for the first's lock: it neither sweeps the first's temporary
    # folder nor interleaves its renames with the first's
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from timevis_cli.outputs import OutputExists, replaced_folder\n"
        "with replaced_folder(Path(sys.argv[1]), 'fit') as tmp:\n"
        "    (tmp / 'who.txt').write_text(sys.argv[2])\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(float(sys.argv[3]))\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "first", "2"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert first.stdout.readline().strip() == "writing"  # the first holds the lock
    second = subprocess.run([sys.executable, "-c", script, str(tmp_path), "second", "0"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert first.wait() == 0 and second.returncode == 0
    # the second's swap came after the first's (without the lock it would have swept the
    # first's folder, or been replaced by the first's rename a moment later)
    assert (tmp_path / "fit" / "who.txt").read_text() == "second"
    assert _hidden(tmp_path) == []
