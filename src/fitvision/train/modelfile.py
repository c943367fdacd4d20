"""model.safetensors + model.json: everything needed to predict, without the training config."""

from __future__ import annotations

import json
import math
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
MAX_SIDE = 4096  # px; model.json's input_size and storage_size above this are taken for corruption, not read


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
    check_meta(meta, path)
    return meta


def check_meta(meta: dict[str, Any], path: str | Path) -> None:
    """Every field of model.json of the type and range predicting needs, before anything is built
    from it: a hand-edited or hostile file must not allocate 40000x40000 inputs, divide by a std of
    0 into NaN probabilities, or fail later inside torch. One line naming the file and the field."""
    def bad(name: str, want: str) -> FitVisionError:
        shown = json.dumps(meta[name])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return FitVisionError(f"{path} is corrupt: {name} must be {want}, got {shown}")

    if not isinstance(meta["model"], str) or not meta["model"]:
        raise bad("model", "a model name")
    if not isinstance(meta["model_kwargs"], dict):
        raise bad("model_kwargs", "an object of the model's options")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of class names (strings)")
    if len(set(classes)) != len(classes):
        raise bad("classes", "distinct names")
    outputs = meta["model_kwargs"].get("num_classes")
    if outputs is not None and not _is_int(outputs):
        raise bad("model_kwargs", "an object whose num_classes is a whole number")
    if outputs is not None and outputs != len(classes):
        raise FitVisionError(f"{path} is corrupt: its classes do not match the model's {outputs} outputs")
    for name, low in (("mean", -math.inf), ("std", 0.0)):
        values = meta[name]
        if not (isinstance(values, list) and len(values) == 3
                and all(_is_number(v) and math.isfinite(v) and v > low for v in values)):
            raise bad(name, "3 finite numbers, one per RGB channel" + (", each above 0" if low == 0 else ""))
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in size)):
        raise bad("input_size", f"[height, width], whole numbers from 1 to {MAX_SIDE}")
    if not (_is_int(meta["storage_size"]) and 1 <= meta["storage_size"] <= MAX_SIDE):
        raise bad("storage_size", f"a whole number from 1 to {MAX_SIDE}")
    _check_optional(meta, bad)


def _check_optional(meta: dict[str, Any], bad) -> None:
    """The fields runs before them lack (read with a default then): checked when present."""
    from fitvision.data.decode import RESIZE_FILTERS, RESIZE_METHODS

    if "crop_pct" in meta and not (_is_number(meta["crop_pct"]) and 0 < meta["crop_pct"] <= 1):
        raise bad("crop_pct", "a number in (0, 1]")
    if "resize_method" in meta and meta["resize_method"] not in RESIZE_METHODS:
        raise bad("resize_method", " or ".join(f'"{m}"' for m in RESIZE_METHODS))
    if "resize_filter" in meta and meta["resize_filter"] not in RESIZE_FILTERS:
        raise bad("resize_filter", " or ".join(f'"{m}"' for m in RESIZE_FILTERS))
    if "fitvision_version" in meta and not isinstance(meta["fitvision_version"], str):
        raise bad("fitvision_version", "a version string")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON's true is no size


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
