"""Transfer experiment: does a CIFAR-10 body help on a small labelled subset of Imagenette?

1. pretrain on CIFAR-10 (the source);
2. on a seeded subset of N Imagenette training images, at the same 32 px size, train
   (a) from scratch, (b) from the pretrained body, all layers, the body at 0.1x the head's
   learning rate, (c) like (b) after K head-only epochs; same model, epochs, schedule and batch;
3. evaluate all on Imagenette's validation split (a seeded subset of it at the small scale),
   which no choice here looks at.

    FITVISION_DATA_DIR=../shared/datasets python bench/transfer.py --scale small --out runs/transfer
    FITVISION_DATA_DIR=../shared/datasets python bench/transfer.py --scale full --out runs/transfer-full

Prints a markdown table (mean and spread over seeds) for docs/transfer.md and writes it to
OUT/table.md. Each run is an ordinary run directory under OUT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from fitvision.config import TrainConfig

SCALES = {
    # "small" is sized for a shared 2-core CPU (minutes); "full" for a free machine or a GPU.
    "small": dict(model="cnn", width=1.0, source_limit=3000, source_epochs=3, target_limit=500,
                  target_epochs=6, freeze_epochs=1, valid_limit=1000, seeds=[0, 1, 2]),
    "full": dict(model="resnet9", width=0.5, source_limit=0, source_epochs=10, target_limit=1000,
                 target_epochs=16, freeze_epochs=3, valid_limit=0, seeds=[0, 1, 2]),
}


def base_config(args, s: dict) -> TrainConfig:
    return TrainConfig(model=args.model or s["model"], width=args.width or s["width"], bs=args.bs, lr=args.lr,
                       size=32, storage_size=32, precision=args.precision, device=args.device)


def run(cfg: TrainConfig) -> dict:
    from fitvision.train.run import train_run

    summary = Path(cfg.out) / "summary.json"
    if not summary.is_file():  # finished runs are reused: the script can be interrupted and rerun
        train_run(cfg)
    return json.loads(summary.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--model", default=None, help="default: the scale's")
    p.add_argument("--width", type=float, default=None, help="default: the scale's")
    p.add_argument("--bs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    s, out = SCALES[args.scale], Path(args.out)
    base = base_config(args, s)

    t0 = time.perf_counter()
    source = replace(base, data="cifar10", train_limit=s["source_limit"], epochs=s["source_epochs"],
                     valid_limit=s["valid_limit"], out=str(out / "source-cifar10"))
    src = run(source)
    print(f"source: cifar10 val_acc {src['val_acc']:.4f} ({src['num_train']} images, {s['source_epochs']} epochs)")

    target = replace(base, data="imagenette", train_limit=s["target_limit"], epochs=s["target_epochs"],
                     valid_limit=s["valid_limit"])
    arms = {
        "from scratch": {},
        "fine-tuned (all layers)": {"init_from": source.out},
        f"fine-tuned (head {s['freeze_epochs']} ep, then all)": {
            "init_from": source.out, "freeze": True, "freeze_epochs": s["freeze_epochs"]},
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    for seed in s["seeds"]:
        for i, (name, extra) in enumerate(arms.items()):
            cfg = replace(target, seed=seed, out=str(out / f"imagenette-arm{i}-seed{seed}"), **extra)
            results[name].append(run(cfg)["val_acc"])
            print(f"seed {seed} {name}: val_acc {results[name][-1]:.4f}")

    table = table_md(results, s, base)
    (out / "table.md").write_text(table)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f}s")


def table_md(results: dict[str, list[float]], s: dict, base: TrainConfig) -> str:
    valid = f"a seeded {s['valid_limit']:,} of the 3,925" if s["valid_limit"] else "all 3,925"
    lines = [f"Imagenette at 32 px, {s['target_limit']} training images, {s['target_epochs']} epochs, "
             f"{base.model} width {base.width:g}, seeds {s['seeds']}; accuracy on {valid} validation images.",
             "", "| start | val_acc (mean) | min | max |", "|---|---|---|---|"]
    for name, accs in results.items():
        lines.append(f"| {name} | {statistics.mean(accs):.4f} | {min(accs):.4f} | {max(accs):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
