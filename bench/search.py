"""Search benchmark: `fitvision tune` as a user runs it, on Optuna. Two questions, one JSON line a
search, then a summary line:

1. Trials per hour with 1 and with N worker processes (`--workers N`) on one study, random
   sampling and no pruning, so that every trial trains to its end in both.
2. The best val_acc that TPE with the median pruner reaches against random search without
   pruning at the same budget (same space, trials, epochs and data), over ``--repeats`` seeds.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/search.py [--trials 10]
        [--repeats 3] [--workers 2] [--out-dir runs/search-bench] [-- EXTRA TUNE FLAGS]

The default task: the `cpu` recipe for 3 epochs on 8,000 CIFAR-10 training images (each trial is
scored on the search's own validation split of them), searching the two learning rates and the
label smoothing. ``wall_seconds`` is the whole `fitvision tune` command; trials per hour count
the trials that ran to their end or were pruned (a pruned trial is a trial of the budget).
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
from speed import cpu_model, fill_cache  # noqa: E402  (bench/ is not a package)

SPACE = "muon_lr=0.03..1:log,lr=0.2..6:log,label_smoothing=0..0.3"
TASK = ["--recipe", "cpu", "--train-limit", "8000", "--epochs", "3"]


def one_search(name: str, args, seed: int, sampler: str, pruner: str, workers: int, extra: list[str]) -> dict:
    out = Path(args.out_dir) / f"{name}-seed{seed}"
    if out.exists():
        raise SystemExit(f"{out} exists: choose another --out-dir")
    argv = [sys.executable, "-m", "fitvision", "tune", "--space", args.space, "--trials", str(args.trials),
            "--sampler", sampler, "--pruner", pruner, "--workers", str(workers), "--seed", str(seed),
            "--out", str(out), *TASK, *extra]
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    env["OMP_NUM_THREADS"] = str(max(1, cores // workers))  # N workers share the cores, as --nproc does
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = json.loads((out / "best.json").read_text())
    ran = [r for r in rows if r["status"] in ("ok", "pruned")]
    return {"search": name, "seed": seed, "sampler": sampler, "pruner": pruner, "workers": workers,
            "load_before": round(load, 2), "wall_seconds": round(wall, 1), "trials": len(ran),
            "pruned": sum(r["status"] == "pruned" for r in rows),
            "trials_per_hour": round(len(ran) * 3600 / wall, 1), "best_val_acc": best["val_acc"],
            "best_params": best["params"]}


def stats(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "n": len(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--space", default=SPACE)
    p.add_argument("--out-dir", default="runs/search-bench")
    p.add_argument("extra", nargs="*", help="more `fitvision tune` flags, after --")
    args = p.parse_args()
    cache = fill_cache("cifar10")
    rows = []

    def run(*a) -> None:
        rows.append(one_search(*a))
        print(json.dumps(rows[-1]), flush=True)

    for seed in range(args.repeats):  # the two samplers alternate, so that drift hurts both alike
        run("random", args, seed, "random", "none", 1, args.extra)
        run("tpe-median", args, seed, "tpe", "median", 1, args.extra)
    run(f"random-{args.workers}workers", args, 0, "random", "none", args.workers, args.extra)

    def pick(name: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["search"] == name]

    one, many = pick("random", "trials_per_hour")[:1], pick(f"random-{args.workers}workers", "trials_per_hour")
    print(json.dumps({
        "trials_per_hour": {"1 worker (seed 0)": one[0], f"{args.workers} workers (seed 0)": many[0],
                            "ratio": round(many[0] / one[0], 3)},
        "best_val_acc": {"random, no pruning": stats(pick("random", "best_val_acc")),
                         "tpe, median pruner": stats(pick("tpe-median", "best_val_acc"))},
        "wall_seconds": {"random, no pruning": stats(pick("random", "wall_seconds")),
                         "tpe, median pruner": stats(pick("tpe-median", "wall_seconds"))},
        "space": args.space, "task": TASK, "trials": args.trials, "extra": args.extra, "cpu": cpu_model(),
        "cores": os.cpu_count(), "cache_fill_seconds": round(cache, 1), "torch": __import__("torch").__version__}))


if __name__ == "__main__":
    main()
