"""Colour and normalisation: per-pixel linear maps of the channel values of a batch.

``color_jitter`` (random brightness, contrast, saturation, hue), ``normalize`` (the last step of
every pipeline: 0..255 units to ``(x / 255 - mean) / std`` as float), its inverse
``denormalize``, and ``channel_stats``, the dataset mean and std that normalize uses.
Random ops follow the convention of ``transforms``: ``op(x, generator=None, **params) -> x``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from fitvision.data.transforms import _CL, _as_float, _const, _rand
from fitvision.errors import FitVisionError

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as Pillow's convert("L")
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


# --------------------------------------------------------------------------- colour
def _luma(device) -> torch.Tensor:
    return _const(_GRAY, str(device))


@functools.lru_cache(maxsize=1)
def _yiq_inverse() -> tuple:
    """The exact inverse (not the rounded textbook one), so that gray stays gray."""
    return tuple(map(tuple, np.linalg.inv(np.array(_YIQ)).tolist()))


def _hue_matrices(angle: torch.Tensor) -> torch.Tensor:
    """RGB -> RGB rotation of the hue by ``angle`` (radians) in YIQ space, (B, 3, 3)."""
    to_yiq = _const(_YIQ, str(angle.device))
    from_yiq = _const(_yiq_inverse(), str(angle.device))
    rot = torch.zeros(angle.shape[0], 3, 3, device=angle.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(angle), torch.cos(angle)
    return from_yiq @ rot @ to_yiq


def color_jitter(x, generator=None, *, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0):
    """Brightness, saturation, hue, then contrast, each factor ~ U(1 - v, 1 + v) (hue: an angle
    of up to v turns). All four are linear in RGB, so the batch takes one 3x3 matmul per sample
    plus a per-image offset, then one clamp to 0..255 (torchvision clamps between steps)."""
    B, C = x.shape[:2]
    if C != 3:
        raise FitVisionError(f"color_jitter needs RGB images, got {C} channels")
    dev = x.device
    # factors below 0 mean nothing (a negative brightness is black): as torchvision, from max(0, 1 - v)
    b = _rand(generator, B, dev, max(0.0, 1 - brightness), 1 + brightness)
    c = _rand(generator, B, dev, max(0.0, 1 - contrast), 1 + contrast)
    s = _rand(generator, B, dev, max(0.0, 1 - saturation), 1 + saturation)
    angle = _rand(generator, B, dev, -hue, hue) * (2 * math.pi)
    luma = _luma(dev)
    eye = torch.eye(3, device=dev)
    sat = s.view(B, 1, 1) * eye + (1 - s).view(B, 1, 1) * luma.view(1, 1, 3)  # gray + s (x - gray)
    m = _hue_matrices(angle) @ sat * b.view(B, 1, 1)
    x = _as_float(x)
    mean_rgb = x.mean(dim=(2, 3))  # contrast blends towards the mean gray of the jittered image
    gray = ((m @ mean_rgb.unsqueeze(-1)).squeeze(-1) * luma).sum(1)
    m = m * c.view(B, 1, 1)
    offset = ((1 - c) * gray).view(B, 1, 1).expand(B, 1, 3)
    h = x.permute(0, 2, 3, 1).reshape(B, x.shape[2] * x.shape[3], 3)  # channels_last memory: no copy
    y = torch.baddbmm(offset, h, m.transpose(1, 2)).clamp_(0, 255)
    return y.view(B, x.shape[2], x.shape[3], 3).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- normalisation
def _stats_tensors(mean, std, max_value: float, device):
    mean_t = _const(tuple(float(v) for v in mean), str(device)).view(1, -1, 1, 1)
    std_t = _const(tuple(float(v) for v in std), str(device)).view(1, -1, 1, 1)
    return 1.0 / (max_value * std_t), -mean_t / std_t


def normalize(x, mean, std, max_value: float = 255.0, out=None, dtype=torch.float32):
    """(x / max_value - mean) / std as one fused multiply-add; x is uint8 or float in
    0..max_value units; mean and std in 0..1 units. ``out`` receives the result if given."""
    scale, shift = _stats_tensors(mean, std, max_value, x.device)
    if out is None:
        out = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=_CL)
    if _is_nhwc(x) and _is_nhwc(out):
        # View rows of W * C values and tile the per-channel constants along them: the
        # inner loop is then long and contiguous (vectorised) instead of 3 wide.
        B, C, H, W = x.shape
        torch.addcmul(shift.view(C).repeat(W), _rows(x), scale.view(C).repeat(W), out=_rows(out))
        return out
    return torch.addcmul(shift, x, scale, out=out)


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.permute(0, 2, 3, 1).is_contiguous()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B*H, W*C) view of a channels_last batch."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).view(B * H, W * C)


def denormalize(x, mean, std) -> torch.Tensor:
    """The inverse of normalize, to 0..1 units (the seeds' ``images * stds + means``)."""
    scale, shift = _stats_tensors(mean, std, 1.0, x.device)
    return (x.float() - shift) / scale


def channel_stats(images, chunk_pixels: int = 1 << 21) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over all pixels of uint8 NHWC images, in 0..1 units.

    Reads about ``chunk_pixels`` values at a time (memory maps stay on disk). Each chunk's
    sums and sums of squares are float64 matrix-vector products: fast BLAS, and exact,
    since every partial sum is an integer far below 2**53.
    """
    n = len(images)
    if n == 0:
        raise FitVisionError("cannot compute channel statistics of an empty training split")
    channels = images.shape[-1]
    step = max(1, chunk_pixels // int(np.prod(images.shape[1:])))
    total = torch.zeros(2, channels, dtype=torch.float64)
    for start in range(0, n, step):
        block = np.array(images[start : start + step], dtype=np.uint8, copy=True)  # memmap -> RAM
        values = torch.from_numpy(block).reshape(-1, channels).double()
        ones = torch.ones(1, values.shape[0], dtype=torch.float64)
        total[0] += (ones @ values)[0]
        total[1] += (ones @ values.square_())[0]
    count = n * int(np.prod(images.shape[1:-1]))
    mean = total[0] / count
    # At least one grey level: a channel that never varies (a blue channel all 0, a grey dataset
    # stored as RGB) would otherwise be divided by 0, and every loss would be NaN from batch 0.
    std = (total[1] / count - mean**2).clamp_min(0).sqrt().clamp_min(1.0)
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())
