"""Output folders in RUN_DIR (``fit/``, ``eval/``) written whole or not at all.

An output is written into a hidden temporary folder beside it and renamed into place at the
end; the previous output is set aside first and removed only once the new one is in place, so a
failure at any point (an error, Ctrl-C) leaves the previous output as it was. Temporary folders
that a killed process left behind are removed the next time the same output is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def _temporary_name(name: str) -> str:
    return f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _writer_pid(path: Path, name: str) -> int | None:
    """The process id in a temporary folder's name (``.NAME.PID-HEX.tmp``), None if not one."""
    stem = path.name.removeprefix(f".{name}.").removesuffix(".tmp")
    if stem == path.name or "-" not in stem:
        return None
    pid = stem.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _remove_stale(run_dir: Path, name: str) -> None:
    """Remove the temporary folders of ``name`` whose writing process is gone; a previous output
    set aside by a writer killed between its two renames is put back (or removed when the new
    one made it into place)."""
    for path in run_dir.glob(f".{name}.*.tmp"):
        pid = _writer_pid(path, name)
        if pid is not None and pid != os.getpid() and not _alive(pid) and path.is_dir():
            log.info("removing %s, left by a writer (process %d) that did not finish", path, pid)
            shutil.rmtree(path)
    final = run_dir / name
    for old in sorted(run_dir.glob(f".{name}.old-*")):
        if final.exists():
            log.info("removing %s, a replaced %s/ left by an interrupted writer", old, name)
            _remove(old)
        else:
            log.warning("restoring %s/ from %s, set aside by an interrupted writer", name, old)
            old.rename(final)


@contextmanager
def replaced_folder(run_dir: Path, name: str) -> Iterator[Path]:
    """A new, empty temporary folder to write ``RUN_DIR/NAME`` into; when the block ends without
    an exception it becomes ``RUN_DIR/NAME`` (replacing the previous one), otherwise it is removed
    and the previous ``RUN_DIR/NAME``, if any, is left as it was."""
    run_dir = Path(run_dir)
    final = run_dir / name
    _remove_stale(run_dir, name)
    tmp = run_dir / _temporary_name(name)
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        if final.exists():
            old = run_dir / f".{name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
    except BaseException:
        if old is not None and not final.exists():
            old.rename(final)  # put the previous output back
        if tmp.exists():
            shutil.rmtree(tmp)
        raise
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
