"""The seeds' architectures, registered by name. Every model outputs logits.

Init: every model applies Kaiming-normal (fan_in, ReLU gain, zero bias) to its convs and hidden
linear layers and keeps PyTorch's default on the final classifier (see ``init.kaiming_init``);
BatchNorm starts at scale 1, shift 0, except where a model says otherwise (xresnet).

Fixed-size flatten steps of the seeds (``8*8*64``, ``128*4*4``, ``32*32*3``) are preceded by an
adaptive pool to that size: at the seeds' 32x32 input the pool is the identity, so the numbers
are the seeds' own, and larger inputs work too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from fitvision.errors import FitVisionError, check_choice
from fitvision.models.base import ImageClassifier
from fitvision.models.init import kaiming_init
from fitvision.models.layers import ConvBlock, ConvBnAct, Flatten, LinearBlock, Residual, prev_pow_2, scaled
from fitvision.models.registry import register_model


def _finish(model: ImageClassifier, num_classes: int) -> ImageClassifier:
    model.num_classes = num_classes
    kaiming_init(model, skip=[model.get_classifier()])
    return model


class MLP(ImageClassifier):
    """Seed 003: flatten, one ReLU hidden layer, linear output (53.5% on CIFAR-10 there)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, hidden: int = 500, input_size: int = 32):
        super().__init__()
        # Inputs of another size are average-pooled to input_size first: the weights stay usable.
        self.pool = nn.AdaptiveAvgPool2d(input_size)
        self.flatten = Flatten()
        self.hidden = LinearBlock(in_channels * input_size * input_size, hidden)
        self.classifier = nn.Sequential(nn.Linear(hidden, num_classes))
        _finish(self, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.flatten(self.pool(x)))


@register_model
def mlp(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, hidden: int = 500,
        input_size: int = 32) -> MLP:
    """Seed 003 MLP: 32x32x3 -> 500 -> classes (hidden size configurable)."""
    return MLP(num_classes, in_channels, scaled(hidden, width), input_size)


class ConvNet(ImageClassifier):
    """Seed 002: two ConvBlocks (32, 64 channels), then 8*8*64 -> 128 -> classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, channels: Sequence[int] = (32, 64),
                 hidden: int = 128, dropout: Sequence[float] = (0.0, 0.0, 0.0)):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(ConvBlock(in_channels, c1, 3, 1, dropout[0]),
                                      ConvBlock(c1, c2, 3, 1, dropout[1]))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(8), Flatten(),
                                        LinearBlock(8 * 8 * c2, hidden, dropout[2]),
                                        nn.Linear(hidden, num_classes))
        _finish(self, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def convnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: bool = False) -> ConvNet:
    """Seed 002 ConvNet: 2 conv + 2 fc; dropout=True for its 0.6/0.6/0.5 variant."""
    ps = (0.6, 0.6, 0.5) if dropout else (0.0, 0.0, 0.0)
    return ConvNet(num_classes, in_channels, (scaled(32, width), scaled(64, width)), scaled(128, width), ps)


class CNN(ImageClassifier):
    """Seed 003: three conv-ReLU-maxpool stages (32, 64, 128), then 128*4*4 -> classes. ``bn``:
    BatchNorm after each conv (seed 003's BatchNorm variant); ``dropout``: before the classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128),
                 bn: bool = False, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
            norm = [nn.BatchNorm2d(c_out)] if bn else []
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), *norm, nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        drop = [nn.Dropout(dropout)] if dropout else []  # none by default: saved runs keep their layer names
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(4), Flatten(), *drop,
                                        nn.Linear(channels[-1] * 4 * 4, num_classes))
        _finish(self, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def cnn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, bn: bool = False,
        dropout: float = 0.0) -> CNN:
    """Seed 003 CNN: 3 conv-relu-pool layers (32-64-128) + linear (bn=true, dropout=P: its variants)."""
    return CNN(num_classes, in_channels, tuple(scaled(c, width) for c in (32, 64, 128)), bn, dropout)


class AlexNet(ImageClassifier):
    """Seed 003 (the nn.Sequential version): 5 convs, adaptive 6x6 average pool, 3 fc layers.

    The 11x11 stride-4 stem and two 3x3 stride-2 pools still leave a 1x1 map at 32x32, which
    the adaptive pool spreads to 6x6; the smallest input is 28x28.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 channels: Sequence[int] = (64, 192, 384, 256, 256), hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        relu = partial(nn.ReLU, inplace=True)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, stride=4, padding=2), relu(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c1, c2, 5, padding=2), relu(),
            nn.Conv2d(c2, c3, 3, padding=1), relu(),
            nn.Conv2d(c3, c4, 5, padding=2), relu(),
            nn.Conv2d(c4, c5, 5, padding=2), relu(), nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            Flatten(),
            nn.Dropout(dropout), nn.Linear(c5 * 6 * 6, hidden), relu(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), relu(),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )
        _finish(self, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.features(x))


@register_model
def alexnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.5) -> AlexNet:
    """Seed 003 AlexNet: 5 conv + 3 fc, adaptive 6x6 pool (works from 28x28 up)."""
    channels = tuple(scaled(c, width) for c in (64, 192, 384, 256, 256))
    return AlexNet(num_classes, in_channels, channels, scaled(4096, width), dropout)


class ResNet9(ImageClassifier):
    """Seeds 000/001, layer for layer: 64-128-256-512 with residual pairs after conv2 and conv4.

    Module names match the seed's, so its saved state_dict loads as is. The head's
    ``MaxPool2d(4)`` is an adaptive max pool to 1x1: the same operation on the 4x4 map a 32x32
    input gives, and one that also works on larger inputs. The convs keep the seed's biases by
    default (6,575,370 parameters); ``conv_bias=False`` drops them, as BatchNorm's shift makes
    them redundant (6,573,130), at the cost of loading seed checkpoints.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512),
                 dropout: float = 0.2, conv_bias: bool = True):
        super().__init__()
        c1, c2, c3, c4 = widths
        block = partial(ConvBnAct, bias=conv_bias)
        self.conv1 = block(in_channels, c1)
        self.conv2 = block(c1, c2, pool=True)
        self.res1 = Residual(block(c2, c2), block(c2, c2))
        self.conv3 = block(c2, c3, pool=True)
        self.conv4 = block(c3, c4, pool=True)
        self.res2 = Residual(block(c4, c4), block(c4, c4))
        self.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c4, num_classes))
        _finish(self, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(self.conv2(self.conv1(x)))
        return self.res2(self.conv4(self.conv3(x)))


@register_model
def resnet9(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2,
            conv_bias: bool = True) -> ResNet9:
    """Seed 000/001 ResNet9 (64-128-256-512, conv biases kept as in the seed)."""
    widths = tuple(scaled(c, width) for c in (64, 128, 256, 512))
    return ResNet9(num_classes, in_channels, widths, dropout, conv_bias)


ORDERS = ("bn_act", "act_bn")  # XResNet's layers: conv-BN-ReLU, or the seed's conv-ReLU-BN


class XResNet(ImageClassifier):
    """Seed 004's Bag-of-Tricks CNN with residual stages.

    Stem: three 3x3 convs, c_in -> prev_pow_2(9*c_in) (stride 1) -> x2 (stride 2) -> x2 (stride 2).
    Then per stage width: a stride-2 3x3 conv, followed by ``depth`` residual blocks
    (conv-BN-ReLU, conv-BN with its BatchNorm scale starting at 0, add, ReLU). ``depth=0`` is
    the seed's plain CNN. Layers are conv-BN-ReLU with bias-free convs (``order="bn_act"``, the
    ResNet order), or with ``order="act_bn"`` the seed's conv_layer: conv (with bias) -> ReLU ->
    BatchNorm. Head: adaptive average pool, flatten, optional dropout, linear.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (64, 64, 128, 256),
                 depth: int = 1, dropout: float = 0.0, order: str = "bn_act"):
        super().__init__()
        check_choice("order", order, ORDERS)
        if depth < 0:
            raise FitVisionError(f"depth must be >= 0, got {depth}")
        # act_bn: the seed's conv -> ReLU -> BatchNorm; the conv bias, before the ReLU, is not redundant then
        layer = partial(ConvBnAct, bias=order == "act_bn", act_first=order == "act_bn")
        s = prev_pow_2(in_channels * 3 * 3)
        self.stem = nn.Sequential(layer(in_channels, s), layer(s, s * 2, stride=2), layer(s * 2, s * 4, stride=2))
        stages, c_in = [], s * 4
        for c in widths:
            blocks: list[nn.Module] = [layer(c_in, c, stride=2)]
            for _ in range(depth):
                blocks += [Residual(layer(c, c), layer(c, c, act=False, zero_bn=True)), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c_in, num_classes))
        _finish(self, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


@register_model
def xresnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
            widths: Sequence[int] = (64, 64, 128, 256), depth: int = 1, dropout: float = 0.0,
            order: str = "bn_act") -> XResNet:
    """Seed 004 Bag-of-Tricks CNN: 3x3 stem, residual stages (depth=0: the seed's plain CNN;
    order=act_bn: its conv-ReLU-BN layers); for Imagenette-size input."""
    return XResNet(num_classes, in_channels, tuple(scaled(c, width) for c in widths), depth, dropout, order)
