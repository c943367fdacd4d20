"""model.safetensors + model.json: everything needed to predict, without the training config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fitvision.errors import FitVisionError
from fitvision.files import atomic_path, write_json
from fitvision.models.external import external_model, is_external
from fitvision.models.groups import unwrap

WEIGHTS = "model.safetensors"
META = "model.json"
META_KEYS = ("model", "model_kwargs", "classes", "mean", "std", "input_size", "storage_size")


def save_weights(path: str | Path, model: torch.nn.Module) -> Path:
    """The model's state as safetensors, written atomically: contiguous CPU copies (safetensors
    refuses shared storage), from inside any torch.compile/DDP wrapper."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return Path(path)


def save_model(run_dir: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save weights (safetensors) and meta (json). meta must hold every key in META_KEYS."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"model meta lacks {missing}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / WEIGHTS, model)
    write_json(run_dir / META, meta)


def read_json(path: Path) -> dict[str, Any]:
    """A run directory's JSON file; {} when absent, a clear error when corrupt."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FitVisionError(f"{path} is corrupt: {e}") from None


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FitVisionError(f"run directory not found: {run_dir}")
    path = run_dir / META
    if not path.is_file():
        raise FitVisionError(f"{run_dir} is not a finished run: {META} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FitVisionError(f"{path} is corrupt: {e}") from None
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise FitVisionError(f"{path} is corrupt: it lacks {', '.join(missing)}")
    outputs = meta["model_kwargs"].get("num_classes") if isinstance(meta["model_kwargs"], dict) else None
    if not isinstance(meta["classes"], list) or (outputs is not None and outputs != len(meta["classes"])):
        raise FitVisionError(f"{path} is corrupt: its classes do not match the model's {outputs} outputs")
    return meta


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the architecture from model.json and load model.safetensors into it."""
    from fitvision.models import create_model

    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise FitVisionError(f"{run_dir} has no {WEIGHTS}")
    if is_external(meta["model"]):  # timm:NAME / torchvision:NAME: the architecture only, our weights below
        model = external_model(meta["model"], pretrained=False, **meta["model_kwargs"])
    else:
        model = create_model(meta["model"], **meta["model_kwargs"])
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own types for corrupt headers
        raise FitVisionError(f"{weights} is corrupt: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # weights of another architecture or size than model.json says
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise FitVisionError(f"{weights} does not fit the model {META} describes ({first})") from None
    return model.to(device).eval(), meta
