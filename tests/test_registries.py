"""Every registered optimizer and schedule, read from the registries when the tests are collected.

A newly registered optimizer (fitvision.optim.factory) or schedule (fitvision.optim.schedules.SCHEDULES)
is picked up here without editing this file, except for two tables a new entry may need:
LRS (an lr at which the optimizer halves the loss of the toy problem; the default suits most) and
SHAPES (the closed form of the schedule its docstring/code defines; a missing one fails on purpose).
"""

import io
import math
import random

import pytest
import torch
from torch import nn

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError
from fitvision.models import param_groups
from fitvision.optim import create_optimizer, get_hyper, optimizer_names, set_hyper
from fitvision.optim.factory import WD_MODES
from fitvision.optim.schedules import SCHEDULES, STEP_EPOCHS, STEP_GAMMA, create_schedule, step_pos

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZERS = optimizer_names()


# --- optimizers ---


class Net(nn.Module):
    """A two-layer classifier with fitvision's body/head split: param_groups makes body, body_no_decay,
    head and head_no_decay of it (Muon orthogonalises the body matrix, not the head's)."""

    def __init__(self, seed: int = 0, spare: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 4)
        if spare:  # in the optimizer, never in the forward pass: its grad stays None
            self.spare = nn.Linear(32, 32)

    def forward(self, x):
        return self.classifier(self.body(x))


def problem(n: int = 128):
    """A fixed, learnable 4-class problem: labels are the argmax of a random linear map."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 10, generator=g)
    y = (x @ torch.randn(10, 4, generator=g)).argmax(1)
    return x, y


# lr per optimizer at which 50 full-batch steps take the loss from ~1.48 to 5-20% of it here
# (plain SGD and debiased EWMA need a large lr, momentum ones ~0.03, Adam-like ones ~0.01).
LRS = {"sgd": 0.3, "ewma": 0.3, "momentum": 0.03, "nesterov": 0.03, "torch_sgd": 0.03,
       "adam": 0.01, "adamw": 0.01, "torch_adam": 0.01, "torch_adamw": 0.01,
       "radam": 0.03, "lamb": 0.03, "muon": 0.03}
DEFAULT_LR = 0.03


def make_opt(name, model, wd=1e-4, wd_mode="l2", lr=None):
    lr = LRS.get(name, DEFAULT_LR) if lr is None else lr
    return create_optimizer(name, param_groups(model, wd), lr=lr, wd=wd, wd_mode=wd_mode)


def loss_step(model, opt, x, y):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def _supports(name, wd_mode):
    try:
        create_optimizer(name, [nn.Parameter(torch.zeros(2))], lr=0.1, wd=0.1, wd_mode=wd_mode)
    except FitVisionError:  # torch_sgd/torch_adam only do L2
        return False
    return True


NAME_MODES = [(name, mode) for name in OPTIMIZERS for mode in WD_MODES if _supports(name, mode)]


def test_registry_is_not_empty():
    assert OPTIMIZERS and "adam" in OPTIMIZERS
    assert SCHEDULES and "one_cycle" in SCHEDULES


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_halves_the_loss(name):
    x, y = problem()
    model = Net()
    opt = make_opt(name, model)
    losses = [loss_step(model, opt, x, y) for _ in range(50)]
    final = nn.functional.cross_entropy(model(x), y).item()
    assert all(math.isfinite(v) for v in losses + [final])
    assert losses[0] > 1.0  # the problem starts unsolved
    assert final < losses[0] / 2, f"{name}: loss {losses[0]:.3f} -> {final:.3f} in 50 steps"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_hypers_round_trip(name):
    opt = make_opt(name, Net(), wd=1e-4)
    for key, value in (("lr", 0.0123), ("mom", 0.837), ("wd", 0.0371)):
        set_hyper(opt, key, value)
        assert get_hyper(opt, key) == value, key
    for g in opt.param_groups:  # and each group got value x its multiplier; no-decay groups keep 0
        assert g["lr"] == 0.0123 * g["lr_mult"]
        wd = g.get("wd", g.get("weight_decay"))
        assert wd == (0.0 if g["name"].endswith("no_decay") else 0.0371)
    with pytest.raises(FitVisionError):
        set_hyper(opt, "beta2", 0.9)
    with pytest.raises(FitVisionError):
        get_hyper(opt, "beta2")


# param_groups marks which groups decay (wd_mult), so an optimizer built with wd=0 (the
# Learner's default) still takes set_hyper("wd", x) on its weights: fit_one_cycle(wd=x) decays.
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_wd_round_trips_when_built_with_wd_zero(name):
    opt = make_opt(name, Net(), wd=0.0)
    set_hyper(opt, "wd", 0.0371)
    assert get_hyper(opt, "wd") == 0.0371
    for g in opt.param_groups:  # the no-decay groups stay at 0
        wd = g.get("wd", g.get("weight_decay"))
        assert wd == (0.0 if g["name"].endswith("no_decay") else 0.0371)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_is_bitwise(name, k=5):
    x, y = problem()
    model_a = Net()
    opt_a = make_opt(name, model_a)
    for _ in range(k):
        loss_step(model_a, opt_a, x, y)
    set_hyper(opt_a, "lr", get_hyper(opt_a, "lr") * 0.5)  # hypers travel in the state dict too
    set_hyper(opt_a, "mom", 0.8)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)  # as a checkpoint keeps it
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model_b, model_c = Net(seed=1), Net(seed=1)
    model_b.load_state_dict(model_a.state_dict())
    model_c.load_state_dict(model_a.state_dict())
    opt_b = make_opt(name, model_b)
    opt_b.load_state_dict(saved)
    assert get_hyper(opt_b, "lr") == get_hyper(opt_a, "lr")
    assert get_hyper(opt_b, "mom") == 0.8

    after_one = None
    for _ in range(2):
        loss_step(model_a, opt_a, x, y)
        loss_step(model_b, opt_b, x, y)
        for (key, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
            assert torch.equal(pa, pb), f"{name}: {key} differs after loading the state dict"
        after_one = after_one or [p.detach().clone() for p in model_b.parameters()]

    # Control: the state matters, so the check above can fail. A fresh optimizer (same weights,
    # same hypers, no state) takes a different step wherever the optimizer keeps state.
    if any(saved["state"].values()):  # plain sgd keeps none
        opt_c = make_opt(name, model_c, lr=get_hyper(opt_a, "lr"))
        set_hyper(opt_c, "mom", 0.8)
        loss_step(model_c, opt_c, x, y)
        assert not all(torch.equal(pc, pb) for pc, pb in zip(model_c.parameters(), after_one))


@pytest.mark.parametrize(("name", "wd_mode"), NAME_MODES)
def test_parameters_without_grad_are_left_alone(name, wd_mode):
    x, y = problem()
    model = Net(spare=True)
    frozen = model.body[0].bias
    frozen.requires_grad_(False)
    before = {key: p.detach().clone() for key, p in model.named_parameters()}
    opt = make_opt(name, model, wd=0.1, wd_mode=wd_mode)  # a large decay, which must not reach them
    for _ in range(3):
        loss_step(model, opt, x, y)
    assert frozen.grad is None and model.spare.weight.grad is None
    after = dict(model.named_parameters())
    for key in ("body.0.bias", "spare.weight", "spare.bias"):
        assert torch.equal(after[key], before[key]), f"{name}/{wd_mode} changed {key}"
    for key in ("body.0.weight", "classifier.weight", "classifier.bias"):  # the rest did train
        assert not torch.equal(after[key], before[key]), f"{name}/{wd_mode} left {key} unchanged"


# --- schedules ---

POS = [i / 1000 for i in range(1001)]
TOTAL_STEPS = (None, 1, 2, 4, 500)


def cfgs():
    """The defaults, and settings where each figure is distinct (final lr well above 0)."""
    return {"defaults": {},
            "custom": {"lr": 0.02, "pct_start": 0.3, "div_factor": 20.0, "final_div_factor": 100.0, "epochs": 16}}


def make_cfg(name, which):
    return TrainConfig(sched=name, **cfgs()[which])


@pytest.mark.parametrize("total_steps", TOTAL_STEPS)
@pytest.mark.parametrize("which", ["defaults", "custom"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_values_are_finite_non_negative_and_capped(name, which, total_steps):
    cfg = make_cfg(name, which)
    scheds = create_schedule(cfg, total_steps)
    assert set(scheds) == {"lr", "mom"}
    lrs = [scheds["lr"](p) for p in POS]
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in lrs)
    assert max(lrs) <= cfg.lr * (1 + 1e-12), f"{name}: peak {max(lrs)!r} above lr {cfg.lr!r}"
    if scheds["mom"] is not None:
        moms = [scheds["mom"](p) for p in POS]
        assert all(math.isfinite(v) and 0 <= v < 1 for v in moms)


@pytest.mark.parametrize("total_steps", TOTAL_STEPS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_is_pure(name, total_steps):
    cfg = make_cfg(name, "custom")
    first, second = create_schedule(cfg, total_steps), create_schedule(cfg, total_steps)
    for key, fn in first.items():
        if fn is None:
            assert second[key] is None
            continue
        forward = [fn(p) for p in POS]
        backward = [fn(p) for p in reversed(POS)][::-1]
        order = list(range(len(POS)))
        random.Random(0).shuffle(order)
        shuffled = dict((i, fn(POS[i])) for i in order)
        interleaved = [(second[key](p), fn(p)) for p in POS]  # another instance, called alternately
        assert forward == backward == [shuffled[i] for i in range(len(POS))]
        assert forward == [b for _, b in interleaved] == [a for a, _ in interleaved]


# The closed forms each schedule's docstring/code defines, as functions of (pos, lr, cfg).


def _cos(start, end, t):
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def _lin(start, end, t):
    return start + (end - start) * t


def _one_cycle(p, lr, c):
    initial, ps = lr / c.div_factor, c.pct_start
    return _cos(initial, lr, p / ps) if p < ps else _cos(lr, initial / c.final_div_factor, (p - ps) / (1 - ps))


def _one_cycle_linear(p, lr, c):
    initial, ps = lr / c.div_factor, c.pct_start
    return _lin(initial, lr, p / ps) if p < ps else _lin(lr, initial / c.final_div_factor, (p - ps) / (1 - ps))


def _cosine_warmup(p, lr, c):
    ps = c.pct_start
    return _lin(lr / c.div_factor, lr, p / ps) if p < ps else _cos(lr, 0.0, (p - ps) / (1 - ps))


def _flat_cos(p, lr, c):
    ps = c.pct_start
    return lr if p < ps else _cos(lr, lr / c.div_factor / c.final_div_factor, (p - ps) / (1 - ps))


def _step(p, lr, c):
    # divide by 10 (STEP_GAMMA) at each multiple of 7 (STEP_EPOCHS) epochs: epoch e is pos e / epochs
    drops = sum(1 for k in range(1, 100) if p >= k * STEP_EPOCHS / c.epochs)
    return lr * STEP_GAMMA**drops


SHAPES = {
    "constant": lambda p, lr, c: lr,
    "cosine": lambda p, lr, c: _cos(lr, 0.0, p),
    "cosine_warmup": _cosine_warmup,
    "exponential": lambda p, lr, c: lr * (1 / c.div_factor) ** p,
    "flat_cos": _flat_cos,
    "linear": lambda p, lr, c: lr * (1 - p),
    "one_cycle": _one_cycle,
    "one_cycle_linear": _one_cycle_linear,
    "step": _step,
}


@pytest.mark.parametrize("which", ["defaults", "custom"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_has_its_documented_shape(name, which):
    if name not in SHAPES:
        pytest.fail(f"schedule '{name}' has no documented shape in tests/test_registries.py SHAPES: add it")
    cfg = make_cfg(name, which)
    fn = create_schedule(cfg)["lr"]
    for p in POS:
        want = SHAPES[name](p, cfg.lr, cfg)
        assert fn(p) == pytest.approx(want, rel=1e-9, abs=1e-15), f"{name} at pos {p}"


@pytest.mark.parametrize("which", ["defaults", "custom"])
def test_schedule_endpoints(which):
    """The figures the docstrings name, spelled out."""
    c = make_cfg("one_cycle", which)
    lr, initial, final = c.lr, c.lr / c.div_factor, c.lr / c.div_factor / c.final_div_factor
    ends = {
        "constant": (lr, lr), "cosine": (lr, 0.0), "cosine_warmup": (initial, 0.0), "linear": (lr, 0.0),
        "exponential": (lr, lr / c.div_factor), "flat_cos": (lr, final), "one_cycle": (initial, final),
        "one_cycle_linear": (initial, final), "step": (lr, lr * STEP_GAMMA**2),  # 16 epochs: drops at 7, 14
    }
    for name, (start, end) in ends.items():
        fn = create_schedule(make_cfg(name, which))["lr"]
        assert fn(0.0) == pytest.approx(start, rel=1e-12, abs=1e-18), name
        assert fn(1.0) == pytest.approx(end, rel=1e-12, abs=1e-18), name
        assert fn(1.0) <= fn(0.0) or name in ("one_cycle", "one_cycle_linear", "cosine_warmup")
    assert create_schedule(make_cfg("constant", which))["lr"](0.5) == lr


@pytest.mark.parametrize("total_steps", [4, 8, 100, 500])
def test_one_cycle_peaks_at_torchs_batch_and_cycles_momentum(total_steps):
    """With total_steps = n, the peak is at batch pct_start * n - 1 (torch's OneCycleLR); momentum
    goes 0.95 -> 0.85 -> 0.95, lowest where lr is highest."""
    cfg = make_cfg("one_cycle", "defaults")
    s = create_schedule(cfg, total_steps)
    peak = step_pos(cfg.pct_start * total_steps - 1, total_steps)
    assert s["lr"](peak) == pytest.approx(cfg.lr, rel=1e-12)
    assert s["mom"](peak) == pytest.approx(0.85, rel=1e-12)
    assert s["mom"](1.0) == pytest.approx(0.95, rel=1e-12)
    lrs = [s["lr"](step_pos(i, total_steps)) for i in range(total_steps)]
    assert max(lrs) == pytest.approx(cfg.lr, rel=1e-12)
    assert lrs[-1] == pytest.approx(cfg.lr / cfg.div_factor / cfg.final_div_factor, rel=1e-9)
    if peak > 0:
        assert lrs[0] == pytest.approx(cfg.lr / cfg.div_factor, rel=1e-12)
        assert s["mom"](0.0) == pytest.approx(0.95, rel=1e-12)
