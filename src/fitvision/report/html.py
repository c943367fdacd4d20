"""report.html: one self-contained page per run (inline CSS, images as data URIs, no network).

render_run_report redraws every plot from the run directory alone, then rewrites the page, so
`fitvision report RUN` works on a copied folder, long after training.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fitvision.data.classnames import readable
from fitvision.errors import FitVisionError
from fitvision.files import atomic_write_text
from fitvision.train.modelfile import read_json

REPORT = "report.html"
# (file in plots/, caption) in page order; each shown when present.
CURVES = [("accuracy.png", "Validation accuracy per epoch"), ("loss.png", "Training and validation loss"),
          ("lr.png", "Learning rate per batch"), ("top_confused.png", "Most confused class pairs")]
RUN_PLOTS = ("accuracy.png", "loss.png", "lr.png", "confusion.png")  # DESIGN.md's run directory
SUMMARY_FIELDS = [  # (summary.json key, label, formatter)
    ("val_acc", "validation accuracy", lambda v: f"{100 * v:.2f}%"),
    ("val_loss", "validation loss", lambda v: f"{v:.4f}"),
    ("epochs", "epochs", lambda v: f"{v:g}"),
    ("train_seconds", "training time", lambda v: _duration(v)),
    ("train_images_per_second", "training images / s", lambda v: f"{v:,.0f}"),
    ("params", "parameters", lambda v: f"{v:,}"),
    ("num_train", "training images", lambda v: f"{v:,}"),
    ("num_valid", "validation images", lambda v: f"{v:,}"),
    ("device", "device", str),
    ("precision", "precision", str),
    ("seed", "seed", str),
]


# --------------------------------------------------------------------------- reading a run
def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a numeric CSV (history.csv, batches.csv); [] when the file is absent."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        try:
            # a blank cell (e.g. no momentum for plain SGD) reads as NaN, not as a corrupt file
            return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]
        except (TypeError, ValueError) as e:
            raise FitVisionError(f"{path} is corrupt: {e}") from None


def read_preds(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = run_dir / "preds.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:  # never unpickle from a run folder
        return {k: z[k] for k in ("probs", "targets", "indices")}


def _read_meta(run_dir: Path) -> dict[str, Any]:
    """model.json, its classes as the data shows them now (WordNet ids of older runs as names)."""
    meta = read_json(run_dir / "model.json")
    if meta.get("classes"):
        meta["classes"] = readable(meta["classes"])
    return meta


def per_class_accuracy(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """[{"class", "count", "correct", "acc"}] in class order; acc is None for a class with no images."""
    preds = probs.argmax(1)
    rows = []
    for i, name in enumerate(classes):
        mask = targets == i
        count, correct = int(mask.sum()), int((preds[mask] == i).sum())
        rows.append({"class": name, "count": count, "correct": correct, "acc": correct / count if count else None})
    return rows


def _check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FitVisionError(f"run directory not found: {run_dir}")
    if not (run_dir / "model.json").is_file() and not (run_dir / "history.csv").is_file():
        raise FitVisionError(f"{run_dir} is not a fitvision run: no model.json or history.csv")
    return run_dir


# --------------------------------------------------------------------------- plots
def render_plots(run_dir: str | Path, dataset=None) -> list[str]:
    """Draw every plot into run_dir/plots from the run's files; returns notes on what was skipped.

    dataset: an already loaded fitvision.data.dataset.Dataset (saves reloading it after training);
    otherwise the validation images for the mistakes grid are loaded from config.json's data.
    """
    from fitvision.report import plots

    run_dir = _check_run_dir(run_dir)
    out = run_dir / "plots"
    notes = []
    history = read_csv(run_dir / "history.csv")
    if history:
        plots.plot_history(history, out)
    batches = read_csv(run_dir / "batches.csv")
    if batches:
        moms = [b["mom"] for b in batches] if "mom" in batches[0] else None
        plots.plot_lr([b["lr"] for b in batches], out / "lr.png", moms)
    meta = _read_meta(run_dir)
    preds = read_preds(run_dir)
    if preds is None or not meta.get("classes"):
        return notes + ["No predictions saved (preds.npz): confusion matrix and mistakes not drawn."]
    classes = meta["classes"]
    cm = plots.confusion_matrix(preds["targets"], preds["probs"].argmax(1), len(classes))
    plots.plot_confusion(cm, classes, out / "confusion.png")
    plots.plot_top_confused(cm, classes, out / "top_confused.png")
    note = _render_mistakes(run_dir, preds, meta, dataset)
    return notes + ([note] if note else [])


def _render_mistakes(run_dir: Path, preds: dict, meta: dict, dataset) -> str | None:
    from fitvision.report import plots

    config = read_json(run_dir / "config.json")
    out = run_dir / "plots" / "mistakes.png"
    out.unlink(missing_ok=True)  # never leave a grid from an earlier rendering behind
    pick = plots.pick_grid(preds["probs"], preds["targets"], n=32, seed=int(config.get("seed", 0)))
    if dataset is None:
        try:
            from fitvision.data.dataset import load_dataset
            from fitvision.data.readers import DataWarning

            # the split train_run evaluated on: its data, decode size, valid_pct and seed. Its data
            # warnings (skipped images) were given when the run loaded it: not again for a picture.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                dataset = load_dataset(config["data"],
                                       storage_size=int(config.get("storage_size", meta["storage_size"])),
                                       valid_pct=float(config.get("valid_pct", 0.0)), seed=int(config.get("seed", 0)),
                                       resize_method=str(meta.get("resize_method", "crop")),
                                       resize_filter=str(meta.get("resize_filter", "bicubic")))
        except (FitVisionError, KeyError, OSError) as e:
            return f"Mistakes grid not drawn: the validation images are not available here ({e})."
    indices = preds["indices"][pick]
    if len(indices) and int(indices.max()) >= len(dataset.valid_y):
        return "Mistakes grid not drawn: preds.npz does not match this dataset's validation split."
    plots.plot_mistakes(plots.take_rows(dataset.valid_x, indices), preds["targets"][pick], preds["probs"][pick],
                        meta["classes"], out)
    return None


def render_run_report(run_dir: str | Path, dataset=None) -> Path:
    """Redraw plots/ from the run directory alone, then rewrite report.html."""
    notes = render_plots(run_dir, dataset)
    return write_report(run_dir, notes)


# --------------------------------------------------------------------------- the page
def write_report(run_dir: str | Path, notes: list[str] | None = None) -> Path:
    """Write run_dir/report.html from the run's files and plots/.

    When plots/ lacks the run-directory plots (train_run calls only this), they are drawn first.
    """
    run_dir = _check_run_dir(run_dir)
    if notes is None and not all((run_dir / "plots" / name).is_file() for name in RUN_PLOTS):
        notes = render_plots(run_dir)
    summary = read_json(run_dir / "summary.json")
    config = read_json(run_dir / "config.json")
    meta = _read_meta(run_dir)
    history = read_csv(run_dir / "history.csv")
    preds = read_preds(run_dir)
    plots_dir = run_dir / "plots"
    notes = list(notes or [])
    if not (plots_dir / "mistakes.png").is_file() and not any("mistakes" in n.lower() for n in notes):
        notes.append("Mistakes grid not drawn yet: run `fitvision report RUN` to draw it.")

    sections = [
        _summary_section(run_dir, summary, meta, config),
        "<div class='notes'>" + "".join(f"<p>{_e(n)}</p>" for n in notes) + "</div>" if notes else "",
        _curves_section(plots_dir),
        _confusion_section(plots_dir, preds, meta),
        _image_section(plots_dir / "mistakes.png", "Validation images",
                       "True label, then the prediction and its confidence; mistakes are framed in red. "
                       "The first half are the worst mistakes (highest loss), the rest a random sample."),
        _history_section(history),
        _table_section("Configuration", config, "config.json: the resolved training config."),
        _table_section("Model", {k: v for k, v in meta.items() if k != "classes"}, "model.json"),
    ]
    body = "\n".join(s for s in sections if s)
    title = f"fitvision run {run_dir.resolve().name}"
    page = _PAGE.format(title=_e(title), css=_CSS, body=body, footer=_footer(meta))
    path = run_dir / REPORT
    atomic_write_text(path, page)
    return path


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{_e(alt)}'>"


def _summary_section(run_dir: Path, summary: dict, meta: dict, config: dict) -> str:
    model = summary.get("model") or meta.get("model") or config.get("model", "model")
    dataset = summary.get("dataset") or Path(str(config.get("data", "unknown data"))).name
    head = (f"<header><h1>{_e(model)} on {_e(dataset)}</h1>"
            f"<p class='sub'>{_e(run_dir.resolve())}</p></header>")
    cards = []
    for key, label, fmt in SUMMARY_FIELDS:
        if key in summary and summary[key] is not None:
            try:
                value = fmt(summary[key])
            except (TypeError, ValueError):
                value = str(summary[key])
            cls = " big" if key == "val_acc" else ""
            cards.append(f"<div class='card{cls}'><div class='v'>{_e(value)}</div>"
                         f"<div class='k'>{_e(label)}</div></div>")
    if not cards:
        return head + "<p class='note'>No summary.json: the run did not finish.</p>"
    return head + "<section><div class='cards'>" + "".join(cards) + "</div></section>"


def _curves_section(plots_dir: Path) -> str:
    # The plots carry their own titles: no caption under them.
    figs = [f"<figure>{_img(plots_dir / name, cap)}</figure>" for name, cap in CURVES if (plots_dir / name).is_file()]
    if not figs:
        return ""
    return "<section><h2>Training curves</h2><div class='grid2'>" + "".join(figs) + "</div></section>"


def _confusion_section(plots_dir: Path, preds: dict | None, meta: dict) -> str:
    parts = []
    if (plots_dir / "confusion.png").is_file():
        parts.append(f"<figure class='confusion'>{_img(plots_dir / 'confusion.png', 'confusion matrix')}"
                     "<figcaption>Counts; colour is the fraction of each true class.</figcaption></figure>")
    if preds is not None and meta.get("classes"):
        parts.append(_per_class_table(per_class_accuracy(preds["probs"], preds["targets"], meta["classes"])))
    if not parts:
        return ""
    return "<section><h2>Per-class results</h2><div class='split'>" + "".join(parts) + "</div></section>"


def _per_class_table(rows: list[dict]) -> str:
    lines = ["<table class='perclass'><thead><tr><th>class (worst first)</th><th>images</th><th>accuracy</th></tr>"
             "</thead><tbody>"]
    for r in sorted(rows, key=lambda r: -1 if r["acc"] is None else r["acc"]):
        acc = r["acc"]
        bar = "" if acc is None else f"<span class='bar' style='width:{100 * acc:.1f}%'></span>"
        text = "-" if acc is None else f"{100 * acc:.1f}%"
        lines.append(f"<tr><td>{_e(r['class'])}</td><td class='num'>{r['count']}</td>"
                     f"<td><div class='acc'><div class='track'>{bar}</div><span>{text}</span></div></td></tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def _image_section(path: Path, title: str, caption: str) -> str:
    if not path.is_file():
        return ""
    return (f"<section><h2>{_e(title)}</h2><figure class='wide'>{_img(path, title)}"
            f"<figcaption>{_e(caption)}</figcaption></figure></section>")


def _history_section(history: list[dict]) -> str:
    if not history:
        return ""
    keys = list(history[0])
    best = max(range(len(history)), key=lambda i: history[i].get("val_acc", 0.0))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = []
    for i, row in enumerate(history):
        cls = " class='best'" if i == best else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td class='num'>{_fmt_cell(k, row[k])}</td>" for k in keys) + "</tr>")
    return ("<section><h2>History</h2><p class='note'>One row per epoch (history.csv); the best validation "
            f"accuracy is highlighted.</p><table class='history'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _fmt_cell(key: str, value: float) -> str:
    if key == "epoch":
        return f"{value:g}"
    if key == "val_acc":
        return f"{100 * value:.2f}%"
    if key == "lr":
        return f"{value:.2e}"
    if key == "seconds":
        return f"{value:.1f}"
    return f"{value:.4f}"


def _table_section(title: str, data: dict, caption: str) -> str:
    """Key/value pairs in two columns: a full config is ~50 keys."""
    if not data:
        return ""
    items = "".join(f"<div class='kvrow'><span class='k'>{_e(k)}</span><span class='v'>"
                    f"{_e(json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v)}</span></div>"
                    for k, v in data.items())
    return (f"<section><h2>{_e(title)}</h2><p class='note'>{_e(caption)}</p>"
            f"<div class='kv'>{items}</div></section>")


def _footer(meta: dict) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from fitvision import __version__

    return f"written by fitvision {_e(__version__)} on {when}"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style></head>
<body><main>
{body}
<footer>{footer}</footer>
</main></body></html>
"""

_CSS = """
:root { --fg:#1d232b; --muted:#5f6b7a; --line:#e3e7ec; --bg:#f6f8fa; --accent:#1f77b4; --good:#2ca02c; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1200px; margin:0 auto; padding:24px 28px 40px; }
header h1 { margin:0; font-size:28px; }
.sub { margin:2px 0 16px; color:var(--muted); font-size:13px; word-break:break-all; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px; margin:0 0 20px; }
h2 { margin:0 0 12px; font-size:19px; }
.note { color:var(--muted); font-size:13px; margin:-6px 0 10px; }
.notes { background:#fff8e1; border:1px solid #f0d98a; border-radius:10px; padding:6px 18px; margin:0 0 20px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(160px,1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.card .v { font-size:20px; font-weight:600; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card.big { background:#eef6ee; border-color:#b9dcb9; }
.card.big .v { font-size:28px; color:#1b6e1b; }
figure { margin:0; text-align:center; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
.split { display:grid; grid-template-columns:minmax(0,3fr) minmax(260px,2fr); gap:22px; align-items:start; }
table { border-collapse:collapse; width:100%; font-size:13.5px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; }
thead th { background:var(--bg); font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.history th { text-align:right; }
tr.best td { background:#eef6ee; font-weight:600; }
.kv { display:grid; grid-template-columns:repeat(2,minmax(0,1fr)); column-gap:28px; font-size:13.5px; }
.kvrow { display:flex; gap:12px; padding:4px 8px; border-bottom:1px solid var(--line); }
.kvrow .k { flex:0 0 40%; color:var(--muted); }
.kvrow .v { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; word-break:break-all; }
.perclass .acc { display:flex; align-items:center; gap:8px; }
.track { flex:1; height:10px; background:var(--line); border-radius:5px; overflow:hidden; min-width:80px; }
.bar { display:block; height:100%; background:var(--accent); }
.acc span { width:52px; text-align:right; font-variant-numeric:tabular-nums; }
footer { color:var(--muted); font-size:12px; text-align:center; }
@media (max-width:800px) { .grid2, .split, .kv { grid-template-columns:1fr; } }
"""
