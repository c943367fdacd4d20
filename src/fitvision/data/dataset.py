"""Datasets: a name, folder or archive to decoded train/valid arrays, cached and memory-mapped.

    ds = load_dataset("cifar10")     # Dataset(name, classes, train_x, train_y, valid_x, valid_y, ...)

The first call decodes every image once (fitvision.data.decode) into the cache (data/cache.py);
later calls memory-map it. ``carve_valid`` makes a seeded validation split from the training images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fitvision.data import cache, classnames, layout, readers
from fitvision.data.decode import check_resize_method, decode_images
from fitvision.data.items import check_valid_pct, random_splitter
from fitvision.data.readers import DataWarning
from fitvision.data.sources import dataset_name, resolve
from fitvision.errors import FitVisionError


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train_x: np.ndarray  # uint8 (N, H, W, 3)
    train_y: np.ndarray  # int64 (N,)
    valid_x: np.ndarray
    valid_y: np.ndarray
    location: str
    image_size: list[int]  # [H, W]
    nested: int = 0  # how many of the images sit in a sub-folder of their class folder


def _build_folders(source: readers.Source, storage_size: int, resize_method: str, writer, label: str,
                   resize_filter: str = "bicubic"):
    found = layout.folder_layout(source)
    layout.warn_empty(source, found)
    xs, keep, bad = decode_images(source, {"train": found.train, "valid": found.valid}, storage_size,
                                   resize_method, writer, label, resize_filter)
    if not keep["train"].any():
        name, why = next(iter(bad.items()))
        raise FitVisionError(f"none of the {len(found.train)} training images in {source} could be decoded "
                             f"(first: {name}: {why})")
    nested = int((found.train_nested & keep["train"]).sum() + (found.valid_nested & keep["valid"]).sum())
    arrays = {"train_y": found.train_y[keep["train"]], "valid_y": found.valid_y[keep["valid"]]}
    for split, x in xs.items():
        if keep[split].all():
            arrays[f"{split}_x"] = x
        else:  # compact: drop the slots of images that failed
            kept = writer.array(f"{split}_x_kept", (int(keep[split].sum()),) + x.shape[1:], np.uint8)
            kept[:] = x[keep[split]]
            arrays[f"{split}_x"] = kept
    return found.classes, arrays, sorted(bad.items()), nested


def _writer(folder: Path):
    """A CacheWriter, or where the cache folder cannot be written (read-only, a shared cache, no
    permission) a MemoryWriter: the data set is decoded into memory, as an uncached load would be."""
    try:
        return cache.CacheWriter(folder)
    except cache.CacheUnwritable as e:
        warnings.warn(f"{e}; decoding into memory without caching (set FITVISION_CACHE_DIR to a writable "
                      "folder to keep the decoded arrays)", DataWarning, stacklevel=4)
        return cache.MemoryWriter()


def _build(path: Path, folder: Path, storage_size: int, resize_method: str, label: str, source_fp: dict,
           resize_filter: str = "bicubic"):
    source = readers.Source(path)
    writer = _writer(folder)
    try:
        meta_name = readers.cifar_meta_name(source.files)
        if meta_name is not None:
            classes, tx, ty, vx, vy = readers.read_cifar(source, meta_name)
            arrays, skipped, nested = {"train_x": tx, "train_y": ty, "valid_x": vx, "valid_y": vy}, [], 0
        else:
            classes, arrays, skipped, nested = _build_folders(source, storage_size, resize_method, writer, label,
                                                              resize_filter)
        meta = {"classes": classes, "source": source_fp, "storage_size": storage_size, "resize_method": resize_method,
                "resize_filter": resize_filter,
                "counts": {"train": len(arrays["train_y"]), "valid": len(arrays["valid_y"])}, "nested": nested,
                "skipped": [{"file": f, "reason": why} for f, why in skipped]}
        if isinstance(writer, cache.MemoryWriter):
            return meta, arrays
        writer.commit(arrays, meta)
    except BaseException:
        writer.discard()
        raise
    loaded = cache.load(folder)
    if loaded is None:
        raise FitVisionError(f"the decoded cache in {folder} could not be read back; check free disk space")
    return loaded


def _report_skipped(meta: dict, source, strict: bool) -> None:
    skipped = meta.get("skipped") or []
    if not skipped:
        return
    shown = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:3])
    msg = f"{len(skipped)} unreadable image(s) in {source} skipped: {shown}{' ...' if len(skipped) > 3 else ''}"
    if strict:
        raise FitVisionError(msg.replace("skipped", "found", 1) + " (strict mode; remove or fix them)")
    warnings.warn(msg, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------- public
def load_dataset(name_or_path, storage_size: int = 160, valid_pct: float = 0.0, seed: int = 0,
                 strict: bool = False, resize_method: str = "crop", resize_filter: str = "bicubic") -> Dataset:
    """Decoded train/valid arrays (memory-mapped from the cache after the first call).

    Images larger than storage_size are stored as squares of that side: "crop" keeps the
    central square of the shorter side, "squish" the whole picture with its aspect ratio
    given up (fastai's ResizeMethod names; CIFAR's arrays are stored as they are), resized with
    ``resize_filter`` (decode.RESIZE_FILTERS).
    valid_pct > 0 carves a seeded random validation split from the training images (the whole
    data set when unsplit); an existing valid/test split is then not used.
    """
    if storage_size < 8:
        raise FitVisionError(f"storage_size must be at least 8 pixels, got {storage_size}")
    check_resize_method(resize_method, resize_filter)
    check_valid_pct(valid_pct)
    source = resolve(name_or_path)
    name = dataset_name(name_or_path)
    source_fp = cache.fingerprint(source)
    folder = cache.cache_folder(name, source_fp, storage_size, resize_method, resize_filter)
    loaded = cache.load(folder)
    # A cache without "nested" was built when images in sub-folders of a class folder were left
    # out (train/valid) or made classes of their own (unsplit): build it again, once.
    if loaded is None or "nested" not in loaded[0]:
        loaded = _build(source, folder, storage_size, resize_method, name, source_fp, resize_filter)
    meta, arrays = loaded
    _report_skipped(meta, source, strict)
    ds = Dataset(name=name, classes=classnames.readable(list(meta["classes"])), location=str(source),
                 image_size=list(arrays["train_x"].shape[1:3]), nested=int(meta["nested"]), **arrays)
    return carve_valid(ds, valid_pct, seed) if valid_pct > 0 else ds


def carve_valid(ds: Dataset, valid_pct: float, seed: int = 0) -> Dataset:
    """A seeded random valid_pct of the training images as the validation split (replacing any)."""
    train_idx, valid_idx = random_splitter(valid_pct, seed)(range(len(ds.train_y)))
    return replace(ds, train_x=ds.train_x[train_idx], train_y=ds.train_y[train_idx],
                   valid_x=ds.train_x[valid_idx], valid_y=ds.train_y[valid_idx])


def dataset_info(name_or_path, storage_size: int = 160) -> dict:
    """Counts, classes, stored size and location; "nested" (only when some are) says how many of
    the train + valid images sit in sub-folders of their class folders."""
    ds = load_dataset(name_or_path, storage_size=storage_size)
    info = {"name": ds.name, "train": int(len(ds.train_y)), "valid": int(len(ds.valid_y)),
            "classes": ds.classes, "image_size": ds.image_size, "location": ds.location}
    return {**info, "nested": ds.nested} if ds.nested else info
