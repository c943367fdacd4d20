"""Muon's Newton-Schulz cost per optimizer step, in bf16 and in fp32, for each Muon recipe's model.

Muon orthogonalises every filter bank of the body at every step (fitvision.optim.steppers.
orthogonalize, 5 iterations). torch.optim.Muon iterates in bf16, which is fast where the hardware
has bf16 matmuls (a GPU, a CPU with AVX-512 BF16 or AMX) and emulated, many times slower, where
it has not (AVX2 only). fitvision picks the dtype by the hardware (steppers.newton_schulz_dtype);
this times both on the machine it runs on, alternating, and prints one JSON line.

    .venv/bin/python bench/newton_schulz.py [--recipes cpu imagenette] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from runlib import cpu_model, recipe_model

from fitvision.models.groups import head_module
from fitvision.optim.steppers import newton_schulz_dtype, orthogonalize
from fitvision.train.device import cpu_has_bf16

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def filter_banks(recipe: str) -> list[torch.Tensor]:
    """The matrices Muon orthogonalises for the recipe's model: the body's trainable tensors with
    ndim >= 2 (the head steps with SGD), each flattened to out x rest, random as gradients are."""
    model = recipe_model(recipe)
    head = {id(p) for p in head_module(model).parameters()}
    torch.manual_seed(0)
    return [torch.randn(len(p), p[0].numel()) for p in model.parameters()
            if p.requires_grad and p.ndim >= 2 and id(p) not in head]


def step_seconds(banks: list[torch.Tensor], dtype: torch.dtype) -> float:
    start = time.perf_counter()
    for m in banks:
        orthogonalize(m, dtype=dtype)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["cpu", "imagenette"], choices=["cpu", "cpu92", "imagenette"])
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per dtype, alternating (default: 3)")
    args = ap.parse_args()
    out = {"machine": cpu_model(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_has_bf16": cpu_has_bf16(),
           "fitvision_picks": str(newton_schulz_dtype(torch.device("cpu"))).removeprefix("torch.")}
    for recipe in args.recipes:
        banks = filter_banks(recipe)
        for dtype in DTYPES.values():  # warm-up: the first call of each shape allocates
            step_seconds(banks[:2], dtype)
        times = {name: [] for name in DTYPES}
        for _ in range(args.repeats):
            for name, dtype in DTYPES.items():
                times[name].append(step_seconds(banks, dtype))
        out[recipe] = {"filter_banks": len(banks),
                       **{f"{name}_seconds_per_step": round(statistics.median(t), 4) for name, t in times.items()},
                       **{f"{name}_runs": [round(x, 4) for x in t] for name, t in times.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
