"""SpeedNet: a small CIFAR network built for the fastest route to ~91-94% (airbench's ideas).

The techniques are public (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds", arXiv 2404.00498);
this is fitvision's own implementation:

- a first 2x2 conv whose weights are set from the data so its outputs are whitened image
  patches (``init_from_data``), frozen afterwards: the net starts from decorrelated inputs;
- three conv groups (conv, max-pool, BN, GELU, conv, BN, GELU); the convs start as partial
  identities (dirac init) so the untrained net passes its input through;
- BatchNorm scales fixed at 1 (only the shifts train) and fast-moving running statistics;
- a bias-free linear head on max-pooled features, with logits scaled down (1/9) so that
  high learning rates stay stable.
"""

from __future__ import annotations

import torch
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.models.base import ImageClassifier
from fitvision.models.layers import scaled
from fitvision.models.registry import register_model


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _batchnorm(channels: int, train_scale: bool = False) -> nn.BatchNorm2d:
    # Running stats follow the weights quickly (momentum 0.4): the net changes fast at high lr.
    bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(train_scale)  # by default fixed at 1: the next conv's weights carry scale
    return bn


class ConvGroup(nn.Module):
    """conv, max-pool, BN, GELU, conv, BN, GELU; with ``convs=3`` a third conv/BN/GELU whose output
    is added to the pooled activation (airbench96's group): more depth at the group's pooled size."""

    def __init__(self, c_in: int, c_out: int, bn_scale: bool = False, convs: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batchnorm(c_out, bn_scale)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _batchnorm(c_out, bn_scale)
        self.residual = convs == 3
        if self.residual:
            self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.norm3 = _batchnorm(c_out, bn_scale)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        if not self.residual:
            return self.act(self.norm2(self.conv2(x)))
        return x + self.act(self.norm3(self.conv3(self.act(self.norm2(self.conv2(x))))))


class SpeedNet(ImageClassifier):
    """``whiten``, ``dirac`` and ``bn_scale`` switch airbench's choices off (or on) one at a time,
    for ablations: whiten=False makes the stem an ordinary trainable conv (default init, and
    ``init_from_data`` leaves it alone), dirac=False drops the identity part of the conv init,
    bn_scale=True lets BatchNorm's scales train. ``convs`` gives each group's conv count (2, or 3
    for a residual third conv), e.g. (2, 2, 3). ``whiten_eps`` is added to each patch-covariance
    eigenvalue before dividing by its square root: the larger it is, the less the rarest patch
    directions (fine detail, and JPEG's quantisation noise) are amplified."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (64, 256, 256),
                 whiten_kernel: int = 2, logit_scale: float = 1 / 9, whiten: bool = True, dirac: bool = True,
                 bn_scale: bool = False, whiten_eps: float = 5e-4, convs: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.whiten_kernel, self.data_init, self.whiten_eps = whiten_kernel, whiten, whiten_eps
        whiten_width = 2 * in_channels * whiten_kernel**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(not whiten)
        self.act = nn.GELU()
        groups, c_in = [], whiten_width
        for width, n in zip(widths, convs or (2,) * len(widths)):
            groups.append(ConvGroup(c_in, width, bn_scale, n))
            c_in = width
        self.groups = nn.Sequential(*groups)
        self.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), Scale(logit_scale),
                                        nn.Linear(c_in, num_classes, bias=False))
        self.num_classes = num_classes
        self._identity_init(dirac)

    def _identity_init(self, dirac: bool) -> None:
        for m in self.groups.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.data
                nn.init.kaiming_normal_(w, nonlinearity="relu")
                if dirac:
                    n = min(w.shape[0], w.shape[1])
                    nn.init.dirac_(w[:n])

    @property
    def stem_bias(self) -> nn.Parameter:
        """The whitening conv's bias: airbench trains it for the first few epochs only."""
        return self.whiten.bias

    def weight_like_params(self) -> list[nn.Parameter]:
        """1-D parameters that step like weights (fitvision.optim.policy): the data-initialised stem's
        bias is no norm shift, so it takes the weights' lr and weight decay (airbench94's treatment)."""
        return [self.stem_bias]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(self.act(self.whiten(x)))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float | None = None) -> bool:
        """Set the whitening conv from normalised training images (B, C, H, W), a few thousand suffice.

        Each k x k patch is projected onto the eigenvectors of the patch covariance and divided by
        the square root of its eigenvalue; both signs are kept so GELU loses no information.
        Returns False, changing nothing, for a net built with whiten=False.
        """
        if not self.data_init:
            return False
        eps = self.whiten_eps if eps is None else eps
        k = self.whiten_kernel
        x = images.float()
        patches = x.unfold(2, k, 1).unfold(3, k, 1)  # B, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * k * k)
        patches = patches - patches.mean(0, keepdim=True)
        cov = patches.T @ patches / len(patches)
        eigvals, eigvecs = torch.linalg.eigh(cov.double())
        filters = (eigvecs.T / torch.sqrt(eigvals[:, None] + eps)).float()
        filters = filters.reshape(-1, x.shape[1], k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))
        self.whiten.bias.zero_()
        return True


@register_model
def speednet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, whiten: bool = True,
             dirac: bool = True, bn_scale: bool = False, whiten_eps: float = 5e-4, convs: str = "2-2-2",
             widths: str = "") -> SpeedNet:
    """Airbench-style CIFAR net: whitened 2x2 stem, 3 conv groups (64-256-256), fast to train.

    ``convs``: each group's conv count joined by '-', 2 or 3 ("2-2-3" adds a residual third conv to
    the last group). ``widths``: each group's channel count joined by '-' (e.g. "48-192-256"),
    used as given instead of ``width`` x 64-256-256."""
    if whiten_eps <= 0:
        raise FitVisionError(f"speednet: whiten_eps must be above 0, got {whiten_eps:g}")
    counts = convs.split("-")
    if len(counts) != 3 or any(c not in ("2", "3") for c in counts):
        raise FitVisionError(f"speednet: convs takes three counts of 2 or 3 joined by '-' (e.g. 2-2-3), got '{convs}'")
    channels = tuple(scaled(c, width) for c in (64, 256, 256))
    if widths:
        given = str(widths).split("-")
        if len(given) != 3 or not all(c.isdigit() and int(c) > 0 for c in given):
            raise FitVisionError(f"speednet: widths takes three channel counts joined by '-' (e.g. 48-192-256), "
                                 f"got '{widths}'")
        channels = tuple(int(c) for c in given)
    return SpeedNet(num_classes=num_classes, in_channels=in_channels, widths=channels,
                    whiten=whiten, dirac=dirac, bn_scale=bn_scale, whiten_eps=whiten_eps,
                    convs=tuple(int(c) for c in counts))
