"""Schedules: pure functions of training progress pos in [0, 1], for any hyperparameter.

``sched_cos(0.01, 0)`` is a function pos -> value; ``combine_scheds`` joins several over
consecutive fractions of training. A loop of n batches evaluates a schedule at
``step_pos(i, n) = i / (n - 1)`` for batch i, so the first batch gets the start value and the
last batch the end value, as torch.optim.lr_scheduler.OneCycleLR does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from fitvision.errors import FitVisionError

Schedule = Callable[[float], float]
SCHEDULES = ("constant", "cosine", "cosine_warmup", "exponential", "flat_cos", "linear", "one_cycle",
             "one_cycle_linear", "step")

# The seeds' StepLR (seed 002): divide by 10 every 7 epochs.
STEP_EPOCHS = 7
STEP_GAMMA = 0.1


def step_pos(step: int, total_steps: int) -> float:
    """Progress of batch `step` (0-based) in a run of total_steps batches."""
    return step / (total_steps - 1) if total_steps > 1 else 0.0


def _lin(start: float, end: float, pos: float) -> float:
    return start + pos * (end - start)


def _cos(start: float, end: float, pos: float) -> float:
    # The same expression as torch's OneCycleLR/CosineAnnealingLR, so values agree to rounding.
    return end + (start - end) / 2.0 * (math.cos(math.pi * pos) + 1)


def _exp(start: float, end: float, pos: float) -> float:
    return start * (end / start) ** pos


def _const(value: float, pos: float) -> float:
    return value


def _step(start: float, step_size: float, gamma: float, total: float, pos: float) -> float:
    # pos * total counts units (epochs or batches); the tiny slack keeps 7.0 from flooring to
    # 6 when pos * total lands at 6.999999999.
    return start * gamma ** math.floor(pos * total / step_size + 1e-9)


def sched_lin(start: float, end: float) -> Schedule:
    return partial(_lin, start, end)


def sched_cos(start: float, end: float) -> Schedule:
    return partial(_cos, start, end)


def sched_exp(start: float, end: float) -> Schedule:
    """Geometric interpolation (torch's ExponentialLR with gamma = (end/start)^(1/total))."""
    if start <= 0 or end <= 0:
        raise FitVisionError(f"an exponential schedule needs positive values, got {start} -> {end}")
    return partial(_exp, start, end)


def sched_const(value: float) -> Schedule:
    return partial(_const, value)


def sched_step(start: float, step_size: float, gamma: float, total: float) -> Schedule:
    """torch's StepLR: start * gamma ** floor(unit / step_size), where unit = pos * total and
    step_size and total share a unit (epochs, say)."""
    return partial(_step, start, step_size, gamma, total)


def _combined(bounds: list[float], scheds: Sequence[Schedule], pos: float) -> float:
    # The last phase that has started and is not empty (a 0% phase is skipped).
    pos = min(max(pos, 0.0), 1.0)
    idx = len(scheds) - 1
    while idx > 0 and (pos < bounds[idx] or bounds[idx + 1] == bounds[idx]):
        idx -= 1
    return scheds[idx]((pos - bounds[idx]) / (bounds[idx + 1] - bounds[idx]))


def combine_scheds(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Schedule:
    """Run scheds[k] over the fraction pcts[k] of training, each seeing its own 0..1."""
    if len(pcts) != len(scheds) or not pcts:
        raise FitVisionError("combine_scheds needs one fraction per schedule")
    if any(p < 0 for p in pcts) or not math.isclose(sum(pcts), 1.0, abs_tol=1e-9):
        raise FitVisionError(f"schedule fractions must be >= 0 and sum to 1, got {list(pcts)}")
    bounds = [0.0]
    for p in pcts:
        bounds.append(bounds[-1] + p)
    bounds[-1] = 1.0
    return partial(_combined, bounds, list(scheds))


def cosine_warmup(peak: float, pct_warmup: float, start: float = 0.0, end: float = 0.0) -> Schedule:
    """Linear warm-up from start to peak over pct_warmup of training, then cosine to end."""
    return combine_scheds([pct_warmup, 1 - pct_warmup], [sched_lin(start, peak), sched_cos(peak, end)])


def one_cycle(
    max_lr: float,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
    total_steps: int | None = None,
) -> dict[str, Schedule]:
    """The 1cycle policy: lr rises from max_lr/div_factor to max_lr (cosine) over pct_start of
    training, then falls to max_lr/div_factor/final_div_factor; momentum moves the other way
    (moms[0] -> moms[1] -> moms[2]), since a high lr with high momentum overshoots.

    With total_steps, the phase boundary is torch's OneCycleLR's (batch pct_start*n - 1 of
    n), so that evaluating at step_pos(i, n) gives its values to rounding error."""
    if not 0 < pct_start < 1:
        raise FitVisionError(f"pct_start must be between 0 and 1, got {pct_start}")
    initial = max_lr / div_factor
    pct = pct_start
    if total_steps is not None and total_steps > 1:
        pct = (pct_start * total_steps - 1) / (total_steps - 1)
    down_lr, down_mom = sched_cos(max_lr, initial / final_div_factor), sched_cos(moms[1], moms[2])
    if pct < 0:  # pct_start * n < 1: in torch the warm-up ends before batch 0, already on the way down
        return {"lr": partial(_from, pct, down_lr), "mom": partial(_from, pct, down_mom)}
    phases = [pct, 1 - pct]
    lr = combine_scheds(phases, [sched_cos(initial, max_lr), down_lr])
    mom = combine_scheds(phases, [sched_cos(moms[0], moms[1]), down_mom])
    return {"lr": lr, "mom": mom}


def _from(start: float, sched: Schedule, pos: float) -> float:
    """sched over positions start..1 (start < 0: the run begins part-way through it)."""
    return sched((pos - start) / (1 - start))


def one_cycle_linear(max_lr: float, pct_start: float, div_factor: float, final_div_factor: float) -> Schedule:
    """A triangle: linear from max_lr/div_factor up to max_lr over pct_start, then linear down to
    max_lr/div_factor/final_div_factor. Short runs (airbench) do better with it than with cosine
    phases, which linger near the peak and the floor."""
    initial = max_lr / div_factor
    return combine_scheds([pct_start, 1 - pct_start],
                          [sched_lin(initial, max_lr), sched_lin(max_lr, initial / final_div_factor)])


def flat_cos(lr: float, pct_flat: float, end: float = 0.0) -> Schedule:
    """Constant at lr for pct_flat of training, then cosine down to end (fastai's fit_flat_cos,
    used with Ranger on the Imagenette leaderboard). No warm-up: an optimizer with its own
    (RAdam's rectification, Adam's bias correction) needs none."""
    return combine_scheds([pct_flat, 1 - pct_flat], [sched_const(lr), sched_cos(lr, end)])


def create_schedule(cfg: Any, total_steps: int | None = None) -> dict[str, Schedule | None]:
    """{"lr": fn, "mom": fn or None} for a fitvision.config.TrainConfig (cfg.sched, cfg.lr,
    cfg.pct_start, cfg.div_factor, cfg.final_div_factor, cfg.epochs). Pass the run's number of
    batches as total_steps for one_cycle to match torch's OneCycleLR exactly."""
    name, lr = cfg.sched, cfg.lr
    if name == "one_cycle":
        return dict(one_cycle(lr, cfg.pct_start, cfg.div_factor, cfg.final_div_factor, total_steps=total_steps))
    if name == "one_cycle_linear":
        fn = one_cycle_linear(lr, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    elif name == "cosine":
        fn = sched_cos(lr, 0.0)
    elif name == "cosine_warmup":
        fn = cosine_warmup(lr, cfg.pct_start, start=lr / cfg.div_factor, end=0.0)
    elif name == "flat_cos":  # pct_start is the flat part here
        fn = flat_cos(lr, cfg.pct_start, end=lr / cfg.div_factor / cfg.final_div_factor)
    elif name == "linear":
        fn = sched_lin(lr, 0.0)
    elif name == "constant":
        fn = sched_const(lr)
    elif name == "step":
        fn = sched_step(lr, STEP_EPOCHS, STEP_GAMMA, cfg.epochs)
    elif name == "exponential":
        fn = sched_exp(lr, lr / cfg.div_factor)
    else:
        raise FitVisionError(f"unknown schedule '{name}' (valid schedules: {', '.join(SCHEDULES)})")
    return {"lr": fn, "mom": None}
