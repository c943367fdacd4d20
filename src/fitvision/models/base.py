"""The interface every fitvision model has (after timm): features, then a head.

A model sets ``self.classifier`` to an ``nn.Sequential`` that ends in the final ``nn.Linear``
(the layer ``reset_classifier`` replaces); everything before it in the head (pooling, flatten,
dropout, hidden fully connected layers) is parameter-free or belongs to the head too.
``forward_features`` is everything else. ``freeze``/``param_groups`` use the same split.
"""

from __future__ import annotations

import torch
from torch import nn

from fitvision.errors import FitVisionError


class ImageClassifier(nn.Module):
    """Base class: ``forward(x) == forward_head(forward_features(x))``."""

    classifier: nn.Sequential
    num_classes: int

    def __init__(self) -> None:
        super().__init__()
        # Set by fitvision.models.groups.freeze(train_bn=False): body BatchNorm stays in eval
        # mode (running statistics used, never updated) even when the model is put in train().
        self.bn_frozen = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The head on a feature map; ``pre_logits`` stops before the final linear layer."""
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh final layer (PyTorch's default init) with ``num_classes`` outputs."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise FitVisionError(f"num_classes must be a positive integer, got {num_classes!r}")
        old = self.get_classifier()
        self.classifier[-1] = nn.Linear(old.in_features, num_classes,
                                        device=old.weight.device, dtype=old.weight.dtype)
        self.num_classes = num_classes

    def body_batchnorms(self) -> list[nn.Module]:
        head = set(self.classifier.modules())
        return [m for m in self.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head]

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if mode and self.bn_frozen:
            for bn in self.body_batchnorms():
                bn.eval()
        return self
