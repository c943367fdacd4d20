"""The plots of the technique pages (docs/techniques/img/*.png), from bench/ablations.py's runs.

    .venv/bin/python bench/technique_plots.py [--runs runs/ablations] [--out docs/techniques/img]

One figure per ablation row: left, the validation accuracy of each variant epoch by epoch (seed
0; epochs before the last on 2,000 test images, the last on all 10,000); right, the final test
accuracy, mean and standard deviation over the seeds run.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from ablations import ROWS, key


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def run_dir(runs: Path, results: list[dict], row: str, variant: str, seed: int) -> Path | None:
    """Where the run of (row, variant, seed) is: its own folder, or that of the first variant
    with the same command (a reference shared by rows ran once)."""
    command = next((r["command"] for r in results if r["key"] == key(row, variant, seed)), None)
    for r in results:
        if r["command"] == command:
            d = runs / (slug(f"{r['row']}-{r['variant']}")[:80] + f"-s{seed}")
            if (d / "history.csv").is_file():
                return d
    return None


def plot_row(runs: Path, results: list[dict], row: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    names, means, sds = [], [], []
    for variant, _ in ROWS[row]:
        d = run_dir(runs, results, row, variant, 0)
        if d is not None:
            with open(d / "history.csv") as f:
                hist = list(csv.DictReader(f))
            curves.plot([int(h["epoch"]) + 1 for h in hist], [100 * float(h["val_acc"]) for h in hist],
                        marker="o", label=variant)
        accs = [100 * r["test_acc"] for r in results if r["key"] in {key(row, variant, s) for s in (0, 1, 2)}
                and r.get("rc") == 0]
        if accs:
            names.append(variant)
            means.append(statistics.mean(accs))
            sds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
    curves.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{row}: seed 0")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    bars.barh(names, means, xerr=sds, color="tab:blue", alpha=0.7)
    bars.set(xlabel="test accuracy (%), mean +- sd over seeds", xlim=(min(means) - 5, max(means) + 3))
    bars.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=Path("runs/ablations"))
    p.add_argument("--out", type=Path, default=Path("docs/techniques/img"))
    args = p.parse_args()
    results = [json.loads(line) for line in (args.runs / "results.jsonl").read_text().splitlines()]
    args.out.mkdir(parents=True, exist_ok=True)
    for row in ROWS:
        target = args.out / f"{slug(row.split(' (')[0]).lower().strip('-')}.png"
        plot_row(args.runs, results, row, target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
