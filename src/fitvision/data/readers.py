"""Readers: list the files of a folder or archive (``Source``), and read the official CIFAR-10/100
python pickles (`cifar-10-batches-py/`, `cifar-100-python/`) safely. Which files are whose class
images is data/layout.py's job.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pickle
import posixpath
from pathlib import Path
from typing import Iterator

import numpy as np

from fitvision.data import extract, sources
from fitvision.data.items import walk
from fitvision.errors import FitVisionError
from fitvision.files import NotRegularFile, open_regular


class DataWarning(UserWarning):
    """Something in the data was left out; training can go on."""


# --------------------------------------------------------------------------- listing sources
PRELOAD_LIMIT = 2 << 30  # archives up to this size, and contents up to this size, are held in memory


class Source:
    """The files of a folder or archive: names (relative posix paths) and contents on demand.

    A tar has no index, so listing it costs a full pass; a small one is read once, contents
    included, instead of a listing pass plus a reading pass, unless its contents turn out to
    be larger than PRELOAD_LIMIT (then they are read again, in pieces, when wanted).
    """

    def __init__(self, path: Path):
        self.path = path
        self._contents: dict[str, bytes] | None = None
        if path.is_dir():
            self.files, self.dirs = _walk(path)
            return
        with _remedy(path):
            if path.stat().st_size <= PRELOAD_LIMIT:
                members, self._contents = extract.read_all(path, keep=PRELOAD_LIMIT)
            else:
                members = extract.list_members(path)
        self.files = [m.name for m in members if m.kind == "file"]
        # "." is the archive's own root (`tar czf x.tgz .` lists it as "./"), not a class folder
        listed = {m.name for m in members if m.kind == "dir"} | {posixpath.dirname(f) for f in self.files}
        self.dirs = listed - {".", ""}

    def __str__(self) -> str:
        return str(self.path)

    def blobs(self, wanted: dict[str, int]) -> Iterator[tuple[int, bytes | str]]:
        """(index, content) for each wanted name; for a folder the content is the file path
        (the decode workers read it themselves, so the main process stays free)."""
        if self.path.is_dir():
            for name, idx in wanted.items():
                yield idx, str(self.path / name)
        elif self._contents is not None:
            for name, idx in wanted.items():
                yield idx, self._contents[name]
        else:
            with _remedy(self.path):
                for name, data in extract.iter_files(self.path, set(wanted)):
                    yield wanted[name], data


@contextlib.contextmanager
def _remedy(path: Path):
    """A broken archive's error says what to do about it (a catalog download: delete, run again)."""
    try:
        yield
    except extract.CorruptArchive as e:
        raise FitVisionError(f"{e}; {sources.corrupt_remedy(path)}") from None


def _walk(root: Path) -> tuple[list[str], set[str]]:
    files, dirs = [], set()
    for folder, subdirs, names in walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirs.update(rel + d for d in subdirs)
        files.extend(rel + n for n in names if not n.startswith("."))
    return sorted(files), dirs


# --------------------------------------------------------------------------- CIFAR pickles
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals numpy arrays need; anything else (os.system, eval, ...) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module.startswith(("numpy._core", "numpy.core")):
            return _numpy_core_attr(module.split(".")[-1], name)
        return getattr(np, name)


def _numpy_core_attr(submodule: str, name: str):
    # numpy 2 renamed numpy.core to numpy._core; pickles name either. Try the new one first
    # (importing numpy.core under numpy 2 warns).
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


def safe_unpickle(data: bytes, where: str) -> object:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # anything a hostile or broken pickle raises
        raise FitVisionError(f"refusing to load {where}: not a plain CIFAR pickle ({e})") from None


CIFAR_FILES = {
    # basename of the meta file -> (train files, test files, labels key, names key)
    "batches.meta": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", b"label_names"),
    "meta": (["train"], ["test"], b"fine_labels", b"fine_label_names"),
}


def cifar_meta_name(files: list[str]) -> str | None:
    """The meta file if these names are an official CIFAR python layout."""
    bases = {posixpath.basename(f): f for f in files}
    for meta, (train, test, _, _) in CIFAR_FILES.items():
        if meta in bases and all(t in bases for t in train + test):
            return bases[meta]
    return None


def _key(d: dict, key: bytes):
    return d[key] if key in d else d[key.decode()]


def _cifar_split(batches: dict, which: list[str], labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.asarray(_key(batches[b], b"data"), dtype=np.uint8) for b in which])
    y = np.concatenate([np.asarray(_key(batches[b], labels_key), dtype=np.int64) for b in which])
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise ValueError(f"expected (N, 3072) pixels and N labels, got {x.shape} and {y.shape}")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _read_regular(path: str, source) -> bytes:
    """A pickle of a CIFAR folder; a FIFO named like one would block the read forever."""
    try:
        with open_regular(path) as f:
            return f.read()
    except NotRegularFile as e:
        raise FitVisionError(f"{source}: {path} is {str(e).removeprefix('not a regular file but ')}, "
                             "not a CIFAR batch file") from None


def read_cifar(source: Source, meta_name: str):
    """(classes, train_x, train_y, valid_x, valid_y) from the official pickles; classes sorted."""
    train_b, test_b, labels_key, names_key = CIFAR_FILES[posixpath.basename(meta_name)]
    folder = posixpath.dirname(meta_name)
    members = [posixpath.join(folder, n) for n in [posixpath.basename(meta_name)] + train_b + test_b]
    blobs = {}
    for idx, data in source.blobs({m: i for i, m in enumerate(members)}):
        blobs[idx] = _read_regular(data, source) if isinstance(data, str) else data
    meta, *loaded = [safe_unpickle(blobs[i], f"{source}:{m}") for i, m in enumerate(members)]
    batches = dict(zip(train_b + test_b, loaded))
    try:
        raw = [c.decode() if isinstance(c, bytes) else str(c) for c in _key(meta, names_key)]
        train_x, train_y = _cifar_split(batches, train_b, labels_key)
        valid_x, valid_y = _cifar_split(batches, test_b, labels_key)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FitVisionError(f"{source}: malformed CIFAR pickle ({e})") from None
    labels = np.concatenate([train_y, valid_y])
    if labels.size and (labels.min() < 0 or labels.max() >= len(raw)):
        raise FitVisionError(f"{source}: CIFAR labels out of range for {len(raw)} classes")
    order = sorted(range(len(raw)), key=lambda i: raw[i])  # keep the sorted-classes promise
    remap = np.empty(len(raw), dtype=np.int64)
    remap[order] = np.arange(len(raw))
    return [raw[i] for i in order], train_x, remap[train_y], valid_x, remap[valid_y]
