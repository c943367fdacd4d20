"""Batch transforms: vectorised geometric ops over a whole (B, C, H, W) batch on any device.

Crops, flips, cutout, resizing and the affine, perspective and random-resized-crop warps.
Every random op has the form ``op(x, generator=None, **params) -> x``: it draws one set of
parameters per sample from ``generator`` (which must live on ``x.device``) and applies them to
the whole batch at once, with no Python loop over samples.

Pixel values stay in 0..255 units. The cheap ops (crop, flip, dihedral, cutout) keep uint8,
which moves 4x fewer bytes than float (seed 004: "do everything you can while the image is
still bytes"); resampling ops (affine, perspective, random-resized crop) need float and return
float, still in 0..255 units. Colour and normalisation are in ``color``; ``augment`` composes
the ops into pipelines.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from fitvision.errors import FitVisionError

_CL = torch.channels_last


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
    grid = _homography_grid(hom, oh, ow)
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


def _homography_grid(hom: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
    """(B, oh, ow, 2): each output pixel centre, in -1..1 units, mapped through ``hom``."""
    dev = hom.device
    ys = (torch.arange(oh, device=dev) * 2 + 1) / oh - 1
    xs = (torch.arange(ow, device=dev) * 2 + 1) / ow - 1
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy") + (torch.ones(oh, ow, device=dev),), -1)
    warped = pts.view(1, -1, 3) @ hom.transpose(1, 2)  # (B, oh*ow, 3)
    return (warped[..., :2] / warped[..., 2:]).view(hom.shape[0], oh, ow, 2)


def check_rrc(name: str, scale, ratio) -> None:
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise FitVisionError(f"{name} needs 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                             f"got scale={tuple(scale)}, ratio={tuple(ratio)}")


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
    check_rrc("random_resized_crop", scale, ratio)
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


def tilted_resized_crop(x, generator=None, *, size=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        magnitude: float = 0.4, flip_p: float = 0.0, mode: str = "bilinear"):
    """Seed 004's perspective warp: a random-resized crop seen tilted. Within each crop box, the
    top edge narrows and the bottom widens by up to ``magnitude`` of the half-width (or the
    reverse), and likewise the left and right edges: the picture as seen from a little above,
    below or beside, without RandomResizedCrop's squash of the aspect. One homography and one
    grid_sample per batch; outside the image, reflection."""
    B, _, H, W = x.shape
    oh, ow = _pair(size) if size else (H, W)
    check_rrc("tilted_resized_crop", scale, ratio)
    top, left, h, w = rrc_boxes(generator, B, x.device, H, W, scale, ratio)
    up, side = (_rand(generator, B, x.device, -magnitude, magnitude) for _ in range(2))
    flip = torch.where(_coin(generator, B, x.device, flip_p), -1.0, 1.0)
    dst = _const(((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)), str(x.device)).expand(B, 4, 2)
    # corners top-left, top-right, bottom-right, bottom-left, in the box's own -1..1 units
    shift = torch.stack([torch.stack([up, side], -1), torch.stack([-up, -side], -1),
                         torch.stack([up, side], -1), torch.stack([-up, -side], -1)], 1)
    hom = _homography(dst, dst + shift)
    box = _homography_grid(hom, oh, ow)
    cx, cy = (left + w / 2) / W * 2 - 1, (top + h / 2) / H * 2 - 1
    grid = torch.empty(B, oh, ow, 2, device=x.device)
    grid[..., 0] = cx.view(B, 1, 1) + box[..., 0] * (flip * w / W).view(B, 1, 1)
    grid[..., 1] = cy.view(B, 1, 1) + box[..., 1] * (h / H).view(B, 1, 1)
    return _sample(x, grid, (oh, ow), mode, "reflection", is_grid=True)
