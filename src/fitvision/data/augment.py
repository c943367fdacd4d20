"""Batch augmentation pipelines: the ops of ``transforms`` and ``color`` composed per batch.

``Aug`` binds an op to its parameters; ``Pipeline`` applies ops in order and fuses the final
normalize into one output buffer; ``ProgressiveResize`` shrinks early epochs' batches;
``train_pipeline`` and ``eval_pipeline`` build the named presets (``PRESETS``).

Pixel values stay in 0..255 units (uint8 or float) from decode to the last step, normalize.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Sequence

import torch

from fitvision.data.color import channel_stats, color_jitter, normalize
from fitvision.data.transforms import (
    _CL,
    _channels_last,
    affine,
    alternating_flip,
    center_crop,
    cutout,
    dihedral,
    hflip,
    perspective,
    random_crop,
    random_resized_crop,
    resize,
    resize_cover,
    tilted_resized_crop,
)
from fitvision.errors import FitVisionError, check_choice

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # the seeds' CIFAR-10 mean, std
# Fixed (mean, std) presets: the seeds' CIFAR stats (000/001), seed 002's Normalize((0.5,)*3, (0.5,)*3),
# and ImageNet's (torchvision's pretrained models). "auto": the training split's own channel stats.
# Explicit values are "m1,m2,m3/s1,s2,s3".
NORMALIZE_PRESETS = {"cifar": CIFAR_STATS, "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                     "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
NORMALIZE = ("auto", *NORMALIZE_PRESETS)


# --------------------------------------------------------------------------- pipelines
class Aug:
    """One op with its parameters; called as aug(x, generator, epoch)."""

    def __init__(self, fn: Callable, **params):
        self.fn, self.params = fn, params
        names = inspect.signature(fn).parameters
        self._random, self._epoch = "generator" in names, "epoch" in names

    def __call__(self, x, generator=None, epoch: int = 0):
        kw = dict(self.params)
        if self._epoch:
            kw["epoch"] = epoch
        return self.fn(x, generator, **kw) if self._random else self.fn(x, **kw)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.fn.__name__}({args})"


class Pipeline:
    """Ops applied in order, then normalize into one channels_last output of ``dtype``.

    On CPU the batch runs in chunks of about ``chunk_bytes`` of float pixels so that the
    intermediates stay cache-sized and are reused by the allocator instead of page-faulted
    in afresh each batch; random draws are per chunk, so a result depends on the seed,
    the batch and the device (never on timing).
    """

    def __init__(self, ops: Sequence[Callable], mean=None, std=None, dtype=torch.float32,
                 chunk_bytes: int = 8 << 20):
        self.ops = list(ops)
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.dtype, self.chunk_bytes = dtype, chunk_bytes

    def __call__(self, x: torch.Tensor, generator=None, epoch: int = 0) -> torch.Tensor:
        if x.dim() != 4:
            raise FitVisionError(f"a pipeline takes a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        x = _channels_last(x)
        out = None
        for start, stop in self._chunks(x):
            y = x[start:stop]
            for op in self.ops:
                y = op(y, generator, epoch)
            if out is None:
                out = torch.empty((x.shape[0], *y.shape[1:]), dtype=self.dtype, device=x.device,
                                  memory_format=_CL)
            self._finish(y, out[start:stop])
        return out

    def _chunks(self, x: torch.Tensor):
        n = x.shape[0]
        step = max(n, 1)
        if x.device.type == "cpu" and n:
            step = max(1, self.chunk_bytes // (4 * x[0].numel()))
        return [(i, min(i + step, n)) for i in range(0, max(n, 1), step)]  # an empty batch: one empty chunk

    def _finish(self, y: torch.Tensor, out: torch.Tensor) -> None:
        if self.mean is not None:
            normalize(y, self.mean, self.std, out=out)
        else:
            torch.mul(y, 1.0 / 255.0, out=out)

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(map(repr, self.ops))}], mean={self.mean}, std={self.std})"


class ProgressiveResize:
    """Progressive resizing: early epochs' batches come out of ``pipeline`` shrunk (antialiased
    bilinear) to a size that grows linearly from ``start`` px at epoch 0 to the full size at
    epoch ``epochs``, in steps of ``step`` px; from then on the pipeline's own output.

    Whole images shrink, so objects keep their place in the frame and only lose detail: the
    early epochs, where the net learns coarse features at a high lr, cost a fraction of the
    compute (about (size/32)^2 of the convolutions for a 32 px net).
    """

    def __init__(self, pipeline: Callable, start: int, epochs: float, step: int = 4):
        self.pipeline, self.start, self.epochs, self.step = pipeline, start, epochs, step

    def size(self, epoch: int, full: int) -> int:
        if epoch >= self.epochs or self.start >= full:
            return full
        shrink = (full - self.start) * (1 - epoch / self.epochs)
        return full - self.step * math.floor(shrink / self.step + 0.5)

    def __call__(self, x: torch.Tensor, generator=None, epoch: int = 0) -> torch.Tensor:
        y = self.pipeline(x, generator, epoch)
        size = self.size(epoch, y.shape[-1])
        return resize(y, size) if size != y.shape[-1] else y

    def __repr__(self) -> str:
        return f"ProgressiveResize({self.pipeline!r}, start={self.start}, epochs={self.epochs:g}, step={self.step})"


def _fit(size) -> list[Aug]:
    """Resize to the training size when the stored images differ (no-op otherwise)."""
    return [Aug(resize_cover, size=size)] if size else []


def _scaled(px: int, size) -> int:
    """Pixel amounts in the presets are for 32 px images; scale them to the training size."""
    return max(1, round(px * size / 32)) if size else px


PRESETS = ("none", "flip", "crop_flip", "crop_flip_alt", "crop_flip_cutout", "dihedral", "rrc_flip", "perspective",
           "heavy")
_RRC = {"rrc_flip": ((0.35, 1.0), 0.0), "perspective": ((0.35, 1.0), 0.4)}  # preset: (its scale, its tilt)


@dataclasses.dataclass(frozen=True)
class AugParams:
    """Settings on top of a preset (config fields of the same meaning, parsed by ``aug_params``):
    ``rotate`` degrees and ``translate`` (fraction of the size) add one random affine op; ``jitter``
    (brightness, contrast, saturation, hue) adds colour jitter; ``perspective`` is the tilt of the
    perspective preset, or with another preset adds a perspective warp of that strength;
    ``scale`` and ``ratio`` replace the random-resized crop's (presets rrc_flip, perspective)."""

    rotate: float = 0.0
    translate: float = 0.0
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    perspective: float = 0.0
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None


def _numbers(name: str, text: str, counts: tuple[int, ...], form: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in re.split(r"(?<=[\d.])-|,", text))  # '0.08-1' or '0.08,1'; 1e-3 kept
    except ValueError:
        values = ()
    if len(values) not in counts or not all(0 <= v < float("inf") for v in values):
        raise FitVisionError(f"{name} must be {form}, got {text!r}")
    return values


def aug_params(cfg) -> AugParams:
    """The config's augmentation settings, checked: one clear error for a bad one."""
    jitter = scale = ratio = None
    if cfg.jitter:
        j = _numbers("jitter", cfg.jitter, (1, 4), "one strength for brightness, contrast and saturation "
                     "(e.g. 0.4) or four, 'b,c,s,h' (hue at most 0.5)")
        jitter = (j[0], j[0], j[0], 0.0) if len(j) == 1 else j
        if jitter[3] > 0.5:
            raise FitVisionError(f"jitter's hue must be at most 0.5 (half a turn), got {jitter[3]:g}")
    if cfg.rrc_scale:
        scale = _numbers("rrc_scale", cfg.rrc_scale, (2,), "an area range 'low-high' with 0 < low <= high <= 1 "
                         "(torchvision's: 0.08-1)")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise FitVisionError(f"rrc_scale must be 'low-high' with 0 < low <= high <= 1, got {cfg.rrc_scale!r}")
    if cfg.rrc_ratio:
        ratio = _numbers("rrc_ratio", cfg.rrc_ratio, (2,), "an aspect range 'low-high' with 0 < low <= high "
                         "(torchvision's: 0.75-1.333)")
        if not 0 < ratio[0] <= ratio[1]:
            raise FitVisionError(f"rrc_ratio must be 'low-high' with 0 < low <= high, got {cfg.rrc_ratio!r}")
    if (scale or ratio) and cfg.aug not in _RRC:
        raise FitVisionError(f"rrc_scale and rrc_ratio set a random-resized crop, and augmentation '{cfg.aug}' has "
                             f"none: use --aug {' or '.join(_RRC)}")
    for name in ("rotate", "translate", "perspective"):
        if not 0 <= getattr(cfg, name) < float("inf"):
            raise FitVisionError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    if cfg.translate > 1 or cfg.perspective > 1:
        raise FitVisionError("translate and perspective are fractions of the image size: at most 1, got "
                             f"{max(cfg.translate, cfg.perspective):g}")
    return AugParams(rotate=cfg.rotate, translate=cfg.translate, jitter=jitter or AugParams.jitter,
                     perspective=cfg.perspective, scale=scale, ratio=ratio)


def _extra_ops(aug: str, p: AugParams) -> list[Aug]:
    ops = []
    if p.rotate or p.translate:
        ops.append(Aug(affine, degrees=p.rotate, translate=p.translate))
    if p.perspective and aug != "perspective":
        ops.append(Aug(perspective, distortion=p.perspective))
    if any(p.jitter):
        b, c, s, h = p.jitter
        ops.append(Aug(color_jitter, brightness=b, contrast=c, saturation=s, hue=h))
    return ops


def train_pipeline(aug: str, size, mean, std, dtype=torch.float32, params: AugParams = AugParams()) -> Pipeline:
    """The named training augmentation, with ``params`` on top; size 0/None keeps the stored size.

    none: resize only. flip: + hflip. crop_flip: reflect pad 4 (per 32 px) + random crop +
    flip (the seeds'). crop_flip_alt: translate 2 + alternating flip (airbench).
    crop_flip_cutout: crop_flip + 8 px cutout. dihedral: crop + the 8 symmetries.
    rrc_flip: random-resized crop, scale 0.35-1, + flip (Imagenette). perspective: the same crop
    seen tilted by up to 0.4 (seed 004's warp) + flip. heavy: affine (rotate 10, zoom 1-1.2,
    translate 0.1, shear 5, flip) + colour jitter 0.2 / hue 0.02.
    """
    if aug not in PRESETS:
        raise FitVisionError(f"unknown augmentation '{aug}' (valid: {', '.join(PRESETS)})")
    fit, s = _fit(size), size or None
    crop = {}
    if aug in _RRC:
        default_scale, tilt = _RRC[aug]
        crop = dict(size=s, scale=params.scale or default_scale, ratio=params.ratio or (3 / 4, 4 / 3), flip_p=0.5)
        if aug == "perspective":
            crop["magnitude"] = params.perspective or tilt
    ops: list[Aug] = {
        "none": fit,
        "flip": fit + [Aug(hflip)],
        "crop_flip": [Aug(hflip)] + fit + [Aug(random_crop, padding=_scaled(4, s))],
        "crop_flip_alt": [Aug(alternating_flip)] + fit + [Aug(random_crop, padding=_scaled(2, s))],
        "crop_flip_cutout": [Aug(hflip)] + fit + [Aug(random_crop, padding=_scaled(4, s)),
                                                  Aug(cutout, size=_scaled(8, s))],
        "dihedral": fit + [Aug(random_crop, padding=_scaled(4, s)), Aug(dihedral)],
        "rrc_flip": [Aug(random_resized_crop, **crop)],
        "perspective": [Aug(tilted_resized_crop, **crop)],
        "heavy": [Aug(affine, degrees=10.0, zoom=(1.0, 1.2), translate=0.1, shear=5.0, flip_p=0.5, size=s),
                  Aug(color_jitter, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)],
    }[aug]
    return Pipeline(ops + _extra_ops(aug, params), mean, std, dtype)


def normalization_stats(normalize: str, train_images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel as the config's ``normalize`` says: "auto" (the training images'
    own), a preset (NORMALIZE_PRESETS) or explicit "m1,m2,m3/s1,s2,s3"."""
    fixed = fixed_stats(normalize)
    return channel_stats(train_images) if fixed is None else fixed


def fixed_stats(normalize: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) ``normalize`` fixes, None for "auto"; a bad value is one clear error."""
    if normalize == "auto":
        return None
    if normalize in NORMALIZE_PRESETS:
        return NORMALIZE_PRESETS[normalize]
    if "/" not in normalize:
        check_choice("normalize", normalize, NORMALIZE)  # a misspelt preset: the nearest one
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in normalize.split("/"))
    except ValueError:
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or not all(0 < s < float("inf") for s in std) \
            or not all(abs(m) < float("inf") for m in mean):
        raise FitVisionError(f"normalize must be auto, {', '.join(NORMALIZE_PRESETS)} or three means and three "
                             f"positive stds as 'm1,m2,m3/s1,s2,s3', got {normalize!r}")
    return mean, std


def check_crop_pct(crop_pct: float) -> None:
    if not 0 < crop_pct <= 1:
        raise FitVisionError(f"crop_pct must be in (0, 1], got {crop_pct!r}")


def center_crop_resize(x: torch.Tensor, size=None, *, pct: float) -> torch.Tensor:
    """Keep the central ``pct`` of each side, then resize to ``size`` (None: back to the input's
    size). timm's ``crop_pct``: training crops (random-resized, scale < 1) show objects larger
    than a whole image does, so evaluating on a central crop shows them at the size the net
    learned them."""
    H, W = x.shape[-2:]
    x = center_crop(x, (max(1, round(H * pct)), max(1, round(W * pct))))
    return resize_cover(x, size or (H, W))


def eval_pipeline(size, mean, std, dtype=torch.float32, crop_pct: float = 1.0) -> Pipeline:
    """Deterministic: keep the central ``crop_pct`` of each image (1: all of it), resize the
    shorter side to ``size``, centre crop, normalize."""
    if crop_pct < 1:
        return Pipeline([Aug(center_crop_resize, size=size or None, pct=crop_pct)], mean, std, dtype)
    return Pipeline(_fit(size), mean, std, dtype)
