"""DeviceLoader: a whole split as one uint8 tensor on the device, batched by index.

No workers and no per-image Python: each epoch is one permutation, each batch one gather
(airbench). The permutation comes from a generator seeded by (seed, epoch), so any epoch can
be replayed on its own, which makes resume exact. Under DDP every rank draws the same
permutation and takes a disjoint slice of it.

With ``hardest`` (fitvision.data.select.HardestFirst), epochs from its start on keep only the
images with the highest loss when last trained: fewer batches (``batches(epoch)``), and
``steps(epochs)`` counts a fit's.

For data larger than device memory, ``host_staging=True`` keeps the images in (pinned, on
CUDA) host memory and copies each gathered batch over with a non-blocking copy, one batch ahead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from fitvision.errors import FitVisionError

_CL = torch.channels_last
_CHUNK = 4096  # images per host->device copy when loading, so a memmap never sits in RAM whole


def epoch_seed(seed: int, epoch: int, stream: int, *more: int) -> int:
    """A well-mixed 63-bit seed for one (seed, epoch, stream, *more); stream 0 shuffles, 1 augments,
    2 mixes (mixup/cutmix)."""
    state = np.random.SeedSequence([seed, epoch, stream, *more]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _as_nchw_uint8(images, device: torch.device, pin: bool) -> torch.Tensor:
    """np.uint8 NHWC (memmap ok) or torch.uint8 NCHW -> uint8 (N, C, H, W) channels_last."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise FitVisionError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        out = images.to(device).contiguous(memory_format=_CL)
        return out.pin_memory() if pin else out
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise FitVisionError(f"images must be uint8 (N, H, W, C), got {arr.dtype} {arr.shape}")
    n, h, w, c = arr.shape
    nhwc = torch.empty((n, h, w, c), dtype=torch.uint8, device=device, pin_memory=pin)
    for start in range(0, n, _CHUNK):  # chunked: a memory map is read once, piece by piece
        block = torch.from_numpy(np.array(arr[start : start + _CHUNK], copy=True))
        nhwc[start : start + len(block)].copy_(block)
    return nhwc.permute(0, 3, 1, 2)  # a channels_last view of the NHWC memory


def _as_labels(labels, n: int, device: torch.device) -> torch.Tensor:
    # A copy (8 bytes a label): from_numpy(np.asarray(...)) would share a read-only memmap's
    # memory, which torch warns about, and on CPU the labels would stay a view of the file.
    y = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.array(labels))
    if y.shape != (n,):
        raise FitVisionError(f"expected {n} labels to match the images, got shape {tuple(y.shape)}")
    return y.to(device=device, dtype=torch.int64)


class DeviceLoader:
    """Batches (x, y) of a split held on ``device``; see the module docstring.

    x = transform(batch_uint8, generator, epoch) when a transform is given (the generator
    lives on the device and is seeded by (seed, epoch)), else float in [0, 1].
    Iterating to the end advances the epoch; ``set_epoch`` sets it (resume, DDP).
    """

    def __init__(self, images, labels, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, device="cpu", transform: Callable | None = None, rank: int = 0,
                 world_size: int = 1, host_staging: bool = False, mix: Callable | None = None, hardest=None):
        if batch_size < 1:
            raise FitVisionError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise FitVisionError(f"rank {rank} is outside world size {world_size}")
        self.device = torch.device(device)
        self.host_staging = host_staging
        store = torch.device("cpu") if host_staging else self.device
        pin = host_staging and self.device.type == "cuda"
        self.images = _as_nchw_uint8(images, store, pin)
        self.labels = _as_labels(labels, self.images.shape[0], self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.transform = seed, transform
        self.mix = mix  # (x, y, rng) -> (x, target probabilities): mixup/cutmix (fitvision.data.mix)
        self.rank, self.world_size = rank, world_size
        self.hardest = hardest  # HardestFirst: the learner records each image's loss in it
        self.epoch = 0
        # The NHWC rows of the images: one gather copies whole images as contiguous blocks
        # (flatten, not reshape(n, -1): that cannot size a batch of 0 images).
        self._rows = self.images.permute(0, 2, 3, 1).flatten(1)

    # ------------------------------------------------------------------ order
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """All the state there is: the order and the draws follow from (seed, epoch), and with
        hardest-first selection from the losses it recorded."""
        state = {"seed": self.seed, "epoch": self.epoch}
        if self.hardest is not None:
            state["hardest"] = self.hardest.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        if self.hardest is not None:
            if "hardest" not in state:
                raise FitVisionError("the checkpoint was written without hardest-first selection; resume with "
                                     "the same config")
            self.hardest.load_state_dict(state["hardest"])

    def __len__(self) -> int:
        """Batches in a whole epoch (without selection)."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int) -> int:
        """Batches in ``epoch``: len(self), fewer in an epoch that keeps the hardest images only."""
        if self.hardest is None:
            return len(self)
        return self.hardest.batches(epoch, len(self), self.batch_size, self.num_samples)

    def steps(self, epochs: float) -> int:
        """Batches in a fit of ``epochs`` epochs from epoch 0 (the last may be a fraction)."""
        if self.hardest is None:
            return round(epochs * len(self))
        whole = math.floor(epochs)
        return sum(self.batches(e) for e in range(whole)) + round((epochs - whole) * self.batches(whole))

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (equal on all ranks when drop_last)."""
        n = self.images.shape[0]
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's image indices for an epoch, in batch order (CPU int64)."""
        n = self.images.shape[0]
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 0))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        order = perm[self.rank :: self.world_size][: self.num_samples]
        if self.hardest is not None:
            order = self.hardest.choose(order, epoch, self.batches(epoch) * self.batch_size)
        return order

    def generator(self, epoch: int | None = None) -> torch.Generator:
        """The augmentation generator for an epoch, on the device. Each rank draws its own numbers
        (rank 0 those of a single process): the same draws on every rank would give the images
        at one position of every shard the same crop and flip."""
        epoch = self.epoch if epoch is None else epoch
        more = (self.rank,) if self.rank else ()
        return torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, epoch, 1, *more))

    # ------------------------------------------------------------------ batches
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        order = self.order(epoch)
        index = order if self.host_staging else order.to(self.device)
        gen = self.generator(epoch)
        mix_rng = np.random.default_rng(epoch_seed(self.seed, epoch, 2, self.rank)) if self.mix else None
        bounds = range(0, self.batches(epoch) * self.batch_size, self.batch_size)
        slices = [index[i : i + self.batch_size] for i in bounds]
        ahead = self._gather(slices[0]) if slices else None
        for k, idx in enumerate(slices):
            xb = ahead
            if k + 1 < len(slices):  # staged copies: start the next batch before using this one
                ahead = self._gather(slices[k + 1])
            yb = self.labels[idx.to(self.device, non_blocking=True)]
            xb = self._transform(xb, gen, epoch)
            if self.hardest is not None:
                self.hardest.handed = idx  # on the device, as the losses it will be given
            yield self.mix(xb, yb, mix_rng) if self.mix else (xb, yb)
        self.epoch = epoch + 1

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        n, c, h, w = len(idx), *self.images.shape[1:]
        if self.host_staging:
            pin = self.device.type == "cuda"
            rows = torch.empty((n, h * w * c), dtype=torch.uint8, pin_memory=pin)
            torch.index_select(self._rows, 0, idx, out=rows)
            rows = rows.to(self.device, non_blocking=pin)
        else:
            rows = self._rows.index_select(0, idx)
        return rows.view(n, h, w, c).permute(0, 3, 1, 2)

    def _transform(self, xb: torch.Tensor, gen: torch.Generator, epoch: int) -> torch.Tensor:
        if self.transform is not None:
            return self.transform(xb, gen, epoch)
        return xb.float().div_(255.0)

    # ------------------------------------------------------------------ views
    def subset(self, indices) -> DeviceLoader:
        """A loader over images[indices] with the same settings (the images are copied)."""
        idx = torch.as_tensor(np.array(indices), dtype=torch.int64)  # a copy: indices may be read-only
        n = self.images.shape[0]
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise FitVisionError(f"subset indices must lie in [0, {n}), got {int(idx.min())}..{int(idx.max())}")
        images = self.images[idx.to(self.images.device)]
        labels = self.labels[idx.to(self.device)]
        sub = DeviceLoader(images, labels, self.batch_size, self.shuffle, self.drop_last, self.seed,
                           self.device, self.transform, self.rank, self.world_size, self.host_staging, self.mix)
        sub.epoch = self.epoch
        return sub

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (f"DeviceLoader({n} x {c}x{h}x{w} uint8 on {self.images.device}, bs={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, rank={self.rank}/{self.world_size})")


def fit_steps(dl, epochs: float) -> int:
    """Optimizer steps in a fit of ``epochs`` epochs over ``dl``: epochs x its batches, or the sum of
    each epoch's own count when it selects (DeviceLoader.steps)."""
    steps = getattr(dl, "steps", None)
    return max(1, steps(epochs) if steps is not None else round(epochs * len(dl)))


def spaced_subset(dl, limit: int):
    """Intermediate epochs may be evaluated on N validation images only: the curve stays visible
    for a fraction of the cost; the last epoch (the result) always sees all. The N are evenly
    spaced, not the first N: splits are often stored sorted by class."""
    n = getattr(dl, "num_samples", None)
    if not limit or n is None or limit >= n or not hasattr(dl, "subset"):
        return dl
    return dl.subset(np.linspace(0, n - 1, limit).round().astype(np.int64))
