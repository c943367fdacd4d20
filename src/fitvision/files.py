"""Writing files so that a crash, a full disk or a planted symlink never leaves a wrong one.

Every file fitvision writes into a run directory goes through ``atomic_path``: the content is
written to a fresh, uniquely named temporary file in the same folder (``mkstemp``: it cannot be
a symlink someone planted at a fixed name), flushed to disk, and renamed over the target in one
step. A reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it becomes ``path``, else it is removed.

    The temporary file exists (empty, mode 0600) when the block starts: writers that replace it
    (safetensors, torch.onnx) and writers that open it for writing both work."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed it without an fsync
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a run's files are meant to be shared like any other
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
