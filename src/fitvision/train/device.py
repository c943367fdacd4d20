"""Where and how fast a run computes: the device, the precision on it, the CPU allocator, and how
many CPU threads when other processes share the cores.

"auto" resolves to what the hardware does well: the first CUDA GPU when there is one, else the
CPU; bf16 autocast where the hardware has native bf16 (a CPU with AVX-512 BF16 or AMX, a CUDA
GPU with bf16 support), else fp32. Weights stay fp32 either way; autocast keeps BatchNorm and
the loss in fp32. fp16 needs a GradScaler and is CUDA only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
import warnings

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
    if precision == "bf16" and not cuda and not cpu_has_bf16():
        # It still runs (emulated), so a warning: the run's numbers are right, only slow.
        warnings.warn("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 runs emulated, several "
                      "times slower than fp32 (--precision auto picks fp32 here)")
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


# --------------------------------------------------------------------------- sharing the CPU
def busy_cores(seconds: float = 0.25) -> float:
    """How many cores other processes keep busy, from /proc/stat's non-idle time over ``seconds``
    while this process waits (so the figure is theirs). 0.0 where /proc/stat is not readable."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(values), values[3] + values[4]

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 0.0 if total <= 0 else (total - (idle1 - idle0)) / total * (os.cpu_count() or 1)


def threads_beside(busy: float, threads: int) -> int:
    """One fewer thread per core that other processes keep busy (rounded), at least one. OpenMP's
    threads meet at every parallel region: one that shares its core with a busy process holds the
    others up. Measured beside one busy process on 2 cores (bench/contention.py): 2 threads kept 37%
    of their idle throughput, 1 thread 58%."""
    return max(1, threads - int(busy + 0.5))


# The count share_cpu last lowered torch's threads from and to, in this process: a notebook's later
# run on an idle machine goes back to all of them.
_LOWERED: dict[str, int] = {}


def share_cpu() -> str | None:
    """Set torch's CPU thread count for this run, before it starts; returns a note when it differs
    from all cores. FITVISION_CPU_THREADS=N pins N, =fixed leaves torch's count as it is (as does
    OMP_NUM_THREADS, the user's choice); else one fewer thread per core that other processes keep
    busy right now (and back to all of them when a later call finds the cores idle)."""
    pinned = os.environ.get("FITVISION_CPU_THREADS", "")
    if pinned == "fixed":
        return None
    if pinned:
        if not pinned.isdigit() or int(pinned) < 1:
            raise FitVisionError(f"FITVISION_CPU_THREADS must be a positive integer or 'fixed', got {pinned!r}")
        torch.set_num_threads(int(pinned))
        return None
    threads = torch.get_num_threads()
    if _LOWERED and threads == _LOWERED["to"]:
        threads = _LOWERED["from"]  # our own earlier choice, not the user's: a later run starts from all again
    if os.environ.get("OMP_NUM_THREADS") or threads < 2:
        return None
    busy = busy_cores()
    fewer = threads_beside(busy, threads)
    torch.set_num_threads(fewer)
    _LOWERED.clear()
    if fewer == threads:
        return None
    _LOWERED.update({"from": threads, "to": fewer})
    return (f"other processes keep {busy:.1f} of {os.cpu_count()} cores busy: training on {fewer} of {threads} "
            "threads (FITVISION_CPU_THREADS=N pins the count)")
