"""The one training config: every default lives here, recipes are named instances.

The CLI and config files only fill in a TrainConfig; nothing else holds a default.
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

from fitvision.errors import FitVisionError


@dataclass
class TrainConfig:
    # --- data ---
    data: str = "cifar10"  # catalog name, folder or archive of class folders
    size: int = 0  # training input size in px; 0 = the dataset's storage size
    storage_size: int = 160  # decode size for images larger than 32 px (shorter side)
    resize_method: str = "crop"  # stored squares: "crop" the centre, or "squish" the whole picture
    train_limit: int = 0  # use only the first N training images (after a seeded shuffle); 0 = all
    valid_limit: int = 0  # evaluate on at most N validation images; 0 = all
    valid_pct: float = 0.0  # carve a validation split from unsplit data (or from train, for tuning)
    aug: str = "crop_flip"  # augmentation preset name, see fitvision.data.augment
    progressive_size: int = 0  # progressive resizing: epoch 0 trains at this size in px, growing linearly
    progressive_epochs: float = 0.0  # ... to the full size at this epoch (in 4 px steps); 0 = off
    normalize: str = "auto"  # "auto": channel stats of the training split; "cifar": the seeds' stats
    crop_pct: float = 1.0  # evaluation keeps the central crop_pct of each image, resized to size (timm's crop_pct)

    # --- model ---
    model: str = "resnet9"
    width: float = 1.0  # channel multiplier
    init: str = "default"  # "default" (kaiming / the model's own) or "lsuv"
    model_options: str = ""  # extra model arguments "name=value,...", e.g. "dirac=false" for speednet

    # --- optimisation ---
    epochs: float = 16  # may be fractional (airbench-style schedules)
    bs: int = 400  # batch size
    opt: str = "adam"  # optimizer name, see fitvision.optim.create_optimizer
    lr: float = 0.01  # peak learning rate (per batch, not scaled by batch size)
    momentum: float = 0.9  # SGD momentum, or Adam beta1
    beta2: float = 0.99  # Adam/LAMB beta2
    eps: float = 1e-5  # Adam/LAMB epsilon
    wd: float = 1e-4  # weight decay
    wd_mode: str = "l2"  # "l2" (added to the gradient, as torch.optim.Adam) or "decoupled"
    # Also decay biases and norm scales/shifts (torch.optim's default; the seeds do), as much per
    # step as the weights: at bias_lr_mult x the lr, their L2 coefficient is wd / bias_lr_mult.
    wd_bn_bias: bool = False
    clip: float = 0.1  # gradient clipping threshold; 0 = off
    clip_mode: str = "value"  # "value" (the seeds) or "norm"
    sched: str = "one_cycle"  # schedule name, see fitvision.optim.schedules
    pct_start: float = 0.25  # one-cycle warm-up fraction; flat_cos: the flat fraction (fastai: 0.75)
    div_factor: float = 25.0  # one-cycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4  # one-cycle: final lr = initial lr / final_div_factor
    label_smoothing: float = 0.0
    ema: float = 0.0  # EMA decay of weights per step; 0 = off
    lookahead: bool = False  # every 5 steps reset the weights to their running average (airbench)
    bias_lr_mult: float = 1.0  # lr multiplier for biases and norm shifts (the no-decay groups)
    muon_lr: float = 0.0  # opt "muon": peak lr of the orthogonalised body weights; 0 = lr
    muon_momentum: float = 0.0  # opt "muon": their momentum; 0 = momentum
    muon_renorm: bool = False  # opt "muon": hold each body filter bank at norm sqrt(out) (convs before BatchNorm)
    stem_bias_epochs: float = 0.0  # train the data-initialised stem's bias (SpeedNet) only this many epochs; 0 = always

    # --- loop ---
    seed: int = 0  # one seed drives split, shuffle, augmentation and init
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16"
    channels_last: bool = True
    compile: bool = False
    tta: bool = False  # flip test-time augmentation at evaluation
    tta_shift: int = 0  # with tta: also views shifted diagonally by this many px (and mirrored); 0 = flip only
    epoch_valid_limit: int = 0  # evaluate all but the last epoch on N evenly spaced validation images; 0 = all
    early_stop: int = 0  # patience in epochs on val_loss; 0 = off
    init_from: str = ""  # run directory whose body weights initialise the model
    freeze: bool = False  # train only the head (for freeze_epochs, or the whole run if 0)
    freeze_epochs: int = 0
    resume: bool = False
    checkpoint_every: int = 0  # also write the resume checkpoint every N batches; 0 = at epoch ends only
    out: str = ""  # run directory; "" = runs/<timestamp>-<name>
    recipe: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def coerce(name: str, value: Any) -> Any:
    """Convert a value from a config file or flag to the field's type, or raise a clear error."""
    types = _field_types()
    if name not in types:
        valid = ", ".join(sorted(types))
        raise FitVisionError(f"unknown config key '{name}' (valid keys: {valid})")
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
    """Read a TOML or JSON config file into a flat dict of overrides."""
    path = Path(path)
    if not path.is_file():
        raise FitVisionError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib  # noqa: PLC0415 - Python >= 3.11; 3.10 users pass JSON

            data = tomllib.loads(text)
    except ModuleNotFoundError:
        raise FitVisionError(f"{path}: TOML needs Python >= 3.11; use a .json config instead") from None
    except (ValueError, json.JSONDecodeError) as e:
        raise FitVisionError(f"{path}: cannot parse config: {e}") from None
    if not isinstance(data, dict):
        raise FitVisionError(f"{path}: a config file must hold a table of keys")
    return data


# Named recipes. Each is a complete TrainConfig; "auto" picks one by hardware.
RECIPES: dict[str, TrainConfig] = {
    # Exactly the hyperparameters of seed 001: ResNet9, torch's Adam defaults (betas 0.9/0.999,
    # eps 1e-8) with L2 weight decay 1e-4, one-cycle to 0.01 (torch OneCycleLR defaults: pct_start 0.3, div 25, final div 1e4),
    # clip by value 0.1, batch 400, 16 epochs, reflect-pad crop + flip, the seeds' stats.
    "seed": TrainConfig(
        model="resnet9", epochs=16, bs=400, opt="adam", lr=0.01, momentum=0.9, beta2=0.999, eps=1e-8,
        wd=1e-4, wd_mode="l2", wd_bn_bias=True, pct_start=0.3,
        clip=0.1, clip_mode="value", sched="one_cycle", aug="crop_flip", normalize="cifar",
        precision="fp32", recipe="seed",
    ),
    # The fastest route to a good CIFAR-10 model on a CPU (airbench's techniques, fitvision's code):
    # SpeedNet with a whitened stem, Nesterov SGD at a high lr with a linear one-cycle (warm-up
    # 0.2 -> 1 over 23%, then down to 0.07), biases at 64x the lr, label smoothing 0.2, batch 1024,
    # alternating flip + 2 px translation, lookahead every 5 steps, TTA, bf16 where the CPU has
    # it. Width and epochs are sized for 2 cores: docs/benchmarks.md has what each choice measured.
    # lr/wd per batch-mean loss: airbench's 11.5 per 1024 examples with Nesterov momentum 0.85 is
    # 11.5 / (1 + 1/(1-0.85)) = 1.5; its decoupled wd 0.0153 per 1024 examples is 0.002 per step,
    # i.e. L2 0.002 / 1.5 = 1.33e-3.
    # On top of airbench's set: progressive resizing (16 px growing to 32 by epoch 8: 12 epochs
    # for the compute of about 8), the stem bias trained for 3 epochs only, 6-view TTA, and
    # intermediate evaluations on 2,000 images.
    # Third round (airbench94_muon's optimizer): the body's conv filters step with Muon (peak lr
    # 0.24, momentum 0.6, each filter bank held at norm sqrt(out), so no weight decay on them) at
    # batch 2000; the head and the biases keep Nesterov SGD at the same per-example settings.
    # Fifth round (airbench94's bias treatment): BatchNorm shifts decay as much per step as the
    # weights (wd_bn_bias), and the whitening stem's bias steps at 1x the lr, decayed like a weight:
    # 90.63% (3 seeds) in 552 s, +0.22 over the third round's 90.41%.
    # Sixth round (depth): the second and third conv groups get airbench96's residual third conv
    # (convs=2-3-3), and 12 epochs instead of 13 pay for it: 90.89% (3 seeds) in 596 s, +0.26.
    # Seventh round (width where it is cheap): the last group at 256 channels instead of 192 (its
    # maps are 8 and 4 px): 91.04% (3 seeds) in 652 s, +0.15.
    "cpu": TrainConfig(
        model="speednet", model_options="convs=2-3-3,widths=48-192-256", width=0.75, epochs=12, bs=2000,
        opt="muon", muon_lr=0.24, muon_momentum=0.6, muon_renorm=True, lr=1.5, momentum=0.85, wd=1.33e-3,
        wd_mode="l2", clip=0.0, sched="one_cycle_linear", pct_start=0.23, div_factor=5.0,
        final_div_factor=0.2 / 0.07, label_smoothing=0.2, bias_lr_mult=64.0, wd_bn_bias=True, aug="crop_flip_alt",
        progressive_size=16, progressive_epochs=8, stem_bias_epochs=3, epoch_valid_limit=2000,
        normalize="auto", tta=True, tta_shift=1, lookahead=True, precision="auto", recipe="cpu",
    ),
}

# Imagenette / Imagewoof (issue 9's leaderboard setting: 128 px, random init, no TTA): ResNet-D 18
# (xresnet18) with SiLU; 128 px random-resized crops (scale 0.35-1) + flip from 160 px storage,
# evaluation on the central 0.875 resized to 128 px (+1.15 points over the whole image). The conv
# filters step with Muon (orthogonalised Nesterov momentum, each filter bank held at norm sqrt(out)
# as in the cpu recipe), the head, biases and norms with Nesterov SGD; a linear one-cycle ends at
# 1% of the peak: 87.70% after 5 epochs (3 seeds; Adam one-cycle gave 80.70%, and 88.8% after
# 20), docs/benchmarks.md ("Imagenette, sixth round"), with Muon's lr at 0.06. Its lr at 0.04
# does better: 88.70% after 5 epochs and 91.91% after 20 (3 seeds each; 91.06% at 0.06 on seed
# 0), "Imagenette, seventh round". SiLU gave +1.0 over ReLU
# on every seed for 5% more time, and beat xresnet50 with ReLU (80.4%) at 2.4x less time. The
# leaderboard's Mish + flat-cos gave nothing over 3 seeds (80.2%) at 60% more time: options only.
RECIPES["imagenette"] = TrainConfig(
    data="imagenette", size=128, storage_size=160, aug="rrc_flip", crop_pct=0.875, model="xresnet18",
    model_options="act=silu", epochs=5, bs=64, opt="muon", muon_lr=0.04, muon_momentum=0.85, muon_renorm=True,
    lr=0.2, momentum=0.9, wd=5e-4, wd_mode="l2", clip=0.0, sched="one_cycle_linear", pct_start=0.25,
    div_factor=10.0, final_div_factor=10.0, label_smoothing=0.1, normalize="auto", precision="auto",
    recipe="imagenette",
)
# Any model, any data: the seed's robust Adam one-cycle, in the hardware's best precision.
RECIPES["general"] = dataclasses.replace(RECIPES["seed"], normalize="auto", precision="auto", wd_bn_bias=False,
                                         recipe="general")
# The cpu recipe (convs=2-3-3, 12 epochs) at full width (64-256-256) for a CUDA GPU (bf16 autocast). Not yet
# measured on a GPU: no session so far had one; see docs/benchmarks.md.
RECIPES["gpu"] = dataclasses.replace(RECIPES["cpu"], width=1.0, model_options="convs=2-3-3", recipe="gpu")


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        valid = ", ".join(sorted(RECIPES))
        raise FitVisionError(f"unknown recipe '{name}' (valid recipes: auto, {valid})")
    return dataclasses.replace(RECIPES[name])


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


# Checked before any work starts, so a typo fails in a second, not after the data is decoded.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CHOICES = {"precision": PRECISIONS, "wd_mode": ("l2", "decoupled"), "clip_mode": ("value", "norm"),
            "normalize": ("auto", "cifar"), "init": ("default", "lsuv"), "resize_method": ("crop", "squish")}
_POSITIVE = ("epochs", "bs", "lr", "width", "eps", "bias_lr_mult", "div_factor", "final_div_factor")
_NON_NEGATIVE = ("size", "train_limit", "valid_limit", "wd", "clip", "label_smoothing", "ema", "early_stop",
                 "freeze_epochs", "checkpoint_every", "seed", "progressive_size", "progressive_epochs", "stem_bias_epochs",
                 "tta_shift", "epoch_valid_limit", "muon_lr")


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
    """Raise FitVisionError naming the first bad value; names are checked against the registries."""
    for name in _POSITIVE:
        if not getattr(cfg, name) > 0:
            raise FitVisionError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise FitVisionError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.valid_pct < 1:
        raise FitVisionError(f"valid_pct must be in [0, 1), got {cfg.valid_pct!r}")
    for name in ("momentum", "muon_momentum") if cfg.opt == "muon" else ():
        if not 0 <= getattr(cfg, name) < 1:  # muon keeps an EWMA buffer and divides by 1 - momentum
            raise FitVisionError(f"{name} must be in [0, 1) with opt muon, got {getattr(cfg, name)!r}")
    if cfg.opt == "muon" and cfg.muon_momentum and cfg.sched == "one_cycle":
        # one_cycle sets every group's momentum each step, which would silently replace muon_momentum
        raise FitVisionError("muon_momentum cannot be used with sched one_cycle, which schedules the momentum; "
                             "use one_cycle_linear or another schedule, or leave muon_momentum 0")
    # Fractions and decays outside these ranges fail only later (a schedule, the loss) or turn
    # the loss to NaN mid-run (beta2 = 1 makes Adam's debiasing divide by 0): catch them here.
    if cfg.sched in ("one_cycle", "one_cycle_linear", "cosine_warmup", "flat_cos") and not 0 < cfg.pct_start < 1:
        raise FitVisionError(f"pct_start must be in (0, 1) with sched {cfg.sched}, got {cfg.pct_start!r}")
    for name in ("momentum", "beta2", "label_smoothing"):
        if not 0 <= getattr(cfg, name) < 1:
            raise FitVisionError(f"{name} must be in [0, 1), got {getattr(cfg, name)!r}")
    if not 0 < cfg.crop_pct <= 1:
        raise FitVisionError(f"crop_pct must be in (0, 1], got {cfg.crop_pct!r}")
    if cfg.ema >= 1:
        raise FitVisionError(f"ema must be < 1 (a decay per step), got {cfg.ema!r}")
    for name, valid in _CHOICES.items():
        if getattr(cfg, name) not in valid:
            raise FitVisionError(f"unknown {name} '{getattr(cfg, name)}' (valid: {', '.join(valid)})")
    _validate_names(cfg)
    _validate_setup(cfg)
    return cfg


def _validate_setup(cfg: TrainConfig) -> None:
    """What train_run would refuse only after making the run directory: the device, the
    precision on it, the fine-tuning phases and the run --init-from names."""
    from fitvision.train.modelfile import read_meta
    from fitvision.train.precision import resolve_device, resolve_precision
    from fitvision.train.transfer import fine_tune_phases

    resolve_precision(cfg.precision, resolve_device(cfg.device))
    fine_tune_phases(cfg)
    if cfg.init_from:
        read_meta(cfg.init_from)


def _validate_names(cfg: TrainConfig) -> None:
    from fitvision.data.augment import PRESETS
    from fitvision.models import list_models
    from fitvision.models.registry import check_options
    from fitvision.optim.factory import optimizer_names
    from fitvision.optim.schedules import SCHEDULES

    from fitvision.train.transfer import check_external, is_external

    if is_external(cfg.model):  # timm:NAME / torchvision:NAME, pretrained
        check_external(cfg.model)
        if cfg.model_options or cfg.width != 1.0:
            raise FitVisionError(f"model '{cfg.model}' is built by its library as it is: "
                                 "model_options and width apply to fitvision's own models only")
    elif cfg.model not in list_models():
        raise FitVisionError(f"unknown model '{cfg.model}' (valid: {', '.join(list_models())}, "
                             "or timm:NAME / torchvision:NAME)")
    else:
        check_options(cfg.model, parse_model_options(cfg.model_options))
    if cfg.opt not in optimizer_names():
        raise FitVisionError(f"unknown optimizer '{cfg.opt}' (valid optimizers: {', '.join(optimizer_names())})")
    if cfg.sched not in SCHEDULES:
        raise FitVisionError(f"unknown schedule '{cfg.sched}' (valid schedules: {', '.join(SCHEDULES)})")
    if cfg.aug not in PRESETS:
        raise FitVisionError(f"unknown augmentation '{cfg.aug}' (valid: {', '.join(PRESETS)})")
