"""`fitvision train` and `fitvision lr-find`: from a TrainConfig to a run directory.

    cfg, why = resolve_config("auto")          # fitvision.recipes
    run_dir = train_run(cfg)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError, Terminated
from fitvision.logs import logger
from fitvision.optim.schedules import create_schedule
from fitvision.train import checkpoint, distributed, rundir
from fitvision.train.checkpoint import CHECKPOINT
from fitvision.train.device import keep_freed_memory, resolve_device
from fitvision.train.hooks import Checkpointer, EarlyStopping, Hook, Phases, format_seconds
from fitvision.train.preempt import StopOnSignal, catch_sigterm
from fitvision.train.seeding import seed_everything
from fitvision.train.setup import Setup, build, describe
from fitvision.train.transfer import fine_tune_phases


def train_run(cfg: TrainConfig, progress: bool = True, hooks: Sequence[Hook] = ()) -> Path:
    """Train as cfg says and write the run directory; returns its path.

    summary.json: train_seconds is the wall time of the epochs (training and per-epoch
    evaluation, not data loading or compile warm-up); train_images_per_second counts training
    time only. With --resume the run continues from checkpoint.pt exactly as it would have.
    ``progress``: the progress bar and the per-epoch lines. ``hooks``: more hooks, called after
    the run's own (a search's pruner reads each epoch's row there).
    """
    with distributed.joined(resolve_device(cfg.device).type) as world:  # under torchrun; else nothing
        return _train(cfg, world, progress, hooks)


def _train(cfg: TrainConfig, world: distributed.World, progress: bool, hooks: Sequence[Hook]) -> Path:
    from fitvision.report.html import write_report

    cfg, run_dir = _prepare(cfg, world)
    stop = StopOnSignal(None, run_dir / CHECKPOINT)
    try:
        # SIGTERM (preemption): a checkpoint at the end of the step, then stop. Under torchrun
        # the agent sends it to tear the group down when a peer dies: a checkpoint then needs the
        # dead peer, so the signal keeps its default there and a restart resumes the last one.
        with catch_sigterm(stop) if not world.distributed else contextlib.nullcontext():
            s = _fit(cfg, run_dir, stop, progress, hooks, world)
    except Terminated as e:  # say how to go on (the CLI prints it on its one line)
        raise Terminated(f"{e}; {_how_to_go_on(run_dir)}", e.signum) from None
    except KeyboardInterrupt:  # Ctrl-C
        raise KeyboardInterrupt(_how_to_go_on(run_dir)) from None
    if not world.is_main:  # rank 0 alone writes the results
        return run_dir
    learn = s.learn
    summary = rundir.write_results(run_dir, s.cfg, learn, s.data, s.meta, s.params)
    try:
        report = write_report(run_dir)
    except KeyboardInterrupt:  # the run itself is complete and written; only the plots and page are not
        raise KeyboardInterrupt(f"the run is complete, its report is not: fitvision report {run_dir} "
                                "rebuilds it") from None
    checkpoint.previous(run_dir / CHECKPOINT).unlink(missing_ok=True)  # kept against a bad write; the run is done
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


def _how_to_go_on(run_dir: Path) -> str:
    if checkpoint.exists(run_dir / CHECKPOINT):
        return f"continue with: fitvision train --resume --out {run_dir}"
    return f"no epoch finished, nothing to resume; train into {run_dir} again"


def _fit(cfg: TrainConfig, run_dir: Path, stop: StopOnSignal, progress: bool, hooks: Sequence[Hook],
         world: distributed.World) -> Setup:
    """Build, make the run directory and fit; returns the Setup, its Learner trained."""
    s = build(cfg, progress=progress)
    if world.rank:  # the model's init was the same on every rank; dropout's draws must not be
        seed_everything(cfg.seed + world.rank)
    if world.is_main:
        rundir.create(cfg, run_dir)
    learn, path = s.learn, run_dir / CHECKPOINT
    if learn.device.type == "cpu":
        keep_freed_memory()
    phases = fine_tune_phases(s.cfg)
    if len(phases) > 1 or phases[0].frozen or phases[0].body_lr_mult != 1.0:
        learn.hooks.append(Phases(learn, phases))
    if cfg.early_stop:
        learn.hooks.append(EarlyStopping(cfg.early_stop))
    stop.learner = learn
    tables = [rundir.RunTables(run_dir)] if world.is_main else []
    stops = [] if world.distributed else [stop]
    learn.hooks += [*tables, Checkpointer(learn, path, cfg.checkpoint_every), *stops, *hooks]
    for line in describe(s):
        logger.info(line)
    logger.info(f"run dir   {run_dir}" + (" (resuming)" if cfg.resume else ""))
    total = max(1, round(cfg.epochs * len(learn.train_dl)))
    learn.fit(cfg.epochs, create_schedule(s.cfg, total_steps=total), resume_from=path if cfg.resume else None)
    return s


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
