"""Writing files so that a crash, a full disk or a planted symlink never leaves a wrong one.

Every file fitvision writes into a run directory goes through ``atomic_path``: the content is
written to a fresh, uniquely named temporary file in the same folder (``mkstemp``: it cannot be
a symlink someone planted at a fixed name), flushed to disk, and renamed over the target in one
step. A reader sees the old file or the new one, never half of one.

Every temporary name fitvision makes (``temp_prefix``) carries the host and process that made
it, so a later run can tell the leftovers of a killed process from the files of a live one and
remove only those (``remove_leftovers``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fitvision.errors import FitVisionError

STALE_SECONDS = 6 * 3600  # another host's temporary file this old belongs to no live process
_TEMP = re.compile(r"^\.(?P<target>.+)\.fv-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[^.]*\.(?:tmp|part)$")


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temp_prefix(target: str | Path) -> str:
    """The start of a temporary name for ``target`` (a file or folder name): ``.NAME.fv-HOST-PID-``;
    mkstemp/mkdtemp add a random part, and the name ends in ``.tmp`` (``.part`` for downloads)."""
    return f".{Path(target).name}.fv-{_host_tag()}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_leftover(path: str | Path) -> bool:
    """Whether ``path`` is a fitvision temporary file or folder whose process is gone: one of this
    host's whose pid no longer runs, or another host's older than STALE_SECONDS."""
    m = _TEMP.match(Path(path).name)
    if m is None:
        return False
    pid = int(m["pid"])
    if m["host"] == _host_tag():
        return pid != os.getpid() and not pid_alive(pid)
    try:
        return time.time() - os.lstat(path).st_mtime > STALE_SECONDS
    except OSError:
        return False


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders killed fitvision processes left in ``folder``
    (never a live process's, never anything fitvision did not name); returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not is_leftover(entry):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed


# Errors of the disk, not of fitvision: each becomes one line naming the file (errors.FitVisionError).
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for the file system",
                errno.EIO: "an I/O error"}


def disk_error(path: str | Path, e: OSError, what: str = "write") -> FitVisionError | None:
    """The one-line error for an OSError of the disk while writing ``path``; None for other errors."""
    if e.errno not in _DISK_ERRORS:
        return None
    hint = "; free some space or choose another place" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return FitVisionError(f"cannot {what} {path}: {_DISK_ERRORS[e.errno]}{hint}")


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_previous: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it becomes ``path``, else it is removed.

    The temporary file exists (empty, mode 0600) when the block starts: writers that replace it
    (safetensors, torch.onnx) and writers that open it for writing both work. ``keep_previous``:
    the file ``path`` held is moved there once the new one is complete on disk. A full or
    read-only disk is a FitVisionError naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed it without an fsync
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a run's files are meant to be shared like any other
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as e:
        error = disk_error(path, e)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def check_writable(folder: str | Path, what: str) -> None:
    """Fail now, before any work, where ``folder`` (which may not exist yet) cannot be written:
    a probe file is created and removed in its nearest existing ancestor. ``what`` names it."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FitVisionError(f"{what} {folder}: {existing} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=temp_prefix(folder), suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        reason = _DISK_ERRORS.get(e.errno, e.strerror)
        raise FitVisionError(f"cannot write {what} {folder}: {reason} ({existing})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------- reading
class NotRegularFile(OSError):
    """A path that names a FIFO, a socket or a device: opening or reading it can block forever."""


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _open_nonblocking(path, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def open_regular(path):
    """The file at ``path`` opened for binary reading, only if it is a regular file (a symlink to
    one is fine). Opened without blocking and checked on the open descriptor: a FIFO would block
    the open itself until a writer came, and a check before opening could be raced."""
    f = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 - returned open, closed by the caller
    try:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
            raise NotRegularFile(f"not a regular file but {kind}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(f.fileno(), True)  # a regular file reads the same either way; leave it as usual
    except BaseException:
        f.close()
        raise
    return f
