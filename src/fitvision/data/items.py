"""The data-block API (seed 004): list files, split them, label them, encode labels.

Each step is a small function so a custom dataset is a few lines:

    files = get_files("pets", recurse=True)
    train, valid = split_items(files, random_splitter(0.2, seed=0))
    label = regex_labeller(r"^(.+)_\\d+\\.jpg$")
    vocab = Vocab([label(f) for f in train])
    y_train = vocab.encode([label(f) for f in train])

A splitter takes the whole list of items and returns (train_indices, valid_indices), so
per-item rules (folder names, a function) and whole-list rules (random percentage, index
list) compose the same way. Items may be `Path` or `PurePosixPath` (archive members).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath
from typing import Callable, Iterable, Sequence

import numpy as np

from fitvision.errors import FitVisionError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

Splitter = Callable[[Sequence[PurePath]], "tuple[np.ndarray, np.ndarray]"]
Labeller = Callable[[PurePath], str]


# --------------------------------------------------------------------------- files
def walk(top):
    """os.walk that also enters symlinked folders: a class folder linked in from elsewhere is
    data, and os.walk would leave it out without a word. A link back to a folder on its own
    path (`cat/up -> ..`) is not entered, so the walk cannot loop."""
    top = os.fspath(top)
    chains = {top: frozenset({os.path.realpath(top)})}  # each folder's real path and its ancestors'
    for folder, dirs, files in os.walk(top, followlinks=True):
        chain = chains.pop(folder, frozenset())
        kept = []
        for d in dirs:
            real = os.path.realpath(os.path.join(folder, d))
            if real not in chain:
                kept.append(d)
                chains[os.path.join(folder, d)] = chain | {real}
        dirs[:] = kept
        yield folder, dirs, files


def _keep(name: str, extensions: frozenset[str] | None) -> bool:
    # Hidden files are editor/OS litter (".DS_Store", "._x.jpg" from macOS zips), never data.
    if name.startswith("."):
        return False
    return extensions is None or os.path.splitext(name)[1].lower() in extensions


def get_files(path, extensions: Iterable[str] | None = IMAGE_EXTENSIONS, recurse: bool = True,
              include: Iterable[str] | None = None) -> list[Path]:
    """Files under `path` whose extension (case-insensitive) is in `extensions`, sorted.

    extensions=None keeps every file. `include` limits the first level of folders
    (e.g. ["train", "valid"]). Hidden files and folders are skipped; symlinked folders are
    followed. os.walk/os.scandir because they are much faster than glob on 10^5 files.
    """
    path = Path(path)
    if not path.is_dir():
        raise FitVisionError(f"not a folder: {path}")
    if isinstance(extensions, str):  # ".png" would otherwise be the set of its characters
        extensions = [extensions]
    # "png" and ".png" both mean the suffix ".png"
    exts = None if extensions is None else frozenset("." + e.lower().lstrip(".") for e in extensions)
    if not recurse:
        return sorted(path / e.name for e in os.scandir(path) if e.is_file() and _keep(e.name, exts))
    include = None if include is None else set(include)
    found: list[Path] = []
    for i, (folder, dirs, files) in enumerate(walk(path)):
        if i == 0 and include is not None:
            dirs[:] = [d for d in dirs if d in include]
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(folder) / f for f in files if _keep(f, exts))
    return sorted(found)


# --------------------------------------------------------------------------- splitters
def _as_index(mask: Sequence[bool]) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask, dtype=bool)).astype(np.int64)


def func_splitter(fn: Callable[[PurePath], bool | None]) -> Splitter:
    """fn(item) -> True for valid, False for train, None to leave the item out. Any value with a
    truth value counts (numpy's bools from a DataFrame column, 1/0): only None leaves an item out."""

    def split(items):
        flags = [fn(item) for item in items]
        return (_as_index([f is not None and not f for f in flags]),
                _as_index([f is not None and bool(f) for f in flags]))

    return split


def grandparent_splitter(valid_name: str | Sequence[str] = "valid", train_name: str = "train") -> Splitter:
    """Split on the folder two levels up: `train/<class>/x.jpg` vs `valid/<class>/x.jpg`.

    valid_name may be several names, e.g. ("valid", "val", "test"). Other items are left out.
    """
    valid_names = {valid_name} if isinstance(valid_name, str) else set(valid_name)

    def side(item: PurePath) -> bool | None:
        grandparent = item.parent.parent.name
        if grandparent == train_name:
            return False
        return True if grandparent in valid_names else None

    return func_splitter(side)


def check_valid_pct(valid_pct: float) -> None:
    if not 0.0 <= valid_pct < 1.0:
        raise FitVisionError(f"valid_pct must be in [0, 1), got {valid_pct}")


def random_splitter(valid_pct: float, seed: int = 0) -> Splitter:
    """A seeded random `valid_pct` of the items for validation (rounded to the nearest item)."""
    check_valid_pct(valid_pct)

    def split(items):
        n = len(items)
        perm = np.random.default_rng(seed).permutation(n)
        n_valid = int(round(n * valid_pct))
        return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])

    return split


def index_splitter(valid_idx: Iterable[int]) -> Splitter:
    """The given indices are validation, everything else training."""
    chosen = np.asarray(sorted(set(int(i) for i in valid_idx)), dtype=np.int64)

    def split(items):
        n = len(items)
        if chosen.size and (chosen[0] < 0 or chosen[-1] >= n):
            raise FitVisionError(f"validation index out of range for {n} items")
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        return _as_index(~mask), _as_index(mask)

    return split


def split_items(items: Sequence, splitter: Splitter) -> tuple[list, list]:
    """(train_items, valid_items), each in the original order."""
    train_idx, valid_idx = splitter(items)
    return [items[i] for i in train_idx], [items[i] for i in valid_idx]


# --------------------------------------------------------------------------- labellers
def parent_labeller(item: PurePath) -> str:
    """The name of the folder holding the file: `train/cat/1.jpg` -> "cat"."""
    return item.parent.name


def regex_labeller(pattern: str) -> Labeller:
    """The first group of `pattern` matched against the file name (e.g. r"^(.+)_\\d+\\.jpg$")."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise FitVisionError(f"regex_labeller: bad pattern {pattern!r} ({e})") from None
    if regex.groups < 1:
        raise FitVisionError(f"regex_labeller needs a pattern with one group, got {pattern!r}")

    def label(item: PurePath) -> str:
        m = regex.search(item.name)
        # an optional group that took no part in the match is no label either (it would be None)
        if m is None or m.group(1) is None:
            raise FitVisionError(f"regex {pattern!r} does not match file name '{item.name}'"
                                 + ("" if m is None else " with its first group"))
        return m.group(1)

    return label


def func_labeller(fn: Callable[[PurePath], str]) -> Labeller:
    """fn(item) -> the label; a number is made a string ("3"). None is refused: str() would
    make it a class named "None" that the images fn had no label for would quietly train as."""

    def label(item: PurePath) -> str:
        value = fn(item)
        if value is None:
            raise FitVisionError(f"the labelling function returned None for '{item}'; leave such files out "
                                 "before labelling (e.g. with func_splitter returning None)")
        return str(value)

    return label


# --------------------------------------------------------------------------- vocab
class Vocab:
    """Label strings <-> indices, built on the training labels only.

    unknown=True appends an "unknown" class (the last index) that labels unseen in training
    map to; without it an unseen label is an error naming the label.
    """

    UNKNOWN = "unknown"

    def __init__(self, train_labels: Iterable[str], unknown: bool = False):
        classes = _sorted_classes(_labels_arg(train_labels))
        self.unknown = unknown
        if unknown:  # last, even when a training label is itself "unknown" (then the two are one class)
            classes = [c for c in classes if c != self.UNKNOWN] + [self.UNKNOWN]
        self.classes: list[str] = classes
        self._index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, labels: Iterable[str]) -> np.ndarray:
        out = []
        for label in _labels_arg(labels):
            idx = self._index.get(label)
            if idx is None:
                if not self.unknown:
                    raise FitVisionError(
                        f"label '{label}' is not among the training classes ({len(self.classes)} classes: "
                        f"{', '.join(self.classes[:10])}{', ...' if len(self.classes) > 10 else ''}); "
                        "add training images for it or build the Vocab with unknown=True"
                    )
                idx = self._index[self.UNKNOWN]
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def decode(self, idxs: Iterable[int]) -> list[str]:
        out = []
        for i in idxs:
            # a negative index would be a class from the end, quietly: e.g. -1 as an "ignore" label
            if not 0 <= int(i) < len(self.classes):
                raise FitVisionError(f"class index {int(i)} is out of range for {len(self.classes)} classes")
            out.append(self.classes[int(i)])
        return out


def _labels_arg(labels: Iterable) -> Iterable:
    # A string is iterable too: Vocab("cat") would make the classes c, a, t without a word.
    if isinstance(labels, str):
        raise FitVisionError(f"expected a list of labels, got the single string {labels!r} (write [{labels!r}])")
    return labels


def _sorted_classes(labels: Iterable) -> list:
    labels = set(labels)
    try:
        return sorted(labels)
    except TypeError:  # e.g. a missing label in a table column read as NaN or None among strings
        kinds = sorted({type(label).__name__ for label in labels})
        raise FitVisionError(f"labels of different kinds cannot be sorted into classes ({', '.join(kinds)}); "
                             "make every label a string (a missing one reads as NaN or None)") from None
