"""ImageData: a dataset made ready for training, from a config: decoded, subset, normalised, on the device.

    data = ImageData.from_config(cfg)          # what train_run does
    data = fitvision.ImageData("cifar10")      # the same from Python, resolved as the CLI resolves flags
    data.show_batch()                          # a matplotlib Figure of augmented training images

It holds the training and validation DeviceLoaders (uint8 on the device, augmentation as batch
operations there), the classes, the normalisation stats and the input size, and the notes the
setup printout shows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fitvision.config import TrainConfig
from fitvision.data.mix import create_mix, describe_mix
from fitvision.errors import FitVisionError
from fitvision.train import distributed
from fitvision.train.device import resolve_device
from fitvision.train.evaluate import eval_batch_size, subset_indices, valid_indices
from fitvision.train.seeding import seed_everything

if TYPE_CHECKING:  # annotations only; the loader module is imported where it is used
    from fitvision.data.loader import DeviceLoader

# The TrainConfig fields ImageData is built from; a Learner cannot change them afterwards.
DATA_FIELDS = ("data", "size", "storage_size", "resize_method", "resize_filter", "train_limit", "valid_limit", "valid_pct", "aug",
               "rotate", "translate", "jitter", "perspective", "rrc_scale", "rrc_ratio", "progressive_size", "progressive_epochs", "hardest_frac", "hardest_start", "normalize", "crop_pct", "bs", "seed", "device")


class ImageData:
    """Training and validation loaders for a dataset, every random draw from the config's seed.

    ``ImageData("cifar10", size=32, bs=256)``: the dataset (a catalog name, a folder or an
    archive) with the ``recipe``'s data settings (default "general": batch 400, crop + flip, the
    data's own channel stats), then a config file's, then the keywords (any TrainConfig field),
    resolved as `fitvision train` resolves its flags (fitvision.recipes.resolve_config).
    """

    def __init__(self, source: str | Path = "cifar10", *, recipe: str | None = "general",
                 config: str | Path | None = None, **settings: Any):
        from fitvision.recipes import resolve_config

        cfg, _ = resolve_config(recipe, config, data=str(source), **settings)
        self._load(cfg)  # resolves the device: the one check of setup.preflight that data needs
        self.request = (recipe, config, {"data": str(source), **settings})

    @classmethod
    def from_folder(cls, path: str | Path, **kwargs: Any) -> ImageData:
        """A folder (or archive) of class folders: train/ + valid|val|test/, or unsplit with valid_pct."""
        return cls(path, **kwargs)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ImageData:
        """The data a resolved (preflight-checked) config trains on: what train_run uses."""
        data = cls.__new__(cls)
        data._load(cfg)
        data.request = (None, None, cfg.to_dict())
        return data

    def config_for(self, **settings: Any) -> TrainConfig:
        """The config of a run on this data with other (non-data) settings, resolved as the data's was."""
        from fitvision.recipes import resolve_config

        bad = sorted(set(settings) & set(DATA_FIELDS))
        if bad:
            raise FitVisionError(f"{bad[0]} is a data setting: give it to ImageData, which built the loaders")
        recipe, config, given = self.request
        cfg, _ = resolve_config(recipe, config, **{**given, **settings})
        return dataclasses.replace(cfg, device=self.cfg.device)

    def _load(self, cfg: TrainConfig) -> None:
        from fitvision.data.dataset import load_dataset

        seed_everything(cfg.seed)
        cfg = dataclasses.replace(cfg, device=str(resolve_device(cfg.device)))
        ds = load_dataset(cfg.data, storage_size=cfg.storage_size, valid_pct=cfg.valid_pct, seed=cfg.seed,
                          resize_method=cfg.resize_method, resize_filter=cfg.resize_filter)
        if len(ds.classes) < 2:  # it would "reach" 100% without learning anything
            raise FitVisionError(f"{ds.location} has one class ({', '.join(ds.classes)}); a classifier needs at "
                                 "least two class folders")
        self.cfg, self.name, self.location, self.classes = cfg, ds.name, ds.location, list(ds.classes)
        self._loaders(cfg, ds)

    def _loaders(self, cfg: TrainConfig, ds) -> None:
        from fitvision.data.augment import (ProgressiveResize, aug_params, eval_pipeline, normalization_stats,
                                            train_pipeline)
        from fitvision.data.loader import DeviceLoader
        from fitvision.data.select import HardestFirst

        notes: list[str] = []
        train_idx = subset_indices(len(ds.train_y), cfg.train_limit, cfg.seed)
        valid_idx = valid_indices(len(ds.valid_y), cfg.valid_limit, cfg.seed)
        train_x = ds.train_x if len(train_idx) == len(ds.train_y) else ds.train_x[train_idx]
        valid_x = ds.valid_x if len(valid_idx) == len(ds.valid_y) else ds.valid_x[valid_idx]
        train_y, valid_y = ds.train_y[train_idx], ds.valid_y[valid_idx]
        if len(train_y) == 0 or len(valid_y) == 0:
            # with --valid-pct given, "pass --valid-pct" would send the user round in a circle
            hint = (f"--valid-pct {cfg.valid_pct:g} of {len(ds.train_y) + len(ds.valid_y)} images leaves one side "
                    "empty; choose a fraction that leaves images on both" if cfg.valid_pct > 0
                    else "unsplit data: pass --valid-pct")
            raise FitVisionError(f"{ds.name} has {len(train_y)} training and {len(valid_y)} validation images; "
                                 f"both are needed ({hint})")
        if ds.nested:  # included, labelled by their class folder: said, as it may be a surprise
            notes.append(f"{ds.nested:,} of the {len(ds.train_y) + len(ds.valid_y):,} images are in sub-folders "
                         "of their class folders")
        mean, std = normalization_stats(cfg.normalize, train_x)
        size = cfg.size or int(ds.image_size[0])
        # A last batch of one image breaks BatchNorm in training mode; drop it only then. Under
        # torchrun each rank takes a shard of every batch (bs / N), and every rank must take as
        # many steps: the uneven tail is dropped on all of them.
        w = distributed.world()
        bs = cfg.bs // w.size
        drop_last = w.distributed or len(train_y) % cfg.bs == 1
        if w.distributed:
            notes.append(f"{w.size} processes, each {bs} images of every batch of {cfg.bs}; "
                         "evaluation sharded and gathered")
        elif drop_last:
            notes.append("the last training batch would hold one image; dropped each epoch")
        transform = train_pipeline(cfg.aug, size, mean, std, params=aug_params(cfg))
        if cfg.progressive_size and cfg.progressive_epochs:
            transform = ProgressiveResize(transform, cfg.progressive_size, cfg.progressive_epochs)
            sizes = [transform.size(e, size) for e in range(math.ceil(cfg.progressive_epochs))]
            notes.append(f"progressive resizing: epochs 0-{len(sizes) - 1} at {', '.join(map(str, sizes))} px, "
                         f"then {size}")
        if cfg.crop_pct < 1:
            notes.append(f"evaluation on the central {cfg.crop_pct:g} of each image, resized to {size} px")
        mix = create_mix(cfg, len(self.classes))
        if mix is not None:
            notes.append(describe_mix(mix))
        hardest = None
        if 0 < cfg.hardest_frac < 1:
            hardest = HardestFirst(len(train_y), cfg.hardest_frac, cfg.hardest_start, cfg.device)
            notes.append(f"from epoch {cfg.hardest_start + 1} on, each epoch trains on the {cfg.hardest_frac:g} of "
                         "the training images with the highest loss when last trained")
        self.train_dl = DeviceLoader(train_x, train_y, bs, shuffle=True, drop_last=drop_last, seed=cfg.seed,
                                     device=cfg.device, transform=transform, rank=w.rank, world_size=w.size, mix=mix,
                                     hardest=hardest)
        self.valid_dl = DeviceLoader(valid_x, valid_y, eval_batch_size(bs), device=cfg.device, rank=w.rank,
                                     world_size=w.size, transform=eval_pipeline(size, mean, std, crop_pct=cfg.crop_pct))
        self.train_eval_dl = self._train_eval_loader(train_x, train_y, bs, size, mean, std)
        self.valid_indices, self.mean, self.std, self.size, self.notes = valid_idx, list(mean), list(std), size, notes

    def _train_eval_loader(self, train_x, train_y, bs: int, size: int, mean, std) -> DeviceLoader | None:
        """train_acc_limit evenly spaced training images (splits are often sorted by class) as the
        validation sees images: no augmentation. None when train_acc_limit is 0."""
        from fitvision.data.augment import eval_pipeline
        from fitvision.data.loader import DeviceLoader

        n, limit, w = len(train_y), self.cfg.train_acc_limit, distributed.world()
        if not limit or not n:
            return None
        idx = np.unique(np.linspace(0, n - 1, min(limit, n)).round().astype(np.int64))
        return DeviceLoader(np.asarray(train_x[idx]), np.asarray(train_y)[idx], eval_batch_size(bs),
                            device=self.cfg.device, rank=w.rank, world_size=w.size,
                            transform=eval_pipeline(size, mean, std))

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def num_train(self) -> int:
        return len(self.train_dl.labels)

    def summary(self) -> str:
        return (f"{self.name}: {self.num_train:,} train / {len(self.valid_indices):,} valid images, "
                f"{len(self.classes)} classes, {self.size}x{self.size} px, aug {self.cfg.aug} ({self.location})")

    def __repr__(self) -> str:
        return f"ImageData({self.summary()})"

    def show_batch(self, n: int = 16, augment: bool = True, path: str | Path | None = None, epoch: int = 0) -> Any:
        """A labelled grid of ``n`` training images as the model sees them (``augment``: after the
        training augmentation of ``epoch``, else as stored). A matplotlib Figure, or the file
        written when ``path`` is given."""
        from fitvision.data.color import denormalize
        from fitvision.report.plots import show_batch

        dl = self.train_dl
        n = min(n, dl.num_samples)
        images = dl.images[:n]
        if augment:
            x = dl.transform(images, dl.generator(epoch), epoch)  # the draws that epoch's first batch gets
            images = (denormalize(x.float(), self.mean, self.std).clamp(0, 1) * 255).round().to(torch.uint8)
        grid = images.permute(0, 2, 3, 1).cpu().numpy()
        title = f"{self.name}: {n} training images" + (" after the training augmentation" if augment else "")
        return show_batch(grid, dl.labels[:n].cpu().numpy(), self.classes, path, title=title)

