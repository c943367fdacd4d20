"""Hardest-first selection: late epochs train only on the images the model still gets most wrong.

    hardest = HardestFirst(num_images=50_000, frac=0.52, start=2)
    train_dl = DeviceLoader(x, y, 2000, shuffle=True, hardest=hardest)
    # the learner: hardest.record(per_image_losses) after each step

airbench96_faster filters each batch down to its hardest half with a small proxy network. This
does without the proxy: the loss each image had when it last trained is free (the step computes
it), so from epoch ``start`` on an epoch keeps the ``frac`` of its shuffled order with the highest
such loss, in shuffled order. An image skipped keeps its older, higher loss, so it comes back
once the trained ones have dropped below it; an image never trained counts as infinitely hard.

An epoch's choice is made once, when the epoch starts, and kept with the losses in the loader's
state: a run resumed in the middle of an epoch replays the same batches.
"""

from __future__ import annotations

import math

import torch

from fitvision.errors import FitVisionError


class HardestFirst:
    def __init__(self, num_images: int, frac: float, start: int = 0, device="cpu"):
        if not 0 < frac <= 1:
            raise FitVisionError(f"hardest_frac must lie in (0, 1], got {frac:g}")
        self.frac, self.start = float(frac), int(start)
        # float32 on the training device, indexed like the loader's images: recording never waits on a GPU
        self.losses = torch.full((num_images,), math.inf, device=device)
        self.handed: torch.Tensor | None = None  # the image indices of the batch the loader gave out last
        self._chosen: tuple[int, torch.Tensor] | None = None  # (epoch, its order), fixed when it starts

    def selects(self, epoch: int) -> bool:
        return epoch >= self.start and self.frac < 1

    def batches(self, epoch: int, full: int, batch_size: int, num_samples: int) -> int:
        """Batches in ``epoch`` given ``full`` in an unselected one: whole batches of the kept share."""
        if not self.selects(epoch):
            return full
        return min(full, max(1, round(self.frac * num_samples / batch_size)))

    def choose(self, order: torch.Tensor, epoch: int, keep: int) -> torch.Tensor:
        """The ``keep`` images of ``order`` with the highest recorded loss, in ``order``'s order."""
        if not self.selects(epoch) or keep >= len(order):
            return order
        if self._chosen is None or self._chosen[0] != epoch:
            top = torch.topk(self.losses[order.to(self.losses.device)], keep).indices.cpu()  # once an epoch
            mask = torch.zeros(len(order), dtype=torch.bool)
            mask[top] = True
            self._chosen = (epoch, order[mask])
        return self._chosen[1]

    def record(self, losses: torch.Tensor) -> None:
        """Each image's loss in the step just taken, for the batch handed out last (same order)."""
        if self.handed is None or len(losses) != len(self.handed):
            raise FitVisionError(f"hardest-first selection got {len(losses)} losses for a batch of "
                                 f"{0 if self.handed is None else len(self.handed)} images")
        self.losses[self.handed] = losses.detach().float()

    def state_dict(self) -> dict:
        chosen = None if self._chosen is None else {"epoch": self._chosen[0], "order": self._chosen[1].clone()}
        return {"losses": self.losses.cpu().clone(), "chosen": chosen}

    def load_state_dict(self, state: dict) -> None:
        losses = state["losses"]
        if losses.shape != self.losses.shape:
            raise FitVisionError(f"the checkpoint's hardest-first losses cover {len(losses)} images, this "
                                 f"training set has {len(self.losses)}; resume with the same data")
        self.losses = losses.float().to(self.losses.device, copy=True)
        chosen = state.get("chosen")
        self._chosen = None if chosen is None else (int(chosen["epoch"]), chosen["order"].clone())

    def __repr__(self) -> str:
        return f"HardestFirst(frac={self.frac:g}, start={self.start})"
