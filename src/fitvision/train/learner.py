"""The Learner: a model, its data and an optimizer, and the training loop, readable top to bottom.

    learn = Learner(model, train_dl, valid_dl, lr=1e-3)
    learn.fit_one_cycle(16, max_lr=0.01, wd=1e-4, clip=0.1)
    loss, acc = learn.validate()

``train_step`` is the whole optimisation step in one place; ``fit`` is the loop around it:
hyperparameters from schedules (pure functions of progress), the step, the record, a few
explicit hooks (see hooks.py). Evaluation runs under the training precision's autocast, and
`fitvision eval` does the same, so it reproduces a run's val_acc on the same kind of device.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.optim import create_optimizer, get_hyper, set_hyper
from fitvision.optim.schedules import create_schedule, sched_const, step_pos
from fitvision.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fitvision.train.ema import Lookahead, ModelEMA
from fitvision.train.hooks import Hook, Progress, TrainState
from fitvision.train.precision import autocast, resolve_device, resolve_precision


def tta_views(x: torch.Tensor, shift: int = 0) -> list[tuple[torch.Tensor, float]]:
    """(view, weight) pairs for test-time augmentation of a normalised batch (N, C, H, W).

    The image and its mirror; with ``shift`` also the image moved diagonally by ``shift`` px
    up-left and down-right (reflect padding), each with its mirror. The unshifted pair keeps half
    the weight: the shifted views see slightly less of the image (airbench's multi-view TTA).
    """
    views = [(x, 0.5), (x.flip(3), 0.5)]
    if shift:
        h, w = x.shape[2:]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        moved = [padded[:, :, :h, :w], padded[:, :, 2 * shift:, 2 * shift:]]
        views = [(v, wt / 2) for v, wt in views] + [(v, 0.125) for m in moved for v in (m, m.flip(3))]
    return views


@torch.no_grad()
def eval_log_probs(module: Callable, x: torch.Tensor, tta: bool, autocast, shift: int = 0) -> torch.Tensor:
    """fp32 log-probabilities of a normalised batch, the forward under the training precision's
    autocast (bf16 evaluation is several times faster on a CPU, and `fitvision eval` uses the same
    precision, so it still reproduces a run's val_acc). With TTA: the log of the weighted mean of
    the probabilities over ``tta_views`` (the image and its mirror, plus shifted views if ``shift``)."""
    if not tta:
        with autocast:
            return F.log_softmax(module(x).float(), dim=1)
    log_probs, weights = [], []
    for view, weight in tta_views(x, shift):
        if x.is_contiguous(memory_format=torch.channels_last):
            view = view.contiguous(memory_format=torch.channels_last)
        with autocast:
            log_probs.append(F.log_softmax(module(view).float(), dim=1))
        weights.append(weight)
    logw = torch.tensor(weights, device=x.device).log().view(-1, 1, 1)
    return torch.logsumexp(torch.stack(log_probs) + logw, dim=0)


def loss_and_accuracy(log_probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """{"val_loss": mean cross-entropy, "val_acc": top-1 accuracy} from log-probabilities."""
    return {"val_loss": F.nll_loss(log_probs, targets).item(),
            "val_acc": (log_probs.argmax(1) == targets).float().mean().item()}


def _loader_state(dl) -> Any:
    return dl.state_dict() if hasattr(dl, "state_dict") else None


def _load_loader_state(dl, state: Any) -> None:
    if state is not None and hasattr(dl, "load_state_dict"):
        dl.load_state_dict(state)


# --------------------------------------------------------------------------- the Learner
class Learner:
    """Trains `model` on `train_dl`, evaluates on `valid_dl`.

    Loaders yield (x, y) on the device and have ``set_epoch`` and ``len`` (fitvision.data.loader
    DeviceLoader). ``opt_func(model) -> optimizer`` builds the optimizer (default: fitvision's
    Adam over ``param_groups(model, wd)``); ``lr`` is the constant rate ``fit`` uses without a
    schedule. ``clip`` clips gradients by value (the seeds) or by norm (``clip_mode="norm"``),
    0 = off. ``precision``: "fp32", "bf16" (autocast; weights stay fp32, BatchNorm runs in fp32)
    or "fp16" (CUDA, with a GradScaler). ``ema`` > 0 keeps an EMA of the weights, used for
    evaluation, prediction and saving. ``lookahead`` pulls the weights back to their running
    average every 5 steps (ema.Lookahead). ``metrics`` maps a name to fn(log_probs, targets) -> float,
    added to each epoch's row. ``hooks`` are called in order (see hooks.py).
    """

    def __init__(self, model: nn.Module, train_dl, valid_dl, *, loss_func: Callable | None = None,
                 opt_func: Callable[[nn.Module], Any] | None = None, lr: float = 1e-3, wd: float = 0.0,
                 clip: float = 0.0, clip_mode: str = "value", label_smoothing: float = 0.0, ema: float = 0.0,
                 lookahead: bool = False, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = False, compile: bool | str = False, tta: bool = False, tta_shift: int = 0,
                 epoch_valid_limit: int = 0, metrics: dict[str, Callable] | None = None,
                 hooks: Sequence[Hook] = (), progress: bool = True, eval_transform: Callable | None = None):
        if clip_mode not in ("value", "norm"):
            raise FitVisionError(f"unknown clip_mode '{clip_mode}' (valid: value, norm)")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.eval_transform = eval_transform or getattr(valid_dl, "transform", None)
        self.loss_func = loss_func or functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
        self.lr, self.wd, self.clip, self.clip_mode, self.tta = lr, wd, clip, clip_mode, tta
        self.tta_shift = tta_shift
        # Intermediate epochs may be evaluated on N validation images only: the curve stays
        # visible for a fraction of the cost; the last epoch (the result) always sees all. The N
        # are evenly spaced, not the first N: splits are often stored sorted by class.
        n_valid = getattr(valid_dl, "num_samples", None)
        self.epoch_valid_dl = valid_dl
        if epoch_valid_limit and n_valid is not None and epoch_valid_limit < n_valid and hasattr(valid_dl, "subset"):
            self.epoch_valid_dl = valid_dl.subset(np.linspace(0, n_valid - 1, epoch_valid_limit).round().astype(np.int64))
        self.metrics = dict(metrics or {})
        self.opt = (opt_func or self._default_opt)(self.model)
        # fp16 needs loss scaling so small gradients don't flush to zero; disabled it is a no-op.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = ModelEMA(self.model, ema) if ema > 0 else None
        self.lookahead = Lookahead(self.model) if lookahead else None
        self.compile, self._warmed_up = compile, False
        # compile=True uses the default backend (inductor); a string names another ("eager", ...).
        backend = compile if isinstance(compile, str) else "inductor"
        self._forward = torch.compile(self.model, backend=backend) if compile else self.model
        self.hooks: list[Hook] = ([Progress()] if progress else []) + list(hooks)
        self.state = TrainState()
        self.final_preds: tuple[torch.Tensor, torch.Tensor] | None = None  # see _end_epoch
        self._pending: list[tuple[dict[str, float], int, torch.Tensor]] = []  # batch rows awaiting their loss
        # Reading the loss forces a GPU sync; on CUDA do it every 50 steps, on the CPU it is free.
        self.sync_every = 50 if self.device.type == "cuda" else 1

    def _default_opt(self, model: nn.Module):
        from fitvision.models import param_groups

        return create_optimizer("adam", param_groups(model, self.wd), lr=self.lr, wd=self.wd)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, train_dl, valid_dl, **kwargs) -> Learner:
        """A Learner with every setting from a TrainConfig; kwargs (hooks, progress, ...) pass through."""
        from fitvision.models import param_groups, unwrap

        def opt_func(m: nn.Module):
            groups = param_groups(m, cfg.wd)
            stem = getattr(unwrap(m), "stem_bias", None)
            if stem is not None:  # a data-initialised stem's conv bias is no norm shift: the weights' lr and decay
                for group in groups:
                    group["params"] = [p for p in group["params"] if p is not stem]
                groups = [g for g in groups if g["params"]] + [
                    {"params": [stem], "name": "body_stem", "weight_decay": cfg.wd, "lr_mult": 1.0}]
            for group in groups:  # biases and norm shifts: few numbers, they tolerate (and need) a higher lr
                if group["name"].endswith("no_decay"):
                    group["lr_mult"] *= cfg.bias_lr_mult
                    if cfg.wd_bn_bias:  # torch.optim's (and the seeds') way: every parameter decays, and
                        # as much per step as the weights do: the higher lr speeds their gradient steps only
                        group["weight_decay"] = cfg.wd / cfg.bias_lr_mult
                        group["wd_mult"] = 1.0 / cfg.bias_lr_mult
                elif group["name"] == "body" and cfg.opt == "muon":  # the orthogonalised weights
                    group["lr_mult"] *= (cfg.muon_lr or cfg.lr) / cfg.lr
                    group["mom"] = cfg.muon_momentum or cfg.momentum
                    group["renorm"] = cfg.muon_renorm
                    if cfg.muon_renorm:  # the norm is held fixed, so weight decay has nothing to do
                        group["weight_decay"], group["wd_mult"] = 0.0, 0.0
            return create_optimizer(cfg.opt, groups, lr=cfg.lr, momentum=cfg.momentum,
                                    beta2=cfg.beta2, eps=cfg.eps, wd=cfg.wd, wd_mode=cfg.wd_mode)

        return cls(model, train_dl, valid_dl, opt_func=opt_func, lr=cfg.lr, wd=cfg.wd, clip=cfg.clip,
                   clip_mode=cfg.clip_mode, label_smoothing=cfg.label_smoothing, ema=cfg.ema, lookahead=cfg.lookahead,
                   device=cfg.device,
                   precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile, tta=cfg.tta,
                   tta_shift=cfg.tta_shift, epoch_valid_limit=cfg.epoch_valid_limit, **kwargs)

    # ----------------------------------------------------------------------- the step
    def _autocast(self):
        return autocast(self.device, self.precision)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, hypers: dict[str, float]) -> torch.Tensor:
        """One optimisation step, top to bottom. Returns the loss, detached and still on the device."""
        for key, value in hypers.items():  # lr, mom, wd from the schedules, for this step
            set_hyper(self.opt, key, value)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():  # bf16/fp16 matmuls and convs; autocast keeps BatchNorm and the loss in fp32
            loss = self.loss_func(self._forward(x), y)
        # NaN/inf check: in _flush_losses, every sync_every steps, so a GPU never waits on the host.
        self.scaler.scale(loss).backward()  # fp16: scaled so small gradients survive; else unchanged
        if self.clip:
            self.scaler.unscale_(self.opt)  # clip the true gradients, not the scaled ones
            params = [p for p in self.model.parameters() if p.grad is not None]
            if self.clip_mode == "value":
                nn.utils.clip_grad_value_(params, self.clip)
            else:
                nn.utils.clip_grad_norm_(params, self.clip)
        self.scaler.step(self.opt)  # fp16: skipped when a gradient overflowed
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        if self.lookahead is not None:  # every 5 steps the weights go back to their running average
            self.lookahead.step(self.model, self.state.step + 1, self.state.total_steps)
        return loss.detach()

    # ----------------------------------------------------------------------- the loop
    def fit(self, epochs: float, sched: dict[str, Callable | None] | None = None,
            resume_from: str | Path | None = None) -> list[dict[str, float]]:
        """Train for `epochs` (may be fractional) and return the history, one row per epoch.

        ``sched`` maps "lr", "mom" and/or "wd" to pure functions of progress pos in [0, 1]
        (fitvision.optim.schedules); the default is the constant ``self.lr``. ``resume_from`` is
        a checkpoint of this same fit: training continues at its step, bit for bit.
        """
        n = len(self.train_dl)
        if n == 0:
            raise FitVisionError("the training set holds less than one batch; lower the batch size (--bs)")
        sched = sched or {"lr": sched_const(self.lr)}
        self.state = TrainState(steps_per_epoch=n, total_steps=max(1, round(epochs * n)))
        self.final_preds = None
        if resume_from is not None:
            self._resume(resume_from)
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
        start = time.perf_counter() - s.epoch_train_seconds
        for i, (x, y) in enumerate(self.train_dl):
            if i < s.batch:  # resumed mid-epoch: replay the loader up to where the checkpoint was taken
                continue
            hypers = {k: fn(step_pos(s.step, s.total_steps)) for k, fn in sched.items() if fn is not None}
            loss = self.train_step(x, y, hypers)
            s.step, s.batch, s.epoch_images = s.step + 1, s.batch + 1, s.epoch_images + len(y)
            # What the optimizer used (a schedule's value, or the optimizer's own when unscheduled).
            row = {"step": s.step - 1, "epoch": s.epoch, "lr": hypers["lr"] if "lr" in hypers else
                   get_hyper(self.opt, "lr"), "mom": hypers["mom"] if "mom" in hypers else get_hyper(self.opt, "mom")}
            self._pending.append((row, s.batch - 1, loss))
            if len(self._pending) >= self.sync_every:
                self._flush_losses()
            s.epoch_train_seconds = time.perf_counter() - start
            for hook in self.hooks:
                hook.on_batch_end(s)
            if s.done:
                break
        self._flush_losses()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        s.epoch_train_seconds = time.perf_counter() - start

    def _flush_losses(self) -> None:
        """Move pending losses to the host (one sync) and stop at the first NaN/inf."""
        if not self._pending:
            return
        rows, batch_idx, losses = zip(*self._pending)
        self._pending = []
        for row, batch, loss in zip(rows, batch_idx, torch.stack(losses).float().tolist()):
            if not math.isfinite(loss):
                raise FitVisionError(
                    f"the loss became {loss} at epoch {row['epoch']}, batch {batch}"
                    f" (lr {row['lr']:.3g}): training diverged; lower the learning rate (--lr) and train again"
                    " (a checkpoint written before it is intact)")
            self.state.batches.append({**row, "loss": loss})

    def _end_epoch(self) -> None:
        s = self.state
        t0 = time.perf_counter()
        # TTA multiplies the evaluation's cost: pay it for the final epoch only, whose row is the result.
        # The final evaluation's predictions are the run's result (preds.npz, summary.json): kept
        # so that writing them does not pay for a second (TTA) pass over the validation set.
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
        stepped per batch, momentum (Adam's beta1) cycling 0.95 -> 0.85 -> 0.95 inversely.

        An early stop (hooks.EarlyStopping) ends the cycle where it is: the learning rate then
        never reaches its final low value.
        """
        from fitvision.config import TrainConfig

        if wd is not None:
            set_hyper(self.opt, "wd", wd)
            self.wd = wd
        if clip is not None:
            self.clip = clip
        cfg = TrainConfig(sched="one_cycle", lr=max_lr or self.lr, epochs=epochs, pct_start=pct_start,
                          div_factor=div_factor, final_div_factor=final_div_factor)
        total = max(1, round(epochs * len(self.train_dl)))
        return self.fit(epochs, create_schedule(cfg, total_steps=total))

    # ----------------------------------------------------------------------- evaluation
    def _eval_module(self) -> Callable:
        """The EMA weights when kept, else the (compiled) model."""
        return self.ema.module if self.ema is not None else self._forward

    def _log_probs(self, x: torch.Tensor, tta: bool) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return eval_log_probs(self._eval_module(), x, tta, self._autocast(), self.tta_shift)

    @torch.no_grad()
    def _collect(self, dl, tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            pairs = [(self._log_probs(x, tta), y) for x, y in dl]
        finally:
            self.model.train(was_training)
        if not pairs:
            raise FitVisionError("the validation set is empty; check --valid-limit / --valid-pct")
        log_probs, targets = zip(*pairs)
        return torch.cat(log_probs).cpu(), torch.cat(targets).cpu()

    def _evaluate(self, dl, tta: bool, keep: bool = False) -> dict[str, float]:
        """The epoch row's metrics; ``keep`` stores the predictions as ``final_preds``."""
        log_probs, targets = self._collect(dl, tta)
        if keep:
            self.final_preds = (log_probs, targets)
        row = loss_and_accuracy(log_probs, targets)
        row.update({name: float(fn(log_probs, targets)) for name, fn in self.metrics.items()})
        return row

    def validate(self, dl=None, tta: bool | None = None) -> tuple[float, float]:
        """(loss, accuracy) on dl (default the validation loader); plain cross-entropy."""
        row = self._evaluate(dl or self.valid_dl, self.tta if tta is None else tta)
        return row["val_loss"], row["val_acc"]

    def get_log_preds(self, dl=None, tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities float32 (N, C), targets int64 (N,)) on the CPU, in loader order."""
        return self._collect(dl or self.valid_dl, self.tta if tta is None else tta)

    def get_preds(self, dl=None, tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities float32 (N, C), targets int64 (N,)) on the CPU, in loader order."""
        log_probs, targets = self.get_log_preds(dl, tta)
        return log_probs.exp(), targets

    @torch.no_grad()
    def predict(self, images, tta: bool | None = None, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for uint8 images: numpy (N, H, W, 3) or torch (N, 3, H, W).

        Only the eval transform is applied (resize/normalise), never augmentation.
        """
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) \
            else torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise FitVisionError(f"predict expects a batch of uint8 images, got {x.dtype} of shape {tuple(x.shape)}")
        was_training = self.model.training
        self.model.eval()
        tta = self.tta if tta is None else tta
        try:
            out = []
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(self.device)
                xb = self.eval_transform(xb) if self.eval_transform is not None else xb.float() / 255
                out.append(self._log_probs(xb, tta).exp().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    # ----------------------------------------------------------------------- compile warm-up
    def _warm_up(self) -> None:
        """torch.compile compiles on the first calls: make them outside the timed loop on a
        validation batch (train and eval mode), then put back every weight, buffer, gradient
        and RNG state, so the warm-up leaves no trace on training."""
        if not self.compile or self._warmed_up:
            return
        self._warmed_up = True
        x, y = next(iter(self.valid_dl))
        bs = getattr(self.train_dl, "batch_size", len(y))
        x, y = x[:bs], y[:bs]
        weights, rng = copy.deepcopy(self.model.state_dict()), rng_state()
        self.model.train()
        with self._autocast():
            loss = self.loss_func(self._forward(x), y)
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        self.model.eval()
        with torch.no_grad():
            self._forward(x)
        self.model.load_state_dict(weights)  # BatchNorm statistics moved in the train-mode call
        set_rng_state(rng)
        self.model.train()

    # ----------------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs, as plain tensors, numbers and containers."""
        self._flush_losses()
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "rng": rng_state(),
            "loaders": {"train": _loader_state(self.train_dl)},
            "state": self.state.to_dict(),
        }

    def save_checkpoint(self, path: str | Path) -> None:
        save_checkpoint(path, self.checkpoint_state())

    def _resume(self, path: str | Path) -> None:
        ck = load_checkpoint(path)
        saved = ck["state"]
        if (saved["total_steps"], saved["steps_per_epoch"]) != (self.state.total_steps, self.state.steps_per_epoch):
            raise FitVisionError(
                f"{path} was written for {saved['total_steps']} steps of {saved['steps_per_epoch']} per epoch, "
                f"this run has {self.state.total_steps} of {self.state.steps_per_epoch}; resume with the same config")
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise FitVisionError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from None
        self.opt.load_state_dict(ck["opt"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None and ck["ema"] is not None:
            self.ema.load_state_dict(ck["ema"])
        if self.lookahead is not None and ck.get("lookahead") is not None:
            self.lookahead.load_state_dict(ck["lookahead"])
        set_rng_state(ck["rng"])
        _load_loader_state(self.train_dl, ck["loaders"]["train"])
        self.state = TrainState.from_dict(saved)

    # ----------------------------------------------------------------------- weights, freezing
    def save(self, path: str | Path) -> Path:
        """The evaluated weights (EMA when kept) as safetensors, written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        module = self.ema.module if self.ema is not None else self.model
        state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)
        return path

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

        The multiplier scales each group's own lr_mult as the optimizer was built (biases at
        bias_lr_mult, Muon's filters at muon_lr / lr), which the first call records as
        "base_lr_mult"; it lives in the optimizer's state, so a resumed run keeps it."""
        for group in self.opt.param_groups:
            if str(group.get("name", "")).startswith("body"):
                base = group.setdefault("base_lr_mult", group.get("lr_mult", 1.0))
                group["lr_mult"] = base * mult

    def lr_find(self, **kwargs):
        """The learning-rate range test; see fitvision.train.lr_find.lr_find."""
        from fitvision.train.lr_find import lr_find

        return lr_find(self, **kwargs)

