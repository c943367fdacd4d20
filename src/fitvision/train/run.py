"""`fitvision train` and `fitvision lr-find`: from a TrainConfig to a run directory.

    cfg, why = resolve_config("auto")          # fitvision.recipes
    run_dir = train_run(cfg)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from fitvision.config import TrainConfig
from fitvision.data.loader import fit_steps
from fitvision.errors import FitVisionError, Terminated
from fitvision.logs import file_logger, logger, run_log
from fitvision.optim.schedules import create_schedule
from fitvision.train import checkpoint, distributed, rundir
from fitvision.train.checkpoint import CHECKPOINT
from fitvision.train.device import keep_freed_memory, resolve_device, share_cpu
from fitvision.train.hooks import (Checkpointer, EarlyStopping, EpochLog, Hook, Phases, TrainAccuracy,
                                   format_seconds)
from fitvision.train.preempt import StopOnSignal, catch_sigterm
from fitvision.train.seeding import seed_everything
from fitvision.train.setup import Setup, build, describe
from fitvision.train.tracking import Tracker, create_trackers
from fitvision.train.transfer import fine_tune_phases


def train_run(cfg: TrainConfig, progress: bool = True, hooks: Sequence[Hook] = (), why: str = "") -> Path:
    """Train as cfg says and write the run directory; returns its path.

    summary.json: train_seconds is the wall time of the epochs (training and per-epoch
    evaluation, not data loading or compile warm-up); train_images_per_second counts training
    time only. With --resume the run continues from checkpoint.pt exactly as it would have.
    ``progress``: the progress bar and the per-epoch lines. ``hooks``: more hooks, called after
    the run's own (a search's pruner reads each epoch's row there). ``why``: the line that says
    where the settings came from (resolve_config's), for train.log; the CLI shows it as it starts.
    """
    with distributed.joined(resolve_device(cfg.device).type) as world:  # under torchrun; else nothing
        return _train(cfg, world, progress, hooks, why)


def _train(cfg: TrainConfig, world: distributed.World, progress: bool, hooks: Sequence[Hook], why: str) -> Path:
    cfg, run_dir = _prepare(cfg, world)
    with contextlib.ExitStack() as log:  # RUN/train.log from when the run directory exists to the end
        return _train_logged(cfg, run_dir, world, progress, hooks, log, why)


def _train_logged(cfg: TrainConfig, run_dir: Path, world: distributed.World, progress: bool,
                  hooks: Sequence[Hook], log: contextlib.ExitStack, why: str) -> Path:
    from fitvision.report.html import write_report

    stop = StopOnSignal(None, run_dir / CHECKPOINT)
    try:
        # SIGTERM (preemption): a checkpoint at the end of the step, then stop. Under torchrun
        # the agent sends it to tear the group down when a peer dies: a checkpoint then needs the
        # dead peer, so the signal keeps its default there and a restart resumes the last one.
        with catch_sigterm(stop) if not world.distributed else contextlib.nullcontext():
            s, trackers = _fit(cfg, run_dir, stop, progress, hooks, world, log, why)
    except Terminated as e:  # say how to go on (the CLI prints it on its one line)
        raise Terminated(f"{e}; {_how_to_go_on(run_dir)}", e.signum) from None
    except KeyboardInterrupt:  # Ctrl-C
        raise KeyboardInterrupt(_how_to_go_on(run_dir)) from None
    if not world.is_main:  # rank 0 alone writes the results
        return run_dir
    learn = s.learn
    logger.info("writing the weights, predictions and summary.json")
    summary = rundir.write_results(run_dir, s.cfg, learn, s.data, s.meta, s.params)
    logger.info("writing the plots and report.html")
    try:
        report = write_report(run_dir)
    except KeyboardInterrupt:  # the run itself is complete and written; only the plots and page are not
        raise KeyboardInterrupt(f"the run is complete, its report is not: fitvision report {run_dir} "
                                "rebuilds it") from None
    checkpoint.previous(run_dir / CHECKPOINT).unlink(missing_ok=True)  # kept against a bad write; the run is done
    for tracker in trackers:  # the complete run directory: final figures, images, artifacts
        tracker.finish(run_dir, summary)
    logger.info(f"done: val_acc {summary['val_acc']:.4f}, val_loss {summary['val_loss']:.4f} after "
                f"{summary['epochs']} epochs in {format_seconds(summary['train_seconds'])} "
                f"({summary['train_images_per_second']:,.0f} img/s); wrote {run_dir} ({Path(report).name})")
    return run_dir


def _prepare(cfg: TrainConfig, world: distributed.World) -> tuple[TrainConfig, Path]:
    """rundir.prepare on rank 0 (its run directory and checks, or its error) for every rank. A
    group torchrun restarted after a failure (--max-restarts) resumes from the run's checkpoint."""
    outcome: tuple[TrainConfig, Path] | FitVisionError | None = None
    if world.is_main:
        try:
            if distributed.max_restarts() and not cfg.out and not cfg.resume:
                raise FitVisionError("under torchrun --max-restarts, pass --out RUN, so that a restarted group "
                                     "resumes that run")
            if distributed.restart_count() and cfg.out and checkpoint.exists(Path(cfg.out) / CHECKPOINT):
                cfg = dataclasses.replace(cfg, resume=True)
            cfg, run_dir = rundir.prepare(cfg)
            distributed.check_batch(cfg.bs, world.size, cfg.accum)
            outcome = cfg, run_dir
        except FitVisionError as e:
            outcome = e
    if world.distributed:
        outcome = distributed.broadcast_object(outcome)
    if isinstance(outcome, FitVisionError):
        raise outcome
    cfg, run_dir = outcome
    if world.distributed:  # each rank on its own GPU
        cfg = dataclasses.replace(cfg, device=distributed.device_for(str(resolve_device(cfg.device)), world))
    return cfg, run_dir


def _end_on_exit(trackers: list[Tracker]):
    """An exit callback: a run that ends before its results ends its trackers' runs too (Ctrl-C
    and SIGTERM: KILLED, else FAILED); after ``finish`` there is nothing left to end."""
    def on_exit(kind, exc, tb) -> bool:
        status = "KILLED" if kind is not None and issubclass(kind, KeyboardInterrupt) else "FAILED"
        for tracker in trackers:
            tracker.close(status)
        return False  # the exception, if any, goes on
    return on_exit


def _how_to_go_on(run_dir: Path) -> str:
    if checkpoint.exists(run_dir / CHECKPOINT):
        return f"continue with: fitvision train --resume --out {run_dir}"
    return f"no epoch finished, nothing to resume; train into {run_dir} again"


def _fit(cfg: TrainConfig, run_dir: Path, stop: StopOnSignal, progress: bool, hooks: Sequence[Hook],
         world: distributed.World, log: contextlib.ExitStack, why: str) -> tuple[Setup, list[Tracker]]:
    """Build, make the run directory and fit; returns the Setup, its Learner trained, and the
    trackers (TensorBoard, MLflow) that still have the end of the run to record."""
    # a CPU shared with a busy process: fewer threads, chosen before any work (a resume keeps the
    # run's own count, from its checkpoint, so that it stays bit for bit)
    shared = share_cpu() if not world.distributed and not cfg.resume and resolve_device(cfg.device).type == "cpu" \
        else None
    s = build(cfg, progress=progress)
    if world.rank:  # the model's init was the same on every rank; dropout's draws must not be
        seed_everything(cfg.seed + world.rank)
    # config.json (and the trackers' parameters): as asked, but the device and precision as this
    # run resolved them (under torchrun each rank has its own GPU: the type, alike on every rank)
    device = s.learn.device
    as_run = dataclasses.replace(cfg, device=device.type if world.distributed else str(device),
                                 precision=s.learn.precision)
    if world.is_main:
        rundir.create(as_run, run_dir)
        log.enter_context(run_log(run_dir / rundir.LOG))
        if why:  # the terminal showed it before the data loaded; the log had not begun then
            file_logger.info(why)
    trackers = create_trackers(as_run, run_dir) if world.is_main else []
    log.push(_end_on_exit(trackers))
    learn, path = s.learn, run_dir / CHECKPOINT
    if learn.device.type == "cpu":
        keep_freed_memory()
    phases = fine_tune_phases(s.cfg)
    if len(phases) > 1 or phases[0].frozen or phases[0].body_lr_mult != 1.0:
        learn.hooks.append(Phases(learn, phases))
    if s.data.train_eval_dl is not None:
        learn.hooks.insert(0, TrainAccuracy(learn, s.data.train_eval_dl))
    if cfg.early_stop:
        learn.hooks.append(EarlyStopping(cfg.early_stop))
    stop.learner = learn
    tables = [rundir.RunTables(run_dir), EpochLog()] if world.is_main else []
    stops = [] if world.distributed else [stop]
    learn.hooks += [*tables, Checkpointer(learn, path, cfg.checkpoint_every), *stops, *trackers, *hooks]
    for line in describe(s):
        logger.info(line)
    if shared:
        logger.info(f"note      {shared}")
    logger.info(f"run dir   {run_dir}" + (" (resuming)" if cfg.resume else ""))
    total = fit_steps(learn.train_dl, cfg.epochs)
    learn.fit(cfg.epochs, create_schedule(s.cfg, total_steps=total), resume_from=path if cfg.resume else None)
    _check_finite(learn)
    return s, trackers


def _check_finite(learn) -> None:
    """A run whose final evaluation is NaN holds NaN weights (the training loss can stay finite when
    only weights the forward pass multiplies by zero padding went NaN): an error, not a result."""
    last = learn.state.history[-1] if learn.state.history else None
    if last is None or math.isfinite(last["val_loss"]):
        return
    bad = [name for name, p in learn.model.named_parameters() if not torch.isfinite(p).all()]
    where = f"NaN or inf in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else "no parameter is NaN"
    raise FitVisionError(f"the final evaluation's loss is {last['val_loss']} ({where}): the weights are not "
                         f"usable; train again with --precision fp32 or a lower --lr")


def lr_find_run(cfg: TrainConfig) -> Path:
    """The lr range test on cfg's data and model: writes lr_find.png and lr_find.csv, logs the suggestion."""
    from fitvision.train.lr_find import plot_lr_find

    if distributed.launched():
        raise FitVisionError("lr-find runs in one process: start it without torchrun")
    run_dir = Path(cfg.out) if cfg.out else rundir.default_out(cfg, kind="lr_find-")
    s = build(cfg, progress=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    for line in describe(s):
        logger.info(line)
    result = s.learn.lr_find()
    rows = [{"lr": lr, "loss": loss, "smoothed": sm} for lr, loss, sm in zip(result.lrs, result.losses, result.smoothed)]
    rundir.write_csv(run_dir / "lr_find.csv", ("lr", "loss", "smoothed"), rows)
    plot = plot_lr_find(result, run_dir / "lr_find.png")
    stop = "stopped when the loss diverged" if result.diverged else "no divergence within the sweep"
    logger.info(f"lr_find: {len(result.lrs)} batches, {stop}; loss minimum at lr {result.lr_min:.2e}")
    logger.info(f"suggested lr: {result.suggestion:.2e} (a tenth of the minimum); plot: {plot}")
    return run_dir
