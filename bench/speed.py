"""Speed benchmark: `fitvision train` N times with different seeds, one JSON line of results.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/speed.py [--recipe auto] [--seeds 0 1 2]
        [--config F] [--out-dir runs/speed] [--bound-steps 4] [-- EXTRA TRAIN FLAGS]

Each run is a fresh `fitvision train --recipe R --seed S --out DIR` process, as a user runs it.
Reported per run and as mean / sample standard deviation over the runs:

- ``val_acc``: test accuracy from the run's summary.json (its final evaluation, with the
  recipe's TTA if it has any);
- ``wall_seconds``: the whole command, process start to exit: imports, data load from the decode
  cache, model set-up, training, every evaluation, writing the run directory and report. The
  first-time decode of the dataset is not included: the cache is filled (and timed separately,
  ``cache_fill_seconds``) before the first run. Compile warm-up, when a recipe compiles, is
  included (``compile`` says whether it did);
- ``train_seconds``: summary.json's time of the epochs (training and per-epoch evaluation).

``compute_bound_images_per_second``: the same Learner (model, width, precision, channels_last,
optimizer, lookahead) stepping on one pre-made batch, no data loading or augmentation, timed
at each input size and stem setting the recipe trains with and combined in the proportions the
run trains them. It is timed right before each run (a shared machine's speed drifts between
runs), and each run's ``throughput_ratio`` is its training images/s over its own bound; the
summary gives their mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fill_cache(data: str) -> float:
    from fitvision.data.dataset import load_dataset

    t0 = time.perf_counter()
    load_dataset(data)
    return time.perf_counter() - t0


def resolved_config(recipe: str, config: str | None, extra: list[str]):
    """The TrainConfig `fitvision train` would use for these arguments (seed aside): the CLI's
    flags parsed by its parser, then the one config path (fitvision.recipes.resolve_config)."""
    from fitvision.cli import build_parser, train_config_from_args

    argv = ["train", "--recipe", recipe] + (["--config", config] if config else []) + extra
    return train_config_from_args(build_parser().parse_args(argv))[0]


def _phase_images(cfg, steps_per_epoch: int, full_size: int) -> dict[tuple[int, bool], int]:
    """Training images per (input size, stem frozen) over the whole run, as train_run trains them."""
    from fitvision.data.augment import ProgressiveResize

    total = max(1, round(cfg.epochs * steps_per_epoch))
    grow = ProgressiveResize(None, cfg.progressive_size, cfg.progressive_epochs)
    phases: dict[tuple[int, bool], int] = {}
    for step in range(total):
        epoch = step // steps_per_epoch
        size = grow.size(epoch, full_size) if cfg.progressive_size and cfg.progressive_epochs else full_size
        frozen = bool(cfg.stem_bias_epochs) and epoch >= cfg.stem_bias_epochs
        phases[(size, frozen)] = phases.get((size, frozen), 0) + cfg.bs
    return phases


def compute_bound(cfg, steps: int) -> dict:
    """Images/s of the run's own train_step on a pre-made batch, combined over its phases."""
    from fitvision.data.augment import resize
    from fitvision.optim.schedules import create_schedule
    from fitvision.train.device import keep_freed_memory
    from fitvision.train.setup import build

    s = build(dataclasses.replace(cfg, progressive_size=0, progressive_epochs=0.0, stem_bias_epochs=0.0), progress=False)
    learn = s.learn
    if learn.device.type == "cpu":
        keep_freed_memory()
    n = len(learn.train_dl)
    sched = create_schedule(s.cfg, total_steps=max(1, round(cfg.epochs * n)))
    hypers = {k: fn(0.5) for k, fn in sched.items() if fn is not None}
    x, y = next(iter(learn.train_dl))
    learn.model.train()
    rates = {}
    stem = getattr(learn.model, "stem_bias", None)
    full = int(x.shape[-1])
    phases = _phase_images(cfg, n, full)
    for (size, frozen), _ in sorted(phases.items()):
        xb = resize(x, size)
        if stem is not None:
            stem.requires_grad_(not frozen)
        times = []
        for i in range(steps + 2):
            if learn.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            # progress passed as mid-run (far from the end): lookahead averages every 5th step, as in the run
            learn.train_step(xb, y, hypers, progress=(i + 1, 10**9))
            if learn.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # two warm-up steps: kernel selection, allocator
                times.append(time.perf_counter() - t0)
        rates[(size, frozen)] = len(y) / statistics.median(times)
    bound_seconds = sum(images / rates[key] for key, images in phases.items())
    return {"compute_bound_images_per_second": round(sum(phases.values()) / bound_seconds, 1),
            "bound_phases": [{"size": size, "stem_frozen": frozen, "images": phases[(size, frozen)],
                              "images_per_second": round(rate, 1)} for (size, frozen), rate in rates.items()]}


def one_run(args, cfg, seed: int) -> dict:
    bound = compute_bound(cfg, args.bound_steps) if args.bound_steps else None
    out = Path(args.out_dir) / f"seed{seed}"
    cmd = [sys.executable, "-m", "fitvision.cli", "train", "--recipe", args.recipe, "--seed", str(seed),
           "--out", str(out)] + (["--config", args.config] if args.config else []) + args.extra
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"error: seed {seed} failed with exit code {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    row = {"seed": seed, "val_acc": summary["val_acc"], "wall_seconds": round(wall, 1),
           "train_seconds": summary["train_seconds"], "train_images_per_second": summary["train_images_per_second"],
           "epochs": summary["epochs"], "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "out": str(out)}
    if bound is not None:
        row.update(bound)
        row["throughput_ratio"] = round(row["train_images_per_second"] / bound["compute_bound_images_per_second"], 3)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _mean_std(values: list[float], digits: int) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run: JSON has no NaN)."""
    std = round(statistics.stdev(values), digits) if len(values) > 1 else None
    return round(statistics.fmean(values), digits), std


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="auto")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", default=None, help="config file passed to every run")
    p.add_argument("--out-dir", default="runs/speed")
    p.add_argument("--bound-steps", type=int, default=4, help="timed steps per phase for the compute bound (0 = skip)")
    args = p.parse_args(argv)
    args.extra = extra

    import fitvision

    cfg = resolved_config(args.recipe, args.config, extra)
    cache = fill_cache(cfg.data)
    runs = [one_run(args, cfg, seed) for seed in args.seeds]
    acc_mean, acc_std = _mean_std([r["val_acc"] for r in runs], 5)
    wall_mean, wall_std = _mean_std([r["wall_seconds"] for r in runs], 1)
    train_mean, train_std = _mean_std([r["train_seconds"] for r in runs], 1)
    ips = statistics.fmean(r["train_images_per_second"] for r in runs)
    result = {
        "recipe": cfg.recipe, "model": cfg.model, "width": cfg.width, "epochs": cfg.epochs, "data": cfg.data,
        "seeds": args.seeds, "extra_flags": extra, "config": args.config,
        "val_acc_mean": acc_mean, "val_acc_std": acc_std,
        "wall_seconds_mean": wall_mean, "wall_seconds_std": wall_std,
        "train_seconds_mean": train_mean, "train_seconds_std": train_std,
        "time_includes": "wall_seconds: the whole `fitvision train` process (imports, data load from the warm "
                         "decode cache, set-up, training, all evaluations, run directory and report); "
                         "not the first-time decode (cache_fill_seconds, before the runs)",
        "compile": cfg.compile, "cache_fill_seconds": round(cache, 1),
        "train_images_per_second_mean": round(ips, 1),
        "device": cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "python": platform.python_version(), "fitvision": fitvision.__version__,
        "runs": runs,
    }
    if args.bound_steps:
        ratios = [r["throughput_ratio"] for r in runs]
        result["compute_bound_images_per_second_mean"] = round(
            statistics.fmean(r["compute_bound_images_per_second"] for r in runs), 1)
        result["throughput_ratio_mean"], result["throughput_ratio_std"] = _mean_std(ratios, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
