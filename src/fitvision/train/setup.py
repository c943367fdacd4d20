"""From a config to everything training needs: pre-flight checks, the data, the model, the Learner.

    preflight(cfg)        # the checks that need the hardware or files, before any work
    s = build(cfg)        # Setup: ImageData, model, Learner, model.json's meta
    print("\\n".join(describe(s)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fitvision import __version__
from fitvision.config import TrainConfig, parse_model_options
from fitvision.errors import FitVisionError, check_choice
from fitvision.models.external import external_model, is_external
from fitvision.train import distributed
from fitvision.train.device import cpu_has_bf16, resolve_device, resolve_precision
from fitvision.train.hooks import FreezeAfter, Hook
from fitvision.train.imagedata import ImageData
from fitvision.train.learner import CLIP_MODES, Learner
from fitvision.train.seeding import seed_everything

DATA_INIT_IMAGES = 5000  # images a data-dependent init (whitening) looks at: enough for a 12x12 covariance


def preflight(cfg: TrainConfig) -> TrainConfig:
    """What would fail only after the data is decoded or the run directory made: the device, the
    precision on it, the loop's choices, the fine-tuning phases and the run --init-from names.
    Returns cfg with the device and precision resolved (what the Learner runs with; config.json
    keeps what was asked for, e.g. "auto", so a resumed run resolves it again on its machine)."""
    from fitvision.train.modelfile import read_meta
    from fitvision.train.tracking import check_available
    from fitvision.train.transfer import fine_tune_phases

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    check_choice("clip_mode", cfg.clip_mode, CLIP_MODES)
    fine_tune_phases(cfg)
    if cfg.init_from:
        read_meta(cfg.init_from)
    check_available(cfg)  # --tensorboard / --mlflow: their packages
    if cfg.sync_bn and device.type != "cuda":  # torch's SyncBatchNorm runs on GPUs only
        raise FitVisionError(f"--sync-bn needs CUDA devices; this run is on {device}")
    return dataclasses.replace(cfg, device=str(device), precision=precision)


@dataclass
class Setup:
    """Everything built from a config before training."""

    cfg: TrainConfig
    data: ImageData
    learn: Learner
    meta: dict[str, Any]  # model.json
    params: int
    notes: list[str]


def build(cfg: TrainConfig, hooks: list[Hook] | None = None, progress: bool = True) -> Setup:
    """Data, model and Learner for cfg; every random draw follows cfg.seed."""
    asked = cfg.precision
    cfg = preflight(cfg)
    data = ImageData.from_config(cfg)
    model, meta, params, notes = build_model(cfg, data)
    if cfg.sync_bn and distributed.world().distributed:  # BatchNorm statistics over the global batch
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    learn = Learner.from_config(cfg, model, data.train_dl, data.valid_dl, hooks=hooks or [], progress=progress)
    notes += stem_bias_hook(cfg, learn) + precision_note(asked, cfg)
    return Setup(cfg=cfg, data=data, learn=learn, meta=meta, params=params, notes=data.notes + notes)


def precision_note(asked: str, cfg: TrainConfig) -> list[str]:
    """Why "auto" gave fp32 on this CPU, where it gives bf16 on others (the same recipe runs
    several times slower there, and a user comparing machines should see why)."""
    if asked == "auto" and cfg.precision == "fp32" and cfg.device == "cpu" and not cpu_has_bf16():
        return ["precision auto -> fp32: this CPU has no native bf16 (AVX-512 BF16 or AMX)"]
    return []


def build_model(cfg: TrainConfig, data: ImageData) -> tuple[nn.Module, dict[str, Any], int, list[str]]:
    """(model on the data's device, model.json's meta, parameter count, notes) for cfg.model on data."""
    from fitvision.models import count_params, create_model, lsuv_init
    from fitvision.models.init import torch_default_init

    seed_everything(cfg.seed)  # the model's init draws the same numbers whatever the data code drew
    device, classes, notes = data.device, data.classes, []
    if is_external(cfg.model):  # a pretrained timm/torchvision network; model.json says how to rebuild it
        kwargs = {"num_classes": len(classes)}
        model = external_model(cfg.model, pretrained=True, **kwargs).to(device)
        notes.append(f"{cfg.model}: pretrained weights, final layer new for {len(classes)} classes")
    else:
        kwargs = {"num_classes": len(classes), "in_channels": 3, "width": cfg.width,
                  **parse_model_options(cfg.model_options)}
        model = create_model(cfg.model, **kwargs).to(device)
    progressive = cfg.progressive_size and cfg.progressive_epochs
    _check_input_size(model, cfg.model, min(data.size, cfg.progressive_size) if progressive else data.size, device)
    if cfg.init == "torch":
        notes.append(f"PyTorch's default init on {torch_default_init(model)} conv and linear layers")
    if cfg.init == "lsuv":
        lsuv_init(model, data.train_dl.transform(data.train_dl.images[: cfg.bs]))  # one batch as training sees it
        notes.append("LSUV init on one training batch")
    if hasattr(model, "init_from_data") and not cfg.init_from:
        # Data-dependent layers (SpeedNet's whitening stem) see un-augmented training images.
        images = data.train_dl.images[:DATA_INIT_IMAGES]
        if model.init_from_data(data.valid_dl.transform(images)) is not False:
            notes.append(f"{cfg.model}: first layer initialised from {len(images):,} training images")
    if cfg.init_from:
        from fitvision.train.transfer import apply_init_from

        done = apply_init_from(model, cfg, classes=classes)
        head = "head reset for the new classes" if done["head_reset"] else "head kept (same classes)"
        notes.append(f"initialised from {done['init_from']}: {done['loaded']} tensors, {head}")
    meta = {"model": cfg.model, "model_kwargs": kwargs, "classes": list(classes), "mean": data.mean,
            "std": data.std, "input_size": [data.size, data.size], "storage_size": cfg.storage_size,
            "resize_method": cfg.resize_method, "resize_filter": cfg.resize_filter, "crop_pct": cfg.crop_pct, "fitvision_version": __version__}
    return model, meta, count_params(model), notes


def stem_bias_hook(cfg: TrainConfig, learn: Learner) -> list[str]:
    """stem_bias_epochs: stop training a data-initialised stem's bias (SpeedNet) after that many epochs."""
    if not cfg.stem_bias_epochs:
        return []
    stem = getattr(learn.model, "stem_bias", None)
    if stem is None:
        raise FitVisionError(f"stem_bias_epochs needs a model with a data-initialised stem (speednet); "
                             f"{cfg.model} has none")
    learn.hooks.append(FreezeAfter([stem], cfg.stem_bias_epochs))
    return [f"{cfg.model}: stem bias trained for the first {cfg.stem_bias_epochs:g} epochs only"]


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


def describe(s: Setup) -> list[str]:
    """The resolved setup, as printed before training."""
    cfg, learn = s.cfg, s.learn
    threads = f" ({torch.get_num_threads()} threads)" if learn.device.type == "cpu" else \
        f" ({torch.cuda.get_device_name(learn.device)})"
    clip = f"clip {cfg.clip:g} by {cfg.clip_mode}" if cfg.clip else "no clipping"
    options = f" ({cfg.model_options})" if cfg.model_options else ""
    width = "" if is_external(cfg.model) else f" width {cfg.width:g}"
    # Muon's body weights (filters, matrices) have their own lr and momentum: show them too
    muon = (f", body weights {cfg.muon_lr or cfg.lr:g} momentum {cfg.muon_momentum or cfg.momentum:g}"
            + (" renormed" if cfg.muon_renorm else "")) if cfg.opt == "muon" else ""
    lines = [
        f"data      {s.data.summary()}",
        f"model     {cfg.model}{width}{options}: {s.params:,} parameters",
        f"device    {learn.device}{threads}, precision {learn.precision}"
        + (", channels_last" if cfg.channels_last else "") + (", compiled" if cfg.compile else ""),
        f"optimiser {cfg.opt} lr {cfg.lr:g}{muon} ({cfg.sched}), wd {cfg.wd:g} ({cfg.wd_mode}), {clip}, "
        f"batch {cfg.bs}, {cfg.epochs:g} epochs x {len(learn.train_dl)} batches, seed {cfg.seed}",
    ]
    extras = [f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"biases at {cfg.bias_lr_mult:g}x lr" if cfg.bias_lr_mult != 1 else "",
              f"EMA {cfg.ema:g}" if cfg.ema else "", "lookahead" if cfg.lookahead else "",
              _tta_line(cfg) if cfg.tta else ""]
    if any(extras):
        lines.append("extras    " + ", ".join(e for e in extras if e))
    return lines + [f"note      {n}" for n in s.notes]


def _tta_line(cfg: TrainConfig) -> str:
    if not cfg.tta_shift:
        return "flip TTA at the end"
    unsure = (f" (shifted views only where the mirror pair's top probability < {cfg.tta_confident:g})"
              if cfg.tta_confident else "")
    return f"flip + shifted-view TTA at the end{unsure}"
