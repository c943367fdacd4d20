"""Snapshots of a Learner, and resume checkpoints: a snapshot written to disk atomically.

``snapshot(learn)`` holds everything that training changes: weights, BatchNorm statistics,
optimizer, GradScaler, EMA and lookahead state, every RNG state, the training loader's state
and the loop's TrainState. ``restore(learn, snap)`` puts all of it back. A resume restores a
checkpoint (a snapshot on disk); lr_find and the compile warm-up restore one kept in memory, so
that a fit after them is the same fit as without them.

The checkpoint before the latest is kept (``checkpoint.prev.pt``) until the new one is complete
on disk; a latest checkpoint that is missing or corrupt falls back to it with a warning.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a checkpoint from an untrusted source can't run code.
"""

from __future__ import annotations

import copy
import os
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from fitvision.errors import FitVisionError
from fitvision.files import atomic_path
from fitvision.train.seeding import rng_state, set_rng_state

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the one before, kept until a new CHECKPOINT is complete
FORMAT = 1  # bump when the layout of the dict changes


def snapshot(learn, copy_tensors: bool = False) -> dict[str, Any]:
    """Everything a restore needs. ``copy_tensors``: deep copies, for a snapshot kept in memory
    while training goes on (a checkpoint is serialised at once and needs none)."""
    learn.flush_losses()
    dl = learn.train_dl
    snap = {
        "model": learn.model.state_dict(),
        "opt": learn.opt.state_dict(),
        "scaler": learn.scaler.state_dict(),
        "ema": learn.ema.state_dict() if learn.ema is not None else None,
        "lookahead": learn.lookahead.state_dict() if learn.lookahead is not None else None,
        "rng": rng_state(),
        "loaders": {"train": dl.state_dict() if hasattr(dl, "state_dict") else None},
        "state": learn.state.to_dict(),
        "training": learn.model.training,
        "threads": torch.get_num_threads(),  # CPU reductions split by thread count: a resume keeps it
    }
    return copy.deepcopy(snap) if copy_tensors else snap


def restore(learn, snap: dict[str, Any], what: str = "the snapshot") -> None:
    """Put back what ``snapshot`` took; ``what`` names the source in errors."""
    from fitvision.train.hooks import TrainState

    try:
        learn.model.load_state_dict(snap["model"])
    except RuntimeError as e:
        raise FitVisionError(f"{what} does not fit this model: {str(e).splitlines()[0]}") from None
    learn.opt.load_state_dict(snap["opt"])
    learn.opt.zero_grad(set_to_none=True)
    learn.scaler.load_state_dict(snap["scaler"])
    if learn.ema is not None and snap["ema"] is not None:
        learn.ema.load_state_dict(snap["ema"])
    if learn.lookahead is not None and snap.get("lookahead") is not None:
        learn.lookahead.load_state_dict(snap["lookahead"])
    rng = snap["rng"]  # a checkpoint written under torchrun holds one per rank
    set_rng_state(rng[learn.world.rank] if isinstance(rng, list) else rng)
    loader_state = snap["loaders"]["train"]
    if loader_state is not None and hasattr(learn.train_dl, "load_state_dict"):
        learn.train_dl.load_state_dict(loader_state)
    learn.state = TrainState.from_dict(snap["state"])
    learn.model.train(snap.get("training", True))


def previous(path: str | Path) -> Path:
    """Where the checkpoint before the one at ``path`` is kept."""
    path = Path(path)
    return path.with_name(PREVIOUS) if path.name == CHECKPOINT else path.with_name(f"{path.stem}.prev{path.suffix}")


def exists(path: str | Path) -> bool:
    """Whether there is a checkpoint to resume from at ``path`` (or the one kept before it)."""
    return Path(path).is_file() or previous(path).is_file()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise in memory, then temp file + fsync + rename: a crash never leaves half a checkpoint,
    and the one it replaces is kept as ``previous(path)``."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    with atomic_path(path, keep_previous=previous(path)) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU without unpickling arbitrary objects; where the one at ``path``
    is missing or corrupt and the one before it is intact, that one, with a warning."""
    path = Path(path)
    try:
        return _load(path)
    except FitVisionError as e:
        if not previous(path).is_file():
            raise
        # Resume is exact from any checkpoint of the fit: the earlier one only costs the steps since.
        warnings.warn(f"{e}; resuming from the checkpoint before it, {previous(path)}", stacklevel=2)
        return _load(previous(path))


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FitVisionError(f"no checkpoint to resume from: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitVisionError(f"{path} is corrupt or not a fitvision checkpoint: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FitVisionError(f"{path} is not a fitvision checkpoint (format {FORMAT})")
    return state


def resume(learn, path: str | Path) -> None:
    """Continue ``learn``'s fit from the checkpoint at ``path``, bit for bit; the fit's TrainState
    (steps) must already be set, to check that the checkpoint belongs to the same fit."""
    ck = load_checkpoint(path)
    saved, now = ck["state"], learn.state
    if (saved["total_steps"], saved["steps_per_epoch"]) != (now.total_steps, now.steps_per_epoch):
        raise FitVisionError(
            f"{path} was written for {saved['total_steps']} steps of {saved['steps_per_epoch']} per epoch, "
            f"this run has {now.total_steps} of {now.steps_per_epoch}; resume with the same config")
    saved, size = len(ck["rng"]) if isinstance(ck["rng"], list) else 1, learn.world.size
    if saved != size:
        raise FitVisionError(f"{path} was written by {saved} process{'es' if saved > 1 else ''}, this run has "
                             f"{size}: resume with the same number of processes (--nproc, or torchrun's "
                             "--nproc-per-node x --nnodes)")
    restore(learn, {**ck, "training": True}, what=str(path))
    if learn.device.type == "cpu" and ck.get("threads") and not os.environ.get("OMP_NUM_THREADS") \
            and not os.environ.get("FITVISION_CPU_THREADS") and not learn.world.distributed:
        torch.set_num_threads(int(ck["threads"]))  # the count the run started with (device.share_cpu)
