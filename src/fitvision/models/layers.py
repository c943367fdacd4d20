"""Small named blocks the model zoo is built from (seeds 000-004).

The blocks are ``nn.Sequential`` subclasses where the seeds used ``nn.Sequential`` so that
state-dict keys match the seeds' own models (``conv1.0.weight``, ``res1.0.0.weight``, ...):
a ResNet9 trained with the seed notebook loads into fitvision's ``resnet9`` unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import Flatten  # the seeds' flatten step; torch's own module is the right one

__all__ = [
    "ConvBnAct",
    "ConvBlock",
    "Flatten",
    "LinearBlock",
    "Residual",
    "SimpleResidualBlock",
    "prev_pow_2",
    "scaled",
]


def prev_pow_2(x: float) -> int:
    """The largest power of two <= x (seed 004 sizes the stem with it: 3*3*3 -> 16)."""
    return 2 ** math.floor(math.log2(x))


def scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier, never below 1."""
    return max(1, round(channels * width))


class ConvBnAct(nn.Sequential):
    """Conv -> BatchNorm -> ReLU, then an optional 2x2 max pool: the seeds' ``conv_block``.

    ``bias=True`` keeps the conv bias the seed has (redundant before BatchNorm, but it is what
    gives ResNet9 its 6,575,370 parameters). ``act=False`` leaves the ReLU out, for the last
    conv of a residual branch; ``zero_bn`` starts its BatchNorm scale at 0 so the branch
    begins as the identity (Bag of Tricks, "zero gamma"). ``act_cls`` swaps the ReLU for
    another activation (e.g. ``nn.Mish``); ``groups`` makes the conv grouped (ResNeXt);
    ``act_first`` puts the activation before the BatchNorm (seed 004's conv_layer order).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 pool: bool = False, bias: bool = True, act: bool = True, zero_bn: bool = False,
                 act_cls: type[nn.Module] = nn.ReLU, groups: int = 1, act_first: bool = False):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2, bias=bias, groups=groups)
        bn = nn.BatchNorm2d(out_channels)
        if zero_bn:
            nn.init.zeros_(bn.weight)
        layers: list[nn.Module] = [conv, bn]
        if act:  # act_first: conv -> activation -> BatchNorm, seed 004's conv_layer
            layers.insert(1 if act_first else 2, act_cls(inplace=True))
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class Residual(nn.Sequential):
    """``x + branch(x)``, the branch being the modules given (the seeds' ``res(out) + out``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class SimpleResidualBlock(nn.Module):
    """Seed 000's demonstration block: conv-ReLU-conv-ReLU, plus the input. Shape-preserving."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The seed applies the second ReLU before the addition; kept as written.
        return self.relu2(self.conv2(self.relu1(self.conv1(x)))) + x


class ConvBlock(nn.Module):
    """Seed 002's modular block: conv -> dropout -> ReLU -> 2x2 max pool."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 dropout_p: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.dropout = nn.Dropout(dropout_p)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.dropout(self.conv(x))))


class LinearBlock(nn.Module):
    """Seed 002's modular block: linear -> dropout -> activation (a module, ReLU by default)."""

    def __init__(self, in_features: int, out_features: int, dropout_p: float = 0.0,
                 activation: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout_p)
        self.act = activation if activation is not None else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dropout(self.linear(x)))
