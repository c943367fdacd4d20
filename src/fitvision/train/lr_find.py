"""The learning-rate range test (Smith 2015; fastai's lr_find).

Train for up to `num_it` batches with the lr growing exponentially from start_lr to end_lr,
record the loss, stop once the smoothed loss runs away, then put everything back: a snapshot
(checkpoint.snapshot: weights, BatchNorm statistics, optimizer, EMA and lookahead state, RNG
and loader states) is restored exactly, so a fit after lr_find is the same fit as without it.
The sweep measures the optimizer alone: lookahead's averaging is left out of its steps.

The suggestion is the lr at the minimum of the smoothed loss, divided by 10: a minimum is not
moved by an early spike (a steepest-descent rule is: the drop after a spike looks steepest),
and a tenth of it sits on the descending part of the curve, where training makes progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fitvision.errors import FitVisionError
from fitvision.files import atomic_path
from fitvision.train.checkpoint import restore, snapshot


@dataclass
class LRFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw, per batch
    smoothed: list[float] = field(default_factory=list)  # debiased EMA of the losses
    diverged: bool = False
    lr_min: float = math.nan  # lr at the minimum of the smoothed loss
    suggestion: float = math.nan  # lr_min / 10


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(lr_min, suggestion): the lr at the smoothed loss's minimum, and a tenth of it."""
    finite = [(loss, lr) for lr, loss in zip(lrs, smoothed) if math.isfinite(loss)]
    if not finite:
        raise FitVisionError("lr_find recorded no finite loss; lower start_lr")
    _, lr_min = min(finite)
    return lr_min, lr_min / 10


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, beta: float = 0.98,
            stop_div: float = 4.0) -> LRFindResult:
    """Sweep the lr from start_lr to end_lr over num_it batches (looping over the data if needed);
    stop when the smoothed loss exceeds stop_div x its best. The learner is left as it was."""
    if not 0 < start_lr < end_lr:
        raise FitVisionError(f"lr_find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    result = LRFindResult()
    snap = snapshot(learn, copy_tensors=True)
    avg, best, epoch = 0.0, math.inf, 0
    try:
        learn.model.train()
        while len(result.lrs) < num_it and not result.diverged:
            learn.train_dl.set_epoch(epoch)
            for x, y in learn.train_dl:
                it = len(result.lrs)
                lr = start_lr * (end_lr / start_lr) ** (it / max(num_it - 1, 1))
                # no progress passed: lookahead, an averaging over a whole fit, stays out of the
                # sweep (with it the weights were pulled back to their average every step)
                loss = learn.train_step(x, y, {"lr": lr}).float().item()
                if not math.isfinite(loss):
                    result.diverged = True
                    break
                avg = beta * avg + (1 - beta) * loss
                smooth = avg / (1 - beta ** (it + 1))  # debiased: the early average isn't pulled to 0
                result.lrs.append(lr)
                result.losses.append(loss)
                result.smoothed.append(smooth)
                best = min(best, smooth)
                if smooth > stop_div * best:
                    result.diverged = True
                if result.diverged or len(result.lrs) >= num_it:
                    break
            epoch += 1
    finally:
        restore(learn, snap)
    result.lr_min, result.suggestion = suggest_lr(result.lrs, result.smoothed)
    return result


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Loss vs lr (log scale), raw and smoothed, with the minimum and the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
    ax.axvline(result.lr_min, color="C3", ls=":", label=f"minimum {result.lr_min:.2e}")
    ax.axvline(result.suggestion, color="C2", ls="--", label=f"suggestion {result.suggestion:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # keep the divergence from squashing the interesting part
        low, high = min(finite), max(finite[: max(len(finite) // 2, 1)])
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.3 * (high - low + 1e-9))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate finder")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:] or "png")
    return path
