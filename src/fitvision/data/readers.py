"""Readers: find the layout of a folder or archive, and read the official CIFAR pickles safely.

Two layouts are understood:
- class folders, split as `train/<class>/*` plus `valid|val|test/<class>/*`, or unsplit
  `<class>/*` (any single wrapping folder such as `cifar10/` is looked through);
- the official CIFAR-10/100 python pickles (`cifar-10-batches-py/`, `cifar-100-python/`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pickle
import posixpath
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from fitvision.data import extract, sources
from fitvision.data.items import IMAGE_EXTENSIONS, Vocab, grandparent_splitter, parent_labeller, walk
from fitvision.errors import FitVisionError

VALID_NAMES = ("valid", "val", "test")  # first one present wins
LAYOUT_HELP = ("class folders: train/<class>/<image> plus valid|val|test/<class>/<image>, "
               "or <class>/<image> (unsplit)")


class DataWarning(UserWarning):
    """Something in the data was left out; training can go on."""


@dataclass
class FolderLayout:
    """Which files are training/validation images and their labels (names relative to the source)."""

    classes: list[str]
    train: list[str]
    train_y: np.ndarray
    valid: list[str]
    valid_y: np.ndarray
    split: bool  # False: unsplit class folders, everything in train
    empty_classes: list[str] = field(default_factory=list)


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


# --------------------------------------------------------------------------- class folders
def _data_root(images: list[str]) -> str:
    """The prefix ("cifar10/") of the folder holding the class folders or train/ + valid/.

    Split: the folder most training images sit under as `<root>/train/<class>/<image>`.
    Unsplit: single wrapping folders are looked through.
    """
    roots = Counter("".join(p + "/" for p in parts[:-3]) for parts in (f.split("/") for f in images)
                    if len(parts) >= 3 and parts[-3] == "train")
    return roots.most_common(1)[0][0] if roots else _strip_wrappers(images)


def _strip_wrappers(files: list[str]) -> str:
    """The prefix of single wrapping folders, stopping at a split folder name."""
    prefix = ""
    paths = [f.split("/") for f in files]
    depth = 0
    while paths and all(len(p) > depth + 2 for p in paths):
        first = {p[depth] for p in paths}
        if len(first) != 1 or next(iter(first)) in ("train",) + VALID_NAMES:
            break
        prefix += next(iter(first)) + "/"
        depth += 1
    return prefix


def _is_image(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def folder_layout(source: Source) -> FolderLayout:
    files, dirs = source.files, source.dirs
    images = [f for f in files if _is_image(f) and not f.startswith("__MACOSX/")]
    prefix = _data_root(images)
    images = [f for f in images if f.startswith(prefix)]
    rel = [PurePosixPath(f[len(prefix):]) for f in images]
    top = {p.parts[0] for p in rel if len(p.parts) == 3}
    valid_name = next((v for v in VALID_NAMES if v in top), None)
    split = "train" in top
    if split:
        train_idx, valid_idx = grandparent_splitter(valid_name or "valid")(rel)
        class_roots = ["train"] + ([valid_name] if valid_name else [])
    else:
        keep = [i for i, p in enumerate(rel) if len(p.parts) >= 2]
        _refuse_merged_classes(source, [rel[i] for i in keep])
        train_idx, valid_idx = np.asarray(keep, dtype=np.int64), np.zeros(0, dtype=np.int64)
        class_roots = [""]
    if len(train_idx) == 0:
        raise FitVisionError(f"no images found in {source}; expected {LAYOUT_HELP}")
    train_labels = [parent_labeller(rel[i]) for i in train_idx]
    vocab = Vocab(train_labels)
    valid_labels = [parent_labeller(rel[i]) for i in valid_idx]
    unseen = sorted(set(valid_labels) - set(vocab.classes))
    if unseen:  # said in folder terms: a CLI user builds no Vocab
        raise FitVisionError(f"{source}: class folder(s) {', '.join(unseen[:5])} have validation images but no "
                             f"training images; add {'them' if len(unseen) > 1 else 'it'} to train/ or remove "
                             f"{'them' if len(unseen) > 1 else 'it'} from the validation folder")
    return FolderLayout(
        classes=vocab.classes,
        train=[images[i] for i in train_idx], train_y=vocab.encode(train_labels),
        valid=[images[i] for i in valid_idx], valid_y=vocab.encode(valid_labels),
        split=split, empty_classes=_empty_classes(dirs, prefix, class_roots, {str(a) for p in rel for a in p.parents}),
    )


def _refuse_merged_classes(source, rel: list[PurePosixPath]) -> None:
    """An image's class is the folder holding it. Images one level too deep (cat/sub/1.jpg,
    dog/sub/2.jpg) would all land in one class "sub": refuse that rather than train on it."""
    tops: dict[str, set[str]] = {}
    for p in rel:
        tops.setdefault(p.parent.name, set()).add(p.parts[0])
    merged = sorted((label, sorted(where)) for label, where in tops.items() if len(where) > 1)
    if merged:
        label, where = merged[0]
        raise FitVisionError(f"{source}: images in folders named '{label}' under {', '.join(where[:3])}"
                             f"{', ...' if len(where) > 3 else ''} would merge into one class '{label}' (an image's "
                             f"class is the folder holding it); expected {LAYOUT_HELP}")


def _empty_classes(dirs: set[str], prefix: str, class_roots: list[str], populated: set[str]) -> list[str]:
    """Class folders (children of the split folders, or of the root when unsplit) holding no image."""
    empty = []
    for d in sorted(dirs):
        if not d.startswith(prefix):
            continue
        rel = d[len(prefix):]
        parent, name = posixpath.split(rel)
        if parent in class_roots and name and name not in ("train",) + VALID_NAMES and rel not in populated:
            empty.append(rel)
    return empty


def warn_empty(source, layout: FolderLayout) -> None:
    if layout.empty_classes:
        shown = ", ".join(layout.empty_classes[:5])
        warnings.warn(f"{len(layout.empty_classes)} class folder(s) in {source} hold no images and are "
                      f"left out: {shown}", DataWarning, stacklevel=3)


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


def read_cifar(source: Source, meta_name: str):
    """(classes, train_x, train_y, valid_x, valid_y) from the official pickles; classes sorted."""
    train_b, test_b, labels_key, names_key = CIFAR_FILES[posixpath.basename(meta_name)]
    folder = posixpath.dirname(meta_name)
    members = [posixpath.join(folder, n) for n in [posixpath.basename(meta_name)] + train_b + test_b]
    blobs = {}
    for idx, data in source.blobs({m: i for i, m in enumerate(members)}):
        blobs[idx] = Path(data).read_bytes() if isinstance(data, str) else data
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
