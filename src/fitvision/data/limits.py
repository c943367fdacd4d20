"""Caps on what reading one archive may produce, so a small hostile archive cannot fill memory or disk.

A 1 MB zip can hold a 1 GiB run of zeros. Every regular member is weighed before a byte of it is
read, from the size its header declares (tar readers stop there, zip readers too: zipfile cuts a
member's output at its declared size and checks the CRC):

- one image may be at most FITVISION_MAX_IMAGE_BYTES (default 64 MiB: a 20-megapixel uncompressed
  RGB TIFF is 60 MB, a large JPEG under 20 MB), any other member FITVISION_MAX_MEMBER_BYTES
  (default 1 GiB: the biggest file an official data set holds is CIFAR-100's 155 MB pickle);
- all members together at most FITVISION_MAX_ARCHIVE_BYTES (default 32 GiB, ~20 times the
  full-size Imagenette);
- past RATIO_FLOOR, neither one member nor the archive as a whole may expand more than
  FITVISION_MAX_RATIO times (default 100): JPEG and PNG do not compress at all, CIFAR's pickles 1.1:1,
  while a run of zeros deflates 1000:1.

The ratio of a member inside a compressed tar stream is not declared anywhere, so it is measured
while the member is read. Each cap names its environment variable, so a genuine outlier can pass.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fitvision.data.items import IMAGE_EXTENSIONS
from fitvision.errors import FitVisionError

CHUNK = 1 << 20  # members are read in pieces this big, never whole before they are weighed
RATIO_FLOOR = 8 << 20  # small files (a blank PNG, a text file) may compress far better, harmlessly
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Caps:
    image_bytes: int = 64 << 20  # one image member, uncompressed
    member_bytes: int = 1 << 30  # one member that is not an image
    archive_bytes: int = 32 << 30  # every member of one archive together, uncompressed
    ratio: float = 100.0  # uncompressed / compressed, checked past RATIO_FLOOR


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    number, unit = raw.upper().rstrip("IB"), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * _UNITS[unit])
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise FitVisionError(f"{name} must be a positive number of bytes such as 67108864 or 64M, got '{raw}'")
    return value


def current_caps() -> Caps:
    """The caps, with the environment's overrides (read on each call: no import-time state)."""
    base = Caps()
    ratio_raw = os.environ.get("FITVISION_MAX_RATIO", "").strip()
    try:
        ratio = float(ratio_raw) if ratio_raw else base.ratio
    except ValueError:
        ratio = 0.0
    if not ratio >= 1:
        raise FitVisionError(f"FITVISION_MAX_RATIO must be a number of at least 1 such as 100, got '{ratio_raw}'")
    return Caps(_env_bytes("FITVISION_MAX_IMAGE_BYTES", base.image_bytes),
                _env_bytes("FITVISION_MAX_MEMBER_BYTES", base.member_bytes),
                _env_bytes("FITVISION_MAX_ARCHIVE_BYTES", base.archive_bytes), ratio)


def human(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"


def is_image(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class Budget:
    """What one pass over one archive has admitted; raises on the first member past a cap."""

    def __init__(self, archive, packed_total: int | None = None, caps: Caps | None = None):
        self.archive = archive  # how messages name it
        self.packed_total = packed_total  # its size on disk; None: the whole-archive ratio is not checked
        self.caps = caps or current_caps()
        self.total = 0

    def _refuse(self, name: str, why: str, env: str) -> FitVisionError:
        return FitVisionError(f"refusing archive {self.archive}: member '{name}' {why}; if it is genuine, "
                              f"raise the cap with {env}")

    def admit(self, name: str, size: int, packed: int | None = None) -> None:
        """Weigh a regular member before it is read: `size` uncompressed, `packed` compressed if known."""
        caps = self.caps
        if is_image(name) and size > caps.image_bytes:
            raise self._refuse(name, f"is {human(size)} uncompressed, over the {human(caps.image_bytes)} cap "
                                     "for one image", "FITVISION_MAX_IMAGE_BYTES")
        if not is_image(name) and size > caps.member_bytes:
            raise self._refuse(name, f"is {human(size)} uncompressed, over the {human(caps.member_bytes)} cap "
                                     "for one file", "FITVISION_MAX_MEMBER_BYTES")
        self.total += size
        if self.total > caps.archive_bytes:
            raise self._refuse(name, f"takes the archive past {human(caps.archive_bytes)} uncompressed",
                               "FITVISION_MAX_ARCHIVE_BYTES")
        if packed is not None:
            self.check_ratio(name, size, packed)
        packed_total = self.packed_total
        if packed_total is not None and self.total > RATIO_FLOOR and self.total > caps.ratio * max(packed_total, 1):
            raise self._refuse(name, f"takes the archive past {caps.ratio:g} times its compressed size "
                                     f"({human(self.total)} from {human(self.packed_total)}; a decompression "
                                     "bomb?)", "FITVISION_MAX_RATIO")

    def check_ratio(self, name: str, produced: int, consumed: int) -> None:
        if produced > RATIO_FLOOR and produced > self.caps.ratio * max(consumed, 1):
            raise self._refuse(name, f"expands more than {self.caps.ratio:g} times ({human(produced)} from "
                                     f"{human(consumed)} compressed; a decompression bomb?)", "FITVISION_MAX_RATIO")

    def chunks(self, name: str, f: BinaryIO, size: int,
               position: Callable[[], int] | None = None) -> Iterator[bytes]:
        """An admitted member's content in CHUNK pieces, never more than its declared `size`.

        `position` (the compressed stream's offset) lets a member's ratio be measured as it is read.
        """
        start = position() if position is not None else 0
        got = 0
        while got < size:
            piece = f.read(min(CHUNK, size - got))
            if not piece:
                break
            got += len(piece)
            if position is not None:
                self.check_ratio(name, got, position() - start)
            yield piece
        if got != size:  # a short member: the reader normally raises first
            raise EOFError(f"member '{name}' ended after {got} of {size} bytes")
