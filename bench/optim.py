"""Step time of fitvision's composable Adam vs torch.optim.Adam(foreach=True) on ResNet9's parameters.

Both optimizers see the same parameter groups (fitvision.models.param_groups: decay and
no-decay, L2 weight decay 1e-4 as the seed recipe) and the same fixed gradients, and are timed
in the same process, alternating step by step so that load from other processes hits both
alike. Only optimizer.step() is timed (the backward pass is the same for both).

A second measurement ("overhead") keeps the 34 tensors and groups but shrinks each to 4
elements: that is the per-step Python and dispatch cost, which is what bounds a step on a GPU,
where the arithmetic for ResNet9 takes well under a millisecond. Prints one JSON line.

    .venv/bin/python bench/optim.py [--device cpu|cuda] [--steps 100] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fitvision.models import create_model, param_groups
from fitvision.optim import create_optimizer


def make_groups(device: str) -> list[dict]:
    torch.manual_seed(0)
    model = create_model("resnet9").to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return param_groups(model, wd=1e-4)


def clone_groups(groups: list[dict], numel: int | None = None) -> list[dict]:
    """Independent copies of the parameters and gradients in the same group layout
    (each cut to its first `numel` elements when given)."""
    out = []
    for g in groups:
        params = []
        for p in g["params"]:
            data, grad = (p.detach(), p.grad) if numel is None else (p.detach().flatten()[:numel], p.grad.flatten()[:numel])
            q = torch.nn.Parameter(data.clone())
            q.grad = grad.clone()
            params.append(q)
        out.append({**g, "params": params})
    return out


def timed_step(opt, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.step()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(groups: list[dict], steps: int, warmup: int, sync: bool) -> tuple[list[float], list[float]]:
    """Step times of (fitvision adam, torch adam), alternating step by step."""
    # lr 0.01, betas (0.9, 0.999), eps 1e-8, L2 wd 1e-4: the seed recipe's Adam.
    ours = create_optimizer("adam", clone_groups(groups), lr=0.01, momentum=0.9, beta2=0.999, eps=1e-8, wd=1e-4)
    theirs = torch.optim.Adam(clone_groups(groups), lr=0.01, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + steps):
        for opt, out in zip((ours, theirs), times):
            t = timed_step(opt, sync)
            if i >= warmup:
                out.append(t)
    return times


def summary(times: list[float], scale: float) -> dict:
    q1, _, q3 = statistics.quantiles(times, n=4)
    return {"median": round(statistics.median(times) * scale, 4), "iqr": [round(q1 * scale, 4), round(q3 * scale, 4)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per optimizer")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    sync = args.device.startswith("cuda")

    groups = [{**g, "params": list(g["params"])} for g in make_groups(args.device)]
    full = compare(groups, args.steps, args.warmup, sync)
    tiny = compare(clone_groups(groups, numel=4), args.steps * 3, args.warmup, sync)

    params = [p for g in groups for p in g["params"]]
    ours, theirs = summary(full[0], 1e3), summary(full[1], 1e3)
    ours_us, theirs_us = summary(tiny[0], 1e6), summary(tiny[1], 1e6)
    print(json.dumps({
        "bench": "optim_step",
        "device": torch.cuda.get_device_name() if sync else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tensors": len(params),
        "params": sum(p.numel() for p in params),
        "steps": len(full[0]),
        "fitvision_adam_ms": ours,
        "torch_adam_foreach_ms": theirs,
        "ratio": round(ours["median"] / theirs["median"], 3),
        "overhead_fitvision_us": ours_us,
        "overhead_torch_us": theirs_us,
        "overhead_ratio": round(ours_us["median"] / theirs_us["median"], 3),
    }))


if __name__ == "__main__":
    main()
