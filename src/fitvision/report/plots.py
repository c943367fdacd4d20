"""Training plots as PNG files.

Every figure is drawn on matplotlib's Agg canvas, created inside the function that needs it: no
pyplot global state, no GUI backend, nothing done at import time (importing fitvision stays cheap).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from fitvision.errors import FitVisionError
from fitvision.files import atomic_path

DPI = 100
RED, GREEN, BLUE, ORANGE = "#d62728", "#2ca02c", "#1f77b4", "#ff7f0e"


def _figure(width: float, height: float):
    """A Figure bound to an Agg canvas (selected here, not at import)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path | None):
    """Save as the path's format (no suffix: .png, as matplotlib would); return where it went.
    No path: return the Figure itself (a notebook shows it)."""
    if path is None:
        return fig
    path = Path(path)
    if path.is_dir():
        raise FitVisionError(f"{path} is a folder; give a file name such as {path / 'batch.png'}")
    if not path.suffix:
        path = path.with_suffix(".png")
    formats = fig.canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise FitVisionError(f"cannot write {path}: unknown image format '{path.suffix}' "
                             f"(valid: {', '.join('.' + f for f in sorted(formats))})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # (the format from the target's suffix: the temporary name ends in .tmp)
        fig.savefig(tmp, dpi=DPI, facecolor="white", format=path.suffix[1:].lower())
    return path


def _column(history: Sequence[dict], key: str) -> list[float]:
    return [float(row[key]) for row in history]


# --------------------------------------------------------------------------- curves
def plot_history(history: Sequence[dict], plots_dir: str | Path) -> list[Path]:
    """accuracy.png (val_acc, and train_acc where recorded, vs epoch) and loss.png (train and
    validation loss vs epoch).

    history: one dict per epoch with epoch, train_loss, val_loss, val_acc (history.csv rows).
    """
    from matplotlib.ticker import MaxNLocator

    plots_dir = Path(plots_dir)
    epochs = _column(history, "epoch")

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    train_acc = [row.get("train_acc", math.nan) for row in history]
    if any(v == v for v in train_acc):  # recorded (train_acc_limit > 0): the overfitting gap, seed 002's point
        ax.plot(epochs, [float(v) for v in train_acc], "-x", color=RED, label="training (unaugmented subset)")
    ax.plot(epochs, _column(history, "val_acc"), "-x", color=BLUE, label="validation")
    if any(v == v for v in train_acc):
        ax.legend()
    ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy vs. epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    acc = _save(fig, plots_dir / "accuracy.png")

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(epochs, _column(history, "train_loss"), "-x", color=BLUE, label="training")
    ax.plot(epochs, _column(history, "val_loss"), "-x", color=RED, label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss vs. epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    loss = _save(fig, plots_dir / "loss.png")
    return [acc, loss]


def plot_lr(batch_lrs: Sequence[float], path: str | Path, batch_moms: Sequence[float] | None = None) -> Path:
    """Learning rate vs batch (the seeds' third plot); momentum on a second axis when given."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(np.arange(len(batch_lrs)), batch_lrs, color=BLUE)
    ax.set(xlabel="batch", ylabel="learning rate", title="Learning rate vs. batch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    moms = np.asarray(batch_moms if batch_moms is not None else [], dtype=float)
    if np.isfinite(moms).any() and np.nanmax(moms) > np.nanmin(moms):  # only a momentum that varies
        ax2 = ax.twinx()
        ax2.plot(np.arange(len(moms)), moms, color=ORANGE, alpha=0.7)
        ax2.set_ylabel("momentum", color=ORANGE)
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion
def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[true, pred] = count, int64 (num_classes, num_classes)."""
    flat = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confused(cm: np.ndarray, classes: Sequence[str], k: int = 10) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells as (true, predicted, count), largest first; ties by class order."""
    off = np.array(cm, dtype=np.int64, copy=True)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [(int(i) // off.shape[1], int(i) % off.shape[1]) for i in order]
    return [(classes[t], classes[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path | None = None):
    """Counts, coloured by the fraction of each true class, with class names on both axes."""
    cm = np.asarray(cm)
    n = len(classes)
    side = min(max(5.0, 0.55 * n + 2.0), 16.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    rows = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(rows, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    show_labels = n <= 40
    if show_labels:
        ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), classes)
    if n <= 20:  # counts stay legible up to about 20 classes
        size = 10 if n <= 12 else 7
        for t in range(n):
            for p in range(n):
                colour = "white" if frac[t, p] > 0.5 else "black"
                ax.text(p, t, str(int(cm[t, p])), ha="center", va="center", color=colour, fontsize=size)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({int(cm.sum())} images)")
    return _save(fig, path)


def plot_top_confused(cm: np.ndarray, classes: Sequence[str], path: str | Path, k: int = 10) -> Path:
    """Horizontal bars: the k most frequent (true -> predicted) mistakes."""
    pairs = most_confused(cm, classes, k)
    fig = _figure(6.4, max(2.5, 0.4 * len(pairs) + 1.4))
    ax = fig.add_subplot()
    if not pairs:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        ax.set_axis_off()
    else:
        names = [f"{t} \u2192 {p}" for t, p, _ in pairs][::-1]
        counts = [c for _, _, c in pairs][::-1]
        bars = ax.barh(names, counts, color=RED, alpha=0.8)
        ax.bar_label(bars, padding=3)
        ax.set_xlabel("images (true \u2192 predicted)")
        ax.margins(x=0.12)
    ax.set_title("Most confused class pairs")
    return _save(fig, path)


# --------------------------------------------------------------------------- image grids
def show_batch(
    images_uint8_nhwc: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    path: str | Path | None = None,
    preds: Sequence[int] | None = None,
    probs: Sequence[float] | None = None,
    ncols: int = 8,
    title: str | None = None,
):
    """A labelled grid (the seeds' show_batch), saved to ``path`` (None: the Figure returned).
    With preds: 'true / predicted', mistakes in red."""
    images = np.asarray(images_uint8_nhwc)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    cell = 1.6 if preds is None else 1.9
    fig = _figure(ncols * 1.6, nrows * cell + (0.4 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        ax.imshow(images[i])
        truth = classes[int(labels[i])]
        if preds is None:
            ax.set_title(truth, fontsize=9)
            continue
        guess = classes[int(preds[i])]
        wrong = int(preds[i]) != int(labels[i])
        colour = RED if wrong else GREEN
        conf = f" {float(probs[i]):.2f}" if probs is not None else ""
        ax.set_title(f"{truth}\n\u2192 {guess}{conf}", fontsize=8, color=colour)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3 if wrong else 1)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def pick_grid(probs: np.ndarray, targets: np.ndarray, n: int = 32, seed: int = 0) -> np.ndarray:
    """Which validation images to show: half the worst mistakes (highest loss), half a random sample.

    Returns positions into probs/targets, worst mistakes first.
    """
    probs = np.asarray(probs)
    targets = np.asarray(targets)
    n = min(n, len(targets))
    loss = -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0))
    wrong = np.flatnonzero(probs.argmax(1) != targets)
    worst = wrong[np.argsort(-loss[wrong], kind="stable")][: n // 2]
    rest = np.setdiff1d(np.arange(len(targets)), worst)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rest, size=n - len(worst), replace=False))
    return np.concatenate([worst, sample]).astype(np.int64)


def plot_mistakes(images: np.ndarray, targets, probs, classes: Sequence[str], path: str | Path) -> Path:
    """The grid of validation images with true and predicted labels (images already picked)."""
    probs = np.asarray(probs)
    preds = probs.argmax(1)
    wrong = int((preds != np.asarray(targets)).sum())
    title = f"Validation images: true \u2192 predicted (confidence); {wrong} of {len(preds)} shown are mistakes"
    return show_batch(images, targets, classes, path, preds=preds, probs=probs.max(1), title=title)


def show_dataset(
    target: str, out: str | Path, aug: str | None = None, n: int = 32, seed: int = 0, storage_size: int = 160,
    size: int = 0, title_note: str = "",
) -> Path:
    """`fitvision datasets show`: a labelled grid of training images; with ``aug`` (a preset name)
    as training sees them through that augmentation, at ``size`` px (0: the stored size)."""
    from fitvision.data.dataset import load_dataset

    if n < 1:
        raise FitVisionError(f"--n must be at least 1, got {n}")
    ds = load_dataset(target, storage_size=storage_size)
    images, labels = (ds.train_x, ds.train_y) if len(ds.train_y) else (ds.valid_x, ds.valid_y)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(labels), size=min(n, len(labels)), replace=False)
    batch = take_rows(images, idx)
    title = f"{ds.name}: {len(idx)} training images"
    if aug is not None:
        batch = _augmented(batch, aug, size or batch.shape[1], seed)
        title += f", augmentation {aug}{title_note}"
    return show_batch(batch, labels[idx], ds.classes, out, title=title)


def take_rows(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """array[idx] as a contiguous copy, reading a memory map in sorted order (one pass over the file)."""
    idx = np.asarray(idx, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[idx[order]]
    return out


def _augmented(batch_nhwc: np.ndarray, aug: str, size: int, seed: int) -> np.ndarray:
    """A preset's training pipeline applied to a batch, then denormalized back to uint8 images."""
    import torch

    from fitvision.data.augment import CIFAR_STATS, train_pipeline
    from fitvision.data.color import denormalize

    mean, std = CIFAR_STATS  # any stats do: normalize then denormalize is the identity
    pipe = train_pipeline(aug, size, mean, std)
    x = torch.from_numpy(batch_nhwc).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(seed)
    y = denormalize(pipe(x, gen, 0).float(), mean, std).clamp(0, 1)
    return (y * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
