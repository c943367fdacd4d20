"""The few hooks the training loop calls, and the state they read.

Four events, called in list order: ``on_fit_start``, ``on_batch_end``, ``on_epoch_end``,
``on_fit_end``. Each receives the TrainState; a hook that needs more (the checkpointer needs
the learner) takes it in its constructor, so every dependency is visible where it is built.
A hook stops training by setting ``state.stop``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fitvision.logs import file_logger


@dataclass
class TrainState:
    steps_per_epoch: int = 0
    total_steps: int = 0
    step: int = 0  # optimizer steps done in this fit (the schedule position is step / total_steps)
    epoch: int = 0  # the epoch in progress (0-based, as in the seed's epoch lines)
    batch: int = 0  # batches done in the epoch in progress
    history: list[dict[str, float]] = field(default_factory=list)  # one row per finished epoch
    batches: list[dict[str, float]] = field(default_factory=list)  # step, epoch, lr, mom, loss
    epoch_steps: int = 0  # batches in the epoch in progress: steps_per_epoch, or fewer when the loader selects
    epochs: float = 0.0  # the fit's epochs as asked (0: total_steps / steps_per_epoch)
    epoch_images: int = 0  # images trained so far in the epoch in progress
    epoch_train_seconds: float = 0.0  # pure training time in the epoch in progress
    epoch_seconds: float = 0.0  # wall time of the epoch in progress, evaluation included
    stop: bool = False
    stop_reason: str = ""

    @property
    def done(self) -> bool:
        return self.stop or self.step >= self.total_steps

    @property
    def batches_this_epoch(self) -> int:
        """The epoch in progress's batch count: steps_per_epoch, or fewer when the loader selects."""
        return self.epoch_steps or self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


class Hook:
    """Base class: override the events you need."""

    def on_fit_start(self, state: TrainState) -> None:
        pass

    def on_batch_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_fit_end(self, state: TrainState) -> None:
        pass


# The per-epoch table: a header once, then a row per epoch, the same on a terminal, in a log file
# and in RUN/train.log. Epochs count from 1 here, as "of N" reads; history.csv keeps 0-based.
TABLE_HEADER = "epoch    train_loss  val_loss  val_acc  train_acc  lr         time   elapsed"


def epochs_planned(state: TrainState) -> int:
    return max(1, math.ceil(state.epochs or state.total_steps / max(state.steps_per_epoch, 1)))


def last_row(state: TrainState) -> str:
    """The table row of the epoch just finished, its elapsed time the sum of the epochs so far."""
    return epoch_row(state.history[-1], epochs_planned(state), sum(row["seconds"] for row in state.history))


def epoch_row(row: dict[str, float], epochs: int, elapsed: float) -> str:
    """One row of the epoch table: "   1/12      1.2345    1.1234   0.6123     0.6534   9.35e-03   0:25     0:25"."""
    count = f"{row['epoch'] + 1}/{epochs}"
    train_acc = f"{row['train_acc']:9.4f}" if "train_acc" in row else f"{'-':>9}"  # off: train_acc_limit 0
    return (f"{count:>7}  {row['train_loss']:10.4f}  {row['val_loss']:8.4f}  {row['val_acc']:7.4f}  {train_acc}  "
            f"{row['lr']:9.2e}  {format_seconds(row['seconds']):>5}  {format_seconds(elapsed):>8}")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress(Hook):
    """The epoch table (a header, then a row per epoch) and, within an epoch, a tqdm bar in a
    terminal or a plain line every ``interval`` seconds otherwise (logs, CI). One ETA, the whole
    run's, from the pace since this fit (or resume) started; the bar says when the epoch's
    training is done and its evaluation runs (with TTA on the last epoch if the run has it).
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0, bar: bool | None = None,
                 refresh: float = 0.1, tta: bool = False):
        self.stream = stream or sys.stdout
        self.interval = interval  # seconds between plain lines
        self.refresh = refresh  # seconds between bar redraws
        self.bar_mode = self.stream.isatty() if bar is None else bar
        self.tta = tta
        self._bar = None
        self._last_line = 0.0
        self._start_step = 0
        self._start_time = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_fit_start(self, state: TrainState) -> None:
        self._start_step, self._start_time = state.step, time.perf_counter()
        self._last_line = self._start_time
        self._print(TABLE_HEADER)

    def _where(self, state: TrainState) -> str:
        return f"epoch {state.epoch + 1}/{epochs_planned(state)}"

    def _evaluating(self, state: TrainState) -> str:
        last = state.done or state.step >= state.total_steps
        return "evaluating" + (" with TTA" if self.tta and last else "")

    def on_batch_end(self, state: TrainState) -> None:
        ips = state.epoch_images / max(state.epoch_train_seconds, 1e-9)
        steps = state.batches_this_epoch
        end = state.batch >= steps or state.done
        if self.bar_mode:
            self._update_bar(state, ips, end)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            loss = state.batches[-1]["loss"] if state.batches else float("nan")
            self._print(f"{self._where(state)} batch {state.batch}/{steps} loss {loss:.4f} "
                        f"{ips:,.0f} img/s eta {format_seconds(self._eta(state))}"
                        + (f"; {self._evaluating(state)}" if end else ""))

    def _update_bar(self, state: TrainState, ips: float, end: bool) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            # tqdm's own remaining time is the epoch's; the postfix has the run's, the one that counts
            self._bar = tqdm(total=state.batches_this_epoch, initial=state.batch - 1,
                             desc=self._where(state), leave=False, file=self.stream, dynamic_ncols=True, unit="batch",
                             mininterval=self.refresh, miniters=1,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        post = {"img/s": f"{ips:,.0f}", "run eta": format_seconds(self._eta(state))}
        if state.batches:
            post["loss"] = f"{state.batches[-1]['loss']:.4f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)  # redraws (postfix included) at most every `refresh` seconds
        if end:  # the evaluation runs next: say so rather than sit at 100%
            self._bar.set_description(f"{self._where(state)} {self._evaluating(state)}", refresh=True)

    def _eta(self, state: TrainState) -> float:
        """Remaining time of the whole fit, from the pace since this fit (or resume) started."""
        done = state.step - self._start_step
        if done <= 0:
            return 0.0
        pace = (time.perf_counter() - self._start_time) / done
        return pace * (state.total_steps - state.step)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, state: TrainState) -> None:
        self._close_bar()
        self._print(last_row(state))

    def on_fit_end(self, state: TrainState) -> None:
        self._close_bar()
        if state.stop_reason:
            self._print(state.stop_reason)


class EpochLog(Hook):
    """The epoch table into the run's log (fitvision.logs.run_log: RUN/train.log, timestamped),
    whether or not the terminal shows it."""

    def on_fit_start(self, state: TrainState) -> None:
        file_logger.info(TABLE_HEADER)

    def on_epoch_end(self, state: TrainState) -> None:
        file_logger.info(last_row(state))

    def on_fit_end(self, state: TrainState) -> None:
        if state.stop_reason:
            file_logger.info(state.stop_reason)


class TrainAccuracy(Hook):
    """Each epoch, the accuracy on a fixed set of training images seen as the validation sees
    them (no augmentation, no dropout, the EMA weights if any): history's ``train_acc``, whose gap
    to val_acc is the overfitting (seed 002). First among the hooks, so the table and files have it;
    its time is not in the epoch's ``seconds``."""

    def __init__(self, learner, loader):
        self.learner, self.loader = learner, loader

    def on_epoch_end(self, state: TrainState) -> None:
        state.history[-1]["train_acc"] = self.learner.validate(self.loader, tta=False)[1]


class EarlyStopping(Hook):
    """Stop when `monitor` has not improved for `patience` epochs.

    The best epoch is recomputed from the history each time, so the hook has no state of its
    own and a resumed run stops exactly where the uninterrupted one would. With one-cycle (or
    any schedule of the whole run) an early stop leaves the learning rate where it was: it never
    reaches the schedule's final low value, so the last epochs' annealing benefit is lost.
    """

    def __init__(self, patience: int, monitor: str = "val_loss"):
        if monitor not in ("val_loss", "val_acc"):
            raise ValueError(f"early stopping monitors val_loss or val_acc, not {monitor!r}")
        self.patience, self.monitor = patience, monitor

    def on_epoch_end(self, state: TrainState) -> None:
        values = [row[self.monitor] for row in state.history]
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]  # a NaN epoch is never the best
        if not finite:
            return
        pick = min if self.monitor == "val_loss" else max
        best_epoch = pick(finite, key=lambda i: values[i])  # the first of equal values, as list.index
        best = values[best_epoch]
        if len(values) - 1 - best_epoch >= self.patience:
            state.stop = True
            state.stop_reason = (f"early stop: {self.monitor} has not improved for {self.patience} epochs "
                                 f"(best {best:.4f} at epoch {state.history[best_epoch]['epoch']})")


class Checkpointer(Hook):
    """Write the resume checkpoint after every epoch, and every `every_batches` batches if > 0."""

    def __init__(self, learner, path: str | Path, every_batches: int = 0):
        self.learner, self.path, self.every_batches = learner, Path(path), every_batches

    def on_batch_end(self, state: TrainState) -> None:
        mid_epoch = 0 < state.batch < state.batches_this_epoch
        if self.every_batches and mid_epoch and state.step % self.every_batches == 0:
            self.learner.save_checkpoint(self.path)

    def on_epoch_end(self, state: TrainState) -> None:
        self.learner.save_checkpoint(self.path)


class Phases(Hook):
    """Transfer-learning phases (fitvision.train.transfer.fine_tune_phases), switched at epoch ends.

    Each phase has ``epochs``, ``frozen`` (train the head only) and ``body_lr_mult``. The phase
    is derived from the epoch, never remembered, so a resumed run is in the right one; the
    schedule runs over the whole fit, across phases.
    """

    def __init__(self, learner, phases):
        self.learner, self.phases = learner, list(phases)

    def _apply(self, epoch: int) -> None:
        end = 0.0
        for phase in self.phases:
            end += phase.epochs
            if epoch < end or phase is self.phases[-1]:
                break
        if phase.frozen:
            self.learner.freeze()
        else:
            self.learner.unfreeze()
        self.learner.set_body_lr_mult(phase.body_lr_mult)

    def on_fit_start(self, state: TrainState) -> None:
        self._apply(state.epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        self._apply(state.epoch)


class FreezeAfter(Hook):
    """Stop training ``params`` once ``epochs`` epochs are done (e.g. SpeedNet's stem bias).

    Derived from the epoch, so a resumed run freezes them again. Frozen parameters get no
    gradient, so backpropagation also skips whatever only they needed (for a stem: the
    gradient of the first conv's input and of its activation).
    """

    def __init__(self, params, epochs: float):
        self.params, self.epochs = list(params), epochs

    def _apply(self, epoch: int) -> None:
        if epoch >= self.epochs:
            for p in self.params:
                p.requires_grad_(False)

    def on_fit_start(self, state: TrainState) -> None:
        self._apply(state.epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        self._apply(state.epoch)
