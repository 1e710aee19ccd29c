"""Output folders in RUN_DIR (``fit/``, ``eval/``) written whole or not at all.

An output is written into a hidden temporary folder beside it and renamed into place at the
end; the previous output is set aside first and removed only once the new one is in place, so a
failure at any point (an error, Ctrl-C) leaves the previous output as it was. Writers of a
RUN_DIR take turns: each holds an exclusive ``flock`` on the RUN_DIR folder from creating its
temporary folder to removing the old output, so whatever temporary or set-aside
folder a writer finds while it holds the lock was left by one that was killed: it is removed
(a set-aside previous output with nothing in its place is put back).
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

class OutputExists(FileExistsError):
    """``RUN_DIR/NAME`` exists and ``replaced_folder`` was told not to overwrite it."""


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the RUN_DIR folder itself (blocking until it is free; nothing
    is written for it). Yields False where it cannot be had (no ``fcntl`` on Windows, a file
    system without ``flock`` on folders): then nothing is locked and no leftovers are cleaned."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield False
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as exc:
            log.debug("no lock on %s (%s): leftovers of killed writers are kept", run_dir, exc)
            locked = False
        yield locked
    finally:
        os.close(fd)  # closing releases the lock


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _clean_leftovers(run_dir: Path, name: str) -> None:
    """With the lock held: remove what killed writers of ``name`` left behind."""
    for tmp in sorted(run_dir.glob(f".{name}.*.tmp")):
        log.info("removing %s, left by a writer of %s/ that did not finish", tmp, name)
        _remove(tmp)
    final = run_dir / name
    for old in sorted(run_dir.glob(f".{name}.old-*")):
        if final.exists():
            log.info("removing %s, a replaced %s/ left by an interrupted writer", old, name)
            _remove(old)
        else:
            log.warning("restoring %s/ from %s, set aside by an interrupted writer", name, old)
            old.rename(final)


@contextmanager
def replaced_folder(run_dir: Path, name: str, overwrite: bool = True) -> Iterator[Path]:
    """A new, empty temporary folder to write ``RUN_DIR/NAME`` into; when the block ends without
    an exception it becomes ``RUN_DIR/NAME`` (replacing the previous one), otherwise it is removed
    and the previous ``RUN_DIR/NAME``, if any, is left as it was.

    ``overwrite=False``: :class:`OutputExists` (before the block runs) when ``RUN_DIR/NAME``
    exists.
    """
    run_dir = Path(run_dir)
    final = run_dir / name
    with _exclusive(run_dir) as locked:
        if locked:
            _clean_leftovers(run_dir, name)
        if final.exists() and not overwrite:
            raise OutputExists(f"{final} already exists")
        tmp = run_dir / f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
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
            try:
                _remove(old)
            except OSError as exc:  # the new output is in place: say what is left, go on
                log.warning("%s/ is written, but the previous one could not be removed: %s "
                            "(delete %s by hand)", final, exc, old)  # fmt: skip
