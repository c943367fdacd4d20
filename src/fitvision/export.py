"""Export a trained run to ONNX or TorchScript, with preprocessing and softmax inside the graph.

The exported model takes an NCHW RGB batch at the run's input size (any batch size): uint8
in 0..255 (``input_dtype="uint8"``) or float in [0, 1] (``"float"``, the default). It outputs
class probabilities. Class names, normalization stats and input size travel in the file's
metadata (ONNX ``metadata_props``; TorchScript extra file ``fitvision.json``), so a consumer
needs nothing from fitvision.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitvision import __version__
from fitvision.errors import FitVisionError
from fitvision.files import atomic_path
from fitvision.models.groups import unwrap

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_DTYPES = ("float", "uint8")
EXPORTERS = ("auto", "legacy", "dynamo")
OPSET = 17  # onnxruntime >= 1.14 runs it; new enough for every op a conv net needs
EXTRA_FILE = "fitvision.json"


class Preprocessed(nn.Module):
    """model(normalize(x)) -> softmax, with x uint8 in 0..255 or float in [0, 1], NCHW."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = (x.float() - self.mean) / self.std
        return torch.softmax(self.model(x).float(), dim=1)


def export_metadata(meta: dict[str, Any], input_dtype: str) -> dict[str, str]:
    """String key/values for the exported file: what a consumer needs to feed it and read it."""
    h, w = meta["input_size"]
    scale = {"uint8": "uint8 0..255", "float": "float32 0..1"}.get(input_dtype, "uint8 0..255 or float32 0..1")
    return {
        "classes": json.dumps(meta["classes"]),
        "input": f"RGB NCHW batch of shape (N, {len(meta['mean'])}, {h}, {w}), {scale}",
        "output": "class probabilities (N, num_classes), softmax applied",
        "input_size": json.dumps(list(meta["input_size"])),
        # evaluation took the central crop_pct of each (square-stored) image before resizing to input_size
        "crop_pct": json.dumps(meta.get("crop_pct", 1.0)),
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "model": meta["model"],
        "model_kwargs": json.dumps(meta.get("model_kwargs", {})),
        "fitvision_version": __version__,
    }


def example_input(meta: dict[str, Any], input_dtype: str, batch: int = 2) -> torch.Tensor:
    h, w = meta["input_size"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, len(meta["mean"]), h, w), generator=gen, dtype=torch.uint8)
    return x if input_dtype == "uint8" else x.float() / 255.0


def export_model(model: nn.Module, meta: dict[str, Any], fmt: str, out: str | Path,
                 input_dtype: str = "float", exporter: str = "auto") -> Path:
    """Write ``model`` (with meta as in model.json) to ``out`` in format "onnx" or "torchscript".

    ONNX ``exporter``: "legacy" (TorchScript-based), "dynamo" (needs onnxscript), or "auto":
    legacy, and dynamo for what legacy cannot express when onnxscript is installed.
    """
    if fmt not in FORMATS:
        raise FitVisionError(f"unknown export format '{fmt}' (valid: {', '.join(FORMATS)})")
    if input_dtype not in INPUT_DTYPES:
        raise FitVisionError(f"unknown input dtype '{input_dtype}' (valid: {', '.join(INPUT_DTYPES)})")
    if exporter not in EXPORTERS:
        raise FitVisionError(f"unknown ONNX exporter '{exporter}' (valid: {', '.join(EXPORTERS)})")
    # A copy: the caller's model stays on its device, in its mode and memory format.
    model = copy.deepcopy(unwrap(model))
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    out = Path(out)
    if out.is_dir():  # checked before the export's work, which would end failing to replace a folder
        raise FitVisionError(f"{out} is a folder; give the file to write, e.g. {out / ('model' + FORMATS[fmt])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        # TorchScript and the legacy ONNX exporter warn that they are deprecated on every call, and
        # torch.export's internals warn about their own API: noise to someone exporting a model.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if fmt == "onnx":
                _export_onnx(model, meta, tmp, input_dtype, exporter)
            else:
                _export_torchscript(model, meta, tmp, input_dtype)
    return out


def _export_torchscript(model: nn.Module, meta: dict[str, Any], path: Path, input_dtype: str) -> None:
    # Trace the network (any architecture traces), script the wrapper so that both input dtypes
    # keep working: the dtype branch stays in the scripted graph.
    x = Preprocessed(model, meta["mean"], meta["std"])
    traced = torch.jit.trace(model, ((example_input(meta, "float") - x.mean) / x.std,))
    scripted = torch.jit.script(Preprocessed(traced, meta["mean"], meta["std"]))
    extra = {EXTRA_FILE: json.dumps(export_metadata(meta, "either"), indent=2)}  # scripted: both dtypes
    torch.jit.save(scripted, str(path), _extra_files=extra)


def _require_onnx():
    if importlib.util.find_spec("onnx") is None:
        raise FitVisionError("ONNX export needs the onnx package: pip install 'fitvision[onnx]'")
    import onnx

    return onnx


def _export_onnx(model: nn.Module, meta: dict[str, Any], path: Path, input_dtype: str, exporter: str) -> None:
    onnx = _require_onnx()
    wrapper = Preprocessed(model, meta["mean"], meta["std"]).eval()
    example = (example_input(meta, input_dtype),)
    if exporter == "dynamo":
        _export_onnx_dynamo(wrapper, example, path)
    else:
        _export_onnx_legacy(wrapper, example, path, meta["model"], fallback=exporter == "auto")
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, export_metadata(meta, input_dtype))
    onnx.save(proto, str(path))


def _export_onnx_legacy(wrapper: nn.Module, example: tuple, path: Path, name: str, fallback: bool) -> None:
    """torch's TorchScript-based exporter: needs no onnxscript, keeps the batch dynamic. With
    ``fallback``, what it cannot express goes to the dynamo exporter when onnxscript is there."""
    kwargs = {"opset_version": OPSET, "input_names": ["image"], "output_names": ["probs"],
              "dynamic_axes": {"image": {0: "batch"}, "probs": {0: "batch"}}}
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters  # torch >= 2.5
    if has_dynamo:
        kwargs["dynamo"] = False
    try:
        torch.onnx.export(wrapper, example, str(path), **kwargs)
    except torch.onnx.errors.OnnxExporterError as e:  # an op ONNX cannot express this way
        if fallback and has_dynamo and importlib.util.find_spec("onnxscript") is not None:
            _export_onnx_dynamo(wrapper, example, path)  # it decomposes the op into ones ONNX has
            return
        reason = str(e).split(" Please feel free")[0].splitlines()[0].rstrip(". ")
        raise FitVisionError(f"cannot export {name} to ONNX: {reason}; use --format torchscript, "
                             "or pip install onnxscript for torch's newer exporter") from None


def _export_onnx_dynamo(wrapper: nn.Module, example: tuple, path: Path) -> None:
    """torch's torch.export-based exporter (torch >= 2.5, needs onnxscript)."""
    if importlib.util.find_spec("onnxscript") is None:
        raise FitVisionError("torch's dynamo ONNX exporter needs onnxscript: pip install onnxscript")
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
                                input_names=["image"], output_names=["probs"])
    program.save(str(path))


def default_out(run_dir: str | Path, fmt: str) -> Path:
    return Path(run_dir) / f"model{FORMATS[fmt]}"


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
               input_dtype: str = "float") -> Path:
    """Load a finished run (model.safetensors + model.json) and export it; returns the file written."""
    from fitvision.train.modelfile import load_model

    if fmt not in FORMATS:
        raise FitVisionError(f"unknown export format '{fmt}' (valid: {', '.join(FORMATS)})")
    model, meta = load_model(run_dir, device="cpu")
    return export_model(model, meta, fmt, out or default_out(run_dir, fmt), input_dtype)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    onnx = _require_onnx()
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def read_torchscript_metadata(path: str | Path) -> dict[str, str]:
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_FILE])
