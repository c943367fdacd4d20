"""create_optimizer: named recipes of the composable optimizer, plus torch.optim wrappers.

Every optimizer made here has the same hyperparameter interface through set_hyper/get_hyper:
"lr", "mom" (momentum, or Adam's beta1) and "wd". Each group carries "lr_mult" and "wd_mult",
so a schedule sets one value and each group gets value * its multiplier (no-decay groups from
fitvision.models.param_groups get wd_mult 0 and keep weight decay 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from fitvision.errors import FitVisionError
from fitvision.optim.optimizer import Optimizer, Step, as_groups
from fitvision.optim.steppers import (
    AverageGrad,
    AverageSqrGrad,
    StepCount,
    adam_step,
    debiased_momentum_step,
    l2_reg,
    lamb_step,
    momentum_step,
    muon_step,
    nesterov_step,
    radam_step,
    sgd_step,
    weight_decay,
)

WD_MODES = ("l2", "decoupled")
HYPERS = ("lr", "mom", "wd")


def _with_wd(stats: list[Step], stepper: Step, wd_mode: str) -> list[Step]:
    # L2 changes the gradient, so it must run before the stats see it; decoupled decay
    # shrinks the weights before the update, as torch.optim.AdamW does.
    if wd_mode == "l2":
        return [l2_reg, *stats, stepper]
    return [*stats, weight_decay, stepper]


def _adam_stats() -> list[Step]:
    return [AverageGrad(dampening=True), AverageSqrGrad(dampening=True), StepCount()]


RECIPES: dict[str, Callable[[str], list[Step]]] = {
    "sgd": lambda wd_mode: _with_wd([], sgd_step, wd_mode),
    "momentum": lambda wd_mode: _with_wd([AverageGrad()], momentum_step, wd_mode),
    "nesterov": lambda wd_mode: _with_wd([AverageGrad()], nesterov_step, wd_mode),
    # seed 004's EWMA with debiasing: dampened momentum divided by the sum of its weights
    "ewma": lambda wd_mode: _with_wd([AverageGrad(dampening=True), StepCount()], debiased_momentum_step, wd_mode),
    "adam": lambda wd_mode: _with_wd(_adam_stats(), adam_step, wd_mode),
    "adamw": lambda wd_mode: _with_wd(_adam_stats(), adam_step, "decoupled"),
    # Rectified Adam: Adam with a warm-up that follows from beta2 (torch.optim.RAdam).
    "radam": lambda wd_mode: _with_wd(_adam_stats(), radam_step, wd_mode),
    # Muon: Nesterov momentum, orthogonalised for the body's matrices and filters (see muon_step).
    "muon": lambda wd_mode: _with_wd([AverageGrad(dampening=True)], muon_step, wd_mode),
    # LAMB's decay is part of its update (it enters the trust ratio), whatever wd_mode says.
    "lamb": lambda wd_mode: [*_adam_stats(), lamb_step],
}
TORCH_OPTIMIZERS = ("torch_sgd", "torch_adam", "torch_adamw")


def optimizer_names() -> list[str]:
    return sorted([*RECIPES, *TORCH_OPTIMIZERS])


def create_optimizer(
    name: str,
    param_groups: Iterable[Any],
    lr: float,
    momentum: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-5,
    wd: float = 0.0,
    wd_mode: str = "l2",
) -> Any:
    """An optimizer by name over param_groups (dicts as fitvision.models.param_groups makes
    them, or plain tensors). A group's "weight_decay" overrides wd; its "lr_mult" scales lr."""
    if name not in RECIPES and name not in TORCH_OPTIMIZERS:
        raise FitVisionError(f"unknown optimizer '{name}' (valid optimizers: {', '.join(optimizer_names())})")
    if wd_mode not in WD_MODES:
        raise FitVisionError(f"unknown wd_mode '{wd_mode}' (valid: {', '.join(WD_MODES)})")
    groups = [_prepare_group(g, lr, wd) for g in as_groups(param_groups)]
    if name in TORCH_OPTIMIZERS:
        return _torch_optimizer(name, groups, lr, momentum, beta2, eps, wd_mode)
    for g in groups:
        g["wd"] = g.pop("weight_decay")
        if name == "muon" and str(g.get("name", "")).startswith("head"):
            # Muon is for hidden layers: the classifier maps features to classes, and its
            # orthogonalised update would give every class the same step size.
            g.setdefault("ortho", False)
    return Optimizer(groups, RECIPES[name](wd_mode), lr=lr, mom=momentum, sqr_mom=beta2, eps=eps)


def _prepare_group(group: dict[str, Any], lr: float, wd: float) -> dict[str, Any]:
    g = dict(group)
    g.setdefault("lr_mult", 1.0)
    # A group that states weight_decay 0 is a no-decay group (biases, norms): a later
    # set_hyper("wd", ...) must leave it at 0. Any other group follows set_hyper.
    no_decay = group.get("weight_decay") == 0
    g.setdefault("wd_mult", 0.0 if no_decay else 1.0)
    g.setdefault("weight_decay", wd)
    g["lr"] = lr * g["lr_mult"]
    return g


def _torch_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, momentum: float, beta2: float, eps: float, wd_mode: str
) -> torch.optim.Optimizer:
    if wd_mode == "decoupled" and name != "torch_adamw":
        raise FitVisionError(f"{name} only does L2 weight decay; use wd_mode 'l2', or torch_adamw for decoupled")
    if name == "torch_sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    cls = torch.optim.Adam if name == "torch_adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=(momentum, beta2), eps=eps)


def set_hyper(optimizer: Any, key: str, value: float) -> None:
    """Set "lr", "mom" or "wd" on every group: lr and wd times the group's multiplier."""
    if key not in HYPERS:
        raise FitVisionError(f"unknown hyperparameter '{key}' (valid: {', '.join(HYPERS)})")
    for g in optimizer.param_groups:
        if key == "lr":
            g["lr"] = value * g.get("lr_mult", 1.0)
        elif key == "wd":
            g["wd" if "wd" in g else "weight_decay"] = value * g.get("wd_mult", 1.0)
        elif "mom" in g:
            g["mom"] = value
        elif "betas" in g:
            g["betas"] = (value, g["betas"][1])
        elif "momentum" in g:
            g["momentum"] = value


def get_hyper(optimizer: Any, key: str) -> float:
    """The value set_hyper would have been given: from the first group whose multiplier is not 0
    (a frozen or no-decay group says nothing about the base value)."""
    if key not in HYPERS:
        raise FitVisionError(f"unknown hyperparameter '{key}' (valid: {', '.join(HYPERS)})")
    groups = optimizer.param_groups
    if key == "mom":
        return _momentum_of(groups[0])
    mult_key = "lr_mult" if key == "lr" else "wd_mult"
    for g in groups:
        mult = g.get(mult_key, 1.0)
        if mult != 0:
            value = g["lr"] if key == "lr" else g.get("wd", g.get("weight_decay", 0.0))
            return value / mult
    return 0.0


def _momentum_of(group: dict[str, Any]) -> float:
    if "mom" in group:
        return group["mom"]
    if "betas" in group:
        return group["betas"][0]
    return group.get("momentum", 0.0)
