"""The run directory: made only once the setup works, tables after every epoch, results at the end.

A run directory holds config.json, history.csv, batches.csv, model.safetensors + model.json,
checkpoint.pt, preds.npz, summary.json, plots/ and report.html (docs/internals.md). Every file is
written atomically (fitvision.files), so a crash leaves the previous version, never half of one;
train.log, the run's timestamped log (fitvision.logs.run_log), is appended to instead.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fitvision.config import TrainConfig, updated

LOG = "train.log"
from fitvision.errors import FitVisionError
from fitvision.files import atomic_write_bytes, atomic_write_text, check_writable, remove_leftovers, write_json
from fitvision.train import checkpoint
from fitvision.train.checkpoint import CHECKPOINT
from fitvision.train.evaluate import loss_and_accuracy
from fitvision.train.hooks import Hook, TrainState

# train_acc last (blank when off): the columns before it are DESIGN.md's, in its order
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "train_acc")
BATCH_COLUMNS = ("step", "epoch", "lr", "mom", "loss")


def default_out(cfg: TrainConfig, kind: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{kind}{cfg.model}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, Path]:
    """The run directory, checked but not yet created (``create`` does that once the setup has
    worked, so a failed start leaves no half-made run behind); on --resume the run's own
    config.json replaces cfg. A run directory that cannot be written fails here, before any work."""
    if cfg.resume:
        if not cfg.out:
            raise FitVisionError("--resume needs --out RUN: the run directory to continue")
        run_dir = Path(cfg.out)
        if not checkpoint.exists(run_dir / CHECKPOINT):
            raise FitVisionError(f"cannot resume: {run_dir / CHECKPOINT} does not exist")
        check_writable(run_dir, "the run directory")
        return updated(TrainConfig(), {**_saved_config(run_dir), "resume": True, "out": str(run_dir)}), run_dir
    run_dir = Path(cfg.out) if cfg.out else default_out(cfg)
    if checkpoint.exists(run_dir / CHECKPOINT) or (run_dir / "model.json").exists():
        raise FitVisionError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise FitVisionError(f"--out {run_dir} is a file, not a folder for the run")
    check_writable(run_dir, "--out")
    return dataclasses.replace(cfg, out=str(run_dir)), run_dir


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The settings a run was started with, from its config.json, or one line saying what is wrong."""
    path = run_dir / "config.json"
    advice = f"to train on from its weights, start a new run with --init-from {run_dir}"
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FitVisionError(f"cannot resume: {path} is missing (it holds the run's settings); {advice}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FitVisionError(f"cannot resume: {path} is unreadable or corrupt ({e}); {advice}") from None
    if not isinstance(saved, dict):
        raise FitVisionError(f"cannot resume: {path} does not hold a table of settings; {advice}")
    return saved


def create(cfg: TrainConfig, run_dir: Path) -> None:
    """Make the run directory (a new run) and remove what killed runs left in it (temporary files
    of dead processes, fitvision.files.remove_leftovers)."""
    if not cfg.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
    for folder in (run_dir, run_dir / "plots"):
        remove_leftovers(folder)


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    atomic_write_text(path, buf.getvalue())


def write_tables(run_dir: Path, state: TrainState) -> None:
    write_csv(run_dir / "history.csv", HISTORY_COLUMNS, state.history)
    write_csv(run_dir / "batches.csv", BATCH_COLUMNS, state.batches)


class RunTables(Hook):
    """history.csv and batches.csv after every epoch, so a running (or crashed) run can be inspected."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, state: TrainState) -> None:
        write_tables(self.run_dir, state)


def epochs_done(state: TrainState) -> float | int:
    epochs = round(state.step / max(state.steps_per_epoch, 1), 4)
    if state.epochs and state.total_steps != round(state.epochs * state.steps_per_epoch):
        # hardest-first selection shortened some epochs: the whole fit, or those finished and the share
        # of the one in progress
        epochs = round(state.epochs if state.step >= state.total_steps else
                       state.epoch + state.batch / max(state.epoch_steps, 1), 4)
    return int(epochs) if epochs == int(epochs) else epochs


def write_results(run_dir: Path, cfg: TrainConfig, learn, data, meta: dict[str, Any], params: int) -> dict[str, Any]:
    """Weights, tables, predictions and summary of a finished fit; returns the summary."""
    from fitvision.train.modelfile import save_model

    state = learn.state
    save_model(run_dir, learn.eval_module(), meta)
    write_tables(run_dir, state)
    # The last epoch's full evaluation when this fit ran it, else (a resumed finished run) anew.
    log_probs, targets = learn.final_preds or learn.get_log_preds(tta=cfg.tta)
    buf = io.BytesIO()
    np.savez(buf, probs=log_probs.exp().numpy().astype(np.float32), targets=targets.numpy().astype(np.int64),
             indices=np.asarray(data.valid_indices, dtype=np.int64))
    atomic_write_bytes(run_dir / "preds.npz", buf.getvalue())
    train_time = sum(row["train_seconds"] for row in state.history)
    summary = {
        **loss_and_accuracy(log_probs, targets),
        "epochs": epochs_done(state),
        "train_seconds": round(sum(row["seconds"] for row in state.history), 3),
        "train_images_per_second": round(sum(row["images"] for row in state.history) / max(train_time, 1e-9), 1),
        "device": str(learn.device),
        "model": cfg.model,
        "params": params,
        "dataset": data.name,
        "num_train": data.num_train,
        "num_valid": int(len(targets)),
        "seed": cfg.seed,
        "precision": learn.precision,
        "tta": cfg.tta,
        "recipe": cfg.recipe,
        "stopped_early": state.stop,
    }
    write_json(run_dir / "summary.json", summary)
    return summary
