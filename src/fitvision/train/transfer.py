"""Transfer learning (seeds 002/003): start from a trained run's body, fine-tune in phases.

``apply_init_from`` copies every weight of a finished run into a new model except the final
linear layer, which keeps its fresh initialisation for the new classes (or is copied too when
the classes are the same, to continue a run). ``fine_tune_phases`` says how to train it: the
head alone for ``freeze_epochs``, then everything, the body of a pretrained model at a lower
learning rate (discriminative learning rates). train_run applies the phases with the
``hooks.Phases`` hook, at epoch ends, under one schedule for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitvision.data.classnames import same_classes
from fitvision.errors import FitVisionError
from fitvision.models.external import is_external
from fitvision.models.groups import final_layer_name, unwrap

BODY_LR_MULT = 0.1  # body lr = this x head lr once a pretrained body is unfrozen


@dataclass(frozen=True)
class Phase:
    """A stretch of training: ``epochs`` long, body frozen or not, body lr = head lr x body_lr_mult."""

    epochs: float
    frozen: bool
    body_lr_mult: float = 1.0


def fine_tune_phases(cfg) -> list[Phase]:
    """The phases a TrainConfig asks for; a plain run is one unfrozen phase at body_lr_mult 1.

    ``freeze_epochs`` K > 0 (with or without ``freeze``): the head alone for K epochs, then all.
    ``freeze`` alone: the head alone for the whole run. A pretrained body (``init_from``, or a
    timm/torchvision model) trains at BODY_LR_MULT x the head's lr once unfrozen.
    """
    pretrained = bool(cfg.init_from) or is_external(cfg.model)
    unfrozen = Phase(cfg.epochs, False, BODY_LR_MULT if pretrained else 1.0)
    if cfg.freeze_epochs < 0:
        raise FitVisionError(f"--freeze-epochs must be 0 or more, got {cfg.freeze_epochs}")
    if cfg.freeze_epochs == 0:
        return [Phase(cfg.epochs, True)] if cfg.freeze else [unfrozen]
    if cfg.freeze_epochs >= cfg.epochs:
        raise FitVisionError(f"--freeze-epochs {cfg.freeze_epochs} leaves no epoch of the {cfg.epochs:g} "
                             "to train the whole network; use fewer, or --freeze alone")
    return [Phase(cfg.freeze_epochs, True), Phase(cfg.epochs - cfg.freeze_epochs, False, unfrozen.body_lr_mult)]


def _describe(model_name: str, kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k != "num_classes" and (k, v) != ("in_channels", 3)}
    args = ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return f"{model_name}({args})" if args else model_name


def _check_compatible(run_dir: Path, meta: dict, cfg, source: dict, dest: dict, skip: str) -> None:
    """Same architecture, same shapes everywhere but the final layer; else name both models."""
    theirs = _describe(meta["model"], meta.get("model_kwargs", {}))
    target = _describe(cfg.model, {"width": cfg.width}) if cfg is not None else "model"
    if cfg is not None and meta["model"] != cfg.model:
        raise FitVisionError(f"--init-from {run_dir} holds a {theirs}, which cannot initialise a {target}; "
                             f"train with --model {meta['model']} or start from a {cfg.model} run")
    for key, value in dest.items():
        if key.startswith(skip):
            continue
        if key not in source or source[key].shape != value.shape:
            where = f"shape {tuple(source[key].shape)} there, {tuple(value.shape)} here" if key in source \
                else "missing there"
            raise FitVisionError(f"--init-from {run_dir} holds a {theirs}, which does not fit this "
                                 f"{target}: '{key}' is {where}")


def apply_init_from(model: nn.Module, cfg_or_run_dir, classes: list[str] | None = None) -> dict[str, Any]:
    """Load a finished run's weights into ``model``, all but the final layer; returns what was done.

    ``cfg_or_run_dir`` is a TrainConfig (its ``init_from``, and ``model``/``width`` name the target
    in errors) or a run directory. The final layer is copied too only when ``classes`` equals the
    run's classes (continuing on the same labels); otherwise it keeps its fresh initialisation.
    """
    from safetensors.torch import load_file

    from fitvision.train.modelfile import WEIGHTS, read_meta

    cfg = cfg_or_run_dir if hasattr(cfg_or_run_dir, "init_from") else None
    run_dir = Path(cfg.init_from if cfg is not None else cfg_or_run_dir)
    meta = read_meta(run_dir)
    try:
        source = load_file(str(run_dir / WEIGHTS), device="cpu")
    except FileNotFoundError:
        raise FitVisionError(f"{run_dir} has no {WEIGHTS}") from None
    except Exception as e:  # safetensors raises its own types for corrupt headers
        raise FitVisionError(f"{run_dir / WEIGHTS} is corrupt: {e}") from None
    model = unwrap(model)  # torch.compile keeps the weights in the inner module
    head = final_layer_name(model) + "."
    dest = model.state_dict()
    _check_compatible(run_dir, meta, cfg, source, dest, head)
    keep_head = classes is not None and same_classes(classes, meta["classes"]) and all(
        source.get(k) is not None and source[k].shape == v.shape for k, v in dest.items() if k.startswith(head))
    state = {k: v for k, v in source.items() if k in dest and (keep_head or not k.startswith(head))}
    with torch.no_grad():
        for key, value in state.items():
            dest[key].copy_(value)
    return {"init_from": str(run_dir), "loaded": len(state), "head_reset": not keep_head,
            "source_classes": meta["classes"]}
