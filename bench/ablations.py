"""Each technique's measured effect on one fixed budget (issue 28): one command, the whole table.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/ablations.py [--seeds 0 1 2]
        [--out-dir runs/ablations] [--only ROW ...] [--table]

The budget: the `seed` recipe (Adam one-cycle to lr 0.01, L2 1e-4, clip 0.1 by value, batch 400,
the seeds' CIFAR stats, fp32) on seed 003's CNN (3 conv-ReLU-pool layers, 114k parameters) with
10,000 CIFAR-10 training images for 5 epochs, evaluated on the 10,000 test images (epochs before
the last on 2,000 of them); each variant changes one thing. A run is one `fitvision train`
process; its summary.json gives the test accuracy and its history.csv the accuracy on 1,000
unaugmented training images (train_acc), whose gap to it is the overfitting. Results go to OUT_DIR/results.jsonl (a finished run is not rerun),
and --table prints the markdown table: per variant the mean and sample standard deviation over the
seeds, and the difference from the row's first variant (its reference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from runlib import record, train_run

BASE = ["--recipe", "seed", "--model", "cnn", "--train-limit", "10000", "--epochs", "5", "--epoch-valid-limit", "2000",
        "--no-progress", "-q"]

# technique: [(variant, extra flags)], the first variant the row's reference
ROWS: dict[str, list[tuple[str, list[str]]]] = {
    "BatchNorm": [("none", []), ("after each conv", ["--model-options", "bn=true"])],
    "dropout (train/test gap)": [("none", []), ("0.5 before the head", ["--model-options", "dropout=0.5"])],
    "augmentation": [("crop + flip", []), ("none", ["--aug", "none"]), ("flip", ["--aug", "flip"]),
                     ("crop + flip + cutout", ["--aug", "crop_flip_cutout"]),
                     ("random-resized crop + flip", ["--aug", "rrc_flip"])],
    "weight decay under Adam": [("L2 1e-4", []), ("decoupled 1e-4 (AdamW)", ["--wd-mode", "decoupled"]),
                                ("none", ["--wd", "0"])],
    "weight decay under SGD (momentum 0.9, lr 0.1)": [
        ("L2 5e-4", ["--opt", "momentum", "--lr", "0.1", "--wd", "5e-4"]),
        ("decoupled 5e-4", ["--opt", "momentum", "--lr", "0.1", "--wd", "5e-4", "--wd-mode", "decoupled"])],
    "gradient clipping": [("by value 0.1", []), ("none", ["--clip", "0"]), ("by norm 1", ["--clip-mode", "norm",
                                                                                            "--clip", "1"])],
    "initialisation": [("Kaiming (default)", []), ("PyTorch's", ["--init", "torch"]), ("LSUV", ["--init", "lsuv"])],
    "schedule": [("one-cycle", []), ("cosine", ["--sched", "cosine"]), ("step", ["--sched", "step"]),
                 ("constant", ["--sched", "constant"])],
    "optimizer": [("Adam", []), ("SGD lr 0.1", ["--opt", "sgd", "--lr", "0.1"]),
                  ("SGD + momentum lr 0.1", ["--opt", "momentum", "--lr", "0.1"]), ("LAMB", ["--opt", "lamb"])],
    "Adam's eps": [("1e-8", []), ("1e-3", ["--eps", "1e-3"])],
    "label smoothing": [("none", []), ("0.1", ["--label-smoothing", "0.1"])],
    "EMA of the weights": [("none", []), ("decay 0.99", ["--ema", "0.99"])],
    "lookahead": [("none", []), ("every 5 steps", ["--lookahead"])],
    "test-time augmentation": [("none", []), ("flip", ["--tta"])],
    "mixup": [("none", []), ("alpha 0.2", ["--mixup", "0.2"])],
}


def key(row: str, variant: str, seed: int) -> str:
    return f"{row} | {variant} | {seed}"


def run(row: str, variant: str, flags: list[str], seed: int, out_dir: Path) -> dict:
    name = "".join(c if c.isalnum() else "-" for c in f"{row}-{variant}")[:80] + f"-s{seed}"
    result = {"key": key(row, variant, seed), "row": row, "variant": variant, "seed": seed,
              "command": " ".join(["fitvision", "train", *BASE, *flags, "--seed", str(seed)])}
    got = train_run([*BASE, *flags, "--seed", str(seed)], out_dir / name)
    got.pop("wall_seconds", None), got.pop("load_before", None)
    return {**result, **got}


def table(results: list[dict], seeds: list[int]) -> str:
    by = {r["key"]: r for r in results if r.get("rc") == 0}
    lines = [f"| technique | variant | test accuracy ({len(seeds)} seeds) | vs. reference | train acc - test acc |",
             "|---|---|---|---|---|"]
    for row, variants in ROWS.items():
        ref = None
        for i, (variant, _) in enumerate(variants):
            got = [by[key(row, variant, s)] for s in seeds if key(row, variant, s) in by]
            if not got:
                lines.append(f"| {row if i == 0 else ''} | {variant} | not run | | |")
                continue
            accs = [100 * r["test_acc"] for r in got]
            mean = statistics.mean(accs)
            spread = f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
            gaps = [100 * (r["train_acc"] - r["test_acc"]) for r in got if r.get("train_acc") is not None]
            gap = f"{statistics.mean(gaps):+.2f}" if gaps else ""
            ref = mean if i == 0 else ref
            delta = "reference" if i == 0 else f"{mean - ref:+.2f}"
            runs = f" (n={len(accs)})" if len(accs) != len(seeds) else ""
            lines.append(f"| {row if i == 0 else ''} | {variant} | {mean:.2f}{spread}{runs} | {delta} | {gap} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", type=Path, default=Path("runs/ablations"))
    p.add_argument("--only", nargs="+", default=None, help="rows to run (default: all)")
    p.add_argument("--table", action="store_true", help="only print the table of what results.jsonl holds")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "results.jsonl"
    results = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if not args.table:
        done = {r["key"] for r in results if r.get("rc") == 0}
        same = {r["command"]: r for r in results if r.get("rc") == 0}  # a reference shared by rows runs once
        os.environ.setdefault("FITVISION_CPU_THREADS", "fixed")  # the same threads every run, busy or not
        for seed in args.seeds:  # seed-major: every technique gets a first seed early
            for row, variants in ROWS.items():
                if args.only and row not in args.only:
                    continue
                for variant, flags in variants:
                    if key(row, variant, seed) in done:
                        continue
                    command = " ".join(["fitvision", "train", *BASE, *flags, "--seed", str(seed)])
                    if command in same:
                        result = {**same[command], "key": key(row, variant, seed), "row": row, "variant": variant}
                    else:
                        result = run(row, variant, flags, seed, args.out_dir)
                        same[command] = result
                    results.append(result)
                    record(path, result)
    print(table(results, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
