"""The steps of bench/gpu.sh that are Python: a timed `fitvision train`, airbench94_muon's original GPU
script on the same data, and the one table.

    python bench/gpu.py train --label "gpu recipe" --results R.jsonl -- --recipe gpu --seed 0 --out DIR
    python bench/gpu.py peer --script airbench94_muon.py --runs 3 --results R.jsonl [--limit N]
    python bench/gpu.py table R.jsonl

Every step appends one JSON line per run to the results file; ``table`` prints them grouped by
system: runs, test accuracy (mean +- sample std), whole-process wall time and training time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _append(results: Path, row: dict) -> None:
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def cmd_train(args, train_args: list[str]) -> int:
    """One `fitvision train` process, timed from start to exit; its summary.json read back."""
    out = Path(train_args[train_args.index("--out") + 1])
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fitvision", "train", "--no-progress", *train_args])
    wall = time.perf_counter() - start
    row = {"system": args.label, "args": " ".join(train_args), "rc": proc.returncode, "wall_seconds": round(wall, 2)}
    if proc.returncode == 0:
        summary = json.loads((out / "summary.json").read_text())
        row.update(val_acc=summary["val_acc"], train_seconds=summary["train_seconds"], device=summary["device"],
                   seed=summary["seed"])
    _append(args.results, row)
    return proc.returncode


def _peer_data(work: Path, limit: int) -> None:
    """CIFAR-10 in the {'images', 'labels', 'classes'} .pt form the original reads from ./cifar10,
    made from the same JPEG copy fitvision trains on. The training images get one fixed shuffle
    (seed 0): the copy is sorted by class, and the script whitens its first layer from images[:5000]."""
    import numpy as np
    import torch

    from fitvision.data.dataset import load_dataset

    ds = load_dataset("cifar10")
    order = np.random.default_rng(0).permutation(len(ds.train_y))
    splits = {"train": (ds.train_x, ds.train_y, order), "test": (ds.valid_x, ds.valid_y, np.arange(len(ds.valid_y)))}
    (work / "cifar10").mkdir(parents=True, exist_ok=True)
    for name, (x, y, idx) in splits.items():
        idx = idx[:limit] if limit else idx
        torch.save({"images": torch.from_numpy(np.asarray(x)[idx]),
                    "labels": torch.from_numpy(np.asarray(y)[idx].astype(np.int64)), "classes": list(ds.classes)},
                   work / "cifar10" / f"{name}.pt")


def cmd_peer(args) -> int:
    """airbench94_muon.py as its own __main__ runs it (compiled model, a warm-up run), for --runs runs."""
    import importlib.util

    import torch

    script = Path(args.script).resolve()
    compile(script.read_text(), str(script), "exec")  # it is there and is Python, GPU or not
    work = Path(args.work).resolve()
    _peer_data(work, args.limit)
    if not torch.cuda.is_available():  # --dry on a CPU: the data and the script are ready, the runs need CUDA
        _append(args.results, {"system": "airbench94_muon", "rc": 0, "skipped": "needs CUDA: data and script checked"})
        return 0
    os.chdir(work)  # it reads ./cifar10/{train,test}.pt
    spec = importlib.util.spec_from_file_location("airbench94_muon", script)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    model = peer.CifarNet().cuda().to(memory_format=torch.channels_last)
    model.compile(mode="max-autotune")
    start = time.perf_counter()
    peer.main("warmup", model)
    torch.cuda.synchronize()
    _append(args.results, {"system": "airbench94_muon warm-up", "rc": 0, "wall_seconds": round(time.perf_counter() - start, 2)})
    for run in range(args.runs):
        start = time.perf_counter()
        acc = float(peer.main(run, model))
        torch.cuda.synchronize()
        _append(args.results, {"system": "airbench94_muon", "rc": 0, "seed": run, "val_acc": acc,
                               "wall_seconds": round(time.perf_counter() - start, 2),
                               "device": torch.cuda.get_device_name()})
    return 0


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} +- {format(statistics.stdev(values), fmt)}"


def cmd_table(args) -> int:
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'})"
    print(f"bench/gpu.sh on {device}, torch {torch.__version__}, Python {platform.python_version()}")
    print()
    print("| system | runs | test accuracy | wall s (process) | train s |")
    print("|---|---|---|---|---|")
    failed = 0
    for system in dict.fromkeys(r["system"] for r in rows):
        group = [r for r in rows if r["system"] == system]
        failed += sum(r.get("rc", 0) != 0 for r in group)
        if all("skipped" in r for r in group):
            print(f"| {system} | 0 | {group[0]['skipped']} | - | - |")
            continue
        ok = [r for r in group if r.get("rc", 0) == 0]
        accs = [100 * r["val_acc"] for r in ok if "val_acc" in r]
        print(f"| {system} | {len(ok)}/{len(group)} | {_spread(accs, '.2f')}{'%' if accs else ''} | "
              f"{_spread([r['wall_seconds'] for r in ok if 'wall_seconds' in r], '.1f')} | "
              f"{_spread([r['train_seconds'] for r in ok if 'train_seconds' in r], '.1f')} |")
    return 1 if failed else 0


def main() -> int:
    argv = sys.argv[1:]
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train")
    t.add_argument("--label", required=True)
    t.add_argument("--results", type=Path, required=True)
    q = sub.add_parser("peer")
    q.add_argument("--script", required=True)
    q.add_argument("--runs", type=int, default=3)
    q.add_argument("--results", type=Path, required=True)
    q.add_argument("--work", default="bench-gpu-peer")
    q.add_argument("--limit", type=int, default=0, help="images per split (--dry); 0 = all")
    r = sub.add_parser("table")
    r.add_argument("results")
    args = p.parse_args(argv)
    if args.step == "train":
        return cmd_train(args, train_args)
    return cmd_peer(args) if args.step == "peer" else cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
