"""A trained run's final evaluation again, with the TTA's shifted views gated at several confidences.

`--tta-confident P` gives the four shifted views only to images whose mirror pair puts their top
class under probability P (fitvision.train.evaluate.eval_log_probs). This scores the same weights
on the run's own validation images (fitvision.train.evaluate.evaluate_run, as `fitvision eval`
does) at each P, timing each pass and counting the images the model is run on, and prints one
JSON line per P: accuracy, loss, forward passes per image, seconds.

    FITVISION_DATA_DIR=../shared/datasets .venv/bin/python bench/tta_gate.py --run RUN [--confident 0 0.5 0.6]

P 0 is every image with all six views (the run needs tta and tta_shift in its config.json).
"""

from __future__ import annotations

import argparse
import json
import time

from torch import nn

from fitvision.train.evaluate import evaluate_run, load_run


class CountImages(nn.Module):
    """The model, counting the images it is run on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


def gate_rows(run_dir: str, thresholds: list[float]) -> list[dict]:
    run = load_run(run_dir)
    if not (run.config.get("tta") and run.config.get("tta_shift")):
        raise SystemExit(f"{run_dir} was not evaluated with shifted-view TTA (config.json: tta, tta_shift)")
    counter = CountImages(run.model).eval()
    run.model = counter
    rows = []
    for p in thresholds:
        run.config["tta_confident"] = p
        counter.images = 0
        start = time.perf_counter()
        result = evaluate_run(run)
        seconds = time.perf_counter() - start
        rows.append({"confident": p, "val_acc": round(result["val_acc"], 4), "val_loss": round(result["val_loss"], 4),
                     "views_per_image": round(counter.images / result["num_valid"], 3),
                     "seconds": round(seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run directory trained with tta and tta_shift")
    p.add_argument("--confident", type=float, nargs="+", default=[0.0, 0.5, 0.6, 0.7])
    args = p.parse_args(argv)
    for row in gate_rows(args.run, args.confident):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
