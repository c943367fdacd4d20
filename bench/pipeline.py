"""Data pipeline throughput: fitvision's device loader + batch augmentation vs the seeds' path.

    python bench/pipeline.py --json            # one JSON object on stdout
    python bench/pipeline.py --json --quick    # smaller sizes, a rough figure in ~20 s
    OMP_WAIT_POLICY=PASSIVE python bench/pipeline.py --json --busy --share-cpu   # a shared CPU, as fitvision runs

--busy measures beside `python -c "while True: pass"` (one core taken); --share-cpu sets the thread
count as `fitvision train` does (fitvision.train.device.share_cpu: one fewer per busy core); the CLI
also sets OMP_WAIT_POLICY=PASSIVE before torch loads, which only the environment can do here.

Measures, in one process on one machine:
  cifar_images_per_second       DeviceLoader + crop_flip (reflect pad 4, crop, flip) + normalize,
                                batch 512, 50k 32x32 uint8 images
  imagenette_images_per_second  DeviceLoader + random-resized crop to 128 + flip + normalize,
                                from 160 px storage
  seed_style_images_per_second  the seeds' path: torch DataLoader, 2 workers, per-image Pillow
                                RandomCrop(32, padding=4, reflect) + flip + to-tensor + normalize
  train_step_ratio              ResNet9 training images/s fed by loader + augmentation, divided by
                                the same step on one pre-made batch (bf16 autocast, channels_last)

Images are random uint8 of the right shapes (the pipeline's cost does not depend on content)
unless --data names a dataset for fitvision.data.dataset.load_dataset. Each figure is the
median over --repeats timed passes after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from fitvision.data.augment import CIFAR_STATS, train_pipeline
from fitvision.data.loader import DeviceLoader
from runlib import beside_busy_process


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _median_rate(fn, repeats: int) -> tuple[float, list[float], float]:
    """fn() -> images processed. Returns the median images/s, every pass's rate, and the median
    images per second of this process's CPU time (all its threads; steadier on a busy machine,
    meaningless for work done in worker processes)."""
    fn()  # warm-up: first-touch allocations, thread pools
    rates, cpu_rates = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        n = fn()
        rates.append(n / (time.perf_counter() - wall))
        cpu_rates.append(n / max(time.process_time() - cpu, 1e-9))
    return statistics.median(rates), [round(r) for r in rates], statistics.median(cpu_rates)


def _drain(loader: DeviceLoader) -> int:
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n


def bench_device(images, labels, bs: int, aug: str, size: int, repeats: int):
    pipe = train_pipeline(aug, size, *CIFAR_STATS)
    loader = DeviceLoader(images, labels, bs, shuffle=True, drop_last=True, transform=pipe)
    return _median_rate(lambda: _drain(loader), repeats)


# --------------------------------------------------------------------------- the seeds' path
class SeedStyleDataset(torch.utils.data.Dataset):
    """Per-image Pillow transforms as the seeds' torchvision Compose does them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0):
        self.images, self.labels = images, labels
        self.mean = np.array(CIFAR_STATS[0], np.float32).reshape(3, 1, 1)
        self.std = np.array(CIFAR_STATS[1], np.float32).reshape(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])  # ImageFolder hands PIL images to the transforms
        padded = Image.fromarray(np.pad(np.asarray(img), ((4, 4), (4, 4), (0, 0)), mode="reflect"))
        top, left = self.rng.integers(0, 9, 2)
        img = padded.crop((left, top, left + 32, top + 32))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
        return torch.from_numpy((arr - self.mean) / self.std), int(self.labels[i])  # Normalize


def bench_seed_style(images, labels, bs: int, repeats: int, workers: int = 2):
    loader = torch.utils.data.DataLoader(SeedStyleDataset(images, labels), batch_size=bs, shuffle=True,
                                         num_workers=workers, persistent_workers=True)
    return _median_rate(lambda: sum(x.shape[0] for x, _ in loader), repeats)


# --------------------------------------------------------------------------- training step
def _model():
    from fitvision.models import create_model

    return create_model("resnet9"), "fitvision resnet9"


def bench_train_ratio(images, labels, bs: int, steps: int):
    """Alternate timed steps on a fixed batch and on loader batches; ratio of median rates."""
    model, name = _model()
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    pipe = train_pipeline("crop_flip", 32, *CIFAR_STATS)
    loader = DeviceLoader(images, labels, bs, shuffle=True, drop_last=True, transform=pipe)
    batches = iter(loader)
    fixed_x, fixed_y = next(batches)
    fixed_x = fixed_x.clone()
    step(fixed_x, fixed_y)  # warm-up both kinds (oneDNN primitives, optimizer state)
    step(*next(batches))
    fixed, fed = [], []  # (wall, cpu) seconds per step
    for _ in range(steps):
        fixed.append(_timed(lambda: step(fixed_x, fixed_y)))
        fed.append(_timed(lambda: step(*next(batches))))
    wall = statistics.median(t for t, _ in fixed) / statistics.median(t for t, _ in fed)
    # Process CPU time counts only this process's work, so it is steadier on a busy machine.
    cpu = statistics.median(c for _, c in fixed) / statistics.median(c for _, c in fed)
    return wall, {"model": name, "batch": bs, "steps": steps, "precision": "bf16 autocast, channels_last",
                  "fixed_batch_images_per_second": round(bs / statistics.median(t for t, _ in fixed), 1),
                  "loader_fed_images_per_second": round(bs / statistics.median(t for t, _ in fed), 1),
                  "ratio_by_cpu_time": round(cpu, 3)}


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


# --------------------------------------------------------------------------- main
def _data(args):
    if args.data:
        from fitvision.data.dataset import load_dataset

        ds = load_dataset(args.data, storage_size=160)
        return ds.train_x, ds.train_y, f"real: {ds.name} train split {ds.train_x.shape}"
    n = 10_000 if args.quick else 50_000
    return _images(n, 32), np.arange(n) % 10, f"random uint8, {n} x 32x32x3"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--data", default="", help="a CIFAR-style dataset for load_dataset (default: random)")
    p.add_argument("--repeats", type=int, default=0, help="timed passes per figure (default 3, quick 2)")
    p.add_argument("--imagenette-bs", type=int, default=128)
    p.add_argument("--train-bs", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--train-steps", type=int, default=0, help="timed steps of each kind (default 5, quick 3)")
    p.add_argument("--busy", action="store_true", help="measure beside a busy process (one core taken)")
    p.add_argument("--share-cpu", action="store_true", help="set the thread count as fitvision train does")
    args = p.parse_args(argv)
    with beside_busy_process(args.busy):
        return _measure(args)


def _measure(args) -> dict:
    repeats = args.repeats or (2 if args.quick else 3)
    steps = args.train_steps or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.share_cpu:
        from fitvision.train.device import share_cpu

        share_cpu()
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    cifar_x, cifar_y, source = _data(args)
    cifar, cifar_runs, cifar_cpu = bench_device(cifar_x, cifar_y, 512, "crop_flip", 32, repeats)
    n_in = 1024 if args.quick else 4096
    inette_x = _images(n_in, 160, seed=1)
    inette, inette_runs, inette_cpu = bench_device(inette_x, np.arange(n_in) % 10, args.imagenette_bs,
                                                   "rrc_flip", 128, repeats)
    n_seed = 4096 if args.quick else 10240
    seed_style, seed_runs, _ = bench_seed_style(cifar_x[:n_seed], cifar_y[:n_seed], 512, repeats)
    ratio, train = bench_train_ratio(cifar_x, cifar_y, args.train_bs, steps)
    result = {
        "cifar_images_per_second": round(cifar),
        "imagenette_images_per_second": round(inette),
        "seed_style_images_per_second": round(seed_style),
        "train_step_ratio": round(ratio, 3),
        "speedup_vs_seed_style": round(cifar / seed_style, 1),
        "runs": {"cifar": cifar_runs, "imagenette": inette_runs, "seed_style": seed_runs},
        "images_per_cpu_second": {"cifar": round(cifar_cpu), "imagenette": round(inette_cpu)},
        "train": train,
        "data": f"{source}; imagenette: random uint8, {n_in} x 160x160x3, batch {args.imagenette_bs}",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": "cpu",
                    # other processes competing for the cores make every figure lower
                    "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "quick": args.quick, "busy": args.busy, "share_cpu": args.share_cpu,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<30} {v}")
    return result


if __name__ == "__main__":
    main()
