"""Training throughput on an idle CPU and beside a busy process, under OpenMP wait policies (issue 30).

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/contention.py [--repeats 2]
        [--policies default passive] [--images 10000]

Each measurement is one `fitvision train --recipe cpu --epochs 1 --train-limit N --progressive-size 0`
process (32 px throughout); its summary.json's training images/s is the figure. "busy" runs it beside
`python -c "while True: pass"` (one core taken, as a browser tab or a second job takes it); "idle"
alone. A policy: "now", fitvision as it is (a passive OpenMP wait policy, one thread fewer per core
another process keeps busy); "before", as it was (libgomp's own wait policy, which spins a while
before sleeping, and all threads); or an OMP_WAIT_POLICY with a fixed thread count ("passive:1"). Prints one JSON line per run and a summary: the busy/idle ratio per policy.
``--peers muon ab94`` measures the airbench peers the same way (../shared/peers/run.sh PEER --epochs 1
--train-limit N, as they ship: libgomp's wait policy, two threads), their images/s from their own
JSON line (training images x epochs / their train_seconds, the whitening init included).
Run it on an otherwise idle machine and say the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from runlib import beside_busy_process


PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"


def peer_once(peer: str, busy: bool, images: int) -> float:
    """A peer's training images/s over one epoch of `images` images, alone or beside a busy process."""
    with beside_busy_process(busy):
        proc = subprocess.run([str(PEERS / "run.sh"), peer, "--epochs", "1", "--train-limit", str(images),
                               "--test-limit", "1000"], capture_output=True, text=True, check=True)
    res = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    epochs = float(res.get("epochs") or res["args"]["epochs"])
    return res["train_images"] * epochs / res["train_seconds"]


def run_once(policy: str, busy: bool, images: int, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                            "FITVISION_CPU_THREADS")}
    if policy == "before":  # fitvision before issue 30's change: libgomp's own policy, all threads always
        env.update(OMP_WAIT_POLICY="", FITVISION_CPU_THREADS="fixed")
    elif policy != "now":  # "passive:1": that OMP_WAIT_POLICY (and OMP_NUM_THREADS)
        policy, _, threads = policy.partition(":")
        env["OMP_WAIT_POLICY"] = "" if policy == "default" else policy.upper()
        env["FITVISION_CPU_THREADS"] = threads or "fixed"
    with beside_busy_process(busy):
        subprocess.run([sys.executable, "-m", "fitvision", "train", "--recipe", "cpu", "--epochs", "1",
                        "--train-limit", str(images), "--valid-limit", "1000", "--progressive-size", "0",
                        "--no-progress", "-q", "--out", str(out)], env=env, check=True)
    return json.loads((out / "summary.json").read_text())["train_images_per_second"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--policies", nargs="+", default=["before", "now"])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--peers", nargs="*", default=[], choices=["muon", "ab94"],
                   help="also measure these peers (../shared/peers, set up with its setup.sh)")
    args = p.parse_args()
    if args.peers and not (PEERS / "run.sh").is_file():
        p.error(f"no peers at {PEERS}: they live in ../shared/peers beside the checkout")
    results: dict[tuple[str, str], list[float]] = {}
    print(json.dumps({"loadavg_before": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        systems = [*args.policies, *(f"peer:{peer}" for peer in args.peers)]
        for repeat in range(args.repeats):  # alternated, so a drift of the machine's speed hits all alike
            for policy in systems:
                for load in ("idle", "busy"):
                    if policy.startswith("peer:"):
                        ips = peer_once(policy[5:], load == "busy", args.images)
                    else:
                        ips = run_once(policy, load == "busy", args.images, Path(tmp) / f"{policy}-{load}-{repeat}")
                    results.setdefault((policy, load), []).append(ips)
                    print(json.dumps({"policy": policy, "load": load, "repeat": repeat,
                                      "images_per_second": round(ips, 1)}), flush=True)
    summary = {}
    for policy in systems:
        idle, busy = results[(policy, "idle")], results[(policy, "busy")]
        summary[policy] = {"idle": round(statistics.mean(idle), 1), "idle_runs": [round(x) for x in idle],
                           "busy": round(statistics.mean(busy), 1), "busy_runs": [round(x) for x in busy],
                           "busy_over_idle": round(statistics.mean(busy) / statistics.mean(idle), 3)}
    print(json.dumps({"summary": summary, "loadavg_after": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
