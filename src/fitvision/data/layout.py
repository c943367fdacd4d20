"""Class-folder layouts: which images of a folder or archive train, which validate, and their labels.

Split: `train/<class>/...` plus `valid|val|test/<class>/...`; unsplit: `<class>/...` (single
wrapping folders such as `cifar10/` are looked through).

The label is the class folder: the first folder under `train/` (or the validation folder, or the
root when unsplit). Images at any depth under it belong to it, as torchvision's ImageFolder and
fastai's get_image_files see a folder: a messy `train/cat/2019/x.jpg` is a cat, in both layouts.
Labelling by the folder holding the image instead would drop such images from a split layout and
make `2019` a class of an unsplit one, and `predict` on the folder would still see them. How
many images sit in sub-folders is counted (FolderLayout.nested), so it is never a surprise.
"""

from __future__ import annotations

import posixpath
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from fitvision.data.items import IMAGE_EXTENSIONS, Vocab
from fitvision.data.readers import DataWarning, Source
from fitvision.errors import FitVisionError

VALID_NAMES = ("valid", "val", "test")  # first one present wins
LAYOUT_HELP = ("class folders: train/<class>/<image> plus valid|val|test/<class>/<image>, "
               "or <class>/<image> (unsplit)")


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
    # True where the image sits in a sub-folder of its class folder (train/cat/2019/x.jpg)
    train_nested: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    valid_nested: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def nested(self) -> int:
        return int(self.train_nested.sum() + self.valid_nested.sum())


def _is_image(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _data_root(images: list[str]) -> str:
    """The prefix ("cifar10/") of the folder holding the class folders or train/ + valid/.

    Split: the folder most training images sit under as `<root>/train/<class>/.../<image>`
    (the first `train` on each path). Unsplit: single wrapping folders are looked through.
    """
    roots: Counter = Counter()
    for parts in (f.split("/") for f in images):
        i = next((i for i, p in enumerate(parts[:-2]) if p == "train"), None)
        if i is not None:
            roots["".join(p + "/" for p in parts[:i])] += 1
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


def _assign(rel: list[PurePosixPath], split: bool, valid_name: str | None):
    """(train indices, valid indices, label of each image): the class folder is the first folder
    under the split folder (split) or under the root (unsplit); anything else is left out."""
    train, valid, labels = [], [], {}
    for i, p in enumerate(rel):
        parts = p.parts
        if split and len(parts) >= 3 and parts[0] in ("train", valid_name):
            (train if parts[0] == "train" else valid).append(i)
            labels[i] = parts[1]
        elif not split and len(parts) >= 2:
            train.append(i)
            labels[i] = parts[0]
    return train, valid, labels


def folder_layout(source: Source) -> FolderLayout:
    images = [f for f in source.files if _is_image(f) and not f.startswith("__MACOSX/")]
    prefix = _data_root(images)
    images = [f for f in images if f.startswith(prefix)]
    rel = [PurePosixPath(f[len(prefix):]) for f in images]
    top = {p.parts[0] for p in rel if len(p.parts) >= 3}
    valid_name = next((v for v in VALID_NAMES if v in top), None)
    split = "train" in top
    train_idx, valid_idx, labels = _assign(rel, split, valid_name)
    if not train_idx:
        raise FitVisionError(f"no images found in {source}; expected {LAYOUT_HELP}")
    vocab = Vocab([labels[i] for i in train_idx])
    valid_labels = [labels[i] for i in valid_idx]
    unseen = sorted(set(valid_labels) - set(vocab.classes))
    if unseen:  # said in folder terms: a CLI user builds no Vocab
        them = "them" if len(unseen) > 1 else "it"
        raise FitVisionError(f"{source}: class folder(s) {', '.join(unseen[:5])} have validation images but no "
                             f"training images; add {them} to train/ or remove {them} from the validation folder")
    depth = 3 if split else 2  # <split>/<class>/<image> or <class>/<image>; deeper is nested
    class_roots = ["train"] + ([valid_name] if valid_name else []) if split else [""]
    populated = {str(a) for p in rel for a in p.parents}
    return FolderLayout(
        classes=vocab.classes,
        train=[images[i] for i in train_idx], train_y=vocab.encode([labels[i] for i in train_idx]),
        valid=[images[i] for i in valid_idx], valid_y=vocab.encode(valid_labels),
        split=split, empty_classes=_empty_classes(source.dirs, prefix, class_roots, populated),
        train_nested=np.array([len(rel[i].parts) > depth for i in train_idx], dtype=bool),
        valid_nested=np.array([len(rel[i].parts) > depth for i in valid_idx], dtype=bool),
    )


def _empty_classes(dirs: set[str], prefix: str, class_roots: list[str], populated: set[str]) -> list[str]:
    """Class folders (children of the split folders, or of the root when unsplit) holding no image
    at any depth."""
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
