"""One trial: its parameters from the sampler, one training run in OUT/trial-NNN reporting each
epoch's val_acc to the pruner, and its outcome told to the study.

Outcomes: "ok" (val_acc from summary.json), "pruned" (the pruner stopped it after an epoch; the
run directory keeps the epochs it trained), "failed" (a bad value: NaN loss, out of memory, any
FitVisionError; the search goes on). An interruption gives the trial back to the queue; a bug
fails the trial and is raised.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError
from fitvision.logs import logger
from fitvision.train.hooks import Hook, TrainState
from fitvision.tune.claim import give_back, heartbeat
from fitvision.tune.space import Dim, format_params, suggest

Train = Callable[[TrainConfig, list], Any]  # (cfg, hooks) -> the finished run directory


class Pruned(Exception):
    """Raised from inside the training run by PruneHook: the trial stops after this epoch."""

    def __init__(self, epoch: int, val_acc: float):
        super().__init__(f"pruned after epoch {epoch} (val_acc {val_acc:.4f})")
        self.epoch, self.val_acc = epoch, val_acc


class PruneHook(Hook):
    """Reports each epoch's val_acc to the trial and stops the run when the pruner says so.

    The last epoch is reported but never pruned: the run is finished, its result is worth more
    than the time pruning would save (none)."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1]
        epoch, acc = int(row["epoch"]), float(row["val_acc"])
        if not math.isfinite(acc):
            return  # a NaN loss ends the run with its own message
        with warnings.catch_warnings():  # a resumed trial may report an epoch again: optuna keeps the first
            warnings.simplefilter("ignore")
            self.trial.report(acc, epoch)
        if not state.done and self.trial.should_prune():
            raise Pruned(epoch, acc)


def default_train(cfg: TrainConfig, hooks: list) -> Path:
    from fitvision.train.run import train_run

    return train_run(cfg, hooks=hooks)


def run_trial(trial, search: TrainConfig, space: dict[str, Dim], out: Path, train: Train, label: str) -> None:
    """Train the trial's configuration and tell the study how it went."""
    study = trial.study  # (this trial's own study object: see claim.next_trial)
    params = suggest(trial, space)
    slot = int(trial.user_attrs["slot"])
    cfg = _continued(replace(search, **params, out=str(out / f"trial-{slot:03d}")))
    logger.info(f"trial {label}: {format_params(params)}" + (" (resuming)" if cfg.resume else ""))
    start = time.perf_counter()
    try:
        with heartbeat(trial):
            outcome = _finished_run(cfg) or _train(trial, cfg, train)
    except KeyboardInterrupt:
        give_back(trial)  # whoever takes it next resumes its run directory
        raise
    except BaseException as e:  # a bug: recorded, so a rerun does not run into it again, and raised
        _tell(study, trial, {"status": "failed", "error": f"{type(e).__name__}: {e}", "val_acc": math.nan,
                              "seconds": round(time.perf_counter() - start, 2)})
        raise
    outcome.setdefault("seconds", round(time.perf_counter() - start, 2))
    _tell(study, trial, outcome)
    logger.info(f"  -> {outcome['status']} val_acc {outcome['val_acc']:.4f} in {outcome['seconds']:.1f}s")


def _train(trial, cfg: TrainConfig, train: Train) -> dict[str, Any]:
    try:
        return {"status": "ok", "val_acc": _read_val_acc(train(cfg, [PruneHook(trial)])), "error": ""}
    except Pruned as e:
        return {"status": "pruned", "val_acc": e.val_acc, "error": str(e)}
    except FitVisionError as e:
        return {"status": "failed", "val_acc": math.nan, "error": str(e)}
    except Exception as e:  # OOM is recoverable for the next trial; anything else is a bug
        if not _is_oom(e):
            raise
        _free_device_memory()
        return {"status": "failed", "val_acc": math.nan, "error": f"out of memory: {str(e).splitlines()[0]}"}


def _tell(study, trial, outcome: dict[str, Any]) -> None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        trial.set_user_attr("seconds", outcome["seconds"])
        trial.set_user_attr("error", outcome["error"])
    except UpdateFinishedTrialError:  # its heartbeat stopped long enough for another worker to retry it
        logger.warning(f"trial {trial.number} was handed to another worker meanwhile; this result is dropped")
        return
    if outcome["status"] == "ok":
        study.tell(trial, outcome["val_acc"], skip_if_finished=True)
    else:
        state = TrialState.PRUNED if outcome["status"] == "pruned" else TrialState.FAIL
        study.tell(trial, state=state, skip_if_finished=True)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _read_val_acc(run_dir: Path) -> float:
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    acc = float(summary["val_acc"])
    if not math.isfinite(acc):
        raise FitVisionError(f"validation accuracy is {acc}")
    return acc


def _continued(cfg: TrainConfig) -> TrainConfig:
    """A run left behind by an interrupted or killed worker: resume it if it saved a checkpoint."""
    from fitvision.train import checkpoint
    from fitvision.train.checkpoint import CHECKPOINT

    return replace(cfg, resume=True) if checkpoint.exists(Path(cfg.out) / CHECKPOINT) else cfg


def _finished_run(cfg: TrainConfig) -> dict[str, Any] | None:
    """The outcome of a run that finished just before its worker stopped, before the study heard
    of it; None if it has not finished."""
    summary = Path(cfg.out) / "summary.json"
    if not summary.is_file():
        return None
    seconds = float(json.loads(summary.read_text()).get("train_seconds", 0.0))
    try:
        return {"status": "ok", "val_acc": _read_val_acc(Path(cfg.out)), "seconds": seconds, "error": ""}
    except FitVisionError as e:
        return {"status": "failed", "val_acc": math.nan, "seconds": seconds, "error": str(e)}


def retrain(search: TrainConfig, params: dict[str, Any], out: Path, train: Train) -> dict[str, Any]:
    """The best configuration on all the training data; its validation set is the test set, seen once."""
    cfg = _continued(replace(search, **params, valid_pct=0.0, out=str(out / "retrain"), resume=False))
    run_dir = cfg.out if _finished_run(cfg) else train(cfg, [])
    return {"retrain_run": str(run_dir), "test_acc": _read_val_acc(Path(run_dir))}
