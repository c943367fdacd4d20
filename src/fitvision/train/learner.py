"""The Learner: a model, its data and an optimizer, and the training loop, readable top to bottom.

    learn = Learner(model, train_dl, valid_dl, lr=1e-3)
    learn.fit_one_cycle(16, max_lr=0.01, wd=1e-4, clip=0.1)
    loss, acc = learn.validate()

``train_step`` is the whole optimisation step in one place and depends only on what it is
passed; ``fit`` is the loop around it: hyperparameters from schedules (pure functions of
progress), the step, the record, a few explicit hooks (hooks.py). What surrounds the loop lives
beside it, one job a module: evaluation (evaluate.py), snapshots and resume (checkpoint.py),
device and precision (device.py), the optimizer's parameter groups (fitvision.optim.policy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fitvision.data.loader import fit_steps, spaced_subset
from fitvision.errors import FitVisionError, check_choice
from fitvision.optim import create_optimizer, get_hyper, set_hyper
from fitvision.optim.schedules import one_cycle, sched_const, step_pos
from fitvision.train import checkpoint, distributed
from fitvision.train.device import autocast, resolve_device, resolve_precision
from fitvision.train.ema import Lookahead, ModelEMA
from fitvision.train.evaluate import collect_log_probs, loss_and_accuracy
from fitvision.train.hooks import Hook, Progress, TrainState

CLIP_MODES = ("value", "norm")


@dataclass
class LoopOptions:
    """How the loop trains and evaluates; the fields of the same name in TrainConfig."""

    lr: float = 1e-3  # the constant rate ``fit`` uses without a schedule (and the default optimizer's)
    wd: float = 0.0  # the default optimizer's weight decay
    clip: float = 0.0  # gradient clipping threshold; 0 = off
    clip_mode: str = "value"  # "value" (the seeds) or "norm"
    label_smoothing: float = 0.0
    ema: float = 0.0  # > 0: an EMA of the weights, used for evaluation, prediction and saving
    lookahead: bool = False  # pull the weights back to their running average every 5 steps (ema.Lookahead)
    device: str | torch.device = "cpu"
    precision: str = "fp32"  # "fp32", "bf16" (autocast), "fp16" (CUDA, GradScaler) or "auto"
    channels_last: bool = False
    compile: bool | str = False  # True: torch.compile (inductor); a string names another backend
    tta: bool = False  # flip test-time augmentation for the last epoch's evaluation and predictions
    tta_shift: int = 0
    tta_confident: float = 0.0  # with tta_shift: images the mirror pair is this sure of skip the shifted views
    epoch_valid_limit: int = 0  # evaluate all but the last epoch on N evenly spaced validation images
    accum: int = 1  # each step's batch in K forward/backward passes (equal chunks), then one update


LOOP_OPTIONS = tuple(f.name for f in dataclasses.fields(LoopOptions))


class Learner:
    """Trains ``model`` on ``train_dl``, evaluates on ``valid_dl``.

    Loaders yield (x, y) on the device and have ``set_epoch`` and ``len`` (fitvision.data.loader
    DeviceLoader). ``opt_func(model) -> optimizer`` builds the optimizer (default: fitvision's
    Adam over ``param_groups(model, wd)``). ``metrics`` maps a name to fn(log_probs, targets) ->
    float, added to each epoch's row. ``hooks`` are called in order (hooks.py). Every other
    keyword is a ``LoopOptions`` field.
    """

    def __init__(self, model: nn.Module, train_dl, valid_dl, *, loss_func: Callable | None = None,
                 opt_func: Callable[[nn.Module], Any] | None = None, metrics: dict[str, Callable] | None = None,
                 hooks: Sequence[Hook] = (), progress: bool = True, eval_transform: Callable | None = None,
                 **options: Any):
        unknown = sorted(set(options) - set(LOOP_OPTIONS))
        if unknown:
            raise FitVisionError(f"unknown Learner option '{unknown[0]}' (valid: {', '.join(LOOP_OPTIONS)})")
        o = self.options = LoopOptions(**options)
        check_choice("clip_mode", o.clip_mode, CLIP_MODES)
        self.device = resolve_device(o.device)
        self.precision = resolve_precision(o.precision, self.device)
        self.lr, self.wd, self.clip = o.lr, o.wd, o.clip
        self.channels_last = o.channels_last
        memory_format = torch.channels_last if o.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.eval_transform = eval_transform or getattr(valid_dl, "transform", None)
        self.epoch_valid_dl = spaced_subset(valid_dl, o.epoch_valid_limit)
        self.loss_func = loss_func or functools.partial(F.cross_entropy, label_smoothing=o.label_smoothing)
        self.metrics = dict(metrics or {})
        self.opt = (opt_func or self._default_opt)(self.model)
        # fp16 needs loss scaling so small gradients don't flush to zero; disabled it is a no-op.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = ModelEMA(self.model, o.ema) if o.ema > 0 else None
        self.lookahead = Lookahead(self.model) if o.lookahead else None
        self._warmed_up = False
        # Under torchrun the forward runs through DistributedDataParallel, which averages the
        # gradients over the ranks in backward; self.model stays the plain module (state, EMA).
        self.world = distributed.world()
        self._wrap()
        self.hooks: list[Hook] = ([Progress(tta=o.tta)] if progress and self.world.is_main else []) + list(hooks)
        self.state = TrainState()
        self.final_preds: tuple[torch.Tensor, torch.Tensor] | None = None  # the last epoch's, see _end_epoch
        self._pending: list[tuple[dict[str, float], int, torch.Tensor]] = []  # batch rows awaiting their loss
        # Reading the loss forces a GPU sync; on CUDA do it every 50 steps, on the CPU it is free.
        self.sync_every = 50 if self.device.type == "cuda" else 1

    def _wrap(self) -> None:
        """What the step calls (compiled if asked): the model, or under torchrun a DDP of it, which averages the
        parameters that trained when made; a change in what trains (freeze, FreezeAfter) makes a new one."""
        self._trainable = [p.requires_grad for p in self.model.parameters()]
        self._ddp = DistributedDataParallel(self.model) if self.world.distributed else None
        backend = self.options.compile if isinstance(self.options.compile, str) else "inductor"
        forward = self._ddp or self.model
        self._forward = torch.compile(forward, backend=backend) if self.options.compile else forward

    def _default_opt(self, model: nn.Module):
        from fitvision.models import param_groups

        return create_optimizer("adam", param_groups(model, self.wd), lr=self.lr, wd=self.wd)

    @property
    def tta(self) -> bool:
        return self.options.tta

    def autocast(self):
        return autocast(self.device, self.precision)

    # ----------------------------------------------------------------------- the step
    def train_step(self, x: torch.Tensor, y: torch.Tensor, hypers: dict[str, float],
                   progress: tuple[int, int] | None = None, record=None) -> torch.Tensor:
        """One optimisation step, top to bottom. Returns the loss, detached and still on the device.

        ``hypers``: lr, mom, wd for this step. ``progress``: (steps done after this one, steps in
        the fit), which lookahead's averaging follows; None (lr_find) leaves lookahead out, so the
        step is the optimizer's alone. ``record``: the loader's HardestFirst, given each image's loss."""
        for key, value in hypers.items():
            set_hyper(self.opt, key, value)
        if self._ddp is not None and [p.requires_grad for p in self.model.parameters()] != self._trainable:
            self._wrap()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        k = self.options.accum  # K equal chunks, each loss / K: the gradient of the whole batch's mean loss
        loss, each = torch.zeros((), device=x.device), []  # each: per-image losses, for ``record``
        for i, (xc, yc) in enumerate(zip(x.chunk(k), y.chunk(k))):
            # DDP averages over the ranks in the last chunk's backward only (no_sync before it)
            sync = self._ddp is None or i == k - 1
            with contextlib.nullcontext() if sync else self._ddp.no_sync():
                with self.autocast():  # bf16/fp16 matmuls and convs; autocast keeps BatchNorm and the loss in fp32
                    out = self._forward(xc)
                    each += [self.loss_func(out, yc, reduction="none")] if record is not None else []
                    part = (each[-1].mean() if record is not None else self.loss_func(out, yc)) / k
                # NaN/inf check: in flush_losses, every sync_every steps, so a GPU never waits on the host.
                self.scaler.scale(part).backward()  # fp16: scaled so small gradients survive; else unchanged
            loss = loss + part.detach().float()
        if record is not None:
            record.record(torch.cat(each))
        if self.clip:
            self.scaler.unscale_(self.opt)  # clip the true gradients, not the scaled ones
            params = [p for p in self.model.parameters() if p.grad is not None]
            if self.options.clip_mode == "value":
                nn.utils.clip_grad_value_(params, self.clip)
            else:
                nn.utils.clip_grad_norm_(params, self.clip)
        self.scaler.step(self.opt)  # fp16: skipped when a gradient overflowed
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        if self.lookahead is not None and progress is not None:
            self.lookahead.step(self.model, *progress)
        return loss.detach()

    # ----------------------------------------------------------------------- the loop
    def fit(self, epochs: float, sched: dict[str, Callable | None] | None = None,
            resume_from: str | Path | None = None) -> list[dict[str, float]]:
        """Train for `epochs` (may be fractional) and return the history, one row per epoch.

        ``sched`` maps "lr", "mom" and/or "wd" to pure functions of progress pos in [0, 1]
        (fitvision.optim.schedules); the default is the constant ``self.lr``. ``resume_from`` is
        a checkpoint of this same fit: training continues at its step, bit for bit."""
        n = len(self.train_dl)
        if n == 0:
            raise FitVisionError("the training set holds less than one batch; lower the batch size (--bs)")
        sched = sched or {"lr": sched_const(self.lr)}
        self.state = TrainState(steps_per_epoch=n, total_steps=fit_steps(self.train_dl, epochs), epochs=epochs)
        self.final_preds = None
        if resume_from is not None:
            checkpoint.resume(self, resume_from)
        self._warm_up()
        for hook in self.hooks:
            hook.on_fit_start(self.state)
        try:
            while not self.state.done:
                self._train_epoch(sched)
                self._end_epoch()
        finally:
            for hook in self.hooks:
                hook.on_fit_end(self.state)
        return self.state.history

    def _train_epoch(self, sched: dict[str, Callable | None]) -> None:
        s = self.state
        self.model.train()
        self.train_dl.set_epoch(s.epoch)
        batches, hardest = getattr(self.train_dl, "batches", None), getattr(self.train_dl, "hardest", None)
        s.epoch_steps = batches(s.epoch) if batches is not None else s.steps_per_epoch
        start = time.perf_counter() - s.epoch_train_seconds
        for i, (x, y) in enumerate(self.train_dl):
            if i < s.batch:  # resumed mid-epoch: replay the loader up to where the checkpoint was taken
                continue
            hypers = {k: fn(step_pos(s.step, s.total_steps)) for k, fn in sched.items() if fn is not None}
            loss = self.train_step(x, y, hypers, progress=(s.step + 1, s.total_steps), record=hardest)
            n = len(y) * self.world.size  # every rank trains an equal shard: the global batch's images
            s.step, s.batch, s.epoch_images = s.step + 1, s.batch + 1, s.epoch_images + n
            # What the optimizer used (a schedule's value, or the optimizer's own when unscheduled).
            row = {"step": s.step - 1, "epoch": s.epoch, "lr": hypers["lr"] if "lr" in hypers else
                   get_hyper(self.opt, "lr"), "mom": hypers["mom"] if "mom" in hypers else get_hyper(self.opt, "mom")}
            self._pending.append((row, s.batch - 1, loss))
            if len(self._pending) >= self.sync_every:
                self.flush_losses()
            s.epoch_train_seconds = time.perf_counter() - start
            for hook in self.hooks:
                hook.on_batch_end(s)
            if s.done:
                break
        self.flush_losses()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        s.epoch_train_seconds = time.perf_counter() - start

    def flush_losses(self) -> None:
        """Move pending losses to the host (one sync) and stop at the first NaN/inf."""
        if not self._pending:
            return
        rows, batch_idx, losses = zip(*self._pending)
        self._pending = []
        for row, batch, loss in zip(rows, batch_idx, torch.stack(losses).float().tolist()):
            if not math.isfinite(loss):
                raise FitVisionError(f"the loss became {loss} at epoch {row['epoch']}, batch {batch} (lr "
                                     f"{row['lr']:.3g}): training diverged; lower the learning rate (--lr) and "
                                     "train again (a checkpoint written before it is intact)")
            self.state.batches.append({**row, "loss": loss})

    def _end_epoch(self) -> None:
        s = self.state
        t0 = time.perf_counter()
        # TTA multiplies the evaluation's cost: pay it for the final epoch only, whose row (and whose
        # predictions, kept for preds.npz) is the result: writing them needs no second pass.
        row = {"epoch": s.epoch, **self._evaluate(self.valid_dl if s.done else self.epoch_valid_dl,
                                                  self.tta and s.done, keep=s.done)}
        losses = [b["loss"] for b in s.batches if b["epoch"] == s.epoch]
        row["train_loss"] = float(np.mean(losses)) if losses else math.nan
        row["lr"] = s.batches[-1]["lr"] if s.batches else math.nan
        row["seconds"] = s.epoch_train_seconds + (time.perf_counter() - t0)
        row["train_seconds"], row["images"] = s.epoch_train_seconds, s.epoch_images
        s.history.append(row)
        s.epoch, s.batch, s.epoch_images, s.epoch_train_seconds = s.epoch + 1, 0, 0, 0.0
        for hook in self.hooks:
            hook.on_epoch_end(s)

    def fit_one_cycle(self, epochs: float, max_lr: float | None = None, wd: float | None = None,
                      clip: float | None = None, pct_start: float = 0.3, div_factor: float = 25.0,
                      final_div_factor: float = 1e4) -> list[dict[str, float]]:
        """fit with the 1cycle policy: the seed's fit_one_cycle, i.e. torch's OneCycleLR with its defaults,
        stepped per batch, momentum (Adam's beta1) cycling 0.95 -> 0.85 -> 0.95 inversely. An early
        stop (hooks.EarlyStopping) ends the cycle where it is, short of its final low learning rate."""
        if wd is not None:
            set_hyper(self.opt, "wd", wd)
            self.wd = wd
        if clip is not None:
            self.clip = clip
        total = fit_steps(self.train_dl, epochs)  # torch OneCycleLR's phase boundary, exactly
        sched = one_cycle(max_lr or self.lr, pct_start, div_factor, final_div_factor, total_steps=total)
        return self.fit(epochs, dict(sched))

    def _warm_up(self) -> None:
        """torch.compile compiles on the first calls: make them outside the timed loop on a
        validation batch (train and eval mode), then restore a snapshot, so the warm-up leaves no
        trace on training."""
        if not self.options.compile or self._warmed_up:
            return
        self._warmed_up = True
        x, y = next(iter(self.valid_dl))
        bs = getattr(self.train_dl, "batch_size", len(y))
        x, y = x[:bs], y[:bs]
        snap = checkpoint.snapshot(self, copy_tensors=True)
        self.model.train()
        with self.autocast():
            loss = self.loss_func(self._forward(x), y)
        loss.backward()
        self.model.eval()
        with torch.no_grad():
            self._forward(x)
        checkpoint.restore(self, snap)  # BatchNorm statistics moved in the train-mode call
        self.model.train()

    # ----------------------------------------------------------------------- evaluation
    def eval_module(self) -> nn.Module:
        """What is evaluated, predicted with and saved: the EMA weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _eval_forward(self) -> Callable:
        """eval_module as it computes: the compiled model when compiled (the EMA copy never is)."""
        return self.ema.module if self.ema is not None else self._forward

    def get_log_preds(self, dl=None, tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities float32 (N, C), targets int64 (N,)) on the CPU, in loader order."""
        tta, dl = self.tta if tta is None else tta, dl or self.valid_dl
        o = self.options
        log_probs, targets = collect_log_probs(self.model, self._eval_forward(), dl, tta, self.autocast(),
                                               o.tta_shift, self.channels_last, o.tta_confident)
        if getattr(dl, "world_size", 1) > 1:  # a shard each (torchrun): every rank gets the whole, in order
            log_probs, targets = distributed.gather_interleaved(log_probs), distributed.gather_interleaved(targets)
        return log_probs, targets

    def get_preds(self, dl=None, tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities float32 (N, C), targets int64 (N,)) on the CPU, in loader order."""
        log_probs, targets = self.get_log_preds(dl, tta)
        return log_probs.exp(), targets

    def _evaluate(self, dl, tta: bool, keep: bool = False) -> dict[str, float]:
        """The epoch row's metrics; ``keep`` stores the predictions as ``final_preds``."""
        log_probs, targets = self.get_log_preds(dl, tta)
        if keep:
            self.final_preds = (log_probs, targets)
        row = loss_and_accuracy(log_probs, targets)
        row.update({name: float(fn(log_probs, targets)) for name, fn in self.metrics.items()})
        return row

    def validate(self, dl=None, tta: bool | None = None) -> tuple[float, float]:
        """(loss, accuracy) on dl (default the validation loader); plain cross-entropy."""
        row = self._evaluate(dl or self.valid_dl, self.tta if tta is None else tta)
        return row["val_loss"], row["val_acc"]

    @torch.no_grad()
    def predict(self, images, tta: bool | None = None, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for uint8 images: numpy (N, H, W, 3) or torch (N, 3, H, W).

        Only the eval transform is applied (resize/normalise), never augmentation.
        """
        # a copy: a memory-mapped dataset's arrays are read-only, which torch.from_numpy warns about
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) \
            else torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise FitVisionError(f"predict expects a batch of uint8 images, got {x.dtype} of shape {tuple(x.shape)}")
        transform = self.eval_transform or (lambda b: b.float() / 255)
        batches = ((transform(x[i:i + batch_size].to(self.device)), torch.zeros(0))
                   for i in range(0, len(x), batch_size))
        return self.get_log_preds(batches, tta)[0].exp()

    # ----------------------------------------------------------------------- state, weights, freezing
    def save_checkpoint(self, path: str | Path) -> None:
        """Under torchrun every rank calls it (its RNG state is gathered) and rank 0 writes."""
        snap = checkpoint.snapshot(self)
        if self.world.distributed:
            snap["rng"] = distributed.all_gather_object(snap["rng"])  # one per rank, in rank order
        if self.world.is_main:
            checkpoint.save_checkpoint(path, snap)

    def save(self, path: str | Path) -> Path:
        """The evaluated weights (EMA when kept) as safetensors, written atomically; ``export``
        (fitvision.Learner) writes a whole run directory instead."""
        from fitvision.train.modelfile import save_weights

        return save_weights(path, self.eval_module())

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
        self.model.load_state_dict(state)
        if self.ema is not None:
            self.ema.module.load_state_dict(state)

    def freeze(self, train_bn: bool = True) -> None:
        """Train the head only; the optimizer skips parameters without gradients."""
        from fitvision.models import freeze

        freeze(self.model, train_bn=train_bn)

    def unfreeze(self) -> None:
        from fitvision.models import unfreeze

        unfreeze(self.model)

    def set_body_lr_mult(self, mult: float) -> None:
        """Discriminative learning rates: the body's groups get lr x mult (param_groups names them).
        It scales each group's own lr_mult as the optimizer was built (biases at bias_lr_mult, Muon's
        filters at muon_lr / lr), which the first call records as "base_lr_mult", in the optimizer's
        state, so a resumed run keeps it."""
        for group in self.opt.param_groups:
            if str(group.get("name", "")).startswith("body"):
                base = group.setdefault("base_lr_mult", group.get("lr_mult", 1.0))
                group["lr_mult"] = base * mult

    def lr_find(self, **kwargs):
        """The learning-rate range test; see fitvision.train.lr_find.lr_find."""
        from fitvision.train.lr_find import lr_find

        return lr_find(self, **kwargs)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, train_dl, valid_dl, **kwargs) -> Learner:
        """A Learner with every loop setting from a TrainConfig and the optimizer its policy builds
        (fitvision.optim.configure_optimizer); kwargs (hooks, progress, ...) pass through."""
        from fitvision.optim import configure_optimizer

        options = {name: getattr(cfg, name) for name in LOOP_OPTIONS}
        return cls(model, train_dl, valid_dl, opt_func=lambda m: configure_optimizer(m, cfg), **options, **kwargs)

