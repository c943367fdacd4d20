"""Mixup and CutMix as batch operations on the device, with timm's semantics (``Mixup``, mode "batch").

Each batch is mixed with itself reversed (image i with image n-1-i), one lambda for the batch:

- with probability ``prob`` the batch is mixed at all; then, when both alphas are > 0, CutMix is
  chosen with probability ``switch_prob``, else Mixup (one alpha alone picks its method);
- Mixup (Zhang et al. 2018): lam ~ Beta(mixup_alpha, mixup_alpha); x = lam x + (1 - lam) x_rev;
- CutMix (Yun et al. 2019): lam ~ Beta(cutmix_alpha, cutmix_alpha) sizes a box of sides
  sqrt(1 - lam) x the image's, centred uniformly at random and clipped at the border, which is
  pasted from x_rev; lam is then corrected to the share of the image left unpasted;
- targets: lam onehot(y) + (1 - lam) onehot(y_rev), as probabilities.

Label smoothing then comes from the loss: torch's cross-entropy smooths probability targets as
(1 - s) t + s / C, which equals timm's mixup_target (each one-hot smoothed, then mixed). The draws
come from a host generator the loader seeds by (seed, epoch, rank): a resumed run mixes the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fitvision.errors import FitVisionError


@dataclass(frozen=True)
class Mix:
    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self):
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise FitVisionError(f"mixup and cutmix alphas must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        for name in ("prob", "switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise FitVisionError(f"mix {name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> tuple[float, tuple[int, int, int, int] | None]:
        """(lam, CutMix box (y0, y1, x0, x1) or None) for one batch, drawn as timm draws them."""
        if rng.random() >= self.prob or not self.active:
            return 1.0, None
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if not cutmix:
            return lam, None
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
        x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
        box = (int(y0), int(y1), int(x0), int(x1))
        return 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width), box

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, target probabilities (n, num_classes) in float32)."""
        lam, box = self.draw(rng, x.shape[-2], x.shape[-1])
        target = F.one_hot(y, self.num_classes).float()
        if lam == 1.0:
            return x, target
        if box is None:
            x = x * lam + x.flip(0) * (1 - lam)
        else:
            y0, y1, x0, x1 = box
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        return x, target * lam + target.flip(0) * (1 - lam)


def create_mix(cfg, num_classes: int) -> Mix | None:
    """The Mix a TrainConfig asks for (mixup, cutmix, mix_prob, mix_switch_prob), or None."""
    mix = Mix(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob)
    return mix if mix.active else None


def describe_mix(mix: Mix) -> str:
    """One line for the run's setup notes."""
    methods = [f"{name} alpha {alpha:g}" for name, alpha in (("mixup", mix.mixup_alpha), ("cutmix", mix.cutmix_alpha))
               if alpha > 0]
    switch = f", cutmix on {mix.switch_prob:.0%} of mixed batches" if len(methods) == 2 else ""
    return f"{' and '.join(methods)}: {mix.prob:.0%} of batches mixed{switch} (targets mixed likewise)"
