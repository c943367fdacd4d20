"""The decoded-array cache: one folder per (source, storage size, resize method), written atomically.

A folder holds `<split>_x.npy` / `<split>_y.npy` and `meta.json` (classes, source
fingerprint, storage size, counts, shapes). It is built under a temporary name and
renamed when complete; on load every array is checked against the meta (shape, dtype,
file length), so a truncated or corrupt cache is rebuilt instead of trusted.

A full disk is one FitVisionError, never a SIGBUS: free space is checked first and each array's
blocks are reserved (posix_fallocate, else zeros written) before it is memory-mapped. The
temporary folder carries host and pid (files.temp_prefix), so the next build removes a killed
process's leftovers at once (files.remove_leftovers) and never a live builder's.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fitvision.data.items import walk
from fitvision.data.sources import cache_dir
from fitvision.errors import FitVisionError
from fitvision.files import remove_leftovers, temp_prefix

FORMAT_VERSION = 1  # bump when the decode changes, so old caches are not reused
ARRAYS = ("train_x", "train_y", "valid_x", "valid_y")


def fingerprint(source: Path) -> dict:
    """Identifies the source's content cheaply: path, sizes and modification times."""
    source = source.resolve()
    if source.is_file():
        st = source.stat()
        return {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(walk(source)):  # symlinked folders too: they are read as data
        dirs.sort()
        for name in sorted(files):
            st = _stat(os.path.join(folder, name))
            digest.update(f"{os.path.relpath(os.path.join(folder, name), source)}\t{st.st_size}\t"
                          f"{st.st_mtime_ns}\n".encode())
    return {"path": str(source), "files": digest.hexdigest()}


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:  # a dangling symlink: the link itself; decoding skips it as unreadable
        return os.lstat(path)


def cache_folder(name: str, source_fp: dict, storage_size: int, resize_method: str = "crop",
                 resize_filter: str = "bicubic") -> Path:
    key = {"source": source_fp, "storage_size": storage_size, "format": FORMAT_VERSION}
    if resize_method != "crop":  # (the defaults stay out of the key, so existing caches stay valid)
        key["resize_method"] = resize_method
    if resize_filter != "bicubic":
        key["resize_filter"] = resize_filter
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"
    method = ("" if resize_method == "crop" else f"-{resize_method}") + \
        ("" if resize_filter == "bicubic" else f"-{resize_filter}")
    return cache_dir() / f"{slug}-s{storage_size}{method}-{digest}"


def load(folder: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays memory-mapped) if the folder is complete and consistent, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {}
        for name in ARRAYS:
            shape, dtype = tuple(meta["arrays"][name]["shape"]), np.dtype(meta["arrays"][name]["dtype"])
            path = folder / f"{name}.npy"
            arr = np.load(path, mmap_mode="r" if 0 not in shape else None, allow_pickle=False)
            if arr.shape != shape or arr.dtype != dtype:
                return None
            if isinstance(arr, np.memmap) and os.path.getsize(path) != arr.offset + arr.nbytes:
                return None
            arrays[name] = arr
        return meta, arrays
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


OLD_STALE_SECONDS = 6 * 3600  # an old-style temporary folder (no pid in its name) this old is a leftover
SPACE_MARGIN = 64 << 20  # bytes left free beyond the arrays: meta.json, and room for everyone else
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class CacheUnwritable(FitVisionError):
    """The cache folder cannot be written at all (read-only, no permission): decode in memory instead."""


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def _free(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def space_error(root: Path, need: int | None, free: int, margin: int = 0) -> FitVisionError:
    spare = f" (and {_size(margin)} to spare)" if margin else ""
    needs = f"it needs {_size(need)}{spare}, {_size(free)} free" if need else f"{_size(free)} free"
    return FitVisionError(f"not enough free space for the decoded cache in {root}: {needs}; free some space "
                          f"or set FITVISION_CACHE_DIR to a folder on a larger disk")


def _remove_old_leftovers(root: Path) -> None:
    """Temporary folders of versions before temp_prefix (`.NAME.tmp-XXXXXXXX`) carry no pid, so only
    their age says they are dead."""
    now = time.time()
    for entry in root.glob(".*.tmp-*"):
        try:
            if now - entry.stat().st_mtime > OLD_STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _npy_header(shape: tuple, dtype) -> bytes:
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.getvalue()


def _allocate(fd: int, offset: int, length: int) -> None:
    """Give the file real blocks for [offset, offset + length): a memory map over a sparse file
    finds the disk full only when a page is written back, and the kernel says so with SIGBUS."""
    fallocate = getattr(os, "posix_fallocate", None)  # absent on macOS
    if fallocate is not None:
        try:
            fallocate(fd, offset, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    zeros = bytes(1 << 20)  # the filesystem cannot reserve: write the zeros ourselves
    os.lseek(fd, offset, os.SEEK_SET)
    while length > 0:
        length -= os.write(fd, zeros[:min(length, len(zeros))])


class CacheWriter:
    """Builds a cache folder under a temporary name; commit() renames it into place.

    Raises CacheUnwritable where the cache folder cannot be written, and a FitVisionError naming
    the space needed and free where the disk is full; either way nothing is left behind."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root = folder.parent
        self.reserved = 0  # bytes of array files already reserved in self.tmp
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=temp_prefix(folder), suffix=".tmp"))
        except OSError as e:
            if e.errno in _FULL:
                raise space_error(self.root, None, _free(self.root)) from None
            if isinstance(e, PermissionError) or e.errno in _UNWRITABLE:
                raise CacheUnwritable(f"cannot write the decoded cache in {self.root} ({e.strerror})") from None
            raise
        remove_leftovers(self.root)
        _remove_old_leftovers(self.root)

    def check_space(self, nbytes: int) -> None:
        """Fail now, with one clear line, if nbytes more (plus a margin) will not fit."""
        free = _free(self.tmp)
        if nbytes + SPACE_MARGIN > free:
            self.discard()
            raise space_error(self.root, self.reserved + nbytes, self.reserved + free, SPACE_MARGIN)

    def array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """A writable array backed by a file in the temporary folder (memory if empty), its blocks
        reserved before it is mapped: a full disk is an error here, never a SIGBUS later."""
        if 0 in shape:
            return np.zeros(shape, dtype=dtype)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.check_space(nbytes)
        path = self.tmp / f"{name}.npy"
        header = _npy_header(shape, dtype)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, header)
                _allocate(fd, len(header), nbytes)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno not in _FULL:
                raise
            free = _free(self.tmp)
            self.discard()
            raise space_error(self.root, self.reserved + nbytes, self.reserved + free) from None
        self.reserved += nbytes
        return np.lib.format.open_memmap(path, mode="r+")

    def commit(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        meta = dict(meta, arrays={n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()})
        mapped = {n for n, a in arrays.items() if isinstance(a, np.memmap) and Path(a.filename).parent == self.tmp}
        self.check_space(sum(a.nbytes for n, a in arrays.items() if n not in mapped))
        try:
            for name, arr in arrays.items():
                path = self.tmp / f"{name}.npy"
                if name in mapped:
                    arr.flush()
                    if Path(arr.filename) != path:  # e.g. a compacted copy: move it into place
                        os.replace(arr.filename, path)
                else:
                    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
            (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        except OSError as e:
            if e.errno not in _FULL:
                raise
            self.discard()
            raise space_error(self.root, None, _free(self.root)) from None
        self._publish(meta)

    def _publish(self, meta: dict) -> None:
        if self.folder.exists():
            existing = load(self.folder)
            if existing is not None and set(meta) <= set(existing[0]):
                self.discard()  # a parallel build finished first: keep theirs, a reader may be mapping it
                return
            # invalid, or made by an older version (fewer meta fields): moved aside in one step, removed
            aside = Path(tempfile.mkdtemp(dir=self.root, prefix=temp_prefix(self.folder), suffix=".tmp"))
            try:
                os.rename(self.folder, aside / "old")
            except OSError:
                pass  # another builder moved it first
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(self.tmp, self.folder)
        except OSError:
            if not self.folder.exists():
                raise
            self.discard()  # a parallel build finished first; keep theirs

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class MemoryWriter:
    """CacheWriter's interface with nothing written: for a cache folder that cannot be written."""

    def check_space(self, nbytes: int) -> None:
        pass

    def array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def discard(self) -> None:
        pass
