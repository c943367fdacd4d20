"""Batch augmentation: vectorised ops over a whole (B, C, H, W) batch on any device.

Every random op has the form ``op(x, generator=None, **params) -> x``: it draws one set of
parameters per sample from ``generator`` (which must live on ``x.device``) and applies them to
the whole batch at once, with no Python loop over samples.

Pixel values stay in 0..255 units from decode to the last step, ``normalize``, which maps
them to ``(x / 255 - mean) / std`` as float. The cheap geometric ops (crop, flip, dihedral,
cutout) keep uint8, which moves 4x fewer bytes than float (seed 004: "do everything you can
while the image is still bytes"); resampling ops (affine, perspective, random-resized crop,
colour) need float and return float, still in 0..255 units.

``Pipeline`` composes ops and fuses the final normalize into one output buffer; ``train_pipeline``
and ``eval_pipeline`` build the named presets.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fitvision.errors import FitVisionError

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # the seeds' CIFAR-10 mean, std
_CL = torch.channels_last
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as Pillow's convert("L")
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


# --------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=64)
def _const(values: tuple, device: str) -> torch.Tensor:
    """A constant tensor, made once per device: on CUDA each torch.tensor(list) is a blocking
    host-to-device copy, which would stall the queue of batch kernels."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=_CL)


def _rand(generator, n: int, device, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n uniform draws in [low, high) as float32 on ``device``."""
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _coin(generator, n: int, device, p: float) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _per_sample(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a where mask[i] else b, per sample; keeps channels_last."""
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _pair_f(v) -> tuple[float, float]:
    return (float(v), float(v)) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))


def _span(v) -> tuple[float, float]:
    """A number v means the symmetric range (-v, v); a pair is taken as (low, high)."""
    return (-float(v), float(v)) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


# --------------------------------------------------------------------------- crop, flip, cutout
def pad(x: torch.Tensor, padding: int, mode: str = "reflect") -> torch.Tensor:
    """Pad H and W by ``padding`` on each side; "reflect" (no edge repeat) or "zeros".

    Reflect is built from slices and one cat per axis: for uint8 that is several times
    faster than F.pad's reflect kernel on CPU.
    """
    if padding == 0:
        return _channels_last(x)
    if mode == "zeros":
        return _channels_last(F.pad(x, (padding,) * 4))
    if mode != "reflect":
        raise FitVisionError(f"unknown padding mode '{mode}' (valid: reflect, zeros)")
    H, W = x.shape[-2:]
    if padding >= min(H, W):
        raise FitVisionError(f"reflect padding {padding} needs images larger than {padding} px, got {H}x{W}")
    h = x.permute(0, 2, 3, 1)  # (B, H, W, C): the memory order of channels_last
    p = padding
    h = torch.cat([h[:, :, 1 : p + 1].flip(2), h, h[:, :, W - p - 1 : W - 1].flip(2)], dim=2)
    h = torch.cat([h[:, 1 : p + 1].flip(1), h, h[:, H - p - 1 : H - 1].flip(1)], dim=1)
    return h.permute(0, 3, 1, 2)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size) -> torch.Tensor:
    """Per-sample crops of ``size`` at (top, left): one gather through a strided window view."""
    oh, ow = _pair(size)
    x = _channels_last(x)
    B, C, H, W = x.shape
    sN, sC, sH, sW = x.stride()
    # windows[b, i, j] is the (oh, ow, C) crop whose corner is (i, j); indexing copies only
    # the chosen window of each sample.
    windows = x.as_strided((B, H - oh + 1, W - ow + 1, oh, ow, C), (sN, sH, sW, sH, sW, sC))
    rows = torch.arange(B, device=x.device)
    return windows[rows, top, left].permute(0, 3, 1, 2)


def random_crop(x, generator=None, *, padding: int = 4, padding_mode: str = "reflect", size=None):
    """Pad, then crop each sample at a random offset (seed: RandomCrop(32, padding=4, reflect))."""
    B, _, H, W = x.shape
    oh, ow = _pair(size) if size is not None else (H, W)
    if oh > H + 2 * padding or ow > W + 2 * padding:
        raise FitVisionError(f"random_crop: a {oh}x{ow} crop does not fit a {H}x{W} image padded by {padding}")
    xp = pad(x, padding, padding_mode)
    top = torch.randint(0, xp.shape[2] - oh + 1, (B,), generator=generator, device=x.device)
    left = torch.randint(0, xp.shape[3] - ow + 1, (B,), generator=generator, device=x.device)
    return crop_at(xp, top, left, (oh, ow))


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    oh, ow = _pair(size)
    H, W = x.shape[-2:]
    if (oh, ow) == (H, W):
        return x
    if oh > H or ow > W:
        raise FitVisionError(f"centre crop {oh}x{ow} is larger than the {H}x{W} images")
    top, left = (H - oh) // 2, (W - ow) // 2
    return _channels_last(x[:, :, top : top + oh, left : left + ow])


def hflip(x, generator=None, *, p: float = 0.5):
    """Mirror each sample left-right with probability p."""
    return _flip_where(_coin(generator, x.shape[0], x.device, p), x)


def _flip_where(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x with the samples in ``mask`` mirrored. Copies and flips only the chosen samples: on
    CPU that beats torch.where over the whole batch; on CUDA the where avoids a host sync."""
    if x.device.type != "cpu":
        return _per_sample(mask, x.flip(3), x)
    idx = mask.nonzero().squeeze(1)
    out = x.clone(memory_format=_CL)
    out[idx] = x[idx].flip(3)
    return out


def image_bits(x: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random bit per image, from a hash of its pixel sum.

    The same image gives the same bit in every epoch without the loader passing indices.
    """
    total = x.flatten(1).sum(1, dtype=torch.int64)  # < 2**35 for any sane image; flatten: also 0 images
    return ((total * 2654435761) >> 17) & 1 == 1  # Knuth's multiplicative hash, a middle bit


def alternating_flip(x, generator=None, *, epoch: int = 0):
    """Derandomized flip (airbench): each image is flipped in every other epoch.

    A fixed per-image bit XOR the epoch parity: half the images are flipped in even epochs,
    the complement in odd ones. Put it before ops that change pixels (the bit hashes them).
    """
    return _flip_where(image_bits(x) ^ bool(epoch % 2), x)


def dihedral(x, generator=None, *, p: float = 1.0):
    """One of the 8 symmetries of the square per sample (identity when not drawn, prob 1 - p)."""
    B, _, H, W = x.shape
    if H != W:
        raise FitVisionError(f"dihedral needs square images, got {H}x{W}; resize or crop first")
    k = torch.randint(0, 8, (B,), generator=generator, device=x.device)
    k = torch.where(_coin(generator, B, x.device, p), k, torch.zeros_like(k))
    x = _per_sample(k & 4 > 0, x.transpose(2, 3), x)  # transpose first, then flips: 8 distinct maps
    x = _per_sample(k & 2 > 0, x.flip(2), x)
    return _channels_last(_per_sample(k & 1 > 0, x.flip(3), x))


def cutout(x, generator=None, *, size: int = 8, fill: float = 0.0):
    """Fill one size x size square per sample (centre uniform over the image; may be clipped)."""
    B, _, H, W = x.shape
    if x.dtype == torch.uint8 and not 0 <= fill <= 255:
        raise FitVisionError(f"cutout fill must be a pixel value in 0..255 for uint8 images, got {fill}")
    cy = torch.randint(0, H, (B, 1, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, W, (B, 1, 1, 1), generator=generator, device=x.device)
    ys = torch.arange(H, device=x.device).view(1, 1, H, 1)
    xs = torch.arange(W, device=x.device).view(1, 1, 1, W)
    half = size // 2
    inside = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return x.masked_fill(inside, fill)


# --------------------------------------------------------------------------- resampling
def resize(x: torch.Tensor, size, mode: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """Resize the batch to ``size`` (int: square); dtype in = dtype out (uint8 is rounded).

    mode: "nearest", "bilinear", "bicubic" or "area"; antialias applies to bilinear/bicubic
    when shrinking (as Pillow does).
    """
    oh, ow = _pair(size)
    if x.shape[-2:] == (oh, ow):
        return x
    if mode not in ("nearest", "bilinear", "bicubic", "area"):
        raise FitVisionError(f"unknown resize mode '{mode}' (valid: nearest, bilinear, bicubic, area)")
    kw = {} if mode in ("nearest", "area") else {"align_corners": False, "antialias": antialias}
    if mode == "nearest" or x.is_floating_point():
        return _channels_last(F.interpolate(x, size=(oh, ow), mode=mode, **kw))
    if x.device.type == "cpu" and mode == "bilinear":  # torch has a fast uint8 kernel for this
        return _channels_last(F.interpolate(x, size=(oh, ow), mode=mode, **kw))
    y = F.interpolate(x.float(), size=(oh, ow), mode=mode, **kw)
    return _channels_last(y.round_().clamp_(0, 255).to(torch.uint8))


def resize_cover(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resize keeping the aspect ratio so the image just covers ``size`` (int: square), then
    centre crop to it: the eval transform, and a no-op when the batch already has that size."""
    oh, ow = _pair(size)
    H, W = x.shape[-2:]
    if (H, W) == (oh, ow):
        return x
    scale = max(oh / H, ow / W)
    x = resize(x, (max(oh, round(H * scale)), max(ow, round(W * scale))), mode)
    return center_crop(x, (oh, ow))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


def _sample(x, theta_or_grid, size, mode: str, padding_mode: str, is_grid: bool = False):
    """grid_sample in 0..255 float units; theta (B, 2, 3) maps output to input coordinates."""
    if padding_mode not in ("zeros", "border", "reflection"):
        raise FitVisionError(f"unknown padding mode '{padding_mode}' (valid: zeros, border, reflection)")
    x = _as_float(x)
    if x.shape[0] == 0:  # affine_grid refuses an empty batch
        return x.new_empty((0, x.shape[1], *size))
    if is_grid:
        grid = theta_or_grid
    else:
        oh, ow = size
        grid = F.affine_grid(theta_or_grid, [x.shape[0], x.shape[1], oh, ow], align_corners=False)
    # Left in grid_sample's NCHW layout: the final normalize writes channels_last anyway, and
    # converting here would add a full copy of the float batch.
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def affine_matrices(generator, n: int, device, *, degrees: float = 0.0, zoom=(1.0, 1.0),
                    translate: float = 0.0, shear: float = 0.0, flip_p: float = 0.0) -> torch.Tensor:
    """Per-sample 3x3 maps from output to input pixel coordinates (centred, y down).

    Each amount is a number v (drawn from U(-v, v); zoom: fixed v) or a (low, high) range.
    Rotation by +d degrees turns the picture anticlockwise on screen (d=90 equals rot90);
    zoom > 1 magnifies; translate is a fraction of the image size; flip mirrors left-right.
    The 2x2 part is in pixels (so rotations stay rigid on non-square images); the
    translation column is already in affine_grid's normalised units.
    """
    angle = torch.deg2rad(_rand(generator, n, device, *_span(degrees)))
    z = _rand(generator, n, device, *_pair_f(zoom))
    tx, ty = (_rand(generator, n, device, *_span(translate)) for _ in range(2))
    sh = torch.tan(torch.deg2rad(_rand(generator, n, device, *_span(shear))))
    flip = torch.where(_coin(generator, n, device, flip_p), -1.0, 1.0)
    cos, sin = torch.cos(angle) / z, torch.sin(angle) / z
    m = torch.zeros(n, 3, 3, device=device)
    # R(angle) @ [[1, sh], [0, 1]] @ diag(flip / z, 1 / z), then the translation
    m[:, 0, 0], m[:, 0, 1] = cos * flip, cos * sh - sin
    m[:, 1, 0], m[:, 1, 1] = sin * flip, sin * sh + cos
    m[:, 0, 2], m[:, 1, 2], m[:, 2, 2] = 2 * tx, 2 * ty, 1.0  # normalised units: 2 = full size
    return m


def _theta(m: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Pixel-unit map -> affine_grid's normalised coords: conjugate by diag(W/2, H/2)."""
    theta = m[:, :2, :].clone()
    theta[:, 0, 1] *= H / W  # N^-1 A N with N = diag(W/2, H/2): entry (i, j) scales by N_j / N_i
    theta[:, 1, 0] *= W / H
    return theta


def affine(x, generator=None, *, degrees: float = 0.0, zoom=(1.0, 1.0), translate: float = 0.0,
           shear: float = 0.0, flip_p: float = 0.0, size=None, mode: str = "bilinear",
           padding_mode: str = "reflection"):
    """Random rotate/zoom/translate/shear/flip through affine_grid + grid_sample (seed 004)."""
    B, _, H, W = x.shape
    m = affine_matrices(generator, B, x.device, degrees=degrees, zoom=zoom,
                        translate=translate, shear=shear, flip_p=flip_p)
    return _sample(x, _theta(m, H, W), _pair(size) if size else (H, W), mode, padding_mode)


def perspective(x, generator=None, *, distortion: float = 0.25, size=None, mode: str = "bilinear",
                padding_mode: str = "reflection"):
    """Random perspective warp: each output corner samples from an input corner moved by up to
    ``distortion`` of the half-size in x and y (seed 004's warp), via a batched homography."""
    B, _, H, W = x.shape
    oh, ow = _pair(size) if size else (H, W)
    dst = _const(((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)), str(x.device))
    src = dst + _rand(generator, B * 8, x.device, -distortion, distortion).view(B, 4, 2)
    hom = _homography(dst.expand(B, 4, 2), src)
    ys = (torch.arange(oh, device=x.device) * 2 + 1) / oh - 1
    xs = (torch.arange(ow, device=x.device) * 2 + 1) / ow - 1
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy") + (torch.ones(oh, ow, device=x.device),), -1)
    warped = pts.view(1, -1, 3) @ hom.transpose(1, 2)  # (B, oh*ow, 3)
    grid = (warped[..., :2] / warped[..., 2:]).view(B, oh, ow, 2)
    return _sample(x, grid, (oh, ow), mode, padding_mode, is_grid=True)


def _homography(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) H with H @ [dst, 1] ~ [src, 1] for 4 point pairs: a batched 8x8 solve."""
    B = dst.shape[0]
    x, y = dst[..., 0], dst[..., 1]
    u, v = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1).double()  # float64: the solve is tiny, keep it exact
    b = torch.cat([u, v], 1).double().unsqueeze(-1)
    h = torch.linalg.solve(a, b).float().squeeze(-1)
    return torch.cat([h, torch.ones(B, 1, device=dst.device)], 1).view(B, 3, 3)


def rrc_boxes(generator, n: int, device, H: int, W: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Per-sample crop boxes (top, left, height, width) in pixels, floats.

    Area fraction ~ U(scale), log aspect ~ U(log ratio), as torchvision; a box that would not
    fit is clamped to the image instead of retried (vectorised), which changes only the rare
    extreme draws.
    """
    area = _rand(generator, n, device, *scale) * (H * W)
    aspect = torch.exp(_rand(generator, n, device, math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).clamp(1.0, W)
    h = torch.sqrt(area / aspect).clamp(1.0, H)
    top = _rand(generator, n, device) * (H - h)
    left = _rand(generator, n, device) * (W - w)
    return top, left, h, w


def random_resized_crop(x, generator=None, *, size=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        flip_p: float = 0.0, mode: str = "bilinear"):
    """RandomResizedCrop as one grid_sample (size None: the input's size); the optional flip
    folds into the grid for free."""
    B, _, H, W = x.shape
    oh, ow = _pair(size) if size else (H, W)
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise FitVisionError(f"random_resized_crop needs 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                             f"got scale={tuple(scale)}, ratio={tuple(ratio)}")
    top, left, h, w = rrc_boxes(generator, B, x.device, H, W, scale, ratio)
    flip = torch.where(_coin(generator, B, x.device, flip_p), -1.0, 1.0)
    # The grid is separable: x depends on the column only, y on the row only.
    gx = ((torch.arange(ow, device=x.device) + 0.5) / ow * 2 - 1).view(1, ow)
    gy = ((torch.arange(oh, device=x.device) + 0.5) / oh * 2 - 1).view(1, oh)
    cx, cy = (left + w / 2) / W * 2 - 1, (top + h / 2) / H * 2 - 1
    grid = torch.empty(B, oh, ow, 2, device=x.device)
    grid[..., 0] = (cx.view(B, 1) + gx * (flip * w / W).view(B, 1)).view(B, 1, ow)
    grid[..., 1] = (cy.view(B, 1) + gy * (h / H).view(B, 1)).view(B, oh, 1)
    return _sample(x, grid, (oh, ow), mode, "border", is_grid=True)


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


PRESETS = ("none", "flip", "crop_flip", "crop_flip_alt", "crop_flip_cutout", "dihedral", "rrc_flip", "heavy")


def train_pipeline(aug: str, size, mean, std, dtype=torch.float32) -> Pipeline:
    """The named training augmentation; size 0/None keeps the stored size.

    none: resize only. flip: + hflip. crop_flip: reflect pad 4 (per 32 px) + random crop +
    flip (the seeds'). crop_flip_alt: translate 2 + alternating flip (airbench).
    crop_flip_cutout: crop_flip + 8 px cutout. dihedral: crop + the 8 symmetries.
    rrc_flip: random-resized crop, scale 0.35-1, + flip (Imagenette). heavy: affine
    (rotate 10, zoom 1-1.2, translate 0.1, shear 5, flip) + colour jitter 0.2 / hue 0.02.
    """
    if aug not in PRESETS:
        raise FitVisionError(f"unknown augmentation '{aug}' (valid: {', '.join(PRESETS)})")
    fit, s = _fit(size), size or None
    ops: list[Aug] = {
        "none": fit,
        "flip": fit + [Aug(hflip)],
        "crop_flip": [Aug(hflip)] + fit + [Aug(random_crop, padding=_scaled(4, s))],
        "crop_flip_alt": [Aug(alternating_flip)] + fit + [Aug(random_crop, padding=_scaled(2, s))],
        "crop_flip_cutout": [Aug(hflip)] + fit + [Aug(random_crop, padding=_scaled(4, s)),
                                                  Aug(cutout, size=_scaled(8, s))],
        "dihedral": fit + [Aug(random_crop, padding=_scaled(4, s)), Aug(dihedral)],
        "rrc_flip": [Aug(random_resized_crop, size=s, scale=(0.35, 1.0), flip_p=0.5)],
        "heavy": [Aug(affine, degrees=10.0, zoom=(1.0, 1.2), translate=0.1, shear=5.0, flip_p=0.5, size=s),
                  Aug(color_jitter, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)],
    }[aug]
    return Pipeline(ops, mean, std, dtype)


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
