"""An exponential moving average of a model's weights (evaluated, predicted with and saved when on)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """An exponential moving average of the weights; BatchNorm statistics copied from the model.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average is not
    dominated by the random initial weights early in training.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        ema_params, params = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


class Lookahead:
    """Every `every` steps, pull the weights (and BatchNorm statistics) back to a running average
    of themselves and continue from there (airbench's variant of Lookahead, Zhang et al. 2019).

    The average's decay grows as base**every * progress**3: early in training it is ~0 (the model
    moves freely), late it is large, which damps the noise of the last high-lr steps. The last step
    leaves the model at the average.
    """

    def __init__(self, model: nn.Module, every: int = 5, base: float = 0.95):
        self.every, self.base = every, base
        self.average = [t.detach().clone() for t in _float_state(model)]

    @torch.no_grad()
    def step(self, model: nn.Module, steps_done: int, total_steps: int) -> None:
        due, last = steps_done % self.every == 0, steps_done >= total_steps
        if not (due or last):
            return
        current = _float_state(model)
        if due:
            decay = self.base**self.every * min(1.0, steps_done / total_steps) ** 3
            torch._foreach_lerp_(self.average, current, 1.0 - decay)
        for dst, src in zip(current, self.average):
            dst.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return {"average": [t.clone() for t in self.average]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for dst, src in zip(self.average, state["average"]):
            dst.copy_(src)


def _float_state(model: nn.Module) -> list[torch.Tensor]:
    """Parameters and floating-point buffers (BatchNorm running stats), not counters."""
    return [t.detach() for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]
