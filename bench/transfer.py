"""Transfer experiment: does a CIFAR-10 body help on a small labelled subset of Imagenette?

1. pretrain on CIFAR-10 (the source);
2. on the first N Imagenette training images (a seeded subset), at the same 32 px size, train
   (a) from scratch and (b) from the pretrained body (head-only for K epochs, then everything
   with the body at 0.1x the head's learning rate); same model, epochs, schedule and batch size;
3. evaluate both on the whole Imagenette validation split (never used for any choice here).

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
    # source images, source epochs, target images, target epochs, head-only epochs, seeds
    "small": dict(source_limit=5000, source_epochs=4, target_limit=500, target_epochs=8, freeze_epochs=2,
                  seeds=[0]),
    "full": dict(source_limit=0, source_epochs=10, target_limit=1000, target_epochs=16, freeze_epochs=3,
                 seeds=[0, 1, 2]),
}


def base_config(args) -> TrainConfig:
    return TrainConfig(model=args.model, width=args.width, bs=args.bs, lr=args.lr, size=32, storage_size=32,
                       precision=args.precision, device=args.device)


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
    p.add_argument("--model", default="resnet9")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--bs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    s, out, base = SCALES[args.scale], Path(args.out), base_config(args)

    t0 = time.perf_counter()
    source = replace(base, data="cifar10", train_limit=s["source_limit"], epochs=s["source_epochs"],
                     out=str(out / "source-cifar10"))
    src = run(source)
    print(f"source: cifar10 val_acc {src['val_acc']:.4f} ({src['num_train']} images, {s['source_epochs']} epochs)")

    target = replace(base, data="imagenette", train_limit=s["target_limit"], epochs=s["target_epochs"])
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

    table = table_md(results, s, args)
    (out / "table.md").write_text(table)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f}s")


def table_md(results: dict[str, list[float]], s: dict, args) -> str:
    lines = [f"Imagenette at 32 px, {s['target_limit']} training images, {s['target_epochs']} epochs, "
             f"{args.model} width {args.width}, seeds {s['seeds']}; accuracy on the 3,925 validation images.",
             "", "| start | val_acc (mean) | min | max |", "|---|---|---|---|"]
    for name, accs in results.items():
        lines.append(f"| {name} | {statistics.mean(accs):.4f} | {min(accs):.4f} | {max(accs):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
