"""Mixup and CutMix (fitvision.data.mix): timm's semantics, exact label mixing, seeded draws."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fitvision.data.loader import DeviceLoader
from fitvision.data.mix import Mix, create_mix
from fitvision.errors import FitVisionError


def _batch(n=8, c=3, h=12, w=10, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g), torch.randint(0, classes, (n,), generator=g)


def _lam_of(target, y):
    """The lam a mixed target holds: row 0 is lam onehot(y0) + (1 - lam) onehot(y_last)."""
    if y[0] == y[-1]:
        pytest.skip("pair of equal labels")
    return float(target[0, y[0]])


def test_mixup_blends_the_batch_with_itself_reversed_and_mixes_the_labels_exactly():
    x, y = _batch()
    mix = Mix(num_classes=5, mixup_alpha=0.4)
    xm, t = mix(x, y, np.random.default_rng(3))
    lam = _lam_of(t, y)
    assert 0 < lam < 1
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    expected = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.flip(0), 5).float()
    assert torch.equal(t, expected) and t.dtype == torch.float32
    assert torch.allclose(t.sum(1), torch.ones(8))
    # the same lam as timm draws it: Beta(alpha, alpha) after the prob draw
    rng = np.random.default_rng(3)
    assert rng.random() < 1.0 and lam == pytest.approx(float(rng.beta(0.4, 0.4)), abs=1e-7)


def test_cutmix_pastes_one_box_and_corrects_lam_to_its_area():
    x, y = _batch(h=16, w=16)
    for seed in range(20):
        xm, t = Mix(num_classes=5, cutmix_alpha=1.0)(x, y, np.random.default_rng(seed))
        changed = (xm != x).any(0).any(0)  # (h, w): pixels pasted somewhere in the batch
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        if len(rows) == 0:
            continue
        y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert changed[y0:y1, x0:x1].all()  # one rectangle
        assert torch.equal(xm[..., y0:y1, x0:x1], x.flip(0)[..., y0:y1, x0:x1])
        lam = 1 - (y1 - y0) * (x1 - x0) / (16 * 16)
        expected = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.flip(0), 5).float()
        assert torch.allclose(t, expected, atol=1e-7), seed
    assert torch.equal(x, _batch(h=16, w=16)[0])  # the input batch is never written to


def test_switch_prob_and_prob_choose_as_timm_does():
    mix = Mix(num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.7, switch_prob=0.25)
    rng = np.random.default_rng(0)
    draws = [mix.draw(rng, 32, 32) for _ in range(4000)]
    mixed = [d for d in draws if d[0] != 1.0 or d[1] is not None]
    cut = [d for d in mixed if d[1] is not None]
    assert len(mixed) / 4000 == pytest.approx(0.7, abs=0.03)
    assert len(cut) / len(mixed) == pytest.approx(0.25, abs=0.03)
    lams = np.array([lam for lam, box in mixed if box is None])  # mixup's: Beta(0.8, 0.8)
    assert lams.mean() == pytest.approx(0.5, abs=0.03) and lams.var() == pytest.approx(1 / (4 * 2.6), abs=0.01)
    x, y = _batch()
    xm, t = Mix(num_classes=5, mixup_alpha=1.0, prob=0.0)(x, y, np.random.default_rng(0))
    assert xm is x and torch.equal(t, F.one_hot(y, 5).float())


def test_label_smoothing_on_mixed_targets_is_timms_mixup_target():
    """torch's smoothing of probability targets, (1 - s) t + s / C, equals timm's mixup_target,
    which smooths each one-hot (off = s / C, on = 1 - s + off) and then mixes them."""
    x, y = _batch()
    _, t = Mix(num_classes=5, mixup_alpha=0.4)(x, y, np.random.default_rng(1))
    lam, s = _lam_of(t, y), 0.1
    off, on = s / 5, 1 - s + s / 5
    smooth = lambda labels: torch.full((8, 5), off).scatter_(1, labels[:, None], on)  # noqa: E731
    timm_target = lam * smooth(y) + (1 - lam) * smooth(y.flip(0))
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    timm_loss = (-timm_target * logits.log_softmax(1)).sum(1).mean()
    assert F.cross_entropy(logits, t, label_smoothing=s).item() == pytest.approx(timm_loss.item(), rel=1e-6)


def test_loader_mixes_reproducibly_per_epoch_and_leaves_the_draws_of_augmentation_alone():
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(20) % 4
    y = torch.arange(20) * 7 % 20  # distinct labels, so each target row names its pair
    make = lambda mix: DeviceLoader(x, y, 6, shuffle=True, seed=5, mix=mix)  # noqa: E731
    mixed = make(Mix(num_classes=20, mixup_alpha=0.5))
    first = [(a.clone(), b.clone()) for a, b in mixed]
    mixed.set_epoch(0)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, mixed))
    # the same order and images as without mixing (stream 0 shuffles, 2 mixes): each mixed batch
    # is the plain batch blended with its reverse by the lam its targets hold
    for (xm, t), (xp, yp) in zip(first, make(None)):
        lam = float(t[0, yp[0]])
        assert torch.allclose(xm, lam * xp + (1 - lam) * xp.flip(0), atol=1e-6)
        assert torch.allclose(t, lam * F.one_hot(yp, 20).float() + (1 - lam) * F.one_hot(yp.flip(0), 20).float())
    mixed.set_epoch(1)
    assert not any(torch.equal(a, c) for (a, _), (c, _) in zip(mixed, first))  # epoch 1 draws anew


def test_bad_settings_are_one_line():
    with pytest.raises(FitVisionError, match=r"mix prob must be in \[0, 1\], got 1.5"):
        Mix(num_classes=3, mixup_alpha=1, prob=1.5)
    from fitvision.config import TrainConfig, validate

    with pytest.raises(FitVisionError, match=r"mixup must be >= 0, got -0.2"):
        validate(TrainConfig(mixup=-0.2))
    with pytest.raises(FitVisionError, match=r"mix_switch_prob must be in \[0, 1\], got 2.0"):
        validate(TrainConfig(cutmix=1.0, mix_switch_prob=2.0))
    assert create_mix(TrainConfig(), 10) is None
    assert create_mix(TrainConfig(cutmix=1.0), 10) == Mix(10, 0.0, 1.0, 1.0, 0.5)
