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
    train_seconds, wall_seconds, load_before, gflops_before}: summary.json's val_acc, the last epoch's train_acc
    from history.csv, the run's own training time and the whole process's wall time."""
    if out.exists():
        shutil.rmtree(out)
    gflops = host_gflops()
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
            "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 1), "load_before": load,
            "gflops_before": gflops}


# A fixed amount of fp32 matrix multiplication on all cores, in its own process so this one keeps
# no thread pool. The load average cannot see a host that gives this VM's cores less (another
# tenant on their siblings): on 2026-12-06 the same runs took up to 2x longer an hour apart with
# nothing else running. This rate, taken before each run, says how fast the machine was.
_GEMM = """
import time, torch
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024); a @ b
n, start = 0, time.perf_counter()
while time.perf_counter() - start < 1.0:
    a @ b; n += 1
print(round(2 * 1024**3 * n / (time.perf_counter() - start) / 1e9, 1))
"""


def host_gflops() -> float | None:
    """The machine's fp32 matmul rate now, in GFLOP/s (about 2 s: torch's import and 1 s of work)."""
    proc = subprocess.run([sys.executable, "-c", _GEMM], capture_output=True, text=True)
    return float(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


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


def recipe_model(recipe: str):
    """A named recipe's network for 10 classes, freshly initialised (no data-dependent init)."""
    from fitvision.config import parse_model_options
    from fitvision.models import create_model
    from fitvision.recipes import RECIPES

    cfg = RECIPES[recipe]
    return create_model(cfg.model, num_classes=10, width=cfg.width, **parse_model_options(cfg.model_options))
