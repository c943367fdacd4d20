"""The composable optimizer of seed 004: one Optimizer, many recipes.

A recipe is an ordered list of *steps*. Each step is a function (a "stepper") or a Stat
(a stepper that also owns per-parameter state). For every parameter group, and within it for
every bucket of parameters sharing a device and dtype, the steps run in order as

    fn(ps, **namespace) -> dict | None

where ``ps`` is the bucket's list of parameters and the namespace holds the group's
hyperparameters (lr, mom, wd, ...), ``grads`` (one gradient per parameter) and the state,
one list per state key (``grad_avg``, ``step``, ...). A step takes the keywords it needs and
ignores the rest (``**kwargs``); what it returns is merged into the namespace, so a later step
sees it: ``l2_reg`` returns new ``grads``, a Stat returns its updated state. Working on whole
lists lets every step use torch._foreach_* ops, so a step costs a few kernels per bucket, not
a few per parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from fitvision.errors import FitVisionError

Step = Callable[..., "dict[str, Any] | None"]


def with_defaults(**defaults: Any) -> Callable[[Step], Step]:
    """Give a stepper default hyperparameters (seed 004's ``_defaults``), read by Optimizer."""

    def mark(fn: Step) -> Step:
        fn.defaults = defaults  # type: ignore[attr-defined]
        return fn

    return mark


class Stat:
    """A stepper with per-parameter state: ``keys`` names the state it owns.

    ``init_state(p)`` gives a new parameter its initial state; ``__call__`` updates the state
    of a whole bucket and returns the updated entries (tensors are updated in place, python
    numbers such as step counts are returned as new lists).
    """

    keys: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, ps: list[torch.Tensor], **kwargs: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def as_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    items = list(params)
    if not items:
        raise FitVisionError("the optimizer got no parameters; check that the model has trainable weights")
    if isinstance(items[0], dict):
        return [dict(g) for g in items]
    return [{"params": items}]


def _buckets(params: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """Parameters that have a gradient, grouped by (device, dtype) as foreach ops require."""
    out: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            out.setdefault((p.device, p.dtype), []).append(p)
    return out.values()


class Optimizer:
    """Runs a list of steps over per-group hyperparameters and per-parameter state.

    ``params``: an iterable of tensors, or of dicts holding "params" plus per-group settings
    (any key besides "params" is a hyperparameter of that group). ``defaults`` fill in what a
    group does not set; the steps' own ``defaults`` fill in the rest.
    """

    def __init__(self, params: Iterable[Any], steps: Iterable[Step], **defaults: Any):
        self.steps = list(steps)
        hyper: dict[str, Any] = {}
        for fn in self.steps:
            hyper.update(getattr(fn, "defaults", {}))
        hyper.update(defaults)
        self.defaults = hyper
        self.param_groups = [{**hyper, **g, "params": list(g["params"])} for g in as_groups(params)]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        self._stats = [fn for fn in self.steps if isinstance(fn, Stat)]
        self._state_keys = [k for stat in self._stats for k in stat.keys]
        self._check()

    def _check(self) -> None:
        # A state key that shadows a hyperparameter would silently win in the namespace
        # (the collision seed 004 warns about), so refuse it up front.
        clash = set(self._state_keys) & (set(self.defaults) | {"grads"})
        if clash:
            raise ValueError(f"state keys clash with hyperparameters: {sorted(clash)}")
        seen: set[int] = set()
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one parameter group")
                seen.add(id(p))

    def __repr__(self) -> str:
        steps = ", ".join(getattr(fn, "__name__", repr(fn)) for fn in self.steps)
        return f"Optimizer(steps=[{steps}], groups={len(self.param_groups)})"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for ps in _buckets(group["params"]):
                self._step_bucket(ps, hyper)
        return loss

    def _step_bucket(self, ps: list[torch.Tensor], hyper: dict[str, Any]) -> None:
        states = [self._state_of(p) for p in ps]
        ns: dict[str, Any] = {**hyper, "grads": [p.grad for p in ps]}
        for key in self._state_keys:
            ns[key] = [s[key] for s in states]
        for fn in self.steps:
            ns.update(fn(ps, **ns) or {})
        # Tensors were updated in place; python numbers (step counts) were rebound, so store back.
        for key in self._state_keys:
            for s, value in zip(states, ns[key]):
                s[key] = value

    def _state_of(self, p: torch.Tensor) -> dict[str, Any]:
        if p not in self.state:
            self.state[p] = {k: v for stat in self._stats for k, v in stat.init_state(p).items()}
        return self.state[p]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (tensors cloned) of tensors and plain python only, as torch.optim lays it
        out: "state" keyed by the parameter's position across groups, "param_groups" with
        "params" as those positions. torch.load(weights_only=True) reads it back."""
        index: dict[torch.Tensor, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(p, len(index)) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {
            index[p]: {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in self.state.items()
            if p in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise FitVisionError(
                "optimizer state does not fit this model (different parameter groups); "
                "resume with the same model and optimizer settings"
            )
        for s in state_dict["state"].values():
            if set(s) != set(self._state_keys):
                raise FitVisionError(
                    f"optimizer state holds {sorted(s)} but this optimizer keeps {sorted(self._state_keys)}; "
                    "resume with the same optimizer (--opt) as the run that saved it"
                )
        by_index = {i: p for sg, g in zip(saved, self.param_groups) for i, p in zip(sg["params"], g["params"])}
        self.state = {by_index[int(i)]: _restore(s, by_index[int(i)]) for i, s in state_dict["state"].items()}
        for sg, g in zip(saved, self.param_groups):
            g.update({k: v for k, v in sg.items() if k != "params"})


def _restore(state: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        if torch.is_tensor(v):
            if v.shape != p.shape and v.dim() > 0:
                raise FitVisionError(
                    f"optimizer state '{k}' has shape {tuple(v.shape)} but its parameter has "
                    f"{tuple(p.shape)}; resume with the same model"
                )
            dtype = p.dtype if v.is_floating_point() else v.dtype
            v = v.detach().to(device=p.device, dtype=dtype, copy=True)
        out[k] = v
    return out
