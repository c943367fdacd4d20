"""Augmentation settings on top of the presets (issue 28): seed 002's rotation, jitter and
random-resized crop, seed 004's perspective warp, each settable and checked."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from fitvision.config import TrainConfig, validate
from fitvision.data import augment as A
from fitvision.data import transforms as T
from fitvision.errors import FitVisionError


def _cfg(**kw):
    return SimpleNamespace(**{**dict(aug="crop_flip", rotate=0.0, translate=0.0, jitter="", perspective=0.0,
                                     rrc_scale="", rrc_ratio=""), **kw})


def _columns(n=8, size=32):
    """Each pixel's value is its column: where a warp samples from, read straight off the output."""
    return torch.arange(size, dtype=torch.float32).expand(n, 3, size, size).contiguous()


def test_a_tilt_of_zero_on_the_whole_image_is_the_identity_and_flip_mirrors():
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0)).float()
    same = T.tilted_resized_crop(x, torch.Generator().manual_seed(1), scale=(1, 1), ratio=(1, 1), magnitude=0.0)
    assert torch.allclose(same, x, atol=1e-3)
    mirrored = T.tilted_resized_crop(x, torch.Generator().manual_seed(1), scale=(1, 1), ratio=(1, 1),
                                     magnitude=0.0, flip_p=1.0)
    assert torch.allclose(mirrored, x.flip(3), atol=1e-3)


def test_the_tilt_narrows_one_edge_by_up_to_the_magnitude():
    """The first and last rows' span of source columns. Untilted, 31 px each. Tilted by up to 0.4
    of the half-width, the narrower edge (which stays inside the image: the wider one reflects
    back at the border) loses 2 x 0.4 x 16 x |u| px, u ~ U(-1, 1): up to 12.8 px, median 6.4."""
    x = _columns(n=64)
    out = T.tilted_resized_crop(x, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), magnitude=0.4)
    spans = out[:, 0, :, -1] - out[:, 0, :, 0]  # (B, rows): right edge minus left edge, in source columns
    deficit = 31 - torch.minimum(spans[:, 0], spans[:, -1])
    assert 10 < float(deficit.max()) <= 12.8 and 3 < float(deficit.median()) < 9
    flat = T.tilted_resized_crop(x, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), magnitude=0.0)
    flat_spans = flat[:, 0, :, -1] - flat[:, 0, :, 0]
    assert torch.allclose(flat_spans, torch.full_like(flat_spans, 31.0), atol=1e-3)


def test_settings_parse_into_the_pipeline():
    p = A.aug_params(_cfg(aug="rrc_flip", rotate=30.0, jitter="1,1,0,0", rrc_scale="0.08-1", rrc_ratio="0.5,2"))
    assert p == A.AugParams(rotate=30.0, jitter=(1.0, 1.0, 0.0, 0.0), scale=(0.08, 1.0), ratio=(0.5, 2.0))
    pipe = repr(A.train_pipeline("rrc_flip", 32, (0.5,) * 3, (0.25,) * 3, params=p))
    assert "random_resized_crop(size=32, scale=(0.08, 1.0), ratio=(0.5, 2.0), flip_p=0.5)" in pipe
    assert "affine(degrees=30.0, translate=0.0)" in pipe
    assert "color_jitter(brightness=1.0, contrast=1.0, saturation=0.0, hue=0.0)" in pipe
    assert A.aug_params(_cfg(jitter="0.4")).jitter == (0.4, 0.4, 0.4, 0.0)  # timm's one strength
    warp = repr(A.train_pipeline("perspective", 32, (0.5,) * 3, (0.25,) * 3, params=A.AugParams(perspective=0.2)))
    assert "tilted_resized_crop(size=32, scale=(0.35, 1.0), ratio=(0.75, 1.3333333333333333), flip_p=0.5, " \
           "magnitude=0.2)" in warp
    other = repr(A.train_pipeline("flip", 0, (0.5,) * 3, (0.25,) * 3, params=A.AugParams(perspective=0.2)))
    assert "perspective(distortion=0.2)" in other
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    assert A.train_pipeline("perspective", 32, (0.5,) * 3, (0.25,) * 3)(x, torch.Generator()).shape == (6, 3, 32, 32)


@pytest.mark.parametrize("settings,message", [
    (dict(jitter="1,1"), "jitter must be one strength for brightness, contrast and saturation (e.g. 0.4) or four, "
                         "'b,c,s,h' (hue at most 0.5), got '1,1'"),
    (dict(jitter="0,0,0,0.7"), "jitter's hue must be at most 0.5 (half a turn), got 0.7"),
    (dict(aug="rrc_flip", rrc_scale="0.5-0.1"), "rrc_scale must be 'low-high' with 0 < low <= high <= 1, got '0.5-0.1'"),
    (dict(aug="rrc_flip", rrc_ratio="wide"), "rrc_ratio must be an aspect range 'low-high' with 0 < low <= high "
                                             "(torchvision's: 0.75-1.333), got 'wide'"),
    (dict(rrc_scale="0.08-1"), "rrc_scale and rrc_ratio set a random-resized crop, and augmentation 'crop_flip' "
                               "has none: use --aug rrc_flip or perspective"),
    (dict(translate=2.0), "translate and perspective are fractions of the image size: at most 1, got 2"),
    (dict(rotate=-5.0), "rotate must be >= 0, got -5.0"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(FitVisionError) as e:
        A.aug_params(_cfg(**settings))
    assert str(e.value) == message


def test_config_validation_and_the_cli_check_them():
    with pytest.raises(FitVisionError, match="^rrc_scale and rrc_ratio set a random-resized crop"):
        validate(TrainConfig(rrc_scale="0.08-1"))
    r = subprocess.run([sys.executable, "-m", "fitvision", "train", "--aug", "crop_flip", "--rrc-scale", "0.08-1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: rrc_scale and rrc_ratio set a random-resized crop, and augmentation 'crop_flip' "
        "has none: use --aug rrc_flip or perspective"]
