"""Evaluation and prediction: the forward pass the Learner evaluates with, and the same from a
run directory alone (`fitvision eval`, `fitvision predict`, ``fitvision.load``).

evaluate_run reproduces summary.json's val_acc exactly (without TTA): the same validation subset,
the same eval pipeline, batch size and precision as train_run's final evaluation.
predict_files decodes files on threads (Pillow releases the GIL) and predicts them in batches, so
thousands of files go fast; a file that cannot be read gets an error entry and the rest go on.
"""

from __future__ import annotations

import glob
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fitvision.data.classnames import readable
from fitvision.errors import FitVisionError
from fitvision.train.device import autocast, resolve_device, resolve_precision

PREDICT_BATCH = 256  # images per forward pass in predict_files; also the decode chunk


def eval_batch_size(bs: int) -> int:
    """Validation batches are twice the training batch: no gradients or optimizer state to hold."""
    return 2 * bs


def subset_indices(n: int, limit: int, seed: int) -> np.ndarray:
    """All indices, or ``limit`` of them drawn by a seeded permutation (sorted: reads stay sequential)."""
    if not limit or limit >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit]).astype(np.int64)


def valid_indices(n: int, limit: int, seed: int) -> np.ndarray:
    """The validation images a run with this seed and valid_limit evaluates on (train_run and
    evaluate_run alike); its own stream (seed + 1), apart from the training subset's."""
    return subset_indices(n, limit, seed + 1)


def tta_views(x: torch.Tensor, shift: int = 0) -> list[tuple[torch.Tensor, float]]:
    """(view, weight) pairs for test-time augmentation of a normalised batch (N, C, H, W).

    The image and its mirror; with ``shift`` also the image moved diagonally by ``shift`` px
    up-left and down-right (reflect padding), each with its mirror. The unshifted pair keeps half
    the weight: the shifted views see slightly less of the image (airbench's multi-view TTA).
    """
    views = [(x, 0.5), (x.flip(3), 0.5)]
    if shift:
        h, w = x.shape[2:]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        moved = [padded[:, :, :h, :w], padded[:, :, 2 * shift:, 2 * shift:]]
        views = [(v, wt / 2) for v, wt in views] + [(v, 0.125) for m in moved for v in (m, m.flip(3))]
    return views


def _mixture(log_probs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The log of the weighted mean of the views' probabilities."""
    logw = torch.tensor(weights, device=log_probs[0].device).log().view(-1, 1, 1)
    return torch.logsumexp(torch.stack(log_probs) + logw, dim=0)


@torch.no_grad()
def eval_log_probs(module: Callable, x: torch.Tensor, tta: bool, autocast, shift: int = 0,
                   confident: float = 0.0) -> torch.Tensor:
    """fp32 log-probabilities of a normalised batch, the forward under the training precision's
    autocast (bf16 evaluation is several times faster on a CPU, and `fitvision eval` uses the same
    precision, so it still reproduces a run's val_acc). With TTA: the log of the weighted mean of
    the probabilities over ``tta_views`` (the image and its mirror, plus shifted views if ``shift``).

    ``confident`` > 0 (with ``shift``): an image whose mirror pair already gives its top class at
    least this probability keeps the pair's mean; only the others get the four shifted views. The
    shifted views rarely overturn a confident pair, and they are two thirds of TTA's cost.
    """
    def forward(view: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last):
            view = view.contiguous(memory_format=torch.channels_last)
        with autocast:
            return F.log_softmax(module(view).float(), dim=1)

    if not tta:
        return forward(x)
    views = tta_views(x, shift)
    if not (shift and confident > 0):
        return _mixture([forward(v) for v, _ in views], [w for _, w in views])
    pair = [forward(v) for v, _ in views[:2]]
    out = _mixture(pair, [0.5, 0.5])
    unsure = (out.max(dim=1).values < math.log(confident)).nonzero().squeeze(1)
    if len(unsure):
        shifted = [forward(v) for v, _ in tta_views(x[unsure], shift)[2:]]
        out[unsure] = _mixture([p[unsure] for p in pair] + shifted, [w for _, w in views])
    return out


def loss_and_accuracy(log_probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """{"val_loss": mean cross-entropy, "val_acc": top-1 accuracy} from log-probabilities."""
    return {"val_loss": F.nll_loss(log_probs, targets).item(),
            "val_acc": (log_probs.argmax(1) == targets).float().mean().item()}


def class_metrics(log_probs: torch.Tensor, targets: torch.Tensor, classes: list[str], k: int = 5) -> dict[str, Any]:
    """Top-k accuracy (k capped at the number of classes) and, per class, precision (of the
    images predicted as it, the share that are it), recall (of its images, the share predicted
    as it), F1 and support; macro_f1 is the mean F1 over the classes with images. A class never
    predicted has precision 0, as scikit-learn reports it (zero_division=0)."""
    k = min(k, log_probs.shape[1])
    topk = (log_probs.topk(k, dim=1).indices == targets.view(-1, 1)).any(1).float().mean().item()
    preds = log_probs.argmax(1)
    per_class, f1s = {}, []
    for i, name in enumerate(classes):
        support, predicted = int((targets == i).sum()), int((preds == i).sum())
        hits = int(((preds == i) & (targets == i)).sum())
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            f1s.append(f1)
    return {f"top{k}_acc": topk, "per_class": per_class, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def format_evaluation(result: dict[str, Any]) -> list[str]:
    """`fitvision eval`'s lines: the totals, then a table of the classes."""
    topk = next(key for key in result if key.startswith("top"))
    lines = [f"val_acc {result['val_acc']:.4f}  {topk} {result[topk]:.4f}  val_loss {result['val_loss']:.4f}  "
             f"macro_f1 {result['macro_f1']:.4f}  ({result['num_valid']} images)"]
    width = max(16, *(len(name) for name in result["per_class"]))
    lines.append(f"  {'class':<{width}} precision  recall      f1  images")
    for name, m in result["per_class"].items():
        lines.append(f"  {name:<{width}} {m['precision']:9.4f} {m['recall']:7.4f} {m['f1']:7.4f} {m['support']:7d}")
    return lines


@torch.no_grad()
def collect_log_probs(model: nn.Module, forward: Callable, batches, tta: bool, autocast, shift: int = 0,
                      channels_last: bool = False, confident: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities (N, C), targets (N,)) on the CPU over (x, y) batches, ``model`` in eval
    mode meanwhile (``forward`` is the module that computes: the model, compiled or its EMA)."""
    was_training = model.training
    model.eval()
    try:
        pairs = []
        for x, y in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pairs.append((eval_log_probs(forward, x, tta, autocast, shift, confident), y))
    finally:
        model.train(was_training)
    if not pairs:
        raise FitVisionError("the validation set is empty; check --valid-limit / --valid-pct")
    log_probs, targets = zip(*pairs)
    return torch.cat(log_probs).cpu(), torch.cat(targets).cpu()


@dataclass
class Run:
    """A trained model with what it needs to see images as it saw them in training."""

    path: Path
    model: torch.nn.Module
    meta: dict[str, Any]  # model.json
    config: dict[str, Any] = field(default_factory=dict)  # config.json ({} when absent)
    device: torch.device = torch.device("cpu")

    @property
    def classes(self) -> list[str]:
        # Runs from before readable names stored Imagenette's WordNet ids: show them as names too.
        return readable(list(self.meta["classes"]))

    @property
    def resize_method(self) -> str:
        # how training made its images square (runs from before the option all cropped)
        return str(self.meta.get("resize_method", "crop"))

    @property
    def resize_filter(self) -> str:
        return str(self.meta.get("resize_filter", "bicubic"))  # runs from before the option: bicubic

    def predict(self, images, topk: int = 3):
        """A path, PIL image or uint8 array (H, W, 3) -> {"class", "prob", "top": [{"class", "prob"}]};
        a list of them -> a list. Decoded and transformed as the run's validation images were."""
        single = not isinstance(images, (list, tuple))
        out = predict_images(self, [images] if single else list(images), topk)
        return out[0] if single else out

    def evaluate(self, data: str | None = None, tta: bool | None = None,
                 crop_pct: float | None = None) -> dict[str, Any]:
        """evaluate_run on this run: summary.json's val_acc again, or on other data with the same classes."""
        return evaluate_run(self, data=data, tta=tta, crop_pct=crop_pct)


def load_run(run_dir: str | Path, device: str | torch.device | None = None) -> Run:
    """Load model.safetensors + model.json (and config.json when present) onto a device."""
    from fitvision.train.modelfile import load_model, read_json

    run_dir = Path(run_dir)
    device = resolve_device("auto" if device is None else device)
    model, meta = load_model(run_dir, device=device)
    config = read_json(run_dir / "config.json")
    if config.get("channels_last", True):  # as the Learner held it: the conv kernels, hence the numerics, match
        model = model.to(memory_format=torch.channels_last)
    return Run(path=run_dir, model=model, meta=meta, config=config, device=device)


def _as_run(run) -> Run:
    return run if isinstance(run, Run) else load_run(run)


# --------------------------------------------------------------------------- forward
def _eval_pipeline(run: Run, crop_pct: float | None = None):
    """The run's evaluation transform; crop_pct None: the run's own (runs before crop_pct: whole images)."""
    from fitvision.data.augment import eval_pipeline

    h, w = run.meta["input_size"]
    crop_pct = run.meta.get("crop_pct", 1.0) if crop_pct is None else crop_pct
    return eval_pipeline(h if h == w else (h, w), run.meta["mean"], run.meta["std"], crop_pct=crop_pct)


def _autocast(run: Run):
    """The autocast the run trained (and evaluated) under, resolved for this device."""
    try:
        precision = resolve_precision(str(run.config.get("precision", "fp32")), run.device)
    except FitVisionError:  # e.g. an fp16 run evaluated on a CPU
        precision = "fp32"
    return autocast(run.device, precision)


def _log_probs(run: Run, pipe, x_uint8_nchw: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """fp32 log-probabilities for a uint8 batch, exactly as the Learner evaluates."""
    x = pipe(x_uint8_nchw.to(run.device))
    if run.config.get("channels_last", True):
        x = x.contiguous(memory_format=torch.channels_last)
    return eval_log_probs(run.model, x, tta, _autocast(run), int(run.config.get("tta_shift", 0)),
                          float(run.config.get("tta_confident", 0.0)))


# --------------------------------------------------------------------------- evaluate
def evaluate_run(run, data: str | None = None, tta: bool | None = None,
                 crop_pct: float | None = None) -> dict[str, Any]:
    """{"val_acc", "val_loss", "num_valid", "per_class_acc", "top5_acc" (top-k, k = min(5, classes)),
    "per_class" (precision, recall, f1, support), "macro_f1"} on the run's validation split (or `data`'s).

    tta and crop_pct None: as the run's own final evaluation (config.json's tta, model.json's
    crop_pct), so the result is summary.json's. A crop_pct given scores the same weights on
    another central fraction of each image, timm's validate --crop-pct."""
    from fitvision.data.augment import check_crop_pct
    from fitvision.data.dataset import carve_valid, load_dataset

    if crop_pct is not None:
        check_crop_pct(crop_pct)
    run = _as_run(run)
    cfg = run.config
    tta = bool(cfg.get("tta", False)) if tta is None else tta
    if data is None and "data" not in cfg:
        raise FitVisionError(f"{run.path} has no config.json saying which data it was trained on; pass --data")
    storage = int(cfg.get("storage_size", run.meta["storage_size"]))
    valid_pct, seed = float(cfg.get("valid_pct", 0.0)), int(cfg.get("seed", 0))
    # Other data is scored on its own validation split; the run's valid_pct carves one only
    # where it has none (an unsplit folder), as training would.
    ds = load_dataset(data or cfg["data"], storage_size=storage, valid_pct=0.0 if data else valid_pct, seed=seed,
                      resize_method=run.resize_method, resize_filter=run.resize_filter)
    if data and len(ds.valid_y) == 0 and valid_pct > 0:  # carved from what is loaded: a reload warned twice
        ds = carve_valid(ds, valid_pct, seed)
    if list(ds.classes) != run.classes:
        raise FitVisionError(f"{data or cfg['data']} has classes {ds.classes}, the model was trained on {run.classes}")
    # The run's own data: the validation subset train_run drew (valid_limit), with its seed.
    idx = valid_indices(len(ds.valid_y), 0 if data else int(cfg.get("valid_limit", 0)), seed)
    if len(idx) == 0:
        raise FitVisionError(f"{data or cfg['data']} has no validation images")
    images = ds.valid_x if len(idx) == len(ds.valid_y) else ds.valid_x[idx]
    targets = torch.from_numpy(np.asarray(ds.valid_y[idx], dtype=np.int64))
    log_probs = _log_probs_all(run, images, batch_size=eval_batch_size(int(cfg.get("bs", 400))), tta=tta, crop_pct=crop_pct)
    preds = log_probs.argmax(1)
    per_class = {name: int((preds[targets == i] == i).sum()) / int((targets == i).sum())
                 for i, name in enumerate(run.classes) if bool((targets == i).any())}
    # loss_and_accuracy is what train_run wrote summary.json with: the same float, not just close.
    return {**loss_and_accuracy(log_probs, targets), "num_valid": int(len(targets)), "per_class_acc": per_class,
            **class_metrics(log_probs, targets, run.classes)}


def _log_probs_all(run: Run, images: np.ndarray, batch_size: int, tta: bool,
                   crop_pct: float | None = None) -> torch.Tensor:
    """Log-probabilities (N, C) on the CPU, in the batches train_run's validation loader used."""
    pipe = _eval_pipeline(run, crop_pct)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = np.array(images[start:start + batch_size])  # a copy: memory maps are read-only
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        chunks.append(_log_probs(run, pipe, x, tta).cpu())
    return torch.cat(chunks)


# --------------------------------------------------------------------------- predict
def predict_files(run, files: Iterable[str | Path], topk: int = 3) -> list[dict[str, Any]]:
    """[{"file", "top": [{"class", "prob"}]}] or [{"file", "error"}], in the order given; a folder
    stands for the images under it.

    Each file is decoded as the training data was (decode_image at the run's storage size), then
    the eval pipeline brings it to the model's input size. Threads decode the next chunk of files
    while the model predicts the current one.
    """
    run = _as_run(run)
    files = [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]  # one file, not its letters
    files = _expand_folders(files)
    _check_topk(topk)
    topk = min(topk, len(run.classes))
    pipe = _eval_pipeline(run)
    storage = (int(run.meta["storage_size"]), run.resize_method, run.resize_filter)
    chunks = [files[i:i + PREDICT_BATCH] for i in range(0, len(files), PREDICT_BATCH)]
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        pending = [pool.submit(_decode, f, *storage) for f in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            decoded = [fut.result() for fut in pending]
            pending = [pool.submit(_decode, f, *storage) for f in chunks[k + 1]] if k + 1 < len(chunks) else []
            results += _predict_chunk(run, pipe, chunk, decoded, topk)
    return results


def predict_images(run, images: list, topk: int = 3) -> list[dict[str, Any]]:
    """[{"class", "prob", "top"}] for paths, PIL images or uint8 arrays, decoded as training
    decoded its files (decode_image at the run's storage size); an unreadable one raises."""
    from fitvision.data.decode import decode_image

    run = _as_run(run)
    _check_topk(topk)
    decoded = [decode_image(im, int(run.meta["storage_size"]), run.resize_method, resize_filter=run.resize_filter)
               for im in images]
    names = [str(im) if isinstance(im, (str, os.PathLike)) else None for im in images]
    out = _predict_chunk(run, _eval_pipeline(run), names, decoded, min(topk, len(run.classes))) if images else []
    return [{**({"file": r["file"]} if r["file"] else {}), "class": r["top"][0]["class"],
             "prob": r["top"][0]["prob"], "top": r["top"]} for r in out]


def _predict_chunk(run: Run, pipe, chunk: list[str], decoded: list, topk: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"file": f, "error": d} if isinstance(d, str) else {} for f, d in zip(chunk, decoded)]
    by_shape: dict[tuple, list[int]] = {}
    for i, d in enumerate(decoded):
        if not isinstance(d, str):
            by_shape.setdefault(d.shape, []).append(i)
    for group in by_shape.values():  # images smaller than the storage size keep their own size
        batch = torch.from_numpy(np.stack([decoded[i] for i in group])).permute(0, 3, 1, 2)
        top_p, top_i = _log_probs(run, pipe, batch).exp().cpu().topk(topk, dim=1)
        for row, i in enumerate(group):
            out[i] = {"file": chunk[i], "top": [{"class": run.classes[int(c)], "prob": float(p)}
                                                for p, c in zip(top_p[row], top_i[row])]}
    return out


def _check_topk(topk: int) -> None:
    if topk < 1:
        raise FitVisionError(f"topk must be at least 1, got {topk}")


def _expand_folders(files: list[str]) -> list[str]:
    """A folder stands for the images under it (sorted, as get_files lists them); one without
    images stays, and gets an error entry of its own. A pattern such as "shots/*.jpg" that no
    file is named stands for the files it matches (a shell that does not expand it, or quotes),
    or stays, to be reported as not found."""
    from fitvision.data.items import get_files

    out: list[str] = []
    for f in files:
        if not os.path.exists(f) and any(c in f for c in "*?["):
            matches = sorted(glob.glob(f, recursive=True))
            out += [m for m in matches if not os.path.isdir(m)] or [f]
            continue
        images = [str(p) for p in get_files(f)] if os.path.isdir(f) else []
        out += images or [f]
    return out


def _decode(path: str, storage_size: int, resize_method: str, resize_filter: str) -> np.ndarray | str:
    """uint8 (H, W, 3) decoded as training decoded it, or the reason it could not be."""
    from fitvision.data.decode import decode_image

    if os.path.isdir(path):  # only an empty one gets here (_expand_folders)
        return f"no images in folder {path}"
    try:
        return decode_image(path, storage_size=storage_size, resize_method=resize_method, resize_filter=resize_filter)
    except FitVisionError as e:
        return str(e)


def _threads() -> int:
    return max(1, min(8, torch.get_num_threads()))
