"""Batch augmentation: each op against a simple per-image reference written here."""

import numpy as np
import pytest
import torch
from PIL import Image

from fitvision.data import augment as A
from fitvision.data import color as C
from fitvision.data import transforms as T
from fitvision.errors import FitVisionError


def _batch(n=16, c=3, h=12, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _np(img):  # (C, H, W) tensor -> (H, W, C) array
    return img.permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- crop
@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_pad_matches_numpy(mode, np_mode):
    x = _batch()
    got = T.pad(x, 3, mode)
    want = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode=np_mode)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(got.numpy(), want)


def test_random_crop_each_output_is_one_crop_of_the_padded_image():
    x = _batch(n=64, h=10, w=10)
    out = T.random_crop(x, _gen(), padding=2)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    offsets = set()
    for i in range(len(x)):  # reference: try every offset of every image
        hits = [(t, l) for t in range(5) for l in range(5)
                if np.array_equal(padded[i, :, t : t + 10, l : l + 10], out[i].numpy())]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 15  # 25 possible offsets, 64 draws: the draws are spread out


def test_crop_at_matches_slicing_for_uint8_and_float():
    x = _batch(n=5, h=9, w=11)
    top, left = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 0, 2, 1, 3])
    for xx in (x, x.float()):
        out = T.crop_at(xx, top, left, (5, 6))
        for i in range(5):
            assert torch.equal(out[i], xx[i, :, top[i] : top[i] + 5, left[i] : left[i] + 6])


def test_zero_padding_crop_identity():
    x = _batch()
    assert torch.equal(T.random_crop(x, _gen(), padding=0), x)


# --------------------------------------------------------------------------- flips
def test_hflip_gives_original_or_mirror_at_rate_p():
    x = _batch(n=4000, c=1, h=1, w=4)
    out = T.hflip(x, _gen(1), p=0.3)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    flipped = (mirrored & ~same).float().mean().item()  # palindromes count as unflipped
    assert abs(flipped - 0.3 * (~(x == x.flip(3)).flatten(1).all(1)).float().mean().item()) < 0.03


def test_alternating_flip_flips_each_image_on_alternate_epochs():
    x = _batch(n=200)
    states = []
    for epoch in range(4):
        out = T.alternating_flip(x, None, epoch=epoch)
        states.append((out == x.flip(3)).flatten(1).all(1) & ~(out == x).flatten(1).all(1))
    assert bool((states[0] != states[1]).all() and (states[1] != states[2]).all())
    assert torch.equal(states[0], states[2]) and torch.equal(states[1], states[3])
    assert 0.35 < states[0].float().mean().item() < 0.65
    perm = torch.randperm(200, generator=_gen())  # the decision follows the image, not its slot
    assert torch.equal(T.alternating_flip(x[perm], None, epoch=0), T.alternating_flip(x, None, epoch=0)[perm])


def _dihedral_refs(img):
    """The 8 symmetries of one (H, W, C) array, written with numpy."""
    refs = []
    for k in range(4):
        r = np.rot90(img, k)
        refs += [r, np.fliplr(r)]
    return refs


def test_dihedral_outputs_are_symmetries_and_all_eight_occur():
    x = _batch(n=200, h=6, w=6)
    out = T.dihedral(x, _gen(2))
    seen = set()
    for i in range(len(x)):
        matches = [k for k, r in enumerate(_dihedral_refs(_np(x[i]))) if np.array_equal(r, _np(out[i]))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))
    assert torch.equal(T.dihedral(x, _gen(2), p=0.0), x)


def test_dihedral_rejects_non_square():
    with pytest.raises(FitVisionError, match="dihedral needs square images, got 6x8"):
        T.dihedral(_batch(h=6, w=8), _gen())


def test_uint8_and_float_paths_agree():
    x = _batch()
    for op, kw in [(T.random_crop, {"padding": 3}), (T.hflip, {}), (T.dihedral, {}), (T.cutout, {"size": 4})]:
        assert torch.equal(op(x, _gen(5), **kw).float(), op(x.float(), _gen(5), **kw)), op.__name__


def test_cutout_fills_one_clipped_square():
    x = _batch(n=50, h=16, w=16) | 1  # no zero pixels before the cutout
    out = T.cutout(x, _gen(3), size=6)
    for i in range(50):
        filled = (out[i] == 0).all(0)
        assert torch.equal(out[i][:, ~filled], x[i][:, ~filled])
        rows, cols = filled.any(1).nonzero(), filled.any(0).nonzero()
        assert 1 <= len(rows) <= 6 and 1 <= len(cols) <= 6
        assert int(filled.sum()) == len(rows) * len(cols)  # a rectangle


# --------------------------------------------------------------------------- resampling
def test_resize_nearest_matches_index_formula():
    x = _batch(n=3, h=10, w=7)
    out = T.resize(x, (4, 9), mode="nearest")
    rows = np.floor(np.arange(4) * 10 / 4).astype(int)
    cols = np.floor(np.arange(9) * 7 / 9).astype(int)
    assert np.array_equal(out.numpy(), x.numpy()[:, :, rows][:, :, :, cols])


def test_resize_bilinear_upsampling_matches_per_pixel_reference():
    x = _batch(n=2, h=5, w=6).float()
    out = T.resize(x, (8, 9), mode="bilinear").numpy()

    def taps(n_out, n_in):  # align_corners=False: centres map to centres, edges clamp
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    (y0, y1, fy), (x0, x1, fx) = taps(8, 5), taps(9, 6)
    a = x.numpy()
    top = a[:, :, y0][:, :, :, x0] * (1 - fx) + a[:, :, y0][:, :, :, x1] * fx
    bot = a[:, :, y1][:, :, :, x0] * (1 - fx) + a[:, :, y1][:, :, :, x1] * fx
    want = top * (1 - fy[:, None]) + bot * fy[:, None]
    assert np.abs(out - want).max() < 1e-3


@pytest.mark.parametrize("mode,pil", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])
def test_antialiased_downscale_matches_pillow(mode, pil):
    x = _batch(n=2, h=40, w=40)
    out = T.resize(x, 15, mode=mode)
    assert out.dtype == torch.uint8
    for i in range(2):
        want = np.asarray(Image.fromarray(_np(x[i])).resize((15, 15), pil))
        diff = np.abs(_np(out[i]).astype(int) - want.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.5  # Pillow rounds its fixed-point filter


def test_identity_parameters_give_identity():
    x = _batch(h=10, w=14).float()
    assert torch.allclose(T.affine(x, _gen()), x, atol=1e-3)
    assert torch.allclose(T.perspective(x, _gen(), distortion=0.0), x, atol=1e-3)
    assert torch.allclose(T.random_resized_crop(x, _gen(), scale=(1, 1), ratio=(14 / 10, 14 / 10)), x, atol=1e-3)
    assert torch.allclose(C.color_jitter(x, _gen()), x, atol=1e-3)


def test_rotation_by_90_degrees_equals_rot90():
    x = _batch(h=9, w=9).float()
    assert torch.allclose(T.affine(x, _gen(), degrees=(90, 90)), torch.rot90(x, 1, (2, 3)), atol=1e-3)
    assert torch.allclose(T.affine(x, _gen(), degrees=(-90, -90)), torch.rot90(x, -1, (2, 3)), atol=1e-3)


def test_affine_flip_and_translation_by_whole_pixels():
    x = _batch(h=8, w=8).float()
    assert torch.allclose(T.affine(x, _gen(), flip_p=1.0), x.flip(3), atol=1e-3)
    shifted = T.affine(x, _gen(), translate=(0.25, 0.25), padding_mode="zeros")  # samples 2 px right, down
    assert torch.allclose(shifted[:, :, :6, :6], x[:, :, 2:, 2:], atol=1e-3)
    assert float(shifted[:, :, 6:, :].abs().max()) == 0.0


def test_random_resized_crop_full_box_with_flip_and_output_size():
    x = _batch(h=16, w=16).float()
    out = T.random_resized_crop(x, _gen(), size=16, scale=(1, 1), ratio=(1, 1), flip_p=1.0)
    assert torch.allclose(out, x.flip(3), atol=1e-3)
    small = T.random_resized_crop(_batch(h=20, w=30), _gen(), size=(8, 12))
    assert small.shape == (16, 3, 8, 12) and small.dtype == torch.float32
    assert float(small.min()) >= 0 and float(small.max()) <= 255


def test_homography_maps_the_corners():
    dst = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    src = dst + torch.tensor([[[0.1, -0.2], [0.05, 0.0], [-0.1, 0.1], [0.2, 0.15]]])
    h = T._homography(dst, src)
    pts = torch.cat([dst, torch.ones(1, 4, 1)], -1) @ h.transpose(1, 2)
    assert torch.allclose(pts[..., :2] / pts[..., 2:], src, atol=1e-5)


def test_color_jitter_keeps_gray_gray_and_stays_in_range():
    gray = _batch(c=1).float().expand(16, 3, 12, 12).contiguous()
    out = C.color_jitter(gray, _gen(), saturation=0.9, hue=0.5)
    assert torch.allclose(out, gray, atol=1e-2)  # saturation and hue leave gray alone
    x = _batch().float()
    out = C.color_jitter(x, _gen(), brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)
    assert 0 <= float(out.min()) and float(out.max()) <= 255 and not torch.allclose(out, x)
    # a jitter of 2 draws factors from 0 (as torchvision), never below: no image turns black and negated
    dark = C.color_jitter(x, _gen(), brightness=2.0)
    factors = (dark.flatten(1).sum(1) / x.flatten(1).sum(1))
    assert float(factors.min()) >= 0 and float((dark.flatten(1) > 0).float().mean()) > 0.5


def test_brightness_scales_and_contrast_keeps_the_mean_gray():
    x = _batch().float() * 0.5  # no clamping at 255
    b = C.color_jitter(x, _gen(7), brightness=0.3)
    ratio = b / x.clamp_min(1e-3)
    per_image = ratio.flatten(1)[:, :10].mean(1)
    assert torch.allclose(ratio.flatten(1)[x.flatten(1) > 1], per_image.repeat_interleave(
        (x.flatten(1) > 1).sum(1)), atol=1e-3)
    x = x * 0.5 + 64  # 64..128: a 1.5x contrast stays inside 0..255
    c = C.color_jitter(x, _gen(7), contrast=0.5)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((c * luma).sum(1).mean((1, 2)), (x * luma).sum(1).mean((1, 2)), atol=1e-2)


# --------------------------------------------------------------------------- normalisation
def test_normalize_formula_and_denormalize_round_trip():
    x = _batch()
    mean, std = A.CIFAR_STATS
    out = C.normalize(x, mean, std)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.allclose(C.denormalize(out, mean, std) * 255, x.float(), atol=1e-3)


def test_channel_stats_match_numpy_and_read_memmaps(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 7, 5, 3), dtype=np.uint8)
    path = tmp_path / "x.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    mean, std = C.channel_stats(mapped, chunk_pixels=1000)  # many chunks
    ref = images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(0), atol=1e-12) and np.allclose(std, ref.std(0), atol=1e-12)


def test_a_constant_channel_gets_a_std_of_one_grey_level_not_zero():
    images = np.zeros((4, 6, 6, 3), np.uint8)
    images[..., 0] = np.arange(4).reshape(4, 1, 1) * 60  # red varies, green is all 100, blue all 0
    images[..., 1] = 100
    mean, std = C.channel_stats(images)
    assert std[1] == std[2] == 1 / 255 and std[0] > 0.2
    x = C.normalize(torch.from_numpy(images).permute(0, 3, 1, 2), mean, std)
    assert torch.isfinite(x).all() and float(x[:, 1:].abs().max()) < 1e-4  # was NaN: 0 / 0


def test_channel_stats_rejects_empty():
    with pytest.raises(FitVisionError, match="empty training split"):
        C.channel_stats(np.zeros((0, 4, 4, 3), np.uint8))


# --------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("aug", A.PRESETS)
def test_every_preset_gives_normalized_channels_last_float(aug):
    x = _batch(n=8, h=40, w=40)
    out = A.train_pipeline(aug, 32, *A.CIFAR_STATS)(x, _gen(), 0)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    lo = (0 - np.array(A.CIFAR_STATS[0])) / np.array(A.CIFAR_STATS[1])
    assert float(out.amin()) >= lo.min() - 1e-4


def test_same_seed_same_batch_and_other_seed_differs():
    pipe = A.train_pipeline("heavy", 12, *A.CIFAR_STATS)
    x = _batch()
    assert torch.equal(pipe(x, _gen(4), 0), pipe(x, _gen(4), 0))
    assert not torch.equal(pipe(x, _gen(4), 0), pipe(x, _gen(5), 0))


def test_crop_flip_preset_is_a_flip_and_crop_of_the_input():
    x = _batch(n=32, h=16, w=16)
    mean, std = A.CIFAR_STATS
    out = A.train_pipeline("crop_flip", 16, mean, std)(x, _gen(), 0)  # pad 4 per 32 px: 2 here
    pixels = (C.denormalize(out, mean, std) * 255).round().to(torch.uint8)
    padded = T.pad(torch.cat([x, x.flip(3)]), 2)
    found = 0
    for i in range(32):
        for src in (padded[i], padded[32 + i]):
            windows = src.unfold(1, 16, 1).unfold(2, 16, 1)  # (C, 5, 5, 16, 16)
            found += int((windows == pixels[i][:, None, None]).all(0).flatten(2).all(2).any())
    assert found >= 32  # every output is a crop of the image or of its mirror


def test_eval_pipeline_is_deterministic_resize_and_normalize_and_chunking_is_invisible():
    x = _batch(n=10, h=20, w=24)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pipe = A.eval_pipeline(16, mean, std)
    want = C.normalize(T.center_crop(T.resize(x, (16, 19)), 16), mean, std)
    assert torch.allclose(pipe(x), want, atol=1e-5)
    wide = A.eval_pipeline((8, 16), mean, std)(x)  # (h, w) sizes, as model.json's input_size
    assert torch.allclose(wide, C.normalize(T.center_crop(T.resize(x, (13, 16)), (8, 16)), mean, std), atol=1e-5)
    tiny_chunks = A.Pipeline(pipe.ops, mean, std, chunk_bytes=1)
    assert torch.equal(tiny_chunks(x), pipe(x))


def test_eval_crop_pct_keeps_the_centre_before_resizing():
    x = torch.zeros(4, 3, 20, 20, dtype=torch.uint8)
    x[:, :, 5:15, 5:15] = 200  # the central half of each side is bright, the border black
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    centre = A.eval_pipeline(16, mean, std, crop_pct=0.5)(x)
    assert centre.shape == (4, 3, 16, 16) and torch.allclose(centre, torch.full_like(centre, 200 / 255))
    whole = A.eval_pipeline(16, mean, std)(x)
    assert whole.min() == 0  # without the crop the black border is still there
    want = C.normalize(T.resize(T.center_crop(x, 17), 16), mean, std)  # 20 * 0.85 = 17 px
    assert torch.allclose(A.eval_pipeline(16, mean, std, crop_pct=0.85)(x), want, atol=1e-6)
    same_size = A.eval_pipeline(None, mean, std, crop_pct=0.5)(x)  # no size: back to the stored size
    assert same_size.shape == (4, 3, 20, 20) and torch.allclose(same_size, torch.full_like(same_size, 200 / 255))


@pytest.mark.parametrize("aug", ["crop_flip", "rrc_flip", "heavy"])
def test_empty_batch_gives_empty_output(aug):
    out = A.train_pipeline(aug, 16, *A.CIFAR_STATS)(_batch(n=0, h=16, w=16), _gen(), 0)
    assert out.shape == (0, 3, 16, 16) and out.dtype == torch.float32


def test_unknown_preset_message():
    with pytest.raises(FitVisionError, match=r"unknown augmentation 'wild' \(valid: none, flip, crop_flip,"):
        A.train_pipeline("wild", 32, *A.CIFAR_STATS)


def test_pipeline_without_stats_scales_to_unit_range_and_keeps_dtype_request():
    x = _batch()
    out = A.Pipeline([], dtype=torch.bfloat16)(x)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), x.float() / 255, atol=4e-3)


def test_impossible_crop_arguments_are_named_and_empty_batches_pass():
    x = _batch(n=2).float()
    with pytest.raises(FitVisionError, match=r"^random_crop: a 48x48 crop does not fit a \d+x\d+ image padded by 4$"):
        T.random_crop(x, _gen(), padding=4, size=48)
    with pytest.raises(FitVisionError, match=r"^random_resized_crop needs 0 < scale\[0\] <= scale\[1\] <= 1"):
        T.random_resized_crop(x, _gen(), scale=(0.5, 0.1))
    with pytest.raises(FitVisionError, match=r"^cutout fill must be a pixel value in 0\.\.255 for uint8 images, "
                                             r"got 300$"):
        T.cutout(_batch(n=2), _gen(), fill=300)
    empty = _batch(n=2)[:0]
    assert T.alternating_flip(empty, _gen(), epoch=1).shape == empty.shape
    assert A.train_pipeline("crop_flip_alt", 0, (0.5,) * 3, (0.25,) * 3)(empty, _gen()).shape == (0, 3, *empty.shape[2:])
