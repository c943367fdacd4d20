"""ImageNet-style XResNets (Bag of Tricks, He et al. 2019, "ResNet-D"): xresnet18/34/50.

For Imagenette-size input (128-224 px). What differs from the original ResNet, each a public
finding of that paper:

- the stem is three 3x3 convs (stride 2, then 1, 1) instead of one 7x7, then a 3x3 max-pool;
- a downsampling shortcut average-pools before its 1x1 conv, so it sees every input pixel;
- in bottleneck blocks the stride sits on the 3x3 conv, not the first 1x1;
- each residual branch's last BatchNorm starts at scale 0: every block begins as the identity.

``act="mish"`` replaces every ReLU with Mish (x * tanh(softplus(x)), Misra 2019), as the fastai
Imagenette leaderboard's entries since 2019 do; ``act="silu"`` with SiLU. ``blur=True`` makes the stem's max-pool
anti-aliased (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"): the max is
taken densely (stride 1) and the map is then low-pass filtered before it is subsampled.
``sa=True`` adds simple self-attention (Doria 2019, in the leaderboard's entries since then) to
the last block of the first stage: see ``SimpleSelfAttention``. ``groups=G`` turns each block
into a ResNeXt block (Xie et al. 2017): its 3x3 conv is split into G groups over a hidden width
of G x (4 per 64 output channels); ``se=R`` adds squeeze-and-excitation (Hu et al. 2018) with
reduction R to every block. ``xse_resnext12`` combines both with one block per stage.

(``xresnet`` in the zoo is seed 004's small CIFAR/MNIST-size network, a different design.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.models.base import ImageClassifier
from fitvision.models.init import kaiming_init
from fitvision.models.layers import ConvBnAct, Flatten, scaled
from fitvision.models.registry import register_model


# SiLU (x * sigmoid(x)) is Mish's nearest cheap relative: on a CPU in bf16 its forward and
# backward take 1.1x ReLU's time where Mish takes 2.9x.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "mish": nn.Mish, "silu": nn.SiLU}


def activation_class(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise FitVisionError(f"unknown activation '{name}' (valid: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class BlurPool(nn.Module):
    """Subsample by ``stride`` after a fixed 3x3 binomial low-pass filter ([1, 2, 1] outer
    itself, / 16), per channel, reflect-padded: a stride-2 step that does not alias."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.stride, self.channels = stride, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return nn.functional.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)


def max_blur_pool(channels: int) -> nn.Sequential:
    """The anti-aliased version of a 3x3 stride-2 max-pool: dense max, then BlurPool."""
    return nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), BlurPool(channels, 2))


class SimpleSelfAttention(nn.Module):
    """Self-attention for the cost of a 1x1 conv and two (C x C)-sized matrix products.

    With the map flattened to x (C channels x N positions): x + gamma * (x x^T)(W x). The Gram
    matrix x x^T (C x C) says which channels fire together across the whole image, so every
    position gets a global view; products in that order never form the N x N matrix of ordinary
    attention (N = 1,024 at 32x32). gamma starts at 0, so the block starts as it was without it;
    W is a 1x1 conv under spectral normalisation, which bounds its scale against the Gram
    matrix's growth.
    """

    def __init__(self, channels: int):
        super().__init__()
        conv = nn.Conv1d(channels, channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = nn.utils.parametrizations.spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            # Each Gram entry sums N products and can pass fp16's largest value (65,504): work in
            # fp32 (bf16 has fp32's range, so bf16 autocast keeps its fast path).
            with torch.autocast(x.device.type, enabled=False):
                return self._attend(x.float()).to(x.dtype)
        return self._attend(x)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        gram = torch.bmm(flat, flat.transpose(1, 2))
        out = torch.bmm(gram, self.conv(flat))
        return x + self.gamma * out.reshape(b, c, h, w)


class SqueezeExcite(nn.Module):
    """Rescale each channel by a gate computed from the whole map's channel means: pool,
    1x1 conv down by ``reduction``, activation, 1x1 conv back up, sigmoid."""

    def __init__(self, channels: int, reduction: int, act_cls: type[nn.Module] = nn.ReLU):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), act_cls(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResBlock(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 to ``expansion`` x width) residual block,
    with squeeze-and-excitation (reduction ``se``) and self-attention on the residual branch's
    output when asked. ``groups`` > 1: a ResNeXt block, whose first 3x3 conv is grouped over a
    hidden width of ``groups`` x (4 per 64 of ``width``), ResNeXt's "32x4d" rule."""

    def __init__(self, c_in: int, width: int, stride: int = 1, expansion: int = 1,
                 act_cls: type[nn.Module] = nn.ReLU, sa: bool = False, groups: int = 1, se: int = 0):
        super().__init__()
        c_out = width * expansion
        hidden = width if groups == 1 else max(1, width * 4 // 64) * groups
        # At small widths (width < 1) the input may have fewer channels than groups: use the
        # largest group count that divides it (it also divides hidden, a multiple of groups).
        groups = math.gcd(groups, c_in)
        if expansion == 1:
            layers = [ConvBnAct(c_in, hidden, 3, stride=stride, bias=False, act_cls=act_cls, groups=groups),
                      ConvBnAct(hidden, c_out, 3, bias=False, act=False, zero_bn=True)]
        else:
            layers = [ConvBnAct(c_in, hidden, 1, bias=False, act_cls=act_cls),
                      ConvBnAct(hidden, hidden, 3, stride=stride, bias=False, act_cls=act_cls, groups=groups),
                      ConvBnAct(hidden, c_out, 1, bias=False, act=False, zero_bn=True)]
        if se:
            layers.append(SqueezeExcite(c_out, se, act_cls))
        if sa:
            layers.append(SimpleSelfAttention(c_out))
        self.branch = nn.Sequential(*layers)
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(ConvBnAct(c_in, c_out, 1, bias=False, act=False))
        self.shortcut = nn.Sequential(*shortcut)
        self.act = act_cls(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


class ResNetD(ImageClassifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), stem: Sequence[int] = (32, 32, 64),
                 expansion: int = 1, dropout: float = 0.0, act: str = "relu", blur: bool = False,
                 sa: bool = False, groups: int = 1, se: int = 0):
        super().__init__()
        if groups < 1 or se < 0:
            raise FitVisionError(f"groups must be >= 1 and se >= 0, got groups={groups}, se={se}")
        act_cls = activation_class(act)
        s1, s2, s3 = stem
        pool = max_blur_pool(s3) if blur else nn.MaxPool2d(3, stride=2, padding=1)
        self.stem = nn.Sequential(ConvBnAct(in_channels, s1, stride=2, bias=False, act_cls=act_cls),
                                  ConvBnAct(s1, s2, bias=False, act_cls=act_cls),
                                  ConvBnAct(s2, s3, bias=False, act_cls=act_cls), pool)
        stages, c_in = [], s3
        for i, (n, width) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                # As in fastai's xresnet: attention once, in the first stage's last block.
                attend = sa and i == 0 and j == n - 1
                layers.append(ResBlock(c_in, width, stride if j == 0 else 1, expansion, act_cls, attend, groups, se))
                c_in = width * expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c_in, num_classes))
        self.num_classes = num_classes
        kaiming_init(self, skip=[self.get_classifier()])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _resnetd(blocks, expansion, num_classes, in_channels, width, dropout, act, blur, sa, groups, se) -> ResNetD:
    return ResNetD(num_classes, in_channels, blocks, tuple(scaled(c, width) for c in (64, 128, 256, 512)),
                   tuple(scaled(c, width) for c in (32, 32, 64)), expansion, dropout, act, blur, sa, groups, se)


@register_model
def xresnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0,
              act: str = "relu", blur: bool = False, sa: bool = False, groups: int = 1, se: int = 0) -> ResNetD:
    """Bag-of-Tricks ResNet-D 18 (3-conv stem, avg-pool shortcuts) for 128-224 px images."""
    return _resnetd((2, 2, 2, 2), 1, num_classes, in_channels, width, dropout, act, blur, sa, groups, se)


@register_model
def xresnet34(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0,
              act: str = "relu", blur: bool = False, sa: bool = False, groups: int = 1, se: int = 0) -> ResNetD:
    """Bag-of-Tricks ResNet-D 34 (3-conv stem, avg-pool shortcuts) for 128-224 px images."""
    return _resnetd((3, 4, 6, 3), 1, num_classes, in_channels, width, dropout, act, blur, sa, groups, se)


@register_model
def xresnet50(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0,
              act: str = "relu", blur: bool = False, sa: bool = False, groups: int = 1, se: int = 0) -> ResNetD:
    """Bag-of-Tricks ResNet-D 50 (bottleneck blocks) for 128-224 px images."""
    return _resnetd((3, 4, 6, 3), 4, num_classes, in_channels, width, dropout, act, blur, sa, groups, se)


@register_model
def xse_resnext12(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0,
                  act: str = "relu", blur: bool = False, sa: bool = False, groups: int = 32, se: int = 16) -> ResNetD:
    """SE-ResNeXt with one basic block per stage (12 weight layers; the 5-epoch Imagenette
    leaderboard's "mini net" design): grouped 3x3 convs (32 groups) and squeeze-and-excitation."""
    return _resnetd((1, 1, 1, 1), 1, num_classes, in_channels, width, dropout, act, blur, sa, groups, se)
