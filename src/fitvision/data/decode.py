"""Decode images with Pillow into uint8 squares at a storage size: one (decode_image, for
prediction) or a whole folder or archive on all cores (decode_images, for data/dataset.py).

Storage: 32x32 data stays as is; larger images have their shorter side resized to S
(antialiased) and are centre-cropped to SxS ("crop") or resized whole ("squish"). A dataset is
stored at one side: S, or the images' own shorter side when that is smaller (so CIFAR stays
32x32 at S=160). Images are read straight from the archive stream (no 60,000-file extraction).
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

import numpy as np

from fitvision.data import readers
from fitvision.errors import FitVisionError, check_choice
from fitvision.files import NotRegularFile, open_regular

CHUNK = 256  # images per task sent to a decode worker
SNIFF = 64  # images whose header sizes choose the dataset's storage side
MIN_PARALLEL = 2000  # below this, starting worker processes costs more than it saves
RESIZE_METHODS = ("crop", "squish")  # how a non-square image becomes a stored square
# The filter that resizes it. bicubic (after a box reduction to 3x the target, Pillow's reducing_gap)
# is the default; seed 004 compares lanczos ("ANTIALIAS"), bicubic, nearest (the only one that keeps
# fine textures, with aliasing) and bicubic_nearest (bicubic to twice the size, then nearest).
RESIZE_FILTERS = ("bicubic", "bilinear", "lanczos", "nearest", "bicubic_nearest")


# --------------------------------------------------------------------------- one image
@contextlib.contextmanager
def _open(src):
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, (bytes, bytearray)):
        with Image.open(io.BytesIO(src)) as img:
            yield img
        return
    with open_regular(src) as f:  # Pillow leaves a file object it was given open: closed here
        try:
            img = Image.open(f)
        except UnidentifiedImageError:  # Pillow would name the file object; name the path, as for a path
            raise UnidentifiedImageError(f"cannot identify image file {str(src)!r}") from None
        with img:
            yield img


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


def _resize(img, side: int, resize_filter: str):
    from PIL import Image

    R = Image.Resampling
    if resize_filter == "nearest":
        return img.resize((side, side), R.NEAREST)
    if resize_filter == "bicubic_nearest":
        if min(img.size) > 2 * side:
            img = img.resize((2 * side, 2 * side), R.BICUBIC, reducing_gap=3.0)
        return img.resize((side, side), R.NEAREST)
    filters = {"bicubic": R.BICUBIC, "bilinear": R.BILINEAR, "lanczos": R.LANCZOS}
    return img.resize((side, side), filters[resize_filter], reducing_gap=3.0)


def _square(img, side: int, resize_method: str = "crop", resize_filter: str = "bicubic") -> np.ndarray:
    w, h = img.size
    if (w, h) == (side, side):
        return np.asarray(img, dtype=np.uint8)
    if resize_method == "squish":
        # the whole picture, aspect ratio given up: nothing at the edges is lost
        img = _resize(img, side, resize_filter)
    else:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        # crop first: resizing with a box would let the filter reach into the cropped-off border
        img = img.crop((left, top, left + s, top + s))
        if s != side:
            img = _resize(img, side, resize_filter)
    return np.asarray(img, dtype=np.uint8)


@contextlib.contextmanager
def _refuse_bombs():
    # Above Pillow's pixel limit it only warns; a decompression bomb is refused like a corrupt file.
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def check_resize_method(resize_method: str, resize_filter: str = "bicubic") -> None:
    check_choice("resize_method", resize_method, RESIZE_METHODS)
    check_choice("resize_filter", resize_filter, RESIZE_FILTERS)


def _decode(src, side: int | None, storage_size: int, resize_method: str = "crop",
            resize_filter: str = "bicubic") -> np.ndarray:
    """One image to uint8 (side, side, 3); side=None picks min(storage_size, shorter side)."""
    from PIL import ImageOps

    with _open(src) as img:
        if side is None:
            side = min(storage_size, *img.size)
        if img.format == "JPEG" and "nearest" not in resize_filter:
            img.draft("RGB", (side, side))  # decode at a reduced DCT scale (a smoothing) when much larger
        ImageOps.exif_transpose(img, in_place=True)
        return _square(_to_rgb(img), side, resize_method, resize_filter)


def decode_image(path, storage_size: int = 160, resize_method: str = "crop", size: int | None = None,
                 resize_filter: str = "bicubic") -> np.ndarray:
    """uint8 (H, W, 3) exactly as training data is decoded; for prediction. ``path`` may also be a
    PIL image or a uint8 array (H, W, 3) or (H, W): it goes through the same resize. size: exactly
    (size, size, 3) whatever the image's own size, as a dataset's arrays are (so a folder of
    mixed sizes stacks); None: a square of min(storage_size, the image's shorter side)."""
    check_resize_method(resize_method, resize_filter)
    if size is not None and size < 1:
        raise FitVisionError(f"size must be at least 1 pixel, got {size}")
    if not isinstance(path, (str, os.PathLike)):
        path = _image_bytes(path)
        with _refuse_bombs():
            return np.array(_decode(path, size, storage_size, resize_method, resize_filter))
    try:
        with _refuse_bombs():
            # a copy: Pillow's array is read-only, and a caller may well edit the image in place
            return np.array(_decode(str(path), size, storage_size, resize_method, resize_filter))
    except FileNotFoundError:
        raise FitVisionError(f"image not found: {path}") from None
    except NotRegularFile as e:
        raise FitVisionError(f"{path} is {e}") from None
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


def _decode_chunk(chunk: list, side: int, storage_size: int, resize_method: str, resize_filter: str = "bicubic"):
    """Worker task: (indices decoded, stacked images, [(index, reason)] for bad ones)."""
    ok, bad = [], []
    out = np.empty((len(chunk), side, side, 3), dtype=np.uint8)
    with _refuse_bombs():
        for idx, src in chunk:
            try:
                out[len(ok)] = _decode(src, side, storage_size, resize_method, resize_filter)
                ok.append(idx)
            except NotRegularFile as e:  # skipped like an unreadable image, said plainly
                bad.append((idx, str(e)))
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


def _worker_signals() -> None:
    """A decode worker's signals, set first thing in it. Ctrl-C is left to the parent, which stops
    the pool and prints one line (a worker interrupted itself would print its own traceback).
    SIGTERM gets its default action back: ``Pool.terminate`` ends the workers with it and then
    waits for them. A forked worker inherits the parent's Python handlers, and fitvision's
    preemption handler (train/preempt.py) is installed before the data loads; a Python handler
    only runs between bytecodes, so a SIGTERM that lands just before the worker blocks on the task
    queue's lock stays pending while it waits there for good, and the parent with it (seen once,
    on leaving the pool after a decode inside ``fitvision train``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _pool(workers: int):
    """A process pool of ``workers`` decode workers (fork on Linux, see _start_method)."""
    return multiprocessing.get_context(_start_method()).Pool(workers, initializer=_worker_signals)


def _decode_stream(stream, side: int, storage_size: int, resize_method: str, n: int, resize_filter: str = "bicubic"):
    """Yield worker results for the (index, bytes|path) stream; parallel when large."""
    workers = _workers()
    if workers == 1 or n < MIN_PARALLEL or multiprocessing.current_process().daemon:
        # (a daemon process, e.g. a DataLoader worker, may not start children)
        for chunk in _chunks(stream, CHUNK):
            yield _decode_chunk(chunk, side, storage_size, resize_method, resize_filter)
        return
    with _pool(workers) as pool:
        pending: deque = deque()
        for chunk in _chunks(stream, CHUNK):
            pending.append(pool.apply_async(_decode_chunk, (chunk, side, storage_size, resize_method, resize_filter)))
            if len(pending) >= 3 * workers:  # bounded: never read the whole archive ahead
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def decode_images(source: readers.Source, splits: dict[str, list[str]], storage_size: int, resize_method: str,
                   writer, label: str, resize_filter: str = "bicubic"):
    """Decode each split's files into a cache array: ({split: array}, {split: keep mask}, {file: reason})."""
    from tqdm import tqdm

    names = [n for files in splits.values() for n in files]
    stream = source.blobs({n: i for i, n in enumerate(names)})
    first = list(itertools.islice(stream, SNIFF))
    side = _storage_side(first, storage_size)
    starts = np.cumsum([0] + [len(f) for f in splits.values()])
    # every array at once: a full disk is one clear error before any work, not one split later
    writer.check_space(len(names) * (side * side * 3 + np.dtype(np.int64).itemsize))
    xs = {s: writer.array(f"{s}_x", (len(f), side, side, 3), np.uint8) for s, f in splits.items()}
    keep = {s: np.zeros(len(f), dtype=bool) for s, f in splits.items()}
    bad = {}
    with tqdm(total=len(names), desc=f"decoding {label}", unit="img", file=sys.stderr, disable=None,
              leave=False) as bar:
        for idxs, images, errors in _decode_stream(itertools.chain(first, stream), side, storage_size,
                                                   resize_method, len(names), resize_filter):
            for k, split in enumerate(splits):
                sel = (idxs >= starts[k]) & (idxs < starts[k + 1])
                xs[split][idxs[sel] - starts[k]] = images[sel]
                keep[split][idxs[sel] - starts[k]] = True
            bad.update((names[i], why) for i, why in errors)
            bar.update(len(idxs) + len(errors))
    return xs, keep, bad
