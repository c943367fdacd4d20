"""Named recipes (complete TrainConfigs), and the one path from a request to a run's config.

    cfg, why = resolve_config(recipe="auto", config_file=None, epochs=5)

``resolve_config`` is what `fitvision train`, `lr-find` and `tune`, ``fitvision.train()`` and
bench/ all use: the recipe (``auto`` picks one for the hardware and data), then a TOML/JSON
file, then explicit settings, later ones winning, then ``config.validate``. Checks that need
the hardware or files follow in ``fitvision.train.setup.preflight``.

Figures below are test accuracy on the JPEG CIFAR-10 copy and Imagenette's validation set, on a
2-core Zen 4 CPU, mean of 3 seeds; docs/benchmarks.md has the commands and per-seed tables. The
speed recipes (cpu, gpu, imagenette) leave the per-epoch training accuracy off (train_acc_limit 0):
their figures were timed without it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fitvision.config import TrainConfig, load_config_file, parse_model_options, updated, validate
from fitvision.errors import FitVisionError, did_you_mean

RECIPES: dict[str, TrainConfig] = {
    # Seed 001's ResNet9 recipe exactly: torch's Adam defaults (betas 0.9/0.999, eps 1e-8) with L2
    # weight decay 1e-4 on every parameter, one-cycle to 0.01 (OneCycleLR's defaults: pct_start
    # 0.3, div 25, final div 1e4), clip by value 0.1, batch 400, 16 epochs, reflect-pad crop +
    # flip, the seeds' CIFAR stats, fp32. The seed reports 90.31%.
    "seed": TrainConfig(
        model="resnet9", epochs=16, bs=400, opt="adam", lr=0.01, momentum=0.9, beta2=0.999, eps=1e-8,
        wd=1e-4, wd_mode="l2", wd_bn_bias=True, pct_start=0.3,
        clip=0.1, clip_mode="value", sched="one_cycle", aug="crop_flip", normalize="cifar",
        precision="fp32", recipe="seed",
    ),
    # The fastest route to a good CIFAR-10 model on a CPU: 91.04% in 652 s. airbench's techniques:
    # SpeedNet with a whitened stem (initialised from the data, its bias trained for 3 epochs
    # only), batch 2000, label smoothing 0.2, alternating flip + 2 px translation, lookahead every
    # 5 steps, 6-view TTA, bf16 where the CPU has it. The body's conv filters step with Muon (lr
    # 0.24, momentum 0.6, each filter bank held at norm sqrt(out), so no decay); the head and the
    # biases with Nesterov SGD at lr 1.5, momentum 0.85 (airbench's 11.5 per 1024 examples with
    # Nesterov is 11.5 / (1 + 1/(1-0.85)) = 1.5 per batch-mean loss) and L2 1.33e-3 (its decoupled
    # 0.002 per step / 1.5), biases at 64x the lr; a linear one-cycle 0.2 -> 1 over 23%, then
    # down to 0.07 of the peak.
    # Measured gains: norm shifts decayed as much per step as the weights (wd_bn_bias) and the
    # stem bias stepped like a weight, +0.22; a residual third conv in the second and third
    # groups (convs=2-3-3) at 12 epochs instead of 13, +0.26; the last group at 256 channels
    # (its maps are 8 and 4 px), +0.15. Progressive resizing (16 px growing to 32 by epoch 8)
    # trains 12 epochs for the compute of about 8; intermediate evaluations use 2,000 images; the
    # TTA's four shifted views go only to images whose mirror pair is under 0.6 sure (19% of them on
    # seed 0): the same 10,000 predictions as all six views for 46% of their cost.
    "cpu": TrainConfig(
        model="speednet", model_options="convs=2-3-3,widths=48-192-256", width=0.75, epochs=12, bs=2000,
        opt="muon", muon_lr=0.24, muon_momentum=0.6, muon_renorm=True, lr=1.5, momentum=0.85, wd=1.33e-3,
        wd_mode="l2", clip=0.0, sched="one_cycle_linear", pct_start=0.23, div_factor=5.0,
        final_div_factor=0.2 / 0.07, label_smoothing=0.2, bias_lr_mult=64.0, wd_bn_bias=True, aug="crop_flip_alt",
        progressive_size=16, progressive_epochs=8, stem_bias_epochs=3, epoch_valid_limit=2000,
        normalize="auto", tta=True, tta_shift=1, tta_confident=0.6, lookahead=True, precision="auto", train_acc_limit=0,
        recipe="cpu",
    ),
    # Imagenette / Imagewoof at 128 px from random init, no TTA: 88.70% after 5 epochs, 91.91%
    # after 20. ResNet-D 18 (xresnet18) with SiLU (+1.0 over ReLU for 5% more time; better than
    # xresnet50 with ReLU at 2.4x less time); 128 px random-resized crops (scale 0.35-1) + flip
    # from 160 px storage; evaluation on the central 0.875 resized to 128 px (+1.15 over the whole
    # image). The conv filters step with Muon at lr 0.04 (+8 points over Adam one-cycle after 5
    # epochs; +1.0 over Muon lr 0.06), the head, biases and norms with Nesterov SGD; a linear
    # one-cycle ending at 1% of the peak. Mish with flat-cos gave nothing over 3 seeds for 60%
    # more time: options only.
    "imagenette": TrainConfig(
        data="imagenette", size=128, storage_size=160, aug="rrc_flip", crop_pct=0.875, model="xresnet18",
        model_options="act=silu", epochs=5, bs=64, opt="muon", muon_lr=0.04, muon_momentum=0.85, muon_renorm=True,
        lr=0.2, momentum=0.9, wd=5e-4, wd_mode="l2", clip=0.0, sched="one_cycle_linear", pct_start=0.25,
        div_factor=10.0, final_div_factor=10.0, label_smoothing=0.1, normalize="auto", precision="auto",
        train_acc_limit=0, recipe="imagenette",
    ),
}
# Any model, any data: the seed's robust Adam one-cycle, in the hardware's best precision.
RECIPES["general"] = dataclasses.replace(RECIPES["seed"], normalize="auto", precision="auto", wd_bn_bias=False,
                                         recipe="general")
# The cpu recipe at full width (64-256-256) for a CUDA GPU; on this CPU it gives 91.28% (seed 0)
# for 46% more time than the cpu recipe. Not yet measured on a GPU.
# For a CUDA GPU, airbench94_muon's GPU choices until a GPU measurement says otherwise: the cpu
# recipe's network at full width, batch 2000, 8 epochs, bf16 (fp16 needs a loss scale), compiled
# (the warm-up before the first epoch), one input size (progressive resizing would compile again at
# each size, inside the timed epochs). Not yet run on a GPU: bench/gpu.sh is the check.
RECIPES["gpu"] = dataclasses.replace(RECIPES["cpu"], width=1.0, model_options="convs=2-3-3", epochs=8,
                                     progressive_size=0, progressive_epochs=0, compile=True, recipe="gpu")
# The second tier on a CPU (issue 30), named as airbench names its tiers: the cpu recipe at full
# width (64-256-256, convs=2-3-3) for 17 epochs, growing 16 -> 32 px by epoch 12, intermediate
# evaluations on 500 images: 91.91% +- 0.11 over 3 seeds (two threads; its wall time not yet measured
# side by side). 18 epochs gave 91.95% +- 0.06 in 639 s (1.7x airbench94's wall in the same session);
# an EMA of the weights (0.98 a step) 0.08 less on seed 0. docs/benchmarks.md has the runs.
RECIPES["cpu92"] = dataclasses.replace(RECIPES["cpu"], width=1.0, model_options="convs=2-3-3", epochs=17,
                                       progressive_epochs=12, epoch_valid_limit=500, recipe="cpu92")


# The other seed experiments, each as its seed ran it (docs/seeds.md has the figures). They share
# what a plain PyTorch loop of the seeds does: torch's Adam defaults (betas 0.9/0.999, eps 1e-8),
# a constant lr, no decay, no clipping, no augmentation, PyTorch's own layer init, fp32.
_PLAIN = TrainConfig(opt="adam", momentum=0.9, beta2=0.999, eps=1e-8, wd=0.0, clip=0.0, sched="constant",
                     aug="none", init="torch", precision="fp32")
SEED_RECIPES: dict[str, TrainConfig] = {
    # Seed 001 as it ran: fit_one_cycle was called without opt_func, so its default,
    # torch.optim.SGD (momentum 0, L2 1e-4), trained, and OneCycleLR cycled that momentum
    # 0.95 -> 0.85 -> 0.95: momentum SGD. The seed's run also began from a model already at 46.8%.
    "seed001_sgd": dataclasses.replace(RECIPES["seed"], opt="momentum", momentum=0.95),
    # Seed 002's ConvNet (2 conv + 2 fc): Adam 1e-3, batch 64, Normalize(0.5, 0.5), 14 epochs;
    # its train accuracy on 20 batches of 64 (1,280 images): 71% test, a 26-point gap.
    "seed002": dataclasses.replace(_PLAIN, model="convnet", bs=64, lr=1e-3, epochs=14, normalize="half",
                                   train_acc_limit=1280),
    # ... with dropout 0.6/0.6/0.5 for 29 epochs: 73%, the gap down to 7 points.
    "seed002_dropout": dataclasses.replace(_PLAIN, model="convnet", model_options="dropout=true", bs=64, lr=1e-3,
                                           epochs=29, normalize="half", train_acc_limit=1280),
    # ... with its augmentations: RandomRotation(30), flip, ColorJitter(brightness 1, contrast 1),
    # RandomResizedCrop (area 0.08-1). The seed shows them on one photo and reports no figure.
    "seed002_aug": dataclasses.replace(_PLAIN, model="convnet", model_options="dropout=true", bs=64, lr=1e-3,
                                       epochs=29, normalize="half", train_acc_limit=1280, aug="rrc_flip",
                                       rrc_scale="0.08-1", rotate=30.0, jitter="1,1,0,0"),
    # Seed 003's MLP (3072 -> 500 -> 10): Adam 3e-4, batch 32, 10 epochs, CIFAR's own stats: 53.5%.
    "seed003_mlp": dataclasses.replace(_PLAIN, model="mlp", bs=32, lr=3e-4, epochs=10,
                                       normalize="0.4914,0.48216,0.44653/0.24703,0.24349,0.26159"),
    # Seed 003's CNN (3 conv-ReLU-pool, 32-64-128): Adam 3e-4, batch 128, Normalize(0.5, 0.5),
    # 10 epochs: 70.24%.
    "seed003_cnn": dataclasses.replace(_PLAIN, model="cnn", bs=128, lr=3e-4, epochs=10, normalize="half"),
    # Seed 003's AlexNet with its regularisation: the 45k/5k split (validation accuracy, on the 5k),
    # ImageNet stats, L2 1e-4 on every parameter (Adam's weight_decay), dropout 0.5. No seed figure.
    "seed003_alexnet": dataclasses.replace(_PLAIN, model="alexnet", bs=128, lr=3e-4, epochs=10, valid_pct=0.1,
                                           normalize="imagenet", wd=1e-4, wd_mode="l2", wd_bn_bias=True),
    # Seed 004's Bag-of-Tricks CNN on Imagenette: 160 px images squashed to 128 (ResizeFixed), its
    # stats, conv-ReLU-BN layers 16-32-64 then 64-64-128-256 (stride 2), plain SGD (no momentum,
    # no decay), batch 64, 5 epochs, the cosine one-cycle combine_scheds([0.3, 0.7]) builds from
    # 0.1 up to 0.3 and down to 0.05, LSUV: 72.6%.
    "seed004": dataclasses.replace(_PLAIN, data="imagenette", size=128, storage_size=160, resize_method="squish",
                                   model="xresnet", model_options="depth=0,order=act_bn", bs=64, epochs=5, opt="sgd",
                                   momentum=0.0, lr=0.3, sched="one_cycle", pct_start=0.3, div_factor=3.0,
                                   final_div_factor=2.0, normalize="0.47,0.48,0.45/0.29,0.28,0.30", init="lsuv"),
}
for _name, _cfg in SEED_RECIPES.items():
    RECIPES[_name] = dataclasses.replace(_cfg, recipe=_name)

# What each recipe is for, in a line (`fitvision recipes`); the comments above say why each setting.
PURPOSES = {
    "cpu": "CIFAR-10 fast on a CPU: SpeedNet, Muon, 12 epochs (91.0% in about 5-11 minutes on 2 cores)",
    "cpu92": "CIFAR-10's second tier on a CPU: the cpu recipe at full width, 17 epochs (about 91.9%, about 2x its time)",
    "gpu": "a CUDA GPU: the cpu recipe's network at full width, 8 epochs, compiled (not yet measured on one)",
    "seed": "seed 001's ResNet9 recipe exactly (the seed reports 90.31%)",
    "imagenette": "Imagenette/Imagewoof at 128 px from random init: XResNet-18, Muon (88.7% in 5 epochs)",
    "general": "any model, any data: the seed's Adam one-cycle, in the hardware's best precision",
    "seed001_sgd": "seed 001 as it ran: ResNet9 with momentum SGD, the optimizer fit_one_cycle defaulted to (90.31%)",
    "seed002": "seed 002's ConvNet, Adam 1e-3, 14 epochs (71%, a 26-point train/test gap)",
    "seed002_dropout": "seed 002's ConvNet with dropout, 29 epochs (73%, the gap 7 points)",
    "seed002_aug": "seed 002's ConvNet with dropout and its four augmentations (no seed figure)",
    "seed003_mlp": "seed 003's MLP, Adam 3e-4, 10 epochs (53.5%)",
    "seed003_cnn": "seed 003's CNN, Adam 3e-4, 10 epochs (70.24%)",
    "seed003_alexnet": "seed 003's AlexNet on its 45k/5k split, L2 and dropout (no seed figure)",
    "seed004": "seed 004's Bag-of-Tricks CNN on Imagenette at 128 px, SGD, cosine one-cycle, LSUV (72.6%)",
}


def recipe_table() -> list[dict]:
    """``[{"name", "purpose", "settings"}]``: each recipe with its key settings in one line."""
    rows = []
    for name in sorted(RECIPES):
        c = RECIPES[name]
        lr = f"muon_lr {c.muon_lr:g}, lr {c.lr:g}" if c.opt == "muon" else f"lr {c.lr:g}"
        extras = [x for x, on in (("TTA", c.tta), ("lookahead", c.lookahead), ("EMA", c.ema > 0)) if on]
        settings = (f"{c.model} x{c.width:g}, {c.epochs:g} epochs, bs {c.bs}, {c.opt} ({lr}), {c.sched}, "
                    f"aug {c.aug}" + (f", size {c.size}" if c.size else "") + "".join(f", {x}" for x in extras)
                    + f", precision {c.precision}")
        rows.append({"name": name, "purpose": PURPOSES.get(name, ""), "settings": settings})
    return rows


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        valid = ", ".join(sorted(RECIPES))
        raise FitVisionError(f"unknown recipe '{name}' ({did_you_mean(name, ['auto', *RECIPES])}valid recipes: "
                             f"auto, {valid})")
    return dataclasses.replace(RECIPES[name])


def _cuda_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def resolve_recipe(name: str = "auto", data: str | None = None, model: str | None = None) -> tuple[TrainConfig, str]:
    """(config, one line saying which recipe and why). "auto" picks the speed recipe for the
    hardware found ("gpu" on CUDA, "cpu" otherwise) for CIFAR-size data and the speed recipe's own
    model, "imagenette" for Imagenette/Imagewoof; another model or dataset gets "general" (Adam
    one-cycle, robust for any model)."""
    if name == "auto":
        gpu = _cuda_name()
        want = "gpu" if gpu else "cpu"
        where = f"CUDA GPU {gpu}" if gpu else "no CUDA GPU, training on the CPU"
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
    from fitvision.models.external import is_external
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


def resolve_config(recipe: str | None = None, config_file: str | Path | None = None,
                   **settings: Any) -> tuple[TrainConfig, str]:
    """(the validated config, one line saying which recipe and why): the recipe (None: the
    file's, else "auto"), then the file's keys, then ``settings`` (None values ignored), later
    ones winning. A recipe's model_options are dropped for a model that does not take them, and
    a recipe's width for a timm/torchvision model, unless the file or settings give them."""
    from fitvision.models.external import is_external

    given = {k: v for k, v in settings.items() if v is not None}
    from_file = load_config_file(config_file) if config_file else {}
    file_recipe = from_file.pop("recipe", None)
    recipe = recipe or file_recipe or "auto"
    cfg, why = resolve_recipe(recipe, data=given.get("data") or from_file.get("data"),
                              model=given.get("model") or from_file.get("model"))
    cfg = updated(updated(cfg, from_file), given)
    chosen = from_file.keys() | given.keys()
    if "model_options" not in chosen:
        cfg = updated(cfg, {"model_options": recipe_model_options(cfg.model, cfg.model_options)})
    if is_external(cfg.model) and "width" not in chosen:
        cfg = updated(cfg, {"width": 1.0})  # a recipe's width sizes its own network, not a library's
    return validate(cfg), why
