"""Experiment tracking, each an optional extra and off unless asked: TensorBoard (``--tensorboard``)
and MLflow (``--mlflow [URI]``).

A tracker is a Hook (per-batch and per-epoch values as training goes) with ``finish`` (after the
run directory is complete: the final figures, images and files) and ``close`` (an interrupted or
failed run). Rank 0 alone tracks. What each writes:

- TensorBoard, under RUN/tensorboard/: ``batch/loss``, ``batch/lr``, ``batch/momentum`` per step;
  ``epoch/train_loss``, ``epoch/val_loss``, ``epoch/val_acc`` (and any other history column) per
  epoch; at the end the confusion matrix and the sample predictions (the report's own images) and
  the hyperparameters with the final metrics (the HParams tab, RUN/tensorboard/hparams).
- MLflow, in experiment "fitvision": every config field as a parameter, the epoch metrics per
  epoch, the final metrics, and the run directory as artifacts (checkpoints left out). The run id is
  kept in RUN/mlflow.json, so a resumed run logs on into the same MLflow run.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from fitvision.errors import FitVisionError
from fitvision.train.hooks import Hook, TrainState

EPOCH_METRICS_SKIPPED = ("epoch", "seconds", "train_seconds", "images")
MLFLOW_DEFAULT_DB = "mlflow.db"  # in the working folder: MLflow 3's own default store (its file store is retired)


def check_available(cfg) -> None:
    """The extras a config asks for are installed: a usage error before any work, not after it."""
    if cfg.tensorboard and not _importable("tensorboard"):
        raise FitVisionError("--tensorboard needs TensorBoard: pip install tensorboard (or 'fitvision[tensorboard]')")
    if cfg.mlflow and not _importable("mlflow"):
        raise FitVisionError("--mlflow needs MLflow: pip install mlflow-skinny (or 'fitvision[mlflow]')")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def create_trackers(cfg, run_dir: Path) -> list[Tracker]:
    trackers: list[Tracker] = []
    if cfg.tensorboard:
        trackers.append(TensorBoardTracker(run_dir / "tensorboard", cfg))
    if cfg.mlflow:
        trackers.append(MLflowTracker(cfg.mlflow, run_dir, cfg))
    return trackers


def _epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in EPOCH_METRICS_SKIPPED and math.isfinite(float(v))}


class Tracker(Hook):
    def finish(self, run_dir: Path, summary: dict[str, Any]) -> None:
        pass

    def close(self, status: str = "FAILED") -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path, cfg):
        self.log_dir, self.cfg = Path(log_dir), cfg
        self.writer = None
        self._batches_written = 0

    def on_fit_start(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        # a resumed run goes on after what the checkpoint holds (earlier steps are in earlier files)
        self._batches_written = len(state.batches)

    def on_epoch_end(self, state: TrainState) -> None:
        for b in state.batches[self._batches_written:]:  # losses reach the host in groups: write them here
            self.writer.add_scalar("batch/loss", b["loss"], b["step"])
            self.writer.add_scalar("batch/lr", b["lr"], b["step"])
            if b.get("mom") is not None and math.isfinite(b["mom"]):
                self.writer.add_scalar("batch/momentum", b["mom"], b["step"])
        self._batches_written = len(state.batches)
        row = state.history[-1]
        for name, value in _epoch_metrics(row).items():
            self.writer.add_scalar(f"epoch/{name}", value, int(row["epoch"]))
        self.writer.flush()

    def finish(self, run_dir: Path, summary: dict[str, Any]) -> None:
        import numpy as np
        from PIL import Image

        for name, tag in (("confusion.png", "confusion_matrix"), ("mistakes.png", "sample_predictions")):
            path = run_dir / "plots" / name
            if path.is_file():
                with Image.open(path) as im:
                    self.writer.add_image(tag, np.asarray(im.convert("RGB")), dataformats="HWC")
        params = {k: v for k, v in self.cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        final = {f"final/{k}": float(summary[k]) for k in ("val_acc", "val_loss") if k in summary}
        self.writer.add_hparams(params, final, run_name="hparams")
        self.close()

    def close(self, status: str = "FAILED") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker(Tracker):
    def __init__(self, uri: str, run_dir: Path, cfg):
        if uri == "default":  # a relative sqlite path would name another database from another folder
            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(MLFLOW_DEFAULT_DB).resolve()}"
        self.uri = uri
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.client, self.run_id = None, None

    def on_fit_start(self, state: TrainState) -> None:
        from mlflow.tracking import MlflowClient

        from fitvision.files import write_json
        from fitvision.train.modelfile import read_json

        # MLflow's and alembic's info lines (creating tables, migrations) are not this run's news
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
        self.client = MlflowClient(tracking_uri=self.uri)
        record = self.run_dir / "mlflow.json"
        known = read_json(record) if record.is_file() else {}
        if known.get("tracking_uri") == self.uri and known.get("run_id"):  # a resumed run: the same MLflow run
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("fitvision")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("fitvision")
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"fitvision.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        write_json(record, {"tracking_uri": self.uri, "run_id": self.run_id})
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in self.cfg.to_dict().items()]
        self.client.log_batch(self.run_id, params=params)

    def on_epoch_end(self, state: TrainState) -> None:
        import time

        from mlflow.entities import Metric

        row, now = state.history[-1], int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["epoch"])) for k, v in _epoch_metrics(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: Path, summary: dict[str, Any]) -> None:
        for key in ("val_acc", "val_loss", "train_seconds", "train_images_per_second"):
            if isinstance(summary.get(key), (int, float)):
                self.client.log_metric(self.run_id, f"final_{key}", float(summary[key]))
        for path in sorted(run_dir.rglob("*")):  # the run directory but its checkpoints (resume state only)
            if path.is_file() and not path.name.startswith((".", "checkpoint")):
                parent = path.parent.relative_to(run_dir).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        self.close("FINISHED")

    def close(self, status: str = "FAILED") -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.client = None
