"""Several processes, one model: torch.distributed as torchrun sets it up.

torchrun (or ``fitvision train --nproc N``, which runs it) starts one process a device and sets
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; ``init`` joins the process group
from them (gloo on the CPU, NCCL on CUDA), and every other module asks ``world()`` where it
stands. One process alone never initialises anything: ``world()`` is rank 0 of 1.

What runs where (train/run.py, train/learner.py): every rank trains on a disjoint shard of the
same seeded permutation (data/loader.py) and DistributedDataParallel averages the gradients;
evaluation is sharded and gathered back in order, so every rank computes the same metrics;
rank 0 alone writes the run directory, checkpoints (holding every rank's RNG state), plots and
report, and prints progress.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fitvision.errors import FitVisionError

TIMEOUT_ENV = "FITVISION_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600  # seconds a collective waits for a peer that hangs before failing with one line


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restart_count() -> int:
    """How many times torchrun's elastic agent restarted the group (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def timeout_seconds() -> int:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise FitVisionError(f"{TIMEOUT_ENV} must be a whole number of seconds >= 1, got {value!r}")
    return seconds


def init(device: str) -> World:
    """Join the process group torchrun described; returns this process's place in it. ``device``
    is the resolved device type: "cuda" takes NCCL and the GPU numbered LOCAL_RANK."""
    if dist.is_initialized():
        return world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_seconds())
    backend = "nccl" if cuda else "gloo"
    store = _attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return world()


def _attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's store, with this attempt's keys apart from those of the attempts before it.

    torchrun's agent keeps one TCPStore for the whole job, across the restarts --max-restarts
    allows, and the process group publishes each rank's address under the same keys every time:
    a restarted rank that reads its peer's address before the peer has written the new one
    connects to a dead process ("Gloo connectFullMesh failed ... Connection refused", or a wait
    until the timeout). A prefix per restart (TORCHELASTIC_RESTART_COUNT) keeps attempts apart.
    None when no torchrun agent holds the store (another launcher): env:// as usual.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(host, port, int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"fitvision/attempt_{restart_count()}", store)


def shutdown(settle: bool = True) -> None:
    """Leave the process group. ``settle`` (every rank got here, none failed): first wait for
    the others and give gloo's worker threads the interpreter for a moment.

    A gloo collective's last reference to its Python tensors is dropped on gloo's own thread a
    little after the collective returns, and dropping it takes the GIL; if the interpreter is
    already shutting down then, the thread is ended mid-destructor and the process aborts
    ("terminate called without an active exception", SIGABRT) after all its work was done, which
    torchrun reports as a failure (and restarts). The barrier and the pause, both without the
    GIL, let those threads finish first.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if settle:
        try:
            dist.barrier()
        except Exception as e:  # a rank that failed after its work left first; it says why itself
            if not is_dist_failure(e):
                raise
    dist.destroy_process_group()
    if settle:
        time.sleep(0.1)


def device_for(device: str, w: World) -> str:
    """Each rank on its own GPU: "cuda" becomes "cuda:LOCAL_RANK"; the CPU is shared."""
    return f"cuda:{w.local_rank}" if w.distributed and device.startswith("cuda") else device


def check_batch(bs: int, w_size: int, accum: int) -> None:
    """--bs is the global batch: it must split evenly over the processes and accumulation steps."""
    if bs % (w_size * accum):
        parts = " x ".join(p for p in (f"{w_size} processes" if w_size > 1 else "",
                                       f"{accum} accumulation steps" if accum > 1 else "") if p)
        raise FitVisionError(f"--bs {bs} does not divide evenly over {parts}: choose a batch size that is a "
                             f"multiple of {w_size * accum}")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_interleaved(t: torch.Tensor) -> torch.Tensor:
    """Rank r holds items r, r + W, r + 2W, ... of a sequence (data/loader.py's sharding, without
    shuffling): the whole sequence, in order, on every rank. Shards differ in length by one at
    most; they are padded for the collective and trimmed after."""
    w = world()
    lengths = all_gather_object(len(t))
    longest = max(lengths)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=device)
    padded[: len(t)] = t.to(device)
    parts = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    out = torch.empty((sum(lengths), *t.shape[1:]), dtype=t.dtype, device=device)
    for r, (part, n) in enumerate(zip(parts, lengths)):
        out[r :: w.size] = part[:n]
    return out.to(t.device)


def is_dist_failure(e: BaseException) -> bool:
    """A collective that failed because a peer died, hung past the timeout or could not be reached."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in ("gloo", "nccl", "connection", "timed out"))


@contextlib.contextmanager
def joined(device: str) -> Iterator[World]:
    """The process group for the block when torchrun started this process as one of several
    (else World() and nothing to do): joined, and left at the end. Ranks other than 0 log only
    warnings and errors. A collective that fails because a peer died or hung past the timeout
    becomes one FitVisionError line."""
    if not launched():
        yield World()
        return
    w = init(device)
    if not w.is_main:
        logging.getLogger("fitvision").setLevel(logging.WARNING)
    try:
        yield w
    except BaseException as e:
        shutdown(settle=False)  # a peer may be gone: waiting for it would hang
        if not is_dist_failure(e):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FitVisionError(f"rank {w.rank}: lost the other processes ({first}): one died, or hung for more "
                             f"than {timeout_seconds()} s ({TIMEOUT_ENV})") from None
    shutdown()


def max_restarts() -> int:
    """torchrun's --max-restarts for this group (0 when not under torchrun)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
