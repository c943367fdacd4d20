"""Where a step's convolutions go: each conv of a recipe's network timed forward, for its input
gradient and for its weight gradient, with the GFLOP/s each kernel reaches on this machine.

On a CPU a step of the `cpu` recipe is mostly convolutions (on the AVX2 machine 84% of a 32 px
step by torch.profiler: 61% their backward, 23% forward). Set against the machine's fp32 matmul
rate (runlib.host_gflops), the table says which kernels lag and so where a faster kernel, or less
arithmetic, would pay. Only the gradients a training step computes are timed: the stem's input is
the image (no gradient) and its whitening weights are frozen.

    .venv/bin/python bench/conv_kernels.py [--recipe cpu] [--size 32] [--batch N] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from runlib import cpu_model, host_gflops, recipe_model

from fitvision.recipes import RECIPES
from fitvision.train.device import resolve_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def conv_shapes(recipe: str, size: int) -> list[dict]:
    """The recipe's convolutions in forward order, with the input each sees at ``size`` px; identical
    ones (same input, weight and geometry) merged into one row with a count."""
    model = recipe_model(recipe)
    seen: dict[tuple, dict] = {}

    def hook(name):
        def record(module, args, _output):
            x = args[0]
            key = (tuple(x.shape[1:]), tuple(module.weight.shape), module.stride, module.padding, module.groups)
            row = seen.setdefault(key, {"name": name, "count": 0, "input": list(x.shape[1:]),
                                        "weight": list(module.weight.shape), "stride": list(module.stride),
                                        "padding": list(module.padding), "groups": module.groups,
                                        "input_grad": bool(seen) or x.requires_grad,  # the first sees the image
                                        "weight_grad": module.weight.requires_grad})
            row["count"] += 1
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))  # eval: BatchNorm takes one image
    for h in handles:
        h.remove()
    return list(seen.values())


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernel for the shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_conv(row: dict, batch: int, dtype: torch.dtype, repeats: int) -> dict:
    """Seconds and GFLOP/s of one conv at ``batch`` images (channels_last): forward, input gradient,
    weight gradient (None where a training step computes no such gradient)."""
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(batch, *row["input"]).to(dtype=dtype, memory_format=cl)
    w = torch.randn(row["weight"]).to(dtype=dtype, memory_format=cl)
    geometry = {"stride": row["stride"], "padding": row["padding"], "groups": row["groups"]}
    y = F.conv2d(x, w, **geometry)
    g = torch.randn_like(y)
    c_out, c_in, kh, kw = row["weight"]
    gflop = 2 * batch * y.shape[2] * y.shape[3] * c_out * c_in * kh * kw / 1e9

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(g, x, w, None, row["stride"], row["padding"], [1, 1],
                                                           False, [0, 0], row["groups"], mask)

    seconds = {"forward": _median_seconds(lambda: F.conv2d(x, w, **geometry), repeats),
               "input_grad": _median_seconds(backward([True, False, False]), repeats) if row["input_grad"] else None,
               "weight_grad": _median_seconds(backward([False, True, False]), repeats) if row["weight_grad"] else None}
    return {"output": list(y.shape[1:]), "gflop": round(gflop, 4),
            **{f"{k}_ms": None if s is None else round(1e3 * s, 1) for k, s in seconds.items()},
            **{f"{k}_gflops": None if s is None else round(gflop / s, 1) for k, s in seconds.items()}}


def conv_table(recipe: str = "cpu", size: int = 32, batch: int | None = None, precision: str | None = None,
               repeats: int = 3) -> dict:
    """Every conv row of the recipe timed, and each row's share of the step's convolution time."""
    cfg = RECIPES[recipe]
    batch = batch or cfg.bs
    precision = resolve_precision(precision or cfg.precision, torch.device("cpu"))
    rows = [{**row, **time_conv(row, batch, DTYPES.get(precision, torch.float32), repeats)}
            for row in conv_shapes(recipe, size)]
    for row in rows:
        row["step_ms"] = round(row["count"] * sum(row[k] or 0.0 for k in ("forward_ms", "input_grad_ms",
                                                                            "weight_grad_ms")), 1)
    total = sum(row["step_ms"] for row in rows)
    for row in rows:
        row["share"] = round(row["step_ms"] / total, 3)
    return {"recipe": recipe, "size": size, "batch": batch, "precision": precision, "threads": torch.get_num_threads(),
            "conv_ms_per_step": round(total, 1), "rows": rows}


def markdown(table: dict) -> str:
    def cell(ms, rate):
        return "-" if ms is None else f"{ms:,.0f} ({rate:,.0f})"
    lines = ["| conv | count | input | output | GFLOP | forward ms (GFLOP/s) | input grad | weight grad | share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['name']} {r['weight'][1]}->{r['weight'][0]} {r['weight'][2]}x{r['weight'][3]} "
                     f"| {r['count']} | {'x'.join(map(str, r['input']))} | {'x'.join(map(str, r['output']))} "
                     f"| {r['gflop']:.1f} | {cell(r['forward_ms'], r['forward_gflops'])} "
                     f"| {cell(r['input_grad_ms'], r['input_grad_gflops'])} "
                     f"| {cell(r['weight_grad_ms'], r['weight_grad_gflops'])} | {100 * r['share']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cpu", choices=sorted(RECIPES))
    ap.add_argument("--size", type=int, default=32, help="input size in px (default: 32)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's batch)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                    help="default: the recipe's, resolved as training resolves it")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per kernel, median (default: 3)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = ap.parse_args()
    table = conv_table(args.recipe, args.size, args.batch, args.precision, args.repeats)
    table.update(machine=cpu_model(), torch=torch.__version__, matmul_gflops=host_gflops())
    if args.json:
        print(json.dumps(table))
        return
    print(f"{table['recipe']} at {table['size']} px, batch {table['batch']}, {table['precision']}, "
          f"{table['threads']} threads, {table['machine']}, torch {table['torch']}: convolutions "
          f"{table['conv_ms_per_step'] / 1e3:.2f} s a step; fp32 matmul {table['matmul_gflops']} GFLOP/s")
    print(markdown(table))


if __name__ == "__main__":
    main()
