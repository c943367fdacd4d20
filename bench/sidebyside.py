"""fitvision against the airbench peers, side by side in one sitting (issue 30): the speed ratio.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/sidebyside.py [--recipe cpu]
        [--peers muon ab94] [--seeds 0 1 2] [--out-dir runs/sidebyside] [--table] [-- EXTRA TRAIN FLAGS]

``--recipe cpu cpu92`` times several recipes in the one sitting. The runs alternate, seed by seed:
fitvision (each recipe), then each peer (../shared/peers/run.sh; set it up once
with ../shared/peers/setup.sh), then fitvision with the next seed, ... so that a machine whose
speed drifts during the sitting drifts for all of them alike. Each run is one process, timed from
its start to its exit (the peers' own timers leave out their start-up; this clock does not, for
anyone). Results go to OUT_DIR/results.jsonl; the table gives, per system, the mean and sample
standard deviation of the test accuracy (each with its own TTA) and of the wall time, and the
ratio of fitvision's mean wall time to the faster peer's: the figure issue 30 asks to bring to 0.5.
Run it only on an idle machine: it records the load average before each run, and the machine's
matmul rate (runlib.host_gflops), which also sees a host that gives this machine's cores less.

``--peer-dtype`` (default auto) runs the peers in the precision fitvision's ``--precision auto``
picks on this CPU: bf16 autocast where the CPU does bf16 natively (AVX-512 BF16 or AMX), else fp32,
so that on an AVX2-only CPU nobody is timed emulating bf16. airbench94_muon's Newton-Schulz stays
bf16 whatever the flag (its own code), so on such a CPU only airbench94 is a fair peer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from runlib import host_gflops, record, train_run

from fitvision.train.device import cpu_has_bf16

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
NAMES = {"muon": "airbench94_muon", "ab94": "airbench94"}


def peer_args(peer: str, seed: int, dtype: str) -> list[str]:
    """run.sh's arguments. Its defaults are bf16 (airbench94_muon autocasts, airbench94 gets
    `--dtype bf16`); fp32 overrides both (argparse keeps the last `--dtype`)."""
    return ([str(PEERS / "run.sh"), peer] + (["--seed", str(seed)] if peer == "ab94" else [])
            + (["--dtype", "fp32"] if dtype == "fp32" else []))


def peer_run(peer: str, seed: int, dtype: str = "bf16") -> dict:
    """One peer process: its JSON line's test accuracy (with its TTA), the process's wall time."""
    args = peer_args(peer, seed, dtype)
    gflops = host_gflops()
    load = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"rc": proc.returncode or 1, "error": (proc.stderr.strip().splitlines() or ["no JSON line"])[-1]}
    out = json.loads(lines[-1])
    return {"rc": 0, "test_acc": out["test_acc"], "wall_seconds": round(wall, 1), "load_before": load,
            "gflops_before": gflops, "dtype": dtype}


def system_of(result: dict, recipe: str) -> str:
    """'fitvision:RECIPE' for fitvision's runs (results from before recipes were recorded: RECIPE);
    a peer's name, with ':fp32' when it ran in fp32 (results from before dtypes were recorded: bf16)."""
    if result["system"] != "fitvision":
        return result["system"] + (":fp32" if result.get("dtype") == "fp32" else "")
    return f"fitvision:{result.get('recipe', recipe)}"


def peer_name(system: str) -> str:
    """'airbench94' for 'ab94', 'airbench94 (fp32)' for 'ab94:fp32'."""
    peer, _, dtype = system.partition(":")
    return NAMES.get(peer, peer) + (f" ({dtype})" if dtype else "")


def table(results: list[dict], recipe: str) -> str:
    ok = [{**r, "system": system_of(r, recipe)} for r in results if r.get("rc") == 0]
    systems = sorted({r["system"] for r in ok}, key=lambda s: (not s.startswith("fitvision"), s))
    lines = ["| system | test accuracy | wall time (s) | runs (seeds) | load before | GFLOP/s before |",
             "|---|---|---|---|---|---|"]
    walls = {}
    for system in systems:
        got = [r for r in ok if r["system"] == system]
        accs, secs = [100 * r["test_acc"] for r in got], [r["wall_seconds"] for r in got]
        walls[system] = statistics.mean(secs)
        sd = (lambda xs, f: f" +- {statistics.stdev(xs):{f}}" if len(xs) > 1 else "")
        loads = [r["load_before"] for r in got]
        rates = [r["gflops_before"] for r in got if r.get("gflops_before")]
        rate = f"{min(rates):.0f}-{max(rates):.0f}" if rates else "not measured"
        name = f"fitvision (`--recipe {system[10:]}`)" if system.startswith("fitvision:") else peer_name(system)
        lines.append(f"| {name} | {statistics.mean(accs):.2f}{sd(accs, '.2f')} | {walls[system]:,.1f}{sd(secs, ',.1f')} "
                     f"| {len(got)} ({', '.join(str(r['seed']) for r in got)}) | {min(loads):.2f}-{max(loads):.2f} | {rate} |")
    peers = {s: w for s, w in walls.items() if not s.startswith("fitvision")}
    if peers:
        fastest = min(peers, key=peers.get)
        for system in (s for s in walls if s.startswith("fitvision:")):
            lines.append(f"\nfitvision `{system[10:]}`'s wall time / the faster peer's ({peer_name(fastest)}): "
                         f"**{walls[system] / peers[fastest]:.2f}x**")
    return "\n".join(lines)


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", nargs="+", default=["cpu"])
    p.add_argument("--peers", nargs="*", default=["muon", "ab94"], choices=sorted(NAMES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", type=Path, default=Path("runs/sidebyside"))
    p.add_argument("--peer-dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="the peers' precision; auto: bf16 on a CPU with native bf16, else fp32 (as fitvision's auto)")
    p.add_argument("--table", action="store_true", help="only print the table of what results.jsonl holds")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "results.jsonl"
    results = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    dtype = args.peer_dtype if args.peer_dtype != "auto" else ("bf16" if cpu_has_bf16() else "fp32")
    if not args.table:
        if args.peers and not (PEERS / "run.sh").is_file():
            p.error(f"no peers at {PEERS}: they live in ../shared/peers beside the checkout")
        for seed in args.seeds:
            runs = [("fitvision", recipe) for recipe in args.recipe] + [(peer, None) for peer in args.peers]
            for system, recipe in runs:
                if recipe is not None:
                    flags = ["--recipe", recipe, "--seed", str(seed), *extra, "--no-progress", "-q"]
                    got = {"recipe": recipe, **train_run(flags, args.out_dir / f"fitvision-{recipe}-s{seed}")}
                else:
                    got = peer_run(system, seed, dtype)
                result = {"system": system, "seed": seed, **got}
                results.append(result)
                record(path, result)
    print(table(results, args.recipe[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
