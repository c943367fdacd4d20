"""Which parameters step how: a model's parameter groups turned into an optimizer, from a config.

The groups come from ``fitvision.models.param_groups`` (body/head, weights/no-decay); the
policy here adjusts them as a TrainConfig says, like nanoGPT's ``configure_optimizers``:

- biases and norm shifts (the no-decay groups) get ``bias_lr_mult`` x the lr: few numbers, they
  tolerate and need a higher lr; with ``wd_bn_bias`` they decay too, as much per step as the
  weights (torch.optim's and the seeds' way);
- with ``opt="muon"`` the body's weights (matrices, filters) step with Muon's own lr, momentum
  and optional renormalisation;
- a model may name 1-D parameters that step like weights (``model.weight_like_params()``, e.g.
  SpeedNet's data-initialised stem bias): they get the weights' lr and decay.

The training loop knows none of this: it receives the optimizer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fitvision.models.groups import param_groups, unwrap
from fitvision.optim.factory import create_optimizer


def optimizer_groups(model: nn.Module, cfg: Any) -> list[dict]:
    """param_groups(model, cfg.wd), adjusted as cfg says (see the module docstring)."""
    groups = param_groups(model, cfg.wd)
    weight_like = getattr(unwrap(model), "weight_like_params", lambda: [])()
    if weight_like:
        ids = {id(p) for p in weight_like}
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        groups = [g for g in groups if g["params"]] + [
            {"params": list(weight_like), "name": "body_stem", "weight_decay": cfg.wd, "lr_mult": 1.0}]
    for group in groups:
        if group["name"].endswith("no_decay"):
            group["lr_mult"] *= cfg.bias_lr_mult
            if cfg.wd_bn_bias:  # every parameter decays, as much per step as the weights do:
                # the higher lr speeds their gradient steps only
                group["weight_decay"] = cfg.wd / cfg.bias_lr_mult
                group["wd_mult"] = 1.0 / cfg.bias_lr_mult
        elif group["name"] == "body" and cfg.opt == "muon":  # the orthogonalised weights
            group["lr_mult"] *= (cfg.muon_lr or cfg.lr) / cfg.lr
            group["mom"] = cfg.muon_momentum or cfg.momentum
            group["renorm"] = cfg.muon_renorm
            if cfg.muon_renorm:  # the norm is held fixed, so weight decay has nothing to do
                group["weight_decay"], group["wd_mult"] = 0.0, 0.0
    return groups


def configure_optimizer(model: nn.Module, cfg: Any):
    """The optimizer cfg names over ``optimizer_groups(model, cfg)``, at cfg's lr, momentum and decay."""
    return create_optimizer(cfg.opt, optimizer_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                            beta2=cfg.beta2, eps=cfg.eps, wd=cfg.wd, wd_mode=cfg.wd_mode)
