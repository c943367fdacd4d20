"""A small synthetic task and a loader with the DeviceLoader interface, for the training-loop tests.

The loader draws its shuffle and its flip augmentation from a generator seeded by (seed, epoch)
on every pass, as fitvision's DeviceLoader does, so a pass can be replayed exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from fitvision.train.hooks import Hook


class FakeLoader:
    def __init__(self, x, y, batch_size, shuffle=False, seed=0, augment=False):
        self.images, self.labels, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.augment, self.epoch = shuffle, seed, augment, 0
        self.transform = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.labels), generator=gen) if self.shuffle else torch.arange(len(self.labels))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            x = self.images[idx]
            if self.augment:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            yield x, self.labels[idx]


def blobs(n=384, classes=4, size=8, seed=0):
    """Images whose mean brightness pattern encodes the class: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, 3, size, size, generator=gen)
    x = centres[y] + 0.8 * torch.randn(n, 3, size, size, generator=gen)
    return x, y


class TinyNet(nn.Module):
    """conv-BN-ReLU, dropout (so the RNG matters), linear head named `classifier`."""

    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.1))
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        return self.classifier(self.body(x))


def make_loaders(n=384, bs=32, seed=0):
    x, y = blobs(n, seed=seed)
    k = n * 3 // 4
    return (FakeLoader(x[:k], y[:k], bs, shuffle=True, seed=seed, augment=True),
            FakeLoader(x[k:], y[k:], bs * 2))


def make_learner(seed=0, hooks=(), init_seed=None, **kwargs):
    """A Learner on the synthetic task; init_seed (default: seed) drives the model's init only."""
    from fitvision.train.seeding import seed_everything
    from fitvision.train.learner import Learner

    seed_everything(seed if init_seed is None else init_seed)
    train_dl, valid_dl = make_loaders(seed=seed)
    kwargs = {"lr": 1e-2, "precision": "fp32", "progress": False, **kwargs}
    return Learner(TinyNet(), train_dl, valid_dl, hooks=list(hooks), **kwargs)


class Crash(Hook):
    """Simulates a crash right after optimizer step `at` (after that step's checkpoint, if any)."""

    def __init__(self, at):
        self.at = at

    def on_batch_end(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt


def weights(learn):
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
