"""The one training config: every default lives here; recipes (fitvision.recipes) are named instances.

The CLI, config files and the Python API only fill in a TrainConfig (fitvision.recipes.resolve_config);
nothing else holds a default.
Units are in the comments: "per batch" etc. matter when batch size changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fitvision.errors import FitVisionError, check_choice, did_you_mean


def _f(default: Any, help: str) -> Any:
    """A field with its help text: the CLI makes a flag of every field (fitvision.options)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- data ---
    data: str = _f("cifar10", "dataset: a catalog name (`fitvision datasets`), a folder or an archive of class folders")
    size: int = _f(0, "training input size in px; 0 = the dataset's storage size")
    storage_size: int = _f(160, "decode size in px (shorter side) for images larger than 32 px")
    resize_method: str = _f("crop", "how a picture becomes a stored square: crop the centre, or squish the whole")
    resize_filter: str = _f("bicubic", "the filter that resizes it at decode (seed 004 compares nearest with bicubic)")
    train_limit: int = _f(0, "use only the first N training images (after a seeded shuffle); 0 = all")
    valid_limit: int = _f(0, "evaluate on at most N validation images; 0 = all")
    valid_pct: float = _f(0.0, "fraction carved out as validation from unsplit data (or from train, for tuning)")
    aug: str = _f("crop_flip", "augmentation preset, on the device per batch")
    rotate: float = _f(0.0, "also rotate each training image by up to +- this many degrees (seed 002: 30); 0 = off")
    translate: float = _f(0.0, "also shift each training image by up to this fraction of its size; 0 = off")
    jitter: str = _f("", "also colour jitter: one strength for brightness, contrast and saturation (timm's 0.4), "
                         "or 'b,c,s,h' (seed 002: 1,1,0,0); empty = off")
    perspective: float = _f(0.0, "aug perspective: its tilt (default 0.4); other presets: also warp each image, "
                                 "corners moved up to this fraction of the half-size; 0 = off")
    rrc_scale: str = _f("", "random-resized crop area range 'low-high' (torchvision's 0.08-1); empty = the preset's")
    rrc_ratio: str = _f("", "random-resized crop aspect range 'low-high'; empty = 0.75-1.333")
    progressive_size: int = _f(0, "progressive resizing: epoch 0 trains at this size in px; 0 = off")
    progressive_epochs: float = _f(0.0, "... growing linearly (in 4 px steps) to the full size at this epoch")
    hardest_frac: float = _f(0.0, "from epoch hardest_start on, train each epoch on this fraction of the training "
                                   "images: those with the highest loss when last trained; 0 = all")
    hardest_start: int = _f(2, "... the first epoch that keeps the hardest images only")
    normalize: str = _f("auto", "channel statistics: auto (the training split's own), cifar (the seeds'), half "
                                "(0.5 and 0.5, seed 002), imagenet, or 'm1,m2,m3/s1,s2,s3'")
    crop_pct: float = _f(1.0, "evaluation keeps the central fraction of each image, resized to size (timm's)")

    # --- model ---
    model: str = _f("resnet9", "architecture (`fitvision models`), or timm:NAME / torchvision:NAME")
    width: float = _f(1.0, "channel width multiplier")
    init: str = _f("default", "weight init: default (each model's own, Kaiming for the zoo), torch (PyTorch's "
                              "layer defaults) or lsuv (seed 004)")
    model_options: str = _f("", 'extra model arguments "name=value,...", e.g. "dirac=false" for speednet')

    # --- optimisation ---
    epochs: float = _f(16, "number of epochs (may be fractional)")
    bs: int = _f(400, "batch size (the global batch under torchrun / --nproc)")
    opt: str = _f("adam", "optimizer")
    lr: float = _f(0.01, "peak learning rate (per batch, not scaled by batch size)")
    momentum: float = _f(0.9, "SGD momentum, or Adam's beta1")
    beta2: float = _f(0.99, "Adam/LAMB beta2")
    eps: float = _f(1e-5, "Adam/LAMB epsilon")
    wd: float = _f(1e-4, "weight decay")
    wd_mode: str = _f("l2", "l2: added to the gradient (torch.optim.Adam); decoupled: applied to the weights (AdamW)")
    # Also decay biases and norm scales/shifts (torch.optim's default; the seeds do), as much per
    # step as the weights: at bias_lr_mult x the lr, their L2 coefficient is wd / bias_lr_mult.
    wd_bn_bias: bool = _f(False, "also decay biases and BatchNorm scales and shifts (torch.optim's default)")
    clip: float = _f(0.1, "gradient clipping threshold; 0 = off")
    clip_mode: str = _f("value", "clip each gradient element (value, the seeds') or the global norm")
    sched: str = _f("one_cycle", "learning-rate schedule")
    pct_start: float = _f(0.25, "one-cycle warm-up fraction; flat_cos: the flat fraction (fastai: 0.75)")
    div_factor: float = _f(25.0, "one-cycle: the initial lr is lr / div_factor")
    final_div_factor: float = _f(1e4, "one-cycle: the final lr is the initial lr / final_div_factor")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy targets")
    mixup: float = _f(0.0, "mixup: each batch blended with itself reversed, lam ~ Beta(alpha, alpha); 0 = off (timm: 0.8)")
    cutmix: float = _f(0.0, "cutmix: a box of the reversed batch pasted in, its area from Beta(alpha, alpha); 0 = off (timm: 1)")
    mix_prob: float = _f(1.0, "with mixup or cutmix: the fraction of batches mixed")
    mix_switch_prob: float = _f(0.5, "with both: the fraction of mixed batches that use cutmix")
    ema: float = _f(0.0, "EMA of the weights, decay per step (e.g. 0.999), evaluated and saved; 0 = off")
    lookahead: bool = _f(False, "every 5 steps pull the weights to their running average (airbench)")
    bias_lr_mult: float = _f(1.0, "lr multiplier for biases and norm shifts (the no-decay groups)")
    muon_lr: float = _f(0.0, "opt muon: peak lr of the orthogonalised body weights; 0 = lr")
    muon_momentum: float = _f(0.0, "opt muon: their momentum; 0 = momentum")
    muon_renorm: bool = _f(False, "opt muon: hold each body filter bank at norm sqrt(out) (convs before BatchNorm)")
    stem_bias_epochs: float = _f(0.0, "train the data-initialised stem's bias (speednet) only this many epochs; 0 = always")

    # --- loop ---
    seed: int = _f(0, "random seed: split, shuffle, augmentation and init")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    precision: str = _f("auto", "arithmetic: auto (bf16 where fast, else fp32), fp32, bf16 or fp16 (CUDA)")
    channels_last: bool = _f(True, "NHWC memory layout (faster convolutions on most hardware)")
    compile: bool = _f(False, "torch.compile the model (with a warm-up per input size)")
    tta: bool = _f(False, "flip test-time augmentation at evaluation")
    tta_shift: int = _f(0, "with tta: also views shifted diagonally by this many px (and mirrored); 0 = flip only")
    tta_confident: float = _f(0.0, "with tta_shift: an image whose mirror pair gives its top class at least this "
                                   "probability skips the shifted views; 0 = every image gets them")
    epoch_valid_limit: int = _f(0, "evaluate all but the last epoch on N evenly spaced validation images; 0 = all")
    train_acc_limit: int = _f(1000, "each epoch, accuracy on N evenly spaced training images, unaugmented and in "
                                    "eval mode: history's train_acc, the overfitting gap; 0 = off")
    early_stop: int = _f(0, "stop after this many epochs without val_loss improvement; 0 = off")
    init_from: str = _f("", "run directory whose body weights initialise the model (transfer)")
    freeze: bool = _f(False, "train only the head (for freeze_epochs, or the whole run if 0)")
    freeze_epochs: int = _f(0, "with freeze: train only the head for the first K epochs")
    resume: bool = _f(False, "continue the run in out from its last checkpoint")
    checkpoint_every: int = _f(0, "also write the resume checkpoint every N batches; 0 = at epoch ends only")
    accum: int = _f(1, "gradient accumulation: each batch in K forward/backward passes")
    sync_bn: bool = _f(False, "under torchrun: BatchNorm statistics over the global batch (CUDA only)")
    out: str = _f("", "run directory; empty = runs/<timestamp>-<name>")
    recipe: str = _f("auto", "named recipe (`fitvision recipes`), or auto: the best for this hardware and data")

    # --- tracking (optional extras) ---
    tensorboard: bool = _f(False, "write TensorBoard event files to RUN/tensorboard (pip install tensorboard)")
    mlflow: str = _f("", "log to MLflow: a tracking URI; alone (`default`): $MLFLOW_TRACKING_URI, else mlflow.db "
                         "in the working folder (pip install mlflow-skinny); empty = off")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from fitvision.files import write_json

        write_json(path, self.to_dict())


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def coerce(name: str, value: Any) -> Any:
    """Convert a value from a config file or flag to the field's type, or raise a clear error."""
    types = _field_types()
    if name not in types:
        valid = ", ".join(sorted(types))
        raise FitVisionError(f"unknown config key '{name}' ({did_you_mean(name, types)}valid keys: {valid})")
    kind = types[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise FitVisionError(f"config key '{name}' must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise FitVisionError(f"config key '{name}' must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise FitVisionError(f"config key '{name}' must be an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise FitVisionError(f"config key '{name}' must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise FitVisionError(f"config key '{name}' must be a number, got {value!r}") from None
        # float() takes "inf" and "nan": --lr inf trained to a NaN loss and reported a finished run
        if not math.isfinite(number):
            raise FitVisionError(f"config key '{name}' must be a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise FitVisionError(f"config key '{name}' must be a string, got {value!r}")
    return value


def updated(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of cfg with overrides applied, each checked and converted."""
    clean = {k: coerce(k, v) for k, v in overrides.items()}
    return dataclasses.replace(cfg, **clean)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a flat dict of overrides. A name without .json or
    .toml (a pipe: `--config <(echo '{"lr": 0.1}')`) is JSON when it starts with "{", else TOML."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise FitVisionError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FitVisionError(f"{path}: a config file must be UTF-8 text (byte {e.start} is not)") from None
    is_json = path.suffix == ".json" or (path.suffix != ".toml" and text.lstrip().startswith("{"))
    try:
        data = json.loads(text) if is_json else _toml().loads(text)
    except ValueError as e:  # json.JSONDecodeError and TOMLDecodeError are ValueErrors
        raise FitVisionError(f"{path}: cannot parse config: {e}") from None
    if not isinstance(data, dict):
        raise FitVisionError(f"{path}: a config file must hold a table of keys")
    return data


def _toml():
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # Python 3.10: a dependency there
        except ModuleNotFoundError:
            raise FitVisionError("TOML configs on Python 3.10 need tomli: pip install tomli "
                                 "(or pass a .json config)") from None
    return tomllib


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


# Checked before any work starts, so a typo fails in a second, not after the data is decoded.
# Lists of choices live beside their implementations; checks that need the hardware or files
# (the device, the precision on it, a run to initialise from) are fitvision.train.setup.preflight's.
_POSITIVE = ("epochs", "bs", "accum", "lr", "width", "eps", "bias_lr_mult", "div_factor", "final_div_factor")
_NON_NEGATIVE = ("size", "train_limit", "valid_limit", "wd", "clip", "label_smoothing", "ema", "early_stop", "mixup", "cutmix",
                 "freeze_epochs", "checkpoint_every", "seed", "progressive_size", "progressive_epochs", "stem_bias_epochs",
                 "hardest_start",
                 "tta_shift", "epoch_valid_limit", "train_acc_limit", "muon_lr")
_FRACTIONS = ("momentum", "beta2", "label_smoothing")  # in [0, 1)
_PCT_START_SCHEDULES = ("one_cycle", "one_cycle_linear", "cosine_warmup", "flat_cos")


def parse_model_options(text: str) -> dict[str, Any]:
    """ "whiten=false,dirac=true,depth=3" -> {"whiten": False, "dirac": True, "depth": 3}: true/false
    become booleans, numbers numbers, anything else stays a string."""
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise FitVisionError(f"model_options must be name=value pairs separated by commas, got {text!r}")
        options[name.strip()] = _option_value(value.strip())
    return options


def _option_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise FitVisionError naming the first bad value; names are checked against the registries.
    Pure: reads no file and asks no hardware."""
    from fitvision.data.augment import aug_params, check_crop_pct, fixed_stats
    from fitvision.data.decode import RESIZE_FILTERS, RESIZE_METHODS
    from fitvision.data.items import check_valid_pct
    from fitvision.models.init import INITS
    from fitvision.optim.factory import WD_MODES

    for name in _POSITIVE:
        if not getattr(cfg, name) > 0:
            raise FitVisionError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise FitVisionError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    check_valid_pct(cfg.valid_pct)
    for name in ("momentum", "muon_momentum") if cfg.opt == "muon" else ():
        if not 0 <= getattr(cfg, name) < 1:  # muon keeps an EWMA buffer and divides by 1 - momentum
            raise FitVisionError(f"{name} must be in [0, 1) with opt muon, got {getattr(cfg, name)!r}")
    if cfg.opt == "muon" and cfg.muon_momentum and cfg.sched == "one_cycle":
        # one_cycle sets every group's momentum each step, which would silently replace muon_momentum
        raise FitVisionError("muon_momentum cannot be used with sched one_cycle, which schedules the momentum; "
                             "use one_cycle_linear or another schedule, or leave muon_momentum 0")
    # Fractions and decays outside these ranges fail only later (a schedule, the loss) or turn
    # the loss to NaN mid-run (beta2 = 1 makes Adam's debiasing divide by 0): catch them here.
    if cfg.sched in _PCT_START_SCHEDULES and not 0 < cfg.pct_start < 1:
        raise FitVisionError(f"pct_start must be in (0, 1) with sched {cfg.sched}, got {cfg.pct_start!r}")
    for name in _FRACTIONS:
        if not 0 <= getattr(cfg, name) < 1:
            raise FitVisionError(f"{name} must be in [0, 1), got {getattr(cfg, name)!r}")
    check_crop_pct(cfg.crop_pct)
    for name in ("mix_prob", "mix_switch_prob", "hardest_frac", "tta_confident"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise FitVisionError(f"{name} must be in [0, 1], got {getattr(cfg, name)!r}")
    if cfg.ema >= 1:
        raise FitVisionError(f"ema must be < 1 (a decay per step), got {cfg.ema!r}")
    fixed_stats(cfg.normalize)
    aug_params(cfg)
    for name, valid in (("wd_mode", WD_MODES), ("init", INITS),
                        ("resize_method", RESIZE_METHODS), ("resize_filter", RESIZE_FILTERS)):
        check_choice(name, getattr(cfg, name), valid)
    _validate_names(cfg)
    return cfg


def _validate_names(cfg: TrainConfig) -> None:
    from fitvision.data.augment import PRESETS
    from fitvision.models import list_models
    from fitvision.models.external import check_external, is_external
    from fitvision.models.registry import check_options
    from fitvision.optim.factory import optimizer_names
    from fitvision.optim.schedules import SCHEDULES

    if is_external(cfg.model):  # timm:NAME / torchvision:NAME, pretrained
        check_external(cfg.model)
        if cfg.model_options or cfg.width != 1.0:
            raise FitVisionError(f"model '{cfg.model}' is built by its library as it is: "
                                 "model_options and width apply to fitvision's own models only")
    elif cfg.model not in list_models():
        raise FitVisionError(f"unknown model '{cfg.model}' ({did_you_mean(cfg.model, list_models())}valid: "
                             f"{', '.join(list_models())}, or timm:NAME / torchvision:NAME)")
    else:
        check_options(cfg.model, parse_model_options(cfg.model_options))
    if cfg.opt not in optimizer_names():
        raise FitVisionError(f"unknown optimizer '{cfg.opt}' (valid optimizers: {', '.join(optimizer_names())})")
    if cfg.sched not in SCHEDULES:
        raise FitVisionError(f"unknown schedule '{cfg.sched}' (valid schedules: {', '.join(SCHEDULES)})")
    if cfg.aug not in PRESETS:
        raise FitVisionError(f"unknown augmentation '{cfg.aug}' (valid: {', '.join(PRESETS)})")
