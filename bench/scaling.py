"""Scaling on one machine: 1 process x all cores' threads against N processes (torchrun, gloo) x
1 thread each, the same recipe, seeds and data; one JSON line a run, then a summary line.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/scaling.py [--recipe cpu]
        [--seeds 0 1] [--nproc 2] [--out-dir runs/scaling] [-- EXTRA TRAIN FLAGS]

Each run is a fresh `fitvision train` command as a user runs it (`--nproc N` for the
multi-process runs), the two layouts alternating so that a drifting machine hurts both alike.
Reported per run: ``wall_seconds`` (the whole command), summary.json's ``train_seconds``,
``train_images_per_second`` and ``val_acc``, and ``seconds_to_target``: the epochs' time until
the per-epoch val_acc in history.csv first reaches ``--target`` (None if it never does). The
summary gives the mean and sample standard deviation per layout, and the ratios of N processes
over 1. The load average before each run is recorded: time only on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from speed import cpu_model, fill_cache, resolved_config  # noqa: E402  (bench/ is not a package)


def seconds_to_target(run: Path, target: float) -> float | None:
    elapsed = 0.0
    with open(run / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            elapsed += float(row["seconds"])
            if float(row["val_acc"]) >= target:
                return round(elapsed, 2)
    return None


def one_run(layout: str, nproc: int, seed: int, args, extra: list[str]) -> dict:
    run = Path(args.out_dir) / f"{layout}-seed{seed}"
    if run.exists():
        raise SystemExit(f"{run} exists: choose another --out-dir")
    cores = os.cpu_count() or 1
    argv = [sys.executable, "-m", "fitvision", "train", "--recipe", args.recipe, "--seed", str(seed),
            "--out", str(run), *extra]
    env = dict(os.environ)
    if nproc > 1:
        argv += ["--nproc", str(nproc)]  # each process gets cores / nproc threads (fitvision sets it)
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = str(cores)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads((run / "summary.json").read_text())
    return {"layout": layout, "processes": nproc, "threads_each": max(1, cores // nproc), "seed": seed,
            "load_before": round(load, 2), "wall_seconds": round(wall, 2),
            "train_seconds": round(summary["train_seconds"], 2),
            "train_images_per_second": round(summary["train_images_per_second"], 1),
            "val_acc": summary["val_acc"], "seconds_to_target": seconds_to_target(run, args.target)}


def stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--target", type=float, default=0.85, help="per-epoch val_acc for seconds_to_target")
    p.add_argument("--out-dir", default="runs/scaling")
    p.add_argument("extra", nargs="*", help="more `fitvision train` flags, after --")
    args = p.parse_args()
    cfg = resolved_config(args.recipe, None, args.extra)
    cache = fill_cache(cfg.data)
    rows = []
    layouts = [("1proc", 1), (f"{args.nproc}proc", args.nproc)]
    for i, seed in enumerate(args.seeds):
        for layout, nproc in (layouts if i % 2 == 0 else layouts[::-1]):
            row = one_run(layout, nproc, seed, args, args.extra)
            rows.append(row)
            print(json.dumps(row), flush=True)
    by = {name: [r for r in rows if r["layout"] == name] for name, _ in layouts}
    keys = ("wall_seconds", "train_seconds", "train_images_per_second", "val_acc", "seconds_to_target")
    summary = {name: {k: stats([r[k] for r in rs]) for k in keys} for name, rs in by.items()}
    one, many = summary["1proc"], summary[f"{args.nproc}proc"]
    ratios = {k: round(many[k]["mean"] / one[k]["mean"], 3) for k in keys
              if one[k]["mean"] and many[k]["mean"] is not None}
    print(json.dumps({"summary": summary, "ratio_nproc_over_1": ratios, "recipe": args.recipe, "extra": args.extra,
                      "cpu": cpu_model(), "cores": os.cpu_count(), "cache_fill_seconds": round(cache, 1),
                      "torch": __import__("torch").__version__}))


if __name__ == "__main__":
    main()
