"""Reading and extracting archives (.tgz/.tar.gz/.tar/.zip) without trusting their contents.

Every member is checked before anything is read or written, with the rules of Python's
tarfile `filter="data"` (implemented here so Python 3.10 gets them too), for tar and zip alike:
no absolute paths, no `..`, no links pointing outside the archive root, no device files
or FIFOs. One unsafe member refuses the whole archive.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Iterator, NamedTuple

from fitvision.errors import FitVisionError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


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
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
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
        target = zf.read(info).decode("utf-8", "replace")
        return Member(name, "symlink", check_link(archive, name, target, hard=False), 0)
    if info.is_dir():
        return Member(name, "dir", "", 0)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded, a plain file
        raise _refuse(archive, info.filename, "is a device file or FIFO")
    return Member(name, "file", "", info.file_size)


@contextlib.contextmanager
def _open_tar(path) -> Iterator[tarfile.TarFile]:
    """A tar in stream mode (one sequential pass, no seeking).

    gzip goes through GzipFile, which checks the end-of-stream marker and CRC: tarfile's own
    gzip reader would silently stop at a truncated archive and lose its last members.
    """
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            tf = tarfile.open(fileobj=stream, mode="r|" if gz else "r|*")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise FitVisionError(f"cannot read archive {path}: {e}") from None
        with tf:
            yield tf
            if gz:
                stream.read()  # to the end: a truncated stream raises EOFError here


def _open_zip(path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise FitVisionError(f"cannot read archive {path}: {e}") from None


# --------------------------------------------------------------------------- reading
def list_members(path) -> list[Member]:
    """Every member, checked. One full pass over a tar (it has no index)."""
    try:
        if archive_kind(path) == "zip":
            with _open_zip(path) as zf:
                return [_zip_member(path, zf, info) for info in zf.infolist()]
        with _open_tar(path) as tf:
            return [_tar_member(path, info) for info in tf]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise FitVisionError(f"cannot read archive {path} (truncated or corrupt?): {e}") from None


def iter_files(path, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, content) of regular files, in archive order, checking every member on the way.

    `wanted` (normalised names) limits which contents are read. Links are not followed:
    data sets are plain files, and a link is never a reason to read outside the root.
    """
    try:
        if archive_kind(path) == "zip":
            with _open_zip(path) as zf:
                for info in zf.infolist():
                    m = _zip_member(path, zf, info)
                    if m.kind == "file" and (wanted is None or m.name in wanted):
                        yield m.name, zf.read(info)
            return
        with _open_tar(path) as tf:
            for info in tf:
                m = _tar_member(path, info)
                if m.kind == "file" and (wanted is None or m.name in wanted):
                    yield m.name, tf.extractfile(info).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise FitVisionError(f"cannot read archive {path} (truncated or corrupt?): {e}") from None


def read_all(path) -> tuple[list[Member], dict[str, bytes]]:
    """Every member (checked) and every regular file's content, in one pass over the archive."""
    members, contents = [], {}
    try:
        if archive_kind(path) == "zip":
            with _open_zip(path) as zf:
                for info in zf.infolist():
                    members.append(_zip_member(path, zf, info))
                    if members[-1].kind == "file":
                        contents[members[-1].name] = zf.read(info)
            return members, contents
        with _open_tar(path) as tf:
            for info in tf:
                members.append(_tar_member(path, info))
                if members[-1].kind == "file":
                    contents[members[-1].name] = tf.extractfile(info).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise FitVisionError(f"cannot read archive {path} (truncated or corrupt?): {e}") from None
    return members, contents


# --------------------------------------------------------------------------- extraction
def _inside(root: str, target: str) -> bool:
    real = os.path.realpath(target)
    return real == root or real.startswith(root + os.sep)


def _write(root: str, m: Member, data: bytes, archive) -> None:
    target = os.path.join(root, *m.name.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Re-check on the real file system: an earlier (in-bounds) symlink must not redirect a write.
    if not _inside(root, os.path.dirname(target)):
        raise _refuse(archive, m.name, "would be written through a link outside the target")
    if os.path.islink(target):
        os.unlink(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _place(root: str, m: Member, read, archive) -> None:
    target = os.path.join(root, *m.name.split("/"))
    if m.kind == "dir":
        os.makedirs(target, exist_ok=True)
        if not _inside(root, target):
            raise _refuse(archive, m.name, "would be created through a link outside the target")
    elif m.kind == "file":
        _write(root, m, read(), archive)
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
            _write(root, m, f.read(), archive)


def _extract_into(archive, root: str) -> None:
    if archive_kind(archive) == "zip":
        with _open_zip(archive) as zf:
            members = [(_zip_member(archive, zf, info), info) for info in zf.infolist()]
            for m, info in members:  # every member checked before the first write
                _place(root, m, lambda info=info: zf.read(info), archive)
        return
    _ = list_members(archive)  # a full checking pass first: refuse before writing anything
    with _open_tar(archive) as tf:
        for info in tf:
            m = _tar_member(archive, info)
            _place(root, m, lambda info=info: tf.extractfile(info).read(), archive)


def safe_extract(archive, dest) -> Path:
    """Extract `archive` into the new folder `dest`, atomically; returns dest.

    Extracts into a temporary sibling and renames it, so a crash never leaves a folder
    that looks complete. An existing `dest` is trusted as a finished extraction.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            _extract_into(archive, os.path.realpath(tmp))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise FitVisionError(f"cannot extract {archive} (truncated or corrupt?): {e}") from None
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():  # lost a race to a parallel extraction otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
