"""bench/ scripts: sidebyside.py's table (one row and one ratio per recipe, old results read as the
default recipe); conv_kernels.py's rows (every conv of a recipe, the gradients a step computes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))  # sidebyside imports its sibling runlib
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_table_gives_each_recipe_its_row_and_its_ratio_to_the_faster_peer():
    sidebyside = _load("sidebyside")
    ok = {"rc": 0, "load_before": 1.0}
    results = [
        {"system": "fitvision", "seed": 0, "test_acc": 0.91, "wall_seconds": 300.0, **ok},  # before recipes were kept
        {"system": "fitvision", "seed": 0, "recipe": "cpu92", "test_acc": 0.92, "wall_seconds": 600.0, **ok},
        {"system": "ab94", "seed": 0, "test_acc": 0.907, "wall_seconds": 400.0, "gflops_before": 250.4, **ok},
        {"system": "muon", "seed": 0, "test_acc": 0.906, "wall_seconds": 420.0, **ok},
        {"system": "muon", "seed": 1, "rc": 1, "error": "no JSON line"},
    ]
    out = sidebyside.table(results, "cpu")
    assert "| fitvision (`--recipe cpu`) | 91.00 | 300.0 | 1 (0) | 1.00-1.00 | not measured |" in out
    assert "| fitvision (`--recipe cpu92`) | 92.00 | 600.0 | 1 (0) |" in out
    assert "| airbench94 | 90.70 | 400.0 | 1 (0) | 1.00-1.00 | 250-250 |" in out
    assert "fitvision `cpu`'s wall time / the faster peer's (airbench94): **0.75x**" in out
    assert "fitvision `cpu92`'s wall time / the faster peer's (airbench94): **1.50x**" in out


def test_the_host_rate_is_a_positive_number_from_a_process_of_its_own():
    runlib = _load("runlib")
    rate = runlib.host_gflops()
    assert rate is not None and rate > 1.0


def test_fp32_peers_get_the_flag_that_overrides_their_bf16_default_and_a_row_of_their_own():
    sidebyside = _load("sidebyside")
    assert sidebyside.peer_args("ab94", 2, "bf16")[1:] == ["ab94", "--seed", "2"]
    assert sidebyside.peer_args("ab94", 2, "fp32")[1:] == ["ab94", "--seed", "2", "--dtype", "fp32"]
    assert sidebyside.peer_args("muon", 2, "fp32")[1:] == ["muon", "--dtype", "fp32"]
    ok = {"rc": 0, "load_before": 1.0, "seed": 0}
    results = [
        {"system": "fitvision", "recipe": "cpu", "test_acc": 0.91, "wall_seconds": 1000.0, **ok},
        {"system": "ab94", "test_acc": 0.907, "wall_seconds": 1500.0, "dtype": "fp32", **ok},
        {"system": "ab94", "test_acc": 0.906, "wall_seconds": 800.0, **ok},  # a bf16 run from before dtypes were kept
    ]
    out = sidebyside.table(results, "cpu")
    assert "| airbench94 (fp32) | 90.70 | 1,500.0 | 1 (0) |" in out
    assert "| airbench94 | 90.60 | 800.0 | 1 (0) |" in out


def test_conv_kernels_times_every_conv_of_the_recipe_and_only_the_gradients_a_step_computes():
    kernels = _load("conv_kernels")
    table = kernels.conv_table("cpu", size=16, batch=64, precision="fp32", repeats=1)
    rows = table["rows"]
    # the cpu recipe's SpeedNet: the whitening stem, then 2 + 3 + 3 convs; a group's second and
    # third convs see the same input and merge into one row
    assert [r["count"] for r in rows] == [1, 1, 1, 1, 2, 1, 2]
    stem, first = rows[0], rows[1]
    assert (stem["weight"][2:], stem["input_grad_ms"], stem["weight_grad_ms"]) == ([2, 2], None, None)
    assert all(r["input_grad_ms"] > 0 and r["weight_grad_ms"] > 0 for r in rows[1:])
    c_out, c_in = first["weight"][:2]  # at the 2x2 stem's 15x15 output (16 px, no padding)
    assert first["input"][1:] == first["output"][1:] == [15, 15]
    assert first["gflop"] == round(2 * 64 * 15 * 15 * c_out * c_in * 9 / 1e9, 4)
    assert abs(sum(r["share"] for r in rows) - 1) < 0.01
    assert table["precision"] == "fp32" and table["batch"] == 64
    assert kernels.markdown(table).count("\n") == len(rows) + 1
