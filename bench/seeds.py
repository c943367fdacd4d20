"""Every figure the seeds report, reproduced by its recipe (issue 28): one command, the whole table.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/seeds.py [--seeds 0 1 2]
        [--only RECIPE ...] [--out-dir runs/seeds] [--table]

Each row is a named recipe (`fitvision recipes`) run at full size as its seed ran it, one
`fitvision train --recipe NAME --seed S` process per seed. Results go to OUT_DIR/results.jsonl (a
finished run is not rerun); --table prints the markdown table: the seed's figure against the mean
and sample standard deviation of fitvision's over the seeds run, the train/test gap (the last
epoch's accuracy on 1,000-1,280 unaugmented training images minus the test accuracy), the wall
time of one run (the whole process) and the load average when it started. The data is the JPEG
copy of CIFAR-10 (../shared/datasets), whose JPEG compression costs accuracy against the
seeds' PNG-exact arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from runlib import cpu_model, record, train_run

# The ResNet9 rows run in bf16 on a CPU: in fp32 one would take about 3x its hour or more.
BF16 = ["--precision", "bf16"]
# (seed document, experiment, the seed's figure, recipe[, extra flags]), cheapest first
ROWS = [
    ("003", "MLP, Adam 3e-4, 10 epochs", "53.5%", "seed003_mlp"),
    ("003", "CNN, Adam 3e-4, 10 epochs", "70.24%", "seed003_cnn"),
    ("004", "Bag-of-Tricks CNN, Imagenette 128 px, 5 epochs", "72.6%", "seed004"),
    ("002", "ConvNet, 14 epochs", "71% (gap 26)", "seed002"),
    ("002", "ConvNet + dropout, 29 epochs", "73% (gap 7)", "seed002_dropout"),
    ("003", "AlexNet, 45k/5k split (validation accuracy)", "none reported", "seed003_alexnet"),
    ("002", "ConvNet + dropout + its augmentations, 29 epochs", "none reported", "seed002_aug"),
    ("001", "ResNet9 as run (momentum SGD), 16 epochs, bf16", "90.31%", "seed001_sgd", BF16),
    ("001", "ResNet9 as written (Adam), 16 epochs, bf16", "90.31%", "seed", BF16),
]


def _short(name: str) -> str:
    """A processor's name less the trade marks: "Intel(R) Xeon(R) Processor" -> "Intel Xeon"."""
    return " ".join(name.replace("(R)", "").replace("(TM)", "").replace("Processor", "").split())


def table(results: list[dict]) -> str:
    lines = ["| seed | experiment | seed's figure | fitvision (test accuracy) | train - test gap | wall time per run "
             "| machine | command |", "|---|---|---|---|---|---|---|---|"]
    for doc, what, figure, recipe, *extra in ROWS:
        got = [r for r in results if r["recipe"] == recipe and r.get("rc") == 0]
        command = "`" + " ".join(["fitvision", "train", "--recipe", recipe, *(extra[0] if extra else [])]) + "`"
        if not got:
            lines.append(f"| {doc} | {what} | {figure} | not run yet | | | | {command} |")
            continue
        accs = [100 * r["test_acc"] for r in got]
        spread = f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        seeds = ("seed " if len(got) == 1 else "seeds ") + ", ".join(str(r["seed"]) for r in got)
        gaps = [100 * (r["train_acc"] - r["test_acc"]) for r in got if r.get("train_acc") is not None]
        gap = f"{statistics.mean(gaps):+.1f}" if gaps else ""
        walls = [r["wall_seconds"] for r in got]
        loads = [r["load_before"] for r in got]
        load = f"{min(loads):.1f}" + (f"-{max(loads):.1f}" if len(loads) > 1 else "")
        wall = f"{statistics.mean(walls):,.0f} s (load {load})"
        machine = ", ".join(sorted({f"{r['cpus']}-core {_short(r.get('cpu_model', r['machine']))}" for r in got}))
        lines.append(f"| {doc} | {what} | {figure} | {statistics.mean(accs):.2f}{spread} ({seeds}) | {gap} "
                     f"| {wall} | {machine} | {command} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=None, help="recipes to run (default: all)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/seeds"))
    p.add_argument("--table", action="store_true", help="only print the table of what results.jsonl holds")
    args = p.parse_args()
    known = [r[3] for r in ROWS]
    flags_of = {r[3]: (r[4] if len(r) > 4 else []) for r in ROWS}
    bad = [r for r in args.only or [] if r not in known]
    if bad:
        p.error(f"unknown recipe {bad[0]!r} (valid: {', '.join(known)})")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "results.jsonl"
    results = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if not args.table:
        done = {(r["recipe"], r["seed"]) for r in results if r.get("rc") == 0}
        os.environ.setdefault("FITVISION_CPU_THREADS", "fixed")  # the same threads every run, busy or not
        for seed in args.seeds:  # seed-major: every recipe gets a first seed early
            for recipe in known:
                if (args.only and recipe not in args.only) or (recipe, seed) in done:
                    continue
                flags = ["--recipe", recipe, *flags_of[recipe], "--seed", str(seed), "--no-progress", "-q"]
                result = {"recipe": recipe, "seed": seed, "command": " ".join(["fitvision", "train", *flags]),
                          "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "cpu_model": cpu_model(),
                          **train_run(flags, args.out_dir / f"{recipe}-s{seed}")}
                results.append(result)
                record(path, result)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
