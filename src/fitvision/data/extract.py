"""Reading and extracting archives (.tgz/.tar.gz/.tar/.zip) without trusting their contents.

Every member is checked before anything is read or written, with the rules of Python's
tarfile `filter="data"` (implemented here so Python 3.10 gets them too), for tar and zip alike:
no absolute paths, no `..`, no links pointing outside the archive root, no device files
or FIFOs. One unsafe member refuses the whole archive. Every regular member is also weighed
against the caps of data/limits.py before it is read, and read in pieces: a small archive that
would expand into gigabytes is refused by name, never read into memory or onto disk.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from fitvision.data.limits import CHUNK, Budget
from fitvision.errors import FitVisionError
from fitvision.files import disk_error, remove_leftovers, temp_prefix

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_LINK_TARGET = 4096  # a zip symlink's target is its content: longer is no path
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)


class CorruptArchive(FitVisionError):
    """An archive that cannot be read to its end: truncated, corrupt, or no archive at all."""

    def __init__(self, message: str, path, reason: str):
        super().__init__(message)
        self.path, self.reason = path, reason


class Member(NamedTuple):
    name: str  # normalised relative posix path
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    link: str  # link target ("" unless a link)
    size: int


def archive_kind(path) -> str | None:
    """"tar", "zip" or None, from the file name."""
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return None


def archive_stem(path) -> str:
    name = Path(path).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- member checks
def _refuse(archive, name: str, why: str) -> FitVisionError:
    return FitVisionError(f"refusing unsafe archive {archive}: member '{name}' {why}")


def check_name(archive, name: str) -> str:
    """The member's normalised relative path, or an error if it could land outside the root."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _refuse(archive, name, "has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise _refuse(archive, name, "contains '..'")
    clean = posixpath.normpath("/".join(p for p in parts if p not in ("", ".")) or ".")
    return clean


def check_link(archive, name: str, target: str, hard: bool) -> str:
    """A link target that stays inside the root: hard links are relative to the root, symlinks to their folder."""
    if not target or target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
        raise _refuse(archive, name, f"links to an absolute path '{target}'")
    base = "" if hard else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith(("../", "/")):
        raise _refuse(archive, name, f"links outside the archive ('{target}')")
    return resolved


def _tar_member(archive, info: tarfile.TarInfo) -> Member:
    name = check_name(archive, info.name)
    if info.isreg():
        return Member(name, "file", "", info.size)
    if info.isdir():
        return Member(name, "dir", "", 0)
    if info.issym():
        return Member(name, "symlink", check_link(archive, name, info.linkname, hard=False), 0)
    if info.islnk():
        return Member(name, "hardlink", check_link(archive, name, info.linkname, hard=True), 0)
    raise _refuse(archive, info.name, "is a device file or FIFO")


def _zip_member(archive, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    name = check_name(archive, info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        if info.file_size > MAX_LINK_TARGET:
            raise _refuse(archive, info.filename, f"is a symlink with a {info.file_size}-byte target")
        target = zf.read(info).decode("utf-8", "replace")
        return Member(name, "symlink", check_link(archive, name, target, hard=False), 0)
    if info.is_dir():
        return Member(name, "dir", "", 0)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded, a plain file
        raise _refuse(archive, info.filename, "is a device file or FIFO")
    return Member(name, "file", "", info.file_size)


@contextlib.contextmanager
def _open_tar(path, label, budget: Budget) -> Iterator[tuple[tarfile.TarFile, Callable[[], int]]]:
    """A tar in stream mode (one sequential pass, no seeking), and the compressed offset read so far.

    gzip goes through GzipFile, which checks the end-of-stream marker and CRC: tarfile's own
    gzip reader would silently stop at a truncated archive and lose its last members.
    """
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            tf = tarfile.open(fileobj=stream, mode="r|" if gz else "r|*")  # noqa: SIM115 - the with below closes it
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise CorruptArchive(f"cannot read archive {label} (truncated or corrupt?): {e}", label, str(e)) from None
        with tf:
            yield tf, raw.tell
            # To the end, in pieces: a truncated stream raises EOFError here, and what follows
            # the tar's last block is weighed like a member (it could be gigabytes of zeros).
            while gz and (piece := stream.read(CHUNK)):
                budget.admit("(data after the end of the tar)", len(piece))


def _open_zip(path, label) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptArchive(f"cannot read archive {label}: {e}", label, str(e)) from None


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # only a write raises these


@contextlib.contextmanager
def _read_errors(label, doing: str = "read archive"):
    """Errors of a broken archive, wherever the reading raised them, as one clear message."""
    try:
        yield
    except _READ_ERRORS as e:
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:  # the disk written to, not the archive
            raise
        raise CorruptArchive(f"cannot {doing} {label} (truncated or corrupt?): {e}", label, str(e)) from None


Content = Callable[[], Iterator[bytes]]


def _pieces(budget: Budget, m: Member, opener: Callable, position: Callable[[], int] | None = None):
    with opener() as f:
        yield from budget.chunks(m.name, f, m.size, position)


def _scan(path, kind: str | None = None, label=None) -> Iterator[tuple[Member, Content | None]]:
    """Every member, checked, and for a regular file (or a hard link's copy) a function giving its
    content in pieces, to be used before the next member: a tar is one stream. Each file is
    weighed against the caps (limits.Budget) before anything of it is read. Wrap the loop in
    _read_errors: reading errors surface where the pieces are read."""
    label = path if label is None else label
    budget = Budget(label, os.path.getsize(path))
    if (kind or archive_kind(path)) == "zip":
        with _open_zip(path, label) as zf:
            for info in zf.infolist():
                m = _zip_member(label, zf, info)
                if m.kind != "file":
                    yield m, None
                    continue
                budget.admit(m.name, info.file_size, info.compress_size)
                yield m, lambda info=info, m=m: _pieces(budget, m, lambda: zf.open(info))
        return
    sizes: dict[str, int] = {}
    with _open_tar(path, label, budget) as (tf, position):
        for info in tf:
            m = _tar_member(label, info)
            if m.kind == "hardlink" and m.link in sizes:  # extracted as a copy: it weighs as much
                budget.admit(m.name, sizes[m.link])
            if m.kind != "file":
                yield m, None
                continue
            budget.admit(m.name, m.size)
            sizes[m.name] = m.size
            yield m, lambda info=info, m=m: _pieces(budget, m, lambda: tf.extractfile(info), position)


# --------------------------------------------------------------------------- reading
def list_members(path, kind: str | None = None, label=None) -> list[Member]:
    """Every member, checked and weighed. One full pass over a tar (it has no index).

    `kind` ("tar"/"zip") overrides the file name's; `label` is what messages call the archive.
    """
    label = path if label is None else label
    with _read_errors(label):
        return [m for m, _ in _scan(path, kind, label)]


def iter_files(path, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, content) of regular files, in archive order, checking every member on the way.

    `wanted` (normalised names) limits which contents are read. Links are not followed:
    data sets are plain files, and a link is never a reason to read outside the root.
    """
    with _read_errors(path):
        for m, content in _scan(path):
            if m.kind == "file" and (wanted is None or m.name in wanted):
                yield m.name, b"".join(content())


def read_all(path, keep: int | None = None) -> tuple[list[Member], dict[str, bytes] | None]:
    """Every member (checked) and every regular file's content, in one pass over the archive.

    Past `keep` bytes of content the contents are dropped (None) and the pass only lists: the
    caller reads what it needs again, in pieces, rather than hold more than that in memory.
    """
    members, contents, held = [], {}, 0
    with _read_errors(path):
        for m, content in _scan(path):
            members.append(m)
            if m.kind != "file" or contents is None:
                continue
            held += m.size
            if keep is not None and held > keep:
                contents = None
            else:
                contents[m.name] = b"".join(content())
    return members, contents


# --------------------------------------------------------------------------- extraction
def _inside(root: str, target: str) -> bool:
    real = os.path.realpath(target)
    return real == root or real.startswith(root + os.sep)


def _write(root: str, m: Member, pieces: Iterable[bytes], archive) -> None:
    target = os.path.join(root, *m.name.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Re-check on the real file system: an earlier (in-bounds) symlink must not redirect a write.
    if not _inside(root, os.path.dirname(target)):
        raise _refuse(archive, m.name, "would be written through a link outside the target")
    if os.path.islink(target):
        os.unlink(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        for piece in pieces:
            f.write(piece)


def _place(root: str, m: Member, content: Content | None, archive) -> None:
    target = os.path.join(root, *m.name.split("/"))
    if m.kind == "dir":
        os.makedirs(target, exist_ok=True)
        if not _inside(root, target):
            raise _refuse(archive, m.name, "would be created through a link outside the target")
    elif m.kind == "file":
        _write(root, m, content(), archive)
    elif m.kind == "symlink":
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.relpath(os.path.join(root, m.link), os.path.dirname(target)), target)
        if not _inside(root, target):
            raise _refuse(archive, m.name, "links outside the target")
    else:  # hard link: copy the already-extracted target (never os.link to an outside inode)
        source = os.path.join(root, *m.link.split("/"))
        if not (_inside(root, source) and os.path.isfile(source)):
            raise _refuse(archive, m.name, f"hard-links to '{m.link}', which is not a file extracted before it")
        with open(source, "rb") as f:
            _write(root, m, iter(lambda: f.read(CHUNK), b""), archive)


def safe_extract(archive, dest) -> Path:
    """Extract `archive` into the new folder `dest`, atomically; returns dest.

    Extracts into a temporary sibling and renames it, so a crash never leaves a folder
    that looks complete; the temporary folders killed processes left beside it are removed
    first. An existing `dest` is trusted as a finished extraction.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest.parent)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=temp_prefix(dest), suffix=".tmp"))
    try:
        list_members(archive)  # a full checking pass first: refuse before writing anything
        with _read_errors(archive, "extract"):
            for m, content in _scan(archive):
                _place(os.path.realpath(tmp), m, content, archive)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; an extracted data set is shared like any folder
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():  # lost a race to a parallel extraction otherwise
                raise
    except OSError as e:  # a full disk mid-extraction: one line naming the folder, nothing kept
        raise (disk_error(dest, e, "extract into") or e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
