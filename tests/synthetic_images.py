"""Tiny image folders that a model learns in a few steps: class c is brightest in channel c % 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: list[str], n_train: int, n_valid: int, size: int = 16,
                      seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/valid/<class>/*.png; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
                img[..., c % 3] += rng.integers(40, 130, dtype=np.uint8)  # overlapping classes: not all certain
                Image.fromarray(img).save(folder / f"{i:04d}.png")
    return Path(root)
