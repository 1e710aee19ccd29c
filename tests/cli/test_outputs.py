"""Output folders written whole or not at all, replaced as a whole, and write failures as one
line: ``timevis_cli.outputs``."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from timevis_cli.errors import InputError, TimeVisError
from timevis_cli.outputs import (
    OutputExists,
    OutputWriteError,
    prepare_output,
    replaced_folder,
    set_aside,
    write_error,
)


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


# --- replacing as a whole, write failures, the check before computing ------------------------


def test_a_new_output_replaces_the_previous_one_as_a_whole_and_says_so(tmp_path, caplog):
    (tmp_path / "render").mkdir()
    for name in ("epoch_0000.png", "epoch_0001.png", "index.html"):
        (tmp_path / "render" / name).write_text("previous")
    with caplog.at_level(logging.INFO, logger="timevis_cli.outputs"):
        with replaced_folder(tmp_path, "render") as tmp:
            (tmp / "epoch_0001.png").write_text("new")
    assert sorted(p.name for p in (tmp_path / "render").iterdir()) == ["epoch_0001.png"]
    assert f"replaced {tmp_path / 'render'}/ (previous: 3 files)" in caplog.text
    assert _hidden(tmp_path) == []


def test_log_lines_written_in_the_block_name_the_final_folder(tmp_path, caplog):
    logger = logging.getLogger("timevis_cli.render.animate")
    with caplog.at_level(logging.INFO, logger="timevis_cli"):
        with replaced_folder(tmp_path, "render") as tmp:
            logger.info("wrote %s: 4 frames", tmp / "training.gif")
    assert f"wrote {tmp_path / 'render' / 'training.gif'}: 4 frames" in caplog.text
    assert not [message for message in caplog.messages if ".render." in message]
    logger.info("after the block: %s", "nothing rewritten")  # the factory is restored
    assert logging.getLogRecordFactory() is logging.LogRecord


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "free space on the disk"),
        (OSError(errno.EROFS, "Read-only file system"), "writable"),
    ],
)
def test_a_failed_write_is_one_line_and_keeps_the_previous_output(tmp_path, error, fix):
    kept = _previous(tmp_path)
    with pytest.raises(OutputWriteError) as info, replaced_folder(tmp_path, "fit") as tmp:
        (tmp / "b.txt").write_text("half")
        raise error
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "fit") in message
    assert error.strerror in message and "previous fit/ is kept" in message and fix in message
    assert isinstance(info.value, TimeVisError)
    assert kept.read_text() == "previous" and _hidden(tmp_path) == []


def test_an_error_naming_a_file_in_the_temporary_folder_is_a_write_error(tmp_path):
    with pytest.raises(OutputWriteError, match="Permission denied"), replaced_folder(
        tmp_path, "eval"
    ) as tmp:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp / "metrics.png"))
    assert _hidden(tmp_path) == [] and not (tmp_path / "eval").exists()


def test_other_errors_pass_through_unchanged(tmp_path):
    elsewhere = FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "run.h5"))
    with pytest.raises(FileNotFoundError) as info, replaced_folder(tmp_path, "eval"):
        raise elsewhere
    assert info.value is elsewhere and _hidden(tmp_path) == []


def test_a_file_in_the_way_is_refused_unless_replacing_files_is_asked(tmp_path):
    (tmp_path / "render").write_text("my notes")
    with pytest.raises(InputError, match="is a file, not a folder; move it away"):
        with replaced_folder(tmp_path, "render"):
            pytest.fail("the block must not run")
    with pytest.raises(InputError, match="is a file, not a folder"):
        prepare_output(tmp_path, "render")
    assert (tmp_path / "render").read_text() == "my notes" and _hidden(tmp_path) == []
    with replaced_folder(tmp_path, "render", replace_file=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (tmp_path / "render" / "a.txt").read_text() == "new"


def test_prepare_output_checks_the_folder_can_be_written_before_any_work(tmp_path, monkeypatch):
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.parent == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputWriteError) as info:
        prepare_output(tmp_path, "fit")
    message = str(info.value)
    assert "Read-only file system" in message and "nothing was computed" in message
    assert f"make {tmp_path} writable" in message
    monkeypatch.setattr(Path, "mkdir", mkdir)
    prepare_output(tmp_path, "fit")  # writable: nothing is left behind
    assert list(tmp_path.iterdir()) == []


def test_prepare_output_restores_a_set_aside_output_then_refuses_to_overwrite_it(tmp_path):
    set_aside_fit = tmp_path / ".fit.old-0123abcd"  # killed between its two renames
    set_aside_fit.mkdir()
    (set_aside_fit / "a.txt").write_text("previous")
    assert set_aside(tmp_path, "fit") == [set_aside_fit]
    with pytest.raises(OutputExists):
        prepare_output(tmp_path, "fit", overwrite=False)
    assert (tmp_path / "fit" / "a.txt").read_text() == "previous" and _hidden(tmp_path) == []
    prepare_output(tmp_path, "fit", overwrite=True)
    assert (tmp_path / "fit" / "a.txt").read_text() == "previous"


def test_write_error_names_the_fix_for_a_full_disk_and_a_read_only_folder(tmp_path):
    full = write_error(tmp_path / "eval", OSError(errno.ENOSPC, "No space left on device"))
    assert str(full) == (
        f"cannot write {tmp_path / 'eval'} (No space left on device); no eval/ was written; "
        f"free space on the disk of {tmp_path} (or raise the quota), then run again"
    )
    denied = write_error(tmp_path / "eval", OSError(errno.EACCES, "Permission denied"), "x")
    assert "(Permission denied); x; make" in str(denied)
