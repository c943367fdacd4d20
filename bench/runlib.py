"""One `fitvision train` process and what it measured: shared by bench/ablations.py and bench/seeds.py."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def train_run(flags: list[str], out: Path) -> dict:
    """Run `fitvision train FLAGS --out OUT` (a fresh OUT); {rc, error} or {rc, test_acc, train_acc,
    train_seconds, wall_seconds, load_before}: summary.json's val_acc, the last epoch's train_acc
    from history.csv, the run's own training time and the whole process's wall time."""
    if out.exists():
        shutil.rmtree(out)
    load = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fitvision", "train", *flags, "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode:
        return {"rc": proc.returncode, "error": proc.stderr.strip().splitlines()[-1:] or ""}
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "history.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return {"rc": 0, "test_acc": summary["val_acc"],
            "train_acc": float(last["train_acc"]) if last.get("train_acc") else None,
            "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 1), "load_before": load}


def record(path: Path, result: dict) -> None:
    """Append one result to a results.jsonl (a finished run is never run again) and print it."""
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (bench/speed.py keeps its own copy: a test
    loads that file alone, without bench/ on the import path)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def beside_busy_process(busy: bool = True):
    """Run the body beside `python -c "while True: pass"` (one core taken), or alone if not busy."""
    if not busy:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # the competitor is running before the measurement starts
        yield
    finally:
        hog.kill()
        hog.wait()
