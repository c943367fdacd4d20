"""Where and how fast a run computes: the device, the precision on it, and the CPU allocator.

"auto" resolves to what the hardware does well: the first CUDA GPU when there is one, else the
CPU; bf16 autocast where the hardware has native bf16 (a CPU with AVX-512 BF16 or AMX, a CUDA
GPU with bf16 support), else fp32. Weights stay fp32 either way; autocast keeps BatchNorm and
the loss in fp32. fp16 needs a GradScaler and is CUDA only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

from fitvision.errors import FitVisionError, check_choice

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" is the first CUDA GPU when there is one, else the CPU."""
    if isinstance(name, torch.device):
        return name
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
    check_choice("precision", precision, PRECISIONS)
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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the kernel (train_run calls it on
    the CPU, never at import).

    A training step frees and re-allocates the same large activation buffers every step; by default
    glibc serves each from a fresh mmap and unmaps it afterwards, so every step pays page faults and
    zeroing again (measured on a 2-core Zen 4: 16-32% of a ResNet9 step). Returns whether it applied
    (Linux with glibc only; a no-op elsewhere).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    ok_mmap = mallopt(_M_MMAP_MAX, 0)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # int-sized: 1 GiB of free memory kept at most
    return bool(ok_mmap and ok_trim)
