"""Decode every image once with Pillow into uint8 arrays at a storage size, cache, memory-map.

Storage: 32x32 data stays as is; larger images have their shorter side resized to S
(antialiased) and are centre-cropped to SxS. A dataset is stored at one side: S, or the
images' own shorter side when that is smaller (so CIFAR stays 32x32 at S=160). Images are
read straight from the archive stream (no 60,000-file extraction) and decoded on all cores.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import multiprocessing
import os
import signal
import statistics
import sys
import warnings
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fitvision.data import cache, classnames, readers
from fitvision.data.items import check_valid_pct, random_splitter
from fitvision.data.readers import DataWarning
from fitvision.data.sources import dataset_name, resolve
from fitvision.errors import FitVisionError, check_choice

CHUNK = 256  # images per task sent to a decode worker
SNIFF = 64  # images whose header sizes choose the dataset's storage side
MIN_PARALLEL = 2000  # below this, starting worker processes costs more than it saves
RESIZE_METHODS = ("crop", "squish")  # how a non-square image becomes a stored square


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


# --------------------------------------------------------------------------- one image
def _open(src):
    from PIL import Image

    return Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)


def _to_rgb(img):
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit/float grey: scale to 8 bits instead of clipping at 255 as convert() does
        a = np.asarray(img, dtype=np.float32)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        elif mode == "F" and a.max(initial=0) <= 1.0:  # float images in 0..1 (the usual convention)
            a = a * 255.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent areas become white, not black
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    return img if img.mode == "RGB" else img.convert("RGB")


def _square(img, side: int, resize_method: str = "crop") -> np.ndarray:
    from PIL import Image

    w, h = img.size
    if (w, h) == (side, side):
        return np.asarray(img, dtype=np.uint8)
    if resize_method == "squish":
        # the whole picture, aspect ratio given up: nothing at the edges is lost
        img = img.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    else:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        # crop first: resizing with a box would let the filter reach into the cropped-off border
        img = img.crop((left, top, left + s, top + s))
        if s != side:
            img = img.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


@contextlib.contextmanager
def _refuse_bombs():
    # Above Pillow's pixel limit it only warns; a decompression bomb is refused like a corrupt file.
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def check_resize_method(resize_method: str) -> None:
    check_choice("resize_method", resize_method, RESIZE_METHODS)


def _decode(src, side: int | None, storage_size: int, resize_method: str = "crop") -> np.ndarray:
    """One image to uint8 (side, side, 3); side=None picks min(storage_size, shorter side)."""
    from PIL import ImageOps

    with _open(src) as img:
        if side is None:
            side = min(storage_size, *img.size)
        if img.format == "JPEG":
            img.draft("RGB", (side, side))  # decode at a reduced DCT scale when much larger than side
        ImageOps.exif_transpose(img, in_place=True)
        return _square(_to_rgb(img), side, resize_method)


def decode_image(path, storage_size: int = 160, resize_method: str = "crop", size: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) exactly as training data is decoded; for prediction. ``path`` may also be a
    PIL image or a uint8 array (H, W, 3) or (H, W): it goes through the same resize. size: exactly
    (size, size, 3) whatever the image's own size, as a dataset's arrays are (so a folder of
    mixed sizes stacks); None: a square of min(storage_size, the image's shorter side)."""
    check_resize_method(resize_method)
    if size is not None and size < 1:
        raise FitVisionError(f"size must be at least 1 pixel, got {size}")
    if not isinstance(path, (str, os.PathLike)):
        path = _image_bytes(path)
        with _refuse_bombs():
            return np.array(_decode(path, size, storage_size, resize_method))
    try:
        with _refuse_bombs():
            # a copy: Pillow's array is read-only, and a caller may well edit the image in place
            return np.array(_decode(str(path), size, storage_size, resize_method))
    except FileNotFoundError:
        raise FitVisionError(f"image not found: {path}") from None
    except Exception as e:  # every Pillow failure means the same thing to the user
        raise FitVisionError(f"cannot read image {path}: {e}") from None


def _image_bytes(image) -> bytes:
    """An in-memory image as PNG bytes (lossless), so it is decoded exactly as a file would be."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise FitVisionError(f"an image array must be uint8 (H, W, 3), got {image.dtype} of shape {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if not isinstance(image, Image.Image):
        raise FitVisionError(f"cannot read an image from a {type(image).__name__}: give a path, a PIL image "
                             "or a uint8 array")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _decode_chunk(chunk: list, side: int, storage_size: int, resize_method: str):
    """Worker task: (indices decoded, stacked images, [(index, reason)] for bad ones)."""
    ok, bad = [], []
    out = np.empty((len(chunk), side, side, 3), dtype=np.uint8)
    with _refuse_bombs():
        for idx, src in chunk:
            try:
                out[len(ok)] = _decode(src, side, storage_size, resize_method)
                ok.append(idx)
            except Exception as e:  # noqa: BLE001 - a bad image is skipped, whatever Pillow raised
                bad.append((idx, f"{type(e).__name__}: {e}"))
    return np.asarray(ok, dtype=np.int64), out[: len(ok)], bad


# --------------------------------------------------------------------------- many images
def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _start_method() -> str:
    # fork on Linux: spawn/forkserver re-run the caller's __main__ in each worker, which loops
    # forever in a script that calls load_dataset without an `if __name__ == "__main__":` guard.
    # The workers only run Pillow and numpy, never torch, so forking a process that already
    # runs torch threads is safe here (it is what torch's own DataLoader does on Linux).
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _storage_side(first: list, storage_size: int) -> int:
    sides = []
    for _, src in first:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bombs are reported once, by the decode
                with _open(src) as img:  # header only: cheap
                    sides.append(min(img.size))
        except Exception:  # noqa: BLE001 - a bad image says nothing about the size
            continue
    return min(storage_size, int(statistics.median(sides))) if sides else storage_size


def _chunks(stream, size: int):
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def _ignore_ctrl_c() -> None:
    """Decode workers leave Ctrl-C to the parent, which stops the pool and prints one line; a
    worker interrupted itself would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_stream(stream, side: int, storage_size: int, resize_method: str, n: int):
    """Yield worker results for the (index, bytes|path) stream; parallel when large."""
    workers = _workers()
    if workers == 1 or n < MIN_PARALLEL or multiprocessing.current_process().daemon:
        # (a daemon process, e.g. a DataLoader worker, may not start children)
        for chunk in _chunks(stream, CHUNK):
            yield _decode_chunk(chunk, side, storage_size, resize_method)
        return
    with multiprocessing.get_context(_start_method()).Pool(workers, initializer=_ignore_ctrl_c) as pool:
        pending: deque = deque()
        for chunk in _chunks(stream, CHUNK):
            pending.append(pool.apply_async(_decode_chunk, (chunk, side, storage_size, resize_method)))
            if len(pending) >= 3 * workers:  # bounded: never read the whole archive ahead
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _decode_images(source: readers.Source, splits: dict[str, list[str]], storage_size: int, resize_method: str,
                   writer, label: str):
    """Decode each split's files into a cache array: ({split: array}, {split: keep mask}, {file: reason})."""
    from tqdm import tqdm

    names = [n for files in splits.values() for n in files]
    stream = source.blobs({n: i for i, n in enumerate(names)})
    first = list(itertools.islice(stream, SNIFF))
    side = _storage_side(first, storage_size)
    starts = np.cumsum([0] + [len(f) for f in splits.values()])
    xs = {s: writer.array(f"{s}_x", (len(f), side, side, 3), np.uint8) for s, f in splits.items()}
    keep = {s: np.zeros(len(f), dtype=bool) for s, f in splits.items()}
    bad = {}
    with tqdm(total=len(names), desc=f"decoding {label}", unit="img", file=sys.stderr, disable=None,
              leave=False) as bar:
        for idxs, images, errors in _decode_stream(itertools.chain(first, stream), side, storage_size,
                                                   resize_method, len(names)):
            for k, split in enumerate(splits):
                sel = (idxs >= starts[k]) & (idxs < starts[k + 1])
                xs[split][idxs[sel] - starts[k]] = images[sel]
                keep[split][idxs[sel] - starts[k]] = True
            bad.update((names[i], why) for i, why in errors)
            bar.update(len(idxs) + len(errors))
    return xs, keep, bad


def _build_folders(source: readers.Source, storage_size: int, resize_method: str, writer, label: str):
    layout = readers.folder_layout(source)
    readers.warn_empty(source, layout)
    xs, keep, bad = _decode_images(source, {"train": layout.train, "valid": layout.valid}, storage_size,
                                   resize_method, writer, label)
    if not keep["train"].any():
        name, why = next(iter(bad.items()))
        raise FitVisionError(f"none of the {len(layout.train)} training images in {source} could be decoded "
                             f"(first: {name}: {why})")
    arrays = {"train_y": layout.train_y[keep["train"]], "valid_y": layout.valid_y[keep["valid"]]}
    for split, x in xs.items():
        if keep[split].all():
            arrays[f"{split}_x"] = x
        else:  # compact: drop the slots of images that failed
            kept = writer.array(f"{split}_x_kept", (int(keep[split].sum()),) + x.shape[1:], np.uint8)
            kept[:] = x[keep[split]]
            arrays[f"{split}_x"] = kept
    return layout.classes, arrays, sorted(bad.items())


def _build(path: Path, folder: Path, storage_size: int, resize_method: str, label: str, source_fp: dict):
    source = readers.Source(path)
    writer = cache.CacheWriter(folder)
    try:
        meta_name = readers.cifar_meta_name(source.files)
        if meta_name is not None:
            classes, tx, ty, vx, vy = readers.read_cifar(source, meta_name)
            arrays, skipped = {"train_x": tx, "train_y": ty, "valid_x": vx, "valid_y": vy}, []
        else:
            classes, arrays, skipped = _build_folders(source, storage_size, resize_method, writer, label)
        meta = {"classes": classes, "source": source_fp, "storage_size": storage_size, "resize_method": resize_method,
                "counts": {"train": len(arrays["train_y"]), "valid": len(arrays["valid_y"])},
                "skipped": [{"file": f, "reason": why} for f, why in skipped]}
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
                 strict: bool = False, resize_method: str = "crop") -> Dataset:
    """Decoded train/valid arrays (memory-mapped from the cache after the first call).

    Images larger than storage_size are stored as squares of that side: "crop" keeps the
    central square of the shorter side, "squish" the whole picture with its aspect ratio
    given up (fastai's ResizeMethod names; CIFAR's arrays are stored as they are).
    valid_pct > 0 carves a seeded random validation split from the training images (the whole
    data set when unsplit); an existing valid/test split is then not used.
    """
    if storage_size < 8:
        raise FitVisionError(f"storage_size must be at least 8 pixels, got {storage_size}")
    check_resize_method(resize_method)
    check_valid_pct(valid_pct)
    source = resolve(name_or_path)
    name = dataset_name(name_or_path)
    source_fp = cache.fingerprint(source)
    folder = cache.cache_folder(name, source_fp, storage_size, resize_method)
    loaded = cache.load(folder)
    if loaded is None:
        loaded = _build(source, folder, storage_size, resize_method, name, source_fp)
    meta, arrays = loaded
    _report_skipped(meta, source, strict)
    ds = Dataset(name=name, classes=classnames.readable(list(meta["classes"])), location=str(source),
                 image_size=list(arrays["train_x"].shape[1:3]), **arrays)
    return carve_valid(ds, valid_pct, seed) if valid_pct > 0 else ds


def carve_valid(ds: Dataset, valid_pct: float, seed: int = 0) -> Dataset:
    """A seeded random valid_pct of the training images as the validation split (replacing any)."""
    train_idx, valid_idx = random_splitter(valid_pct, seed)(range(len(ds.train_y)))
    return replace(ds, train_x=ds.train_x[train_idx], train_y=ds.train_y[train_idx],
                   valid_x=ds.train_x[valid_idx], valid_y=ds.train_y[valid_idx])


def dataset_info(name_or_path, storage_size: int = 160) -> dict:
    ds = load_dataset(name_or_path, storage_size=storage_size)
    return {"name": ds.name, "train": int(len(ds.train_y)), "valid": int(len(ds.valid_y)),
            "classes": ds.classes, "image_size": ds.image_size, "location": ds.location}
