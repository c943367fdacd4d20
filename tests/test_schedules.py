"""Schedules against torch.optim.lr_scheduler and their closed forms."""

import dataclasses
import math

import pytest
import torch

from fitvision.config import TrainConfig
from fitvision.recipes import get_recipe
from fitvision.errors import FitVisionError
from fitvision.optim.schedules import (
    combine_scheds,
    cosine_warmup,
    create_schedule,
    one_cycle,
    sched_const,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_step,
    step_pos,
)

EPOCHS, STEPS_PER_EPOCH, MAX_LR = 16, 125, 0.01  # seed 001's setting


def torch_one_cycle(pct_start, opt_cls=torch.optim.Adam):
    """lr and beta1 (momentum) at every batch from torch's OneCycleLR, stepped per batch as seed 001."""
    opt = opt_cls([torch.nn.Parameter(torch.zeros(1))], lr=MAX_LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, MAX_LR, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, pct_start=pct_start
    )
    lrs, moms = [], []
    for _ in range(EPOCHS * STEPS_PER_EPOCH):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group["betas"][0] if "betas" in group else group["momentum"])
        opt.step()
        sched.step()
    return lrs, moms


@pytest.mark.parametrize("pct_start", [0.25, 0.3])  # fitvision's default, torch's default (seed 001)
def test_one_cycle_matches_torch_at_every_step(pct_start):
    n = EPOCHS * STEPS_PER_EPOCH
    ref_lr, ref_mom = torch_one_cycle(pct_start)
    sched = one_cycle(MAX_LR, pct_start=pct_start, div_factor=25.0, final_div_factor=1e4, total_steps=n)
    lrs = [sched["lr"](step_pos(i, n)) for i in range(n)]
    moms = [sched["mom"](step_pos(i, n)) for i in range(n)]
    assert max(abs(a - b) for a, b in zip(lrs, ref_lr)) <= 1e-7
    assert max(abs(a - b) for a, b in zip(moms, ref_mom)) <= 1e-7
    assert max(lrs) == pytest.approx(MAX_LR) and lrs[-1] == pytest.approx(MAX_LR / 25 / 1e4)


@pytest.mark.parametrize("n", [2, 3, 7])  # pct_start * n < 1: torch's warm-up ends before batch 0
def test_one_cycle_matches_torch_on_very_short_runs(n):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=MAX_LR, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, MAX_LR, total_steps=n, pct_start=0.1)
    sched = one_cycle(MAX_LR, pct_start=0.1, total_steps=n)
    for i in range(n):
        group = opt.param_groups[0]
        assert sched["lr"](step_pos(i, n)) == pytest.approx(group["lr"], rel=1e-12)
        assert sched["mom"](step_pos(i, n)) == pytest.approx(group["momentum"], rel=1e-12)
        opt.step()
        if i < n - 1:
            ref.step()


def test_one_cycle_momentum_matches_torch_sgd_too():
    n = EPOCHS * STEPS_PER_EPOCH
    _, ref_mom = torch_one_cycle(0.25, opt_cls=lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9))
    mom = one_cycle(MAX_LR, total_steps=n)["mom"]
    assert max(abs(mom(step_pos(i, n)) - m) for i, m in enumerate(ref_mom)) <= 1e-7


def test_create_schedule_one_cycle_is_the_seed_schedule():
    cfg = dataclasses.replace(get_recipe("seed"), pct_start=0.3)
    n = EPOCHS * STEPS_PER_EPOCH
    sched = create_schedule(cfg, total_steps=n)
    ref_lr, ref_mom = torch_one_cycle(0.3)
    assert max(abs(sched["lr"](step_pos(i, n)) - r) for i, r in enumerate(ref_lr)) <= 1e-7
    assert max(abs(sched["mom"](step_pos(i, n)) - r) for i, r in enumerate(ref_mom)) <= 1e-7


def torch_per_epoch(make_sched, epochs, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_sched(opt)
    out = []
    for _ in range(epochs + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_sched_cos_matches_cosine_annealing():
    T = 20
    ref = torch_per_epoch(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.001), T)
    fn = sched_cos(0.1, 0.001)
    assert max(abs(fn(e / T) - r) for e, r in enumerate(ref)) <= 1e-12


def test_sched_step_matches_steplr_of_seed_002():
    E = 24
    ref = torch_per_epoch(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.1), E)
    fn = sched_step(0.1, step_size=7, gamma=0.1, total=E)
    assert max(abs(fn(e / E) - r) for e, r in enumerate(ref)) <= 1e-12
    assert fn(21 / E) == pytest.approx(1e-4)  # three drops by then, none lost to rounding


def test_sched_exp_matches_exponential_lr():
    E, gamma = 10, 0.8
    ref = torch_per_epoch(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=gamma), E)
    fn = sched_exp(0.1, 0.1 * gamma**E)
    assert max(abs(fn(e / E) - r) / r for e, r in enumerate(ref)) <= 1e-12


def test_sched_lin_matches_linear_lr():
    E = 10
    ref = torch_per_epoch(
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=E), E
    )
    fn = sched_lin(0.1, 0.01)
    assert max(abs(fn(e / E) - r) for e, r in enumerate(ref)) <= 1e-12


def test_sched_const():
    assert [sched_const(0.3)(p) for p in (0, 0.5, 1)] == [0.3, 0.3, 0.3]


def test_combine_scheds_gives_each_phase_its_own_progress():
    fn = combine_scheds([0.3, 0.7], [sched_lin(0.0, 1.0), sched_cos(1.0, 0.0)])
    assert fn(0.0) == 0.0
    assert fn(0.15) == pytest.approx(0.5)
    assert fn(0.3) == 1.0
    assert fn(0.3 + 0.35) == pytest.approx(0.5)  # cosine half way: (1 + cos(pi/2)) / 2
    assert fn(1.0) == pytest.approx(0.0)


def test_combine_scheds_rejects_bad_fractions():
    with pytest.raises(FitVisionError, match=r"^schedule fractions must be >= 0 and sum to 1, got \[0.5, 0.6\]$"):
        combine_scheds([0.5, 0.6], [sched_const(1), sched_const(2)])


def test_cosine_warmup_closed_form():
    fn = cosine_warmup(1.0, 0.1, start=0.04, end=0.0)
    for pos in (0.0, 0.05, 0.1, 0.4, 0.75, 1.0):
        if pos <= 0.1:
            expected = 0.04 + (1.0 - 0.04) * pos / 0.1
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (pos - 0.1) / 0.9))
        assert fn(pos) == pytest.approx(expected, abs=1e-12)
    assert cosine_warmup(1.0, 0.0)(0.0) == 1.0 and cosine_warmup(1.0, 1.0)(1.0) == 1.0  # empty phases


@pytest.mark.parametrize(
    "name,start,end",
    [
        ("cosine", 0.01, 0.0),
        ("cosine_warmup", 0.01 / 25, 0.0),
        ("linear", 0.01, 0.0),
        ("constant", 0.01, 0.01),
        ("exponential", 0.01, 0.01 / 25),
        ("step", 0.01, 0.01 * 0.1**2),  # 16 epochs: drops after epochs 7 and 14
        ("one_cycle", 0.01 / 25, 0.01 / 25 / 1e4),
        ("one_cycle_linear", 0.01 / 25, 0.01 / 25 / 1e4),
        ("flat_cos", 0.01, 0.01 / 25 / 1e4),
    ],
)
def test_create_schedule_names(name, start, end):
    sched = create_schedule(TrainConfig(sched=name, lr=0.01))
    assert sched["lr"](0.0) == pytest.approx(start, abs=1e-15)
    assert sched["lr"](1.0) == pytest.approx(end, abs=1e-15)
    assert (sched["mom"] is not None) == (name == "one_cycle")


def test_create_schedule_unknown_name():
    with pytest.raises(FitVisionError) as e:
        create_schedule(TrainConfig(sched="poly"))
    assert str(e.value) == (
        "unknown schedule 'poly' (valid schedules: constant, cosine, cosine_warmup, exponential, flat_cos, "
        "linear, one_cycle, one_cycle_linear, step)"
    )


def test_one_cycle_linear_is_a_triangle():
    sched = create_schedule(TrainConfig(sched="one_cycle_linear", lr=1.0, pct_start=0.25, div_factor=5,
                                        final_div_factor=0.2 / 0.07))["lr"]
    assert sched(0.125) == pytest.approx(0.6)  # half way up from 0.2 to 1
    assert sched(0.25) == pytest.approx(1.0)
    assert sched(0.625) == pytest.approx((1.0 + 0.07) / 2)  # half way down to 0.07
    assert sched(1.0) == pytest.approx(0.07)


def test_flat_cos_holds_the_peak_then_follows_a_half_cosine():
    sched = create_schedule(TrainConfig(sched="flat_cos", lr=1.0, pct_start=0.75, div_factor=1.0,
                                        final_div_factor=1e5))["lr"]
    assert sched(0.0) == sched(0.5) == sched(0.75) == 1.0
    end = 1e-5
    assert sched(0.875) == pytest.approx(end + (1.0 - end) * 0.5)  # half way through the cosine
    assert sched(1.0) == pytest.approx(end)


def test_step_pos_ends():
    assert (step_pos(0, 2000), step_pos(1999, 2000), step_pos(0, 1)) == (0.0, 1.0, 0.0)
