"""`fitvision train` and `fitvision lr-find`: from a TrainConfig to a run directory.

    cfg, why = resolve_recipe("auto")
    run_dir = train_run(cfg)

A run directory holds config.json, history.csv, batches.csv, model.safetensors + model.json,
checkpoint.pt, preds.npz, summary.json, plots/ and report.html (see docs/internals.md).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fitvision import __version__
from fitvision.config import RECIPES, TrainConfig, get_recipe, parse_model_options, updated
from fitvision.errors import FitVisionError
from fitvision.train.checkpoint import CHECKPOINT, seed_everything
from fitvision.train.hooks import Checkpointer, EarlyStopping, FreezeAfter, Hook, Phases, TrainState, format_seconds
from fitvision.train.learner import Learner, loss_and_accuracy
from fitvision.train.perf import keep_freed_memory
from fitvision.train.precision import resolve_device, resolve_precision
from fitvision.train.transfer import external_model, is_external

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds")
BATCH_COLUMNS = ("step", "epoch", "lr", "mom", "loss")
NORMALIZE = ("auto", "cifar")
DATA_INIT_IMAGES = 5000  # images a data-dependent init (whitening) looks at: enough for a 12x12 covariance


# --------------------------------------------------------------------------- recipes
def resolve_recipe(name: str = "auto", data: str | None = None, model: str | None = None) -> tuple[TrainConfig, str]:
    """(config, one line saying which recipe and why). "auto" picks the speed recipe for the
    hardware found ("gpu" on CUDA, "cpu" otherwise) for CIFAR-size data and the speed recipe's own
    model, "imagenette" for Imagenette/Imagewoof; another model or dataset gets "general" (Adam
    one-cycle, robust for any model)."""
    if name == "auto":
        cuda = torch.cuda.is_available()
        want = "gpu" if cuda else "cpu"
        where = f"CUDA GPU {torch.cuda.get_device_name(0)}" if cuda else "no CUDA GPU, training on the CPU"
        speed = RECIPES[want]
        if data and Path(data).name.lower().startswith(("imagenette", "imagewoof")):
            picked, where = "imagenette", "the recipe for Imagenette-size images (128 px)"
        elif model and model != speed.model:
            picked, where = "general", f"the '{want}' recipe is tuned for {speed.model}, not {model}"
        elif data and not Path(data).name.lower().startswith("cifar"):
            picked, where = "general", f"the '{want}' recipe is tuned for CIFAR-size images"
        else:
            picked = want
        why = f"recipe auto -> {picked}: {where}"
    else:
        picked, why = name, f"recipe {name}"
    cfg = dataclasses.replace(get_recipe(picked), recipe=picked)
    if data:
        cfg = updated(cfg, {"data": data})
    if cfg.normalize == "cifar" and not Path(cfg.data).name.lower().startswith("cifar"):
        cfg = updated(cfg, {"normalize": "auto"})
        why += f"; normalising {cfg.data} with its own channel stats, not CIFAR's"
    return cfg, why


def recipe_model_options(model: str, options: str) -> str:
    """A recipe's model_options when the run trains another model: kept if that model takes
    them all (xresnet18 keeps an xresnet50 recipe's act=mish), dropped otherwise, so that
    `--model resnet9` with a recipe tuned for xresnet50 trains rather than fails."""
    from fitvision.models.registry import get_entry

    if is_external(model):
        return ""  # built by its library as it is
    try:
        entry = get_entry(model)
    except FitVisionError:
        return options  # an unknown model: validate() names it
    wanted = parse_model_options(options)
    fits = entry.takes_any_option() or all(k in entry.options() for k in wanted)
    return options if fits else ""


# --------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """Everything built from a config before training: data, model, learner and what to record."""

    cfg: TrainConfig
    learn: Learner
    classes: list[str]
    dataset: str
    location: str
    valid_indices: np.ndarray  # into the validation split as load_dataset returns it
    num_train: int
    meta: dict[str, Any]  # model.json
    params: int
    notes: list[str]


def _subset(n: int, limit: int, seed: int) -> np.ndarray:
    """All indices, or `limit` of them drawn by a seeded permutation (sorted: reads stay sequential)."""
    if not limit or limit >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit]).astype(np.int64)


def _stats(cfg: TrainConfig, train_x: np.ndarray):
    from fitvision.data.augment import CIFAR_STATS, channel_stats

    if cfg.normalize == "cifar":
        return CIFAR_STATS
    if cfg.normalize == "auto":
        return channel_stats(train_x)
    raise FitVisionError(f"unknown normalize '{cfg.normalize}' (valid: {', '.join(NORMALIZE)})")


def _loaders(cfg: TrainConfig, ds, device: torch.device, notes: list[str]):
    from fitvision.data.augment import ProgressiveResize, eval_pipeline, train_pipeline
    from fitvision.data.loader import DeviceLoader

    train_idx = _subset(len(ds.train_y), cfg.train_limit, cfg.seed)
    valid_idx = _subset(len(ds.valid_y), cfg.valid_limit, cfg.seed + 1)
    train_x = ds.train_x if len(train_idx) == len(ds.train_y) else ds.train_x[train_idx]
    valid_x = ds.valid_x if len(valid_idx) == len(ds.valid_y) else ds.valid_x[valid_idx]
    train_y, valid_y = ds.train_y[train_idx], ds.valid_y[valid_idx]
    if len(train_y) == 0 or len(valid_y) == 0:
        # with --valid-pct given, "pass --valid-pct" would send the user round in a circle
        hint = (f"--valid-pct {cfg.valid_pct:g} of {len(ds.train_y) + len(ds.valid_y)} images leaves one side empty; "
                "choose a fraction that leaves images on both" if cfg.valid_pct > 0 else "unsplit data: pass --valid-pct")
        raise FitVisionError(f"{ds.name} has {len(train_y)} training and {len(valid_y)} validation images; "
                             f"both are needed ({hint})")
    mean, std = _stats(cfg, train_x)
    size = cfg.size or int(ds.image_size[0])
    # A last batch of one image breaks BatchNorm in training mode; drop it only then.
    drop_last = len(train_y) % cfg.bs == 1
    if drop_last:
        notes.append("the last training batch would hold one image; dropped each epoch")
    transform = train_pipeline(cfg.aug, size, mean, std)
    if cfg.progressive_size and cfg.progressive_epochs:
        transform = ProgressiveResize(transform, cfg.progressive_size, cfg.progressive_epochs)
        sizes = [transform.size(e, size) for e in range(math.ceil(cfg.progressive_epochs))]
        notes.append(f"progressive resizing: epochs 0-{len(sizes) - 1} at {', '.join(map(str, sizes))} px, then {size}")
    if cfg.crop_pct < 1:
        notes.append(f"evaluation on the central {cfg.crop_pct:g} of each image, resized to {size} px")
    train_dl = DeviceLoader(train_x, train_y, cfg.bs, shuffle=True, drop_last=drop_last, seed=cfg.seed,
                            device=str(device), transform=transform)
    valid_dl = DeviceLoader(valid_x, valid_y, cfg.bs * 2, device=str(device),
                            transform=eval_pipeline(size, mean, std, crop_pct=cfg.crop_pct))
    return train_dl, valid_dl, valid_idx, (list(mean), list(std)), size


def _model(cfg: TrainConfig, classes: list[str], device: torch.device, train_dl, valid_transform, size: int,
           notes: list[str]):
    from fitvision.models import count_params, create_model, lsuv_init

    if is_external(cfg.model):  # a pretrained timm/torchvision network; model.json says how to rebuild it
        kwargs = {"num_classes": len(classes)}
        model = external_model(cfg.model, pretrained=True, **kwargs).to(device)
        notes.append(f"{cfg.model}: pretrained weights, final layer new for {len(classes)} classes")
    else:
        kwargs = {"num_classes": len(classes), "in_channels": 3, "width": cfg.width,
                  **parse_model_options(cfg.model_options)}
        model = create_model(cfg.model, **kwargs).to(device)
    smallest = min(size, cfg.progressive_size) if cfg.progressive_size and cfg.progressive_epochs else size
    _check_input_size(model, cfg.model, smallest, device)
    if cfg.init == "lsuv":
        batch = train_dl.transform(train_dl.images[: cfg.bs])  # one augmented batch, as training sees it
        lsuv_init(model, batch)
        notes.append("LSUV init on one training batch")
    elif cfg.init != "default":
        raise FitVisionError(f"unknown init '{cfg.init}' (valid: default, lsuv)")
    if hasattr(model, "init_from_data") and not cfg.init_from:
        # Data-dependent layers (SpeedNet's whitening stem) see un-augmented training images.
        images = train_dl.images[:DATA_INIT_IMAGES]
        if model.init_from_data(valid_transform(images)) is not False:
            notes.append(f"{cfg.model}: first layer initialised from {len(images):,} training images")
    if cfg.init_from:
        from fitvision.train.transfer import apply_init_from

        done = apply_init_from(model, cfg, classes=classes)
        head = "head reset for the new classes" if done["head_reset"] else "head kept (same classes)"
        notes.append(f"initialised from {done['init_from']}: {done['loaded']} tensors, {head}")
    return model, kwargs, count_params(model)


@torch.no_grad()
def _check_input_size(model: nn.Module, name: str, size: int, device: torch.device) -> None:
    """One forward pass of two blank images at the smallest size training will use, in eval mode
    (no BatchNorm statistics move, nothing random is drawn): a net that pools a small image down
    to nothing fails here, before any run directory exists, instead of in the first batch."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, 3, size, size, device=device))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitVisionError(f"{name} cannot train on {size}x{size} px images ({reason}); "
                             "use a larger --size") from None
    finally:
        model.train(was_training)


def build(cfg: TrainConfig, hooks: list[Hook] | None = None, progress: bool = True) -> Setup:
    """Data, loaders, model and Learner for cfg; every random draw follows cfg.seed."""
    from fitvision.data.decode import load_dataset

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=str(device), precision=resolve_precision(cfg.precision, device))
    notes: list[str] = []
    ds = load_dataset(cfg.data, storage_size=cfg.storage_size, valid_pct=cfg.valid_pct, seed=cfg.seed,
                      resize_method=cfg.resize_method)
    if len(ds.classes) < 2:  # it would "reach" 100% without learning anything
        raise FitVisionError(f"{ds.location} has one class ({', '.join(ds.classes)}); a classifier needs at least "
                             "two class folders")
    train_dl, valid_dl, valid_idx, (mean, std), size = _loaders(cfg, ds, device, notes)
    seed_everything(cfg.seed)  # the model's init draws the same numbers whatever the data code drew
    model, kwargs, params = _model(cfg, ds.classes, device, train_dl, valid_dl.transform, size, notes)
    learn = Learner.from_config(cfg, model, train_dl, valid_dl, hooks=hooks or [], progress=progress)
    if cfg.stem_bias_epochs:
        stem = getattr(model, "stem_bias", None)
        if stem is None:
            raise FitVisionError(f"stem_bias_epochs needs a model with a data-initialised stem (speednet); "
                                 f"{cfg.model} has none")
        learn.hooks.append(FreezeAfter([stem], cfg.stem_bias_epochs))
        notes.append(f"{cfg.model}: stem bias trained for the first {cfg.stem_bias_epochs:g} epochs only")
    meta = {"model": cfg.model, "model_kwargs": kwargs, "classes": list(ds.classes), "mean": mean, "std": std,
            "input_size": [size, size], "storage_size": cfg.storage_size,
            "resize_method": cfg.resize_method, "crop_pct": cfg.crop_pct,
            "fitvision_version": __version__}
    return Setup(cfg=cfg, learn=learn, classes=list(ds.classes), dataset=ds.name, location=ds.location,
                 valid_indices=valid_idx, num_train=len(train_dl.labels), meta=meta, params=params, notes=notes)


def describe(s: Setup) -> list[str]:
    """The resolved setup, as printed before training."""
    cfg, learn = s.cfg, s.learn
    h, w = s.meta["input_size"]
    threads = f" ({torch.get_num_threads()} threads)" if learn.device.type == "cpu" else \
        f" ({torch.cuda.get_device_name(learn.device)})"
    clip = f"clip {cfg.clip:g} by {cfg.clip_mode}" if cfg.clip else "no clipping"
    options = f" ({cfg.model_options})" if cfg.model_options else ""
    width = "" if is_external(cfg.model) else f" width {cfg.width:g}"
    # Muon's body weights (filters, matrices) have their own lr and momentum: show them too
    muon = (f", body weights {cfg.muon_lr or cfg.lr:g} momentum {cfg.muon_momentum or cfg.momentum:g}"
            + (" renormed" if cfg.muon_renorm else "")) if cfg.opt == "muon" else ""
    lines = [
        f"data      {s.dataset}: {s.num_train:,} train / {len(s.valid_indices):,} valid images, "
        f"{len(s.classes)} classes, {h}x{w} px, aug {cfg.aug} ({s.location})",
        f"model     {cfg.model}{width}{options}: {s.params:,} parameters",
        f"device    {learn.device}{threads}, precision {learn.precision}"
        + (", channels_last" if cfg.channels_last else "") + (", compiled" if cfg.compile else ""),
        f"optimiser {cfg.opt} lr {cfg.lr:g}{muon} ({cfg.sched}), wd {cfg.wd:g} ({cfg.wd_mode}), {clip}, "
        f"batch {cfg.bs}, {cfg.epochs:g} epochs x {len(learn.train_dl)} batches, seed {cfg.seed}",
    ]
    extras = [f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"biases at {cfg.bias_lr_mult:g}x lr" if cfg.bias_lr_mult != 1 else "",
              f"EMA {cfg.ema:g}" if cfg.ema else "", "lookahead" if cfg.lookahead else "",
              ("flip + shifted-view" if cfg.tta_shift else "flip") + " TTA at the end" if cfg.tta else ""]
    if any(extras):
        lines.append("extras    " + ", ".join(e for e in extras if e))
    return lines + [f"note      {n}" for n in s.notes]


# --------------------------------------------------------------------------- run directory
def default_out(cfg: TrainConfig, kind: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{kind}{cfg.model}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row[c] for c in columns])
    tmp.replace(path)


class RunTables(Hook):
    """history.csv and batches.csv after every epoch, so a running (or crashed) run can be inspected."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, state: TrainState) -> None:
        write_tables(self.run_dir, state)


def write_tables(run_dir: Path, state: TrainState) -> None:
    _write_csv(run_dir / "history.csv", HISTORY_COLUMNS, state.history)
    _write_csv(run_dir / "batches.csv", BATCH_COLUMNS, state.batches)


def _prepare_run_dir(cfg: TrainConfig) -> tuple[TrainConfig, Path]:
    """The run directory, checked but not yet created (``_create_run_dir`` does that once the
    setup has worked, so a failed start leaves no half-made run behind); on --resume the run's
    own config.json replaces cfg."""
    if cfg.resume:
        if not cfg.out:
            raise FitVisionError("--resume needs --out RUN: the run directory to continue")
        run_dir = Path(cfg.out)
        if not (run_dir / CHECKPOINT).is_file():
            raise FitVisionError(f"cannot resume: {run_dir / CHECKPOINT} does not exist")
        saved = json.loads((run_dir / "config.json").read_text())
        return updated(TrainConfig(), {**saved, "resume": True, "out": str(run_dir)}), run_dir
    run_dir = Path(cfg.out) if cfg.out else default_out(cfg)
    if (run_dir / CHECKPOINT).exists() or (run_dir / "model.json").exists():
        raise FitVisionError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise FitVisionError(f"--out {run_dir} is a file, not a folder for the run")
    return dataclasses.replace(cfg, out=str(run_dir)), run_dir


def _create_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    if not cfg.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")


def _epochs_done(state: TrainState) -> float | int:
    epochs = round(state.step / state.steps_per_epoch, 4)
    return int(epochs) if epochs == int(epochs) else epochs


def _finish(s: Setup, run_dir: Path) -> dict[str, Any]:
    """Weights, predictions and summary of a finished fit."""
    from fitvision.train.modelfile import save_model

    learn, state, cfg = s.learn, s.learn.state, s.cfg
    module = learn.ema.module if learn.ema is not None else learn.model
    save_model(run_dir, module, s.meta)
    write_tables(run_dir, state)
    # The last epoch's full evaluation when this fit ran it, else (a resumed finished run) anew.
    log_probs, targets = learn.final_preds or learn.get_log_preds(tta=cfg.tta)
    np.savez(run_dir / "preds.npz", probs=log_probs.exp().numpy().astype(np.float32),
             targets=targets.numpy().astype(np.int64), indices=s.valid_indices.astype(np.int64))
    train_time = sum(row["train_seconds"] for row in state.history)
    summary = {
        **loss_and_accuracy(log_probs, targets),
        "epochs": _epochs_done(state),
        "train_seconds": round(sum(row["seconds"] for row in state.history), 3),
        "train_images_per_second": round(sum(row["images"] for row in state.history) / max(train_time, 1e-9), 1),
        "device": str(learn.device),
        "model": cfg.model,
        "params": s.params,
        "dataset": s.dataset,
        "num_train": s.num_train,
        "num_valid": int(len(targets)),
        "seed": cfg.seed,
        "precision": learn.precision,
        "tta": cfg.tta,
        "recipe": cfg.recipe,
        "stopped_early": state.stop,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def train_run(cfg: TrainConfig) -> Path:
    """Train as cfg says and write the run directory; returns its path.

    summary.json: train_seconds is the wall time of the epochs (training and per-epoch
    evaluation, not data loading or compile warm-up); train_images_per_second counts training
    time only. With --resume the run continues from checkpoint.pt exactly as it would have.
    """
    from fitvision.train.transfer import fine_tune_phases

    cfg, run_dir = _prepare_run_dir(cfg)
    s = build(cfg)
    _create_run_dir(cfg, run_dir)
    learn = s.learn
    if learn.device.type == "cpu":
        keep_freed_memory()
    phases = fine_tune_phases(s.cfg)
    if len(phases) > 1 or phases[0].frozen or phases[0].body_lr_mult != 1.0:
        learn.hooks.append(Phases(learn, phases))
    if cfg.early_stop:
        learn.hooks.append(EarlyStopping(cfg.early_stop))
    learn.hooks += [RunTables(run_dir), Checkpointer(learn, run_dir / CHECKPOINT, cfg.checkpoint_every)]
    for line in describe(s):
        print(line)
    print(f"run dir   {run_dir}" + (" (resuming)" if cfg.resume else ""), flush=True)
    from fitvision.optim.schedules import create_schedule

    total = max(1, round(cfg.epochs * len(learn.train_dl)))
    try:
        learn.fit(cfg.epochs, create_schedule(s.cfg, total_steps=total),
                  resume_from=run_dir / CHECKPOINT if cfg.resume else None)
    except KeyboardInterrupt:  # Ctrl-C: say how to go on (the CLI prints it on its one line)
        raise KeyboardInterrupt(f"continue with: fitvision train --resume --out {run_dir}"
                                if (run_dir / CHECKPOINT).is_file() else
                                f"no epoch finished, nothing to resume; train into {run_dir} again") from None
    summary = _finish(s, run_dir)
    from fitvision.report.html import write_report

    report = write_report(run_dir)
    print(f"done: val_acc {summary['val_acc']:.4f}, val_loss {summary['val_loss']:.4f} after "
          f"{summary['epochs']} epochs in {format_seconds(summary['train_seconds'])} "
          f"({summary['train_images_per_second']:,.0f} img/s); wrote {run_dir} ({Path(report).name})", flush=True)
    return run_dir


def lr_find_run(cfg: TrainConfig) -> Path:
    """The lr range test on cfg's data and model: writes lr_find.png and lr_find.csv, prints the suggestion."""
    from fitvision.train.lr_find import plot_lr_find

    run_dir = Path(cfg.out) if cfg.out else default_out(cfg, kind="lr_find-")
    s = build(cfg, progress=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    for line in describe(s):
        print(line)
    result = s.learn.lr_find()
    rows = [{"lr": lr, "loss": loss, "smoothed": sm} for lr, loss, sm in zip(result.lrs, result.losses, result.smoothed)]
    _write_csv(run_dir / "lr_find.csv", ("lr", "loss", "smoothed"), rows)
    plot = plot_lr_find(result, run_dir / "lr_find.png")
    stop = "stopped when the loss diverged" if result.diverged else "no divergence within the sweep"
    print(f"lr_find: {len(result.lrs)} batches, {stop}; loss minimum at lr {result.lr_min:.2e}")
    print(f"suggested lr: {result.suggestion:.2e} (a tenth of the minimum); plot: {plot}", flush=True)
    return run_dir
