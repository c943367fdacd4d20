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


@dataclass
class TrainState:
    steps_per_epoch: int = 0
    total_steps: int = 0
    step: int = 0  # optimizer steps done in this fit (the schedule position is step / total_steps)
    epoch: int = 0  # the epoch in progress (0-based, as in the seed's epoch lines)
    batch: int = 0  # batches done in the epoch in progress
    history: list[dict[str, float]] = field(default_factory=list)  # one row per finished epoch
    batches: list[dict[str, float]] = field(default_factory=list)  # step, epoch, lr, mom, loss
    epoch_images: int = 0  # images trained so far in the epoch in progress
    epoch_train_seconds: float = 0.0  # pure training time in the epoch in progress
    epoch_seconds: float = 0.0  # wall time of the epoch in progress, evaluation included
    stop: bool = False
    stop_reason: str = ""

    @property
    def done(self) -> bool:
        return self.stop or self.step >= self.total_steps

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


def epoch_line(row: dict[str, float]) -> str:
    """The seed's per-epoch log line, exactly."""
    return (f"Epoch [{row['epoch']}], last_lr: {row['lr']:.5f}, train_loss: {row['train_loss']:.4f}, "
            f"val_loss: {row['val_loss']:.4f}, val_acc: {row['val_acc']:.4f}")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress(Hook):
    """A tqdm bar with images/s and ETA in a terminal; plain periodic lines otherwise (logs, CI).

    Prints the seed's epoch line after every epoch either way.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0, bar: bool | None = None,
                 refresh: float = 0.1):
        self.stream = stream or sys.stdout
        self.interval = interval  # seconds between plain lines
        self.refresh = refresh  # seconds between bar redraws
        self.bar_mode = self.stream.isatty() if bar is None else bar
        self._bar = None
        self._last_line = 0.0
        self._start_step = 0
        self._start_time = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        self._start_step, self._start_time = state.step, time.perf_counter()
        self._last_line = self._start_time

    def on_batch_end(self, state: TrainState) -> None:
        ips = state.epoch_images / max(state.epoch_train_seconds, 1e-9)
        if self.bar_mode:
            self._update_bar(state, ips)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            loss = state.batches[-1]["loss"] if state.batches else float("nan")
            print(f"epoch {state.epoch} batch {state.batch}/{state.steps_per_epoch} loss {loss:.4f} "
                  f"{ips:,.0f} img/s eta {format_seconds(self._eta(state))}", file=self.stream, flush=True)

    def _update_bar(self, state: TrainState, ips: float) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=state.steps_per_epoch, initial=state.batch - 1, desc=f"epoch {state.epoch}",
                             leave=False, file=self.stream, dynamic_ncols=True, unit="batch",
                             mininterval=self.refresh, miniters=1)
        post = {"img/s": f"{ips:,.0f}", "eta": format_seconds(self._eta(state))}
        if state.batches:
            post["loss"] = f"{state.batches[-1]['loss']:.4f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)  # redraws (postfix included) at most every `refresh` seconds

    def _eta(self, state: TrainState) -> float:
        """Remaining time of the whole fit, from the pace since this fit (or resume) started."""
        done = state.step - self._start_step
        if done <= 0:
            return 0.0
        pace = (time.perf_counter() - self._start_time) / done
        return pace * (state.total_steps - state.step)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        print(epoch_line(state.history[-1]), file=self.stream, flush=True)

    def on_fit_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if state.stop_reason:
            print(state.stop_reason, file=self.stream, flush=True)


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
        mid_epoch = 0 < state.batch < state.steps_per_epoch
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
