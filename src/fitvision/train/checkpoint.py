"""Snapshots of a Learner, and resume checkpoints: a snapshot written to disk atomically.

``snapshot(learn)`` holds everything that training changes: weights, BatchNorm statistics,
optimizer, GradScaler, EMA and lookahead state, every RNG state, the training loader's state
and the loop's TrainState. ``restore(learn, snap)`` puts all of it back. A resume restores a
checkpoint (a snapshot on disk); lr_find and the compile warm-up restore one kept in memory, so
that a fit after them is the same fit as without them.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a checkpoint from an untrusted source can't run code.
"""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from fitvision.errors import FitVisionError
from fitvision.files import atomic_write_bytes
from fitvision.train.seeding import rng_state, set_rng_state

CHECKPOINT = "checkpoint.pt"
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
    set_rng_state(snap["rng"])
    loader_state = snap["loaders"]["train"]
    if loader_state is not None and hasattr(learn.train_dl, "load_state_dict"):
        learn.train_dl.load_state_dict(loader_state)
    learn.state = TrainState.from_dict(snap["state"])
    learn.model.train(snap.get("training", True))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise in memory, then temp file + fsync + rename: a crash never leaves half a checkpoint."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU without unpickling arbitrary objects."""
    path = Path(path)
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
    restore(learn, {**ck, "training": True}, what=str(path))
