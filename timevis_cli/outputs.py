"""Output folders in RUN_DIR (``fit/``, ``render/``, ``eval/``) written whole or not at all.

An output is written into a hidden temporary folder beside it and renamed into place at the
end; the previous output is set aside first and removed only once the new one is in place, so a
failure at any point (an error, a full disk, Ctrl-C, SIGKILL) leaves the previous output as it
was. A new output replaces the previous folder as a whole: nothing of the previous one is kept
beside it. Writers of a RUN_DIR take turns: each holds an exclusive ``flock`` on the RUN_DIR
folder from creating its temporary folder to removing the old output, so whatever temporary or
set-aside folder a writer finds while it holds the lock was left by one that was killed: it is
removed (a set-aside previous output with nothing in its place is put back).

Failures to write (a full disk, a read-only RUN_DIR, a failed rename) are raised as
:class:`OutputWriteError`, one line naming the output, the reason and the fix;
:func:`prepare_output` checks that RUN_DIR can be written before a command computes anything.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from timevis_cli.errors import InputError, TimeVisError

log = logging.getLogger(__name__)

#: errno values that mean "this cannot be written here", whatever the file
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


class OutputExists(FileExistsError):
    """``RUN_DIR/NAME`` exists and ``replaced_folder`` was told not to overwrite it."""


class OutputWriteError(TimeVisError):
    """``RUN_DIR/NAME`` could not be written (disk full, read-only, failed rename); the previous
    output, if any, is kept as it was."""


def write_error(final: Path, exc: OSError, kept: str | None = None) -> OutputWriteError:
    """The one-line error of a failed write of the output folder ``final``: the reason (the
    system's, on one line) and the fix. ``kept``: what happened to what was there (default: the
    previous output is kept, or nothing was written)."""
    final = Path(final)
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if kept is None:
        kept = (
            f"the previous {final.name}/ is kept as it was"
            if final.exists()
            else f"no {final.name}/ was written"
        )
    if exc.errno in _NO_SPACE:
        fix = f"free space on the disk of {final.parent} (or raise the quota), then run again"
    else:
        fix = (
            f"make {final.parent} writable, or copy the run store to a writable folder, "
            "then run again"
        )
    return OutputWriteError(f"cannot write {final} ({reason}); {kept}; {fix}")


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
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _count_files(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return 1
    return sum(1 for item in path.rglob("*") if not item.is_dir())


def set_aside(run_dir: Path, name: str) -> list[Path]:
    """Previous ``RUN_DIR/NAME`` folders set aside by writers that did not finish (found only
    where such a writer was killed between its two renames, or is between them right now)."""
    return sorted(Path(run_dir).glob(f".{name}.old-*"))


def _clean_leftovers(run_dir: Path, name: str) -> None:
    """With the lock held: remove what killed writers of ``name`` left behind."""
    for tmp in sorted(run_dir.glob(f".{name}.*.tmp")):
        log.info("removing %s, left by a writer of %s/ that did not finish", tmp, name)
        _remove(tmp)
    final = run_dir / name
    for old in set_aside(run_dir, name):
        if final.exists() or final.is_symlink():
            log.info("removing %s, a replaced %s/ left by an interrupted writer", old, name)
            _remove(old)
        else:
            log.warning("restoring %s/ from %s, set aside by an interrupted writer", name, old)
            old.rename(final)


def _check_target(final: Path, overwrite: bool, replace_file: bool) -> None:
    """With the lock held and leftovers cleaned: may ``final`` be replaced?"""
    exists = final.exists() or final.is_symlink()
    if exists and not overwrite:
        raise OutputExists(f"{final} already exists")
    if exists and not replace_file and not final.is_dir():
        raise InputError(
            f"{final} is a file, not a folder; move it away so timevis can write {final.name}/"
        )


def _start(
    run_dir: Path,
    name: str,
    locked: bool,
    overwrite: bool,
    replace_file: bool,
    kept: str | None = None,
) -> Path:
    """With the lock held (``locked``: leftovers of killed writers are cleaned first): check
    that ``RUN_DIR/NAME`` may be replaced and create the new, empty temporary folder for it. A
    failure to write is :class:`OutputWriteError` (``kept`` as in :func:`write_error`)."""
    final = run_dir / name
    try:
        if locked:
            _clean_leftovers(run_dir, name)
        _check_target(final, overwrite, replace_file)
        tmp = run_dir / f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
    except OutputExists:
        raise
    except OSError as exc:
        raise write_error(final, exc, kept=kept) from exc
    return tmp


def prepare_output(
    run_dir: Path, name: str, overwrite: bool = True, replace_file: bool = False
) -> None:
    """Before computing an output: put back a ``RUN_DIR/NAME`` set aside by a killed writer,
    refuse what :func:`replaced_folder` would refuse, and check that RUN_DIR can be written (a
    temporary folder is created and removed), so a command fails here rather than after minutes
    of work. Raises :class:`OutputExists`, :class:`~timevis_cli.errors.InputError` (NAME is a
    file and ``replace_file`` is false) or :class:`OutputWriteError`."""
    run_dir = Path(run_dir)
    with _exclusive(run_dir) as locked:
        probe = _start(run_dir, name, locked, overwrite, replace_file, kept="nothing was computed")
        try:
            probe.rmdir()
        except OSError as exc:
            raise write_error(run_dir / name, exc, kept="nothing was computed") from exc


def _about_writing(exc: OSError, tmp: Path) -> bool:
    """Whether an error raised while writing into ``tmp`` is the output's (a full disk, a
    read-only file system, or any failure on a path inside ``tmp``) rather than, say, a read."""
    if exc.errno in _NO_SPACE or exc.errno == errno.EROFS:
        return True
    for name in (exc.filename, exc.filename2):
        if isinstance(name, (str, bytes, os.PathLike)):
            path = Path(os.fsdecode(name))
            if path == tmp or tmp in path.parents or tmp.name in path.parts:
                return True
    return False


@contextmanager
def _logged_as(tmp: Path, final: Path) -> Iterator[None]:
    """While the block runs, log lines of this process that name the temporary folder name the
    final one instead (e.g. ``wrote RUN_DIR/render/training.gif``), the path the user will find."""
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is left for logging to report as usual
            return record
        if tmp.name in message:
            record.msg, record.args = message.replace(tmp.name, final.name), None
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


@contextmanager
def replaced_folder(
    run_dir: Path, name: str, overwrite: bool = True, replace_file: bool = False
) -> Iterator[Path]:
    """A new, empty temporary folder to write ``RUN_DIR/NAME`` into; when the block ends without
    an exception it becomes ``RUN_DIR/NAME``, replacing the previous one as a whole (logged with
    the previous one's number of files), otherwise it is removed and the previous
    ``RUN_DIR/NAME``, if any, is left as it was.

    ``overwrite=False``: :class:`OutputExists` (before the block runs) when ``RUN_DIR/NAME``
    exists. ``replace_file=False``: :class:`~timevis_cli.errors.InputError` (before the block
    runs) when ``RUN_DIR/NAME`` is a file, not a folder (a user's file is not deleted unasked).
    An ``OSError`` about writing (full disk, read-only, a path in the temporary folder, the
    renames) becomes :class:`OutputWriteError`; other errors pass through unchanged.
    """
    run_dir = Path(run_dir)
    final = run_dir / name
    with _exclusive(run_dir) as locked:
        tmp = _start(run_dir, name, locked, overwrite, replace_file)
        old: Path | None = None
        swapping = False
        try:
            with _logged_as(tmp, final):
                yield tmp
            swapping = True
            if final.exists() or final.is_symlink():
                old = run_dir / f".{name}.old-{uuid.uuid4().hex[:8]}"
                final.rename(old)
            tmp.rename(final)
        except BaseException as exc:
            if old is not None and not final.exists():
                old.rename(final)  # put the previous output back
            if tmp.exists():
                shutil.rmtree(tmp)
            if isinstance(exc, OSError) and (swapping or _about_writing(exc, tmp)):
                raise write_error(final, exc) from exc
            raise
        if old is None:
            log.info("wrote %s/", final)
            return
        previous = _count_files(old)
        log.info("replaced %s/ (previous: %d files)", final, previous)
        try:
            _remove(old)
        except OSError as exc:  # the new output is in place: say what is left, go on
            log.warning("%s/ is written, but the previous one could not be removed: %s "
                        "(delete %s by hand)", final, exc, old)  # fmt: skip
