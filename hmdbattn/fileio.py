"""Atomic writes: write to a temporary file beside the target, then rename over it.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file. The temporary file is named ``.<name>.<pid>.<random>.tmp``: a process killed
while writing leaves it behind, and `remove_stale_temps` later tells such leftovers (their
process is gone) from the files another process is writing right now.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from hmdbattn.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(path: Path, sync: bool = False) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` only when the block finishes without error.

    `sync` flushes the file to disk before the rename and the folder after it, so that once
    the block ends the new file survives a power cut (for files that record progress).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; honour the user's umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder: makes the renames and deletions in it durable (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, sync: bool = False) -> None:
    """Replace `path` with `data` atomically (durably with `sync`)."""
    with atomic_writer(path, sync) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str, sync: bool = False) -> None:
    """Replace `path` with UTF-8 `text` atomically (durably with `sync`)."""
    atomic_write_bytes(path, text.encode("utf-8"), sync)


def remove_stale_temps(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that killed writers of `names` left in `folder`; those deleted.

    Only ``.<name>.*.tmp`` files of the given names are considered, and only those whose writer
    is no longer running (or whose name carries no process id, as older versions wrote them).
    """
    removed = []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            if not _writer_alive(tmp.name[len(name) + 2 :]):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _writer_alive(rest: str) -> bool:
    """Whether the process named in a temp file's ``<pid>.<random>.tmp`` tail still runs."""
    pid_text = rest.split(".", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if os.name == "nt":
        return True  # os.kill(pid, 0) would end the process there: leave the file be
    if pid == os.getpid():
        return True  # this process's own file, being written by another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return True


def os_error_text(exc: OSError) -> str:
    """What went wrong with a file, as the end of a one-line message (without the file's name)."""
    reason = exc.strerror or type(exc).__name__
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}: free space on that disk (or use another folder)"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{reason}: make the folder writable or choose another one"
    return reason


@contextlib.contextmanager
def os_errors(path: Path, doing: str, hint: str = "") -> Iterator[None]:
    """Turn an OSError (disk full, read-only, a folder in the way) into one UserError line.

    The line names `path` and what could not be done (`doing`: "write", "read", ...), then
    the system's reason and `hint` (what to do; by default, nothing more).
    """
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot {doing} {path}: {exc.strerror or exc}{hint}") from None


@contextlib.contextmanager
def folder_lock(folder: Path, lock_name: str, what: str) -> Iterator[None]:
    """Hold `folder`'s lock file for the block; a UserError naming the process that holds it.

    An ``flock``: the kernel releases it when its holder exits, however it dies, so a killed
    run never leaves a stale lock. The lock file stays (removing it would race a new run).
    `what` names the folder and its writer in the message, e.g. ``"cache X ... preprocess"``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / lock_name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise UserError(
                f"{what} (pid {holder}) is writing it; wait for it to finish (or stop it), "
                "then rerun"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)
