"""Prediction throughput: `predict_files` on 1,000 CIFAR-size image files, batched, on the CPU.

    .venv/bin/python bench/predict.py [--run RUN] [--n 1000] [--repeats 3] [--single 100] [--device cpu]

Files: JPEGs written to a temporary folder from CIFAR-10's test images when FITVISION_DATA_DIR
holds them, else random 32x32 images. Model: the run given with --run, else an untrained
ResNet9 at full width (the seed model; weights do not change the cost) saved as a run.
The figure is end to end, as `fitvision predict` pays it: open and decode each file (threads),
eval transform, forward in batches, top-3. One warm-up call, then --repeats timed calls;
prints one JSON line with each time, the median and files per second, and for comparison the
rate of one call per file (the seeds' predict_image) on the first --single files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int) -> str:
    """n 32x32 JPEGs in folder; returns where they came from."""
    images, source = None, "random"
    if os.environ.get("FITVISION_DATA_DIR"):
        from fitvision.data.dataset import load_dataset
        from fitvision.errors import FitVisionError

        try:
            ds = load_dataset("cifar10")
            images, source = np.array(ds.valid_x[:n]), "cifar10 test images"
        except FitVisionError:
            pass
    if images is None or len(images) < n:
        images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=95)
    return source


def untrained_run(folder: Path) -> Path:
    from fitvision.models import create_model
    from fitvision.train.modelfile import save_model

    torch.manual_seed(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"model": "resnet9", "model_kwargs": {"num_classes": 10}, "classes": classes,
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010], "input_size": [32, 32],
            "storage_size": 160, "fitvision_version": "bench"}
    save_model(folder, create_model("resnet9", num_classes=10), meta)
    return folder


def main() -> None:
    from fitvision.train.evaluate import load_run, predict_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a trained run directory (default: untrained ResNet9)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--single", type=int, default=100, help="files also timed one call each (0 = skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        source = write_images(tmp / "images", args.n)
        files = sorted((tmp / "images").iterdir())
        run = load_run(args.run or untrained_run(tmp / "run"), device=args.device)
        predict_files(run, files[:64])  # warm-up: first calls allocate and pick kernels
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = predict_files(run, files, topk=3)
            times.append(time.perf_counter() - start)
        assert all("top" in r for r in results)
        # The seeds' way for comparison: one predict call (one forward pass) per file.
        single = files[: args.single]
        start = time.perf_counter()
        for f in single:
            predict_files(run, [f], topk=3)
        single_rate = len(single) / (time.perf_counter() - start) if single else None
    median = statistics.median(times)
    print(json.dumps({
        "bench": "predict", "files": args.n, "source": source, "model": run.meta["model"],
        "model_kwargs": run.meta["model_kwargs"], "device": str(run.device), "threads": torch.get_num_threads(),
        "seconds": [round(t, 3) for t in times], "median_seconds": round(median, 3),
        "files_per_second": round(args.n / median, 1),
        "one_at_a_time_files_per_second": single_rate and round(single_rate, 1), "torch": torch.__version__,
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
