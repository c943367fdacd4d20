"""Device and precision: "auto" resolves to what the hardware does well.

Precision "auto" is bf16 autocast where the hardware has native bf16 (a CPU with AVX-512 BF16 or
AMX, a CUDA GPU with bf16 support), else fp32. Weights stay fp32 either way; autocast keeps
BatchNorm and the loss in fp32. fp16 needs a GradScaler and is CUDA only.
"""

from __future__ import annotations

import functools

import torch

from fitvision.errors import FitVisionError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FitVisionError(f"unknown device '{name}' (valid: auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FitVisionError(f"device '{name}' asked for, but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise FitVisionError(f"unsupported device '{name}' (valid: auto, cpu, cuda, cuda:N)")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), where autocast pays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 autocast where the hardware does bf16 natively, else fp32."""
    if precision not in PRECISIONS:
        raise FitVisionError(f"unknown precision '{precision}' (valid: {', '.join(PRECISIONS)})")
    cuda = device.type == "cuda"
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
        return "bf16" if native else "fp32"
    if precision == "fp16" and not cuda:
        raise FitVisionError("precision fp16 needs a CUDA GPU (GradScaler); use bf16 or fp32 on the CPU")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise FitVisionError("this GPU has no bf16 support; use --precision fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")
