"""A synthetic run directory for report and CLI tests: every file train_run writes, minus the training.

Used by test_report.py, test_report_browser.py and test_cli_errors.py so they stay fast and do not
depend on the slow training path.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_fake_run(run: Path, n_valid: int = 200, data: str = "cifar10", classes=CLASSES, seed: int = 0) -> Path:
    """Write history.csv, batches.csv, preds.npz, model.json, config.json, summary.json (no weights)."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = len(classes)
    with open(run / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"])
        for e in range(1, 5):
            w.writerow([e, 2.0 / e, 2.2 / e + 0.1, 0.4 + 0.1 * e, 0.01 * (1 - e / 4), 12.5])
    with open(run / "batches.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "lr", "mom", "loss"])
        for s in range(40):
            w.writerow([s, s // 10, 0.01 * min(s / 10, 1) * (1 - max(0, s - 10) / 30), 0.9, 2.0 * np.exp(-s / 20)])
    targets = rng.integers(0, k, n_valid)
    probs = rng.dirichlet(np.ones(k) * 0.3, n_valid).astype(np.float32)
    probs[np.arange(n_valid)[: n_valid * 3 // 4], targets[: n_valid * 3 // 4]] += 3.0
    probs /= probs.sum(1, keepdims=True)
    indices = rng.permutation(n_valid * 2)[:n_valid].astype(np.int64)  # a subset of a larger split
    np.savez(run / "preds.npz", probs=probs, targets=targets.astype(np.int64), indices=indices)
    meta = {"model": "resnet9", "model_kwargs": {"num_classes": k, "width": 0.25}, "classes": list(classes),
            "mean": [0.49, 0.48, 0.45], "std": [0.2, 0.2, 0.2], "input_size": [32, 32], "storage_size": 160,
            "fitvision_version": "0.1.0"}
    (run / "model.json").write_text(json.dumps(meta, indent=2))
    config = {"data": data, "seed": seed, "valid_pct": 0.0, "valid_limit": n_valid, "model": "resnet9",
              "epochs": 4, "bs": 400, "lr": 0.01, "opt": "adam"}
    (run / "config.json").write_text(json.dumps(config, indent=2))
    summary = {"val_acc": float((probs.argmax(1) == targets).mean()), "val_loss": 0.8123, "epochs": 4,
               "train_seconds": 50.0, "train_images_per_second": 1638.4, "device": "cpu", "model": "resnet9",
               "params": 6575370, "dataset": data, "num_train": 5000, "num_valid": n_valid, "seed": seed}
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


def fake_dataset(n: int, seed: int = 0) -> SimpleNamespace:
    """Stands in for dataset.Dataset where only valid_x/valid_y are read: each image a flat colour."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    return SimpleNamespace(valid_x=np.broadcast_to(colours, (n, 32, 32, 3)).copy(), valid_y=np.zeros(n, np.int64))
