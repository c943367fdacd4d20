"""The decoded-array cache: one folder per (source, storage size, resize method), written atomically.

A folder holds `<split>_x.npy` / `<split>_y.npy` and `meta.json` (classes, source
fingerprint, storage size, counts, shapes). It is built under a temporary name and
renamed when complete; on load every array is checked against the meta (shape, dtype,
file length), so a truncated or corrupt cache is rebuilt instead of trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from fitvision.data.items import walk
from fitvision.data.sources import cache_dir

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


def cache_folder(name: str, source_fp: dict, storage_size: int, resize_method: str = "crop") -> Path:
    key = {"source": source_fp, "storage_size": storage_size, "format": FORMAT_VERSION}
    if resize_method != "crop":  # (the default stays out of the key, so existing caches stay valid)
        key["resize_method"] = resize_method
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"
    method = "" if resize_method == "crop" else f"-{resize_method}"
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


STALE_SECONDS = 6 * 3600  # a temporary build folder this old was left by a killed process


def _remove_stale(root: Path) -> None:
    now = time.time()
    for entry in root.glob(".*.tmp-*"):
        try:
            if now - entry.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


class CacheWriter:
    """Builds a cache folder under a temporary name; commit() renames it into place."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        _remove_stale(folder.parent)

    def array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """A writable array backed by a file in the temporary folder (memory if empty)."""
        if 0 in shape:
            return np.zeros(shape, dtype=dtype)
        return np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

    def commit(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        meta = dict(meta, arrays={n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()})
        for name, arr in arrays.items():
            path = self.tmp / f"{name}.npy"
            if isinstance(arr, np.memmap) and Path(arr.filename).parent == self.tmp:
                arr.flush()
                if Path(arr.filename) != path:  # e.g. a compacted copy: move it into place
                    os.replace(arr.filename, path)
            else:
                np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if self.folder.exists():  # an invalid leftover: load() refused it
            shutil.rmtree(self.folder, ignore_errors=True)
        try:
            os.rename(self.tmp, self.folder)
        except OSError:
            if not self.folder.exists():
                raise
            self.discard()  # a parallel build finished first; keep theirs

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
