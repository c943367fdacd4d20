"""Preemption: a SIGTERM stops a fit at the end of a step, with a checkpoint to resume from.

Schedulers and clouds (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they
kill. By default Python dies at once and the work since the last checkpoint is lost. Here the
signal only raises a flag while the fit runs; the ``StopOnSignal`` hook, last in the list,
sees it when the step in progress ends, writes a checkpoint (the epoch-end checkpoint where the
epoch has just ended) and raises ``errors.Terminated``. Before the fit (decoding, model
building) there is nothing to save: the signal raises Terminated at once, and the ``finally``
blocks of that work remove what it had half written.

    hook = StopOnSignal(learn, run_dir / CHECKPOINT)
    learn.hooks.append(hook)
    with catch_sigterm(hook):
        learn.fit(...)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from fitvision.errors import Terminated
from fitvision.train.hooks import Hook, TrainState


class StopOnSignal(Hook):
    """Stops the fit after the step in progress once ``signum`` is set; must come after the
    Checkpointer, whose epoch-end checkpoint it relies on."""

    def __init__(self, learner, path: str | Path):
        self.learner, self.path = learner, Path(path)
        self.signum: int | None = None  # set by the signal handler
        self.fitting = False

    def on_fit_start(self, state: TrainState) -> None:
        self.fitting = True

    def on_batch_end(self, state: TrainState) -> None:
        # At an epoch's last batch, let the epoch end: its evaluation and checkpoint follow.
        if self.signum is not None and state.batch < state.batches_this_epoch and not state.done:
            self.learner.save_checkpoint(self.path)
            self._stop(state)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.signum is not None and not state.done:  # (a finished fit just writes its results)
            self._stop(state)

    def on_fit_end(self, state: TrainState) -> None:
        self.fitting = False

    def _stop(self, state: TrainState) -> None:
        raise Terminated(f"stopped by {signal.Signals(self.signum).name} at epoch {state.epoch}, step "
                         f"{state.step} of {state.total_steps}; checkpoint written", self.signum)


@contextlib.contextmanager
def catch_sigterm(hook: StopOnSignal) -> Iterator[None]:
    """While the block runs, SIGTERM sets ``hook.signum`` during the fit and raises Terminated
    outside it. Signal handlers belong to the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        if hook.fitting:
            hook.signum = signum
        else:
            raise Terminated(f"stopped by {signal.Signals(signum).name} before training started", signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
