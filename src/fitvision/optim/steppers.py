"""Stats and steppers: the pieces every optimizer recipe is composed of (seed 004).

Each works on a whole bucket of parameters (lists of tensors) with torch._foreach_* ops.
Steppers take what they need from the keywords and ignore the rest. Where torch.optim has
the same update, the ops are the same ones in the same order, so results agree bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fitvision.optim.optimizer import Stat, with_defaults
from fitvision.train.device import cpu_has_bf16

Tensors = list[torch.Tensor]


# --- weight decay: two different things that coincide only for plain SGD ---


@with_defaults(wd=0.0)
def l2_reg(ps: Tensors, grads: Tensors, wd: float, **kwargs: Any) -> dict[str, Any] | None:
    """L2 regularisation: add wd * w (the gradient of wd/2 |w|^2) to the gradient, so every
    later stat sees it (torch.optim.SGD/Adam's weight_decay). The new gradients are fresh
    tensors; p.grad is left as it was."""
    if wd == 0:
        return None
    return {"grads": torch._foreach_add(grads, ps, alpha=wd)}


@with_defaults(wd=0.0)
def weight_decay(ps: Tensors, lr: float, wd: float, **kwargs: Any) -> None:
    """Decoupled weight decay (AdamW): shrink the weights by lr * wd, outside any statistic."""
    if wd != 0:
        torch._foreach_mul_(ps, 1 - lr * wd)


# --- stats ---


class AverageGrad(Stat):
    """Momentum buffer. Without dampening: avg = mom * avg + g (torch.optim.SGD).
    With dampening: the EWMA avg = mom * avg + (1 - mom) * g (Adam's first moment)."""

    keys = ("grad_avg",)
    defaults = {"mom": 0.9}

    def __init__(self, dampening: bool = False):
        self.dampening = dampening

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        return {"grad_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def __call__(self, ps: Tensors, grads: Tensors, mom: float, grad_avg: Tensors, **kwargs: Any) -> dict[str, Any]:
        if self.dampening:
            torch._foreach_lerp_(grad_avg, grads, 1 - mom)
        else:
            torch._foreach_mul_(grad_avg, mom)
            torch._foreach_add_(grad_avg, grads)
        return {"mom_damp": 1 - mom if self.dampening else 1.0}

    def __repr__(self) -> str:
        return f"AverageGrad(dampening={self.dampening})"


class AverageSqrGrad(Stat):
    """Running average of squared gradients: sqr_avg = sqr_mom * sqr_avg + damp * g^2."""

    keys = ("sqr_avg",)
    defaults = {"sqr_mom": 0.99}

    def __init__(self, dampening: bool = True):
        self.dampening = dampening

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        return {"sqr_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def __call__(
        self, ps: Tensors, grads: Tensors, sqr_mom: float, sqr_avg: Tensors, **kwargs: Any
    ) -> dict[str, Any]:
        damp = 1 - sqr_mom if self.dampening else 1.0
        torch._foreach_mul_(sqr_avg, sqr_mom)
        torch._foreach_addcmul_(sqr_avg, grads, grads, damp)
        return {"sqr_damp": damp}

    def __repr__(self) -> str:
        return f"AverageSqrGrad(dampening={self.dampening})"


class StepCount(Stat):
    """How many updates each parameter has had (a python int, so it needs no device sync)."""

    keys = ("step",)

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        return {"step": 0}

    def __call__(self, ps: Tensors, step: list[int], **kwargs: Any) -> dict[str, Any]:
        return {"step": [s + 1 for s in step]}


def debias(mom: float, damp: float, step: int) -> float:
    """Sum of the weights an average with factor mom and dampening damp has given its inputs
    after `step` updates: dividing by it turns the average into a weighted mean.
    With dampening (damp = 1 - mom) this is Adam's 1 - mom^step."""
    if mom == 1:
        return damp * step
    # Written so that damp == 1 - mom gives exactly 1 - mom**step, as torch.optim computes it.
    return (1 - mom**step) * (damp / (1 - mom))


# --- steppers that move the weights ---


@with_defaults(lr=1e-3)
def sgd_step(ps: Tensors, grads: Tensors, lr: float, **kwargs: Any) -> None:
    torch._foreach_add_(ps, grads, alpha=-lr)


def momentum_step(ps: Tensors, lr: float, grad_avg: Tensors, **kwargs: Any) -> None:
    torch._foreach_add_(ps, grad_avg, alpha=-lr)


def nesterov_step(ps: Tensors, grads: Tensors, lr: float, mom: float, grad_avg: Tensors, **kwargs: Any) -> None:
    """Look ahead: step along g + mom * avg (torch.optim.SGD(nesterov=True))."""
    torch._foreach_add_(ps, torch._foreach_add(grads, grad_avg, alpha=mom), alpha=-lr)


def debiased_momentum_step(
    ps: Tensors, lr: float, mom: float, mom_damp: float, step: list[int], grad_avg: Tensors, **kwargs: Any
) -> None:
    """Step along the debiased EWMA of the gradients (seed 004's "EWMA with debiasing")."""
    scales = [-lr / debias(mom, mom_damp, s) for s in step]
    torch._foreach_add_(ps, torch._foreach_mul(grad_avg, scales))


def _adam_denominator(
    sqr_avg: Tensors, sqr_mom: float, sqr_damp: float, step: list[int], eps: float
) -> Tensors:
    """sqrt(debiased sqr_avg) + eps, as torch.optim.Adam computes it."""
    denom = torch._foreach_sqrt(sqr_avg)
    torch._foreach_div_(denom, [math.sqrt(debias(sqr_mom, sqr_damp, s)) for s in step])
    torch._foreach_add_(denom, eps)
    return denom


@with_defaults(eps=1e-5)
def adam_step(
    ps: Tensors,
    lr: float,
    mom: float,
    mom_damp: float,
    sqr_mom: float,
    sqr_damp: float,
    step: list[int],
    grad_avg: Tensors,
    sqr_avg: Tensors,
    eps: float,
    **kwargs: Any,
) -> None:
    """Debiased momentum divided by the debiased root mean square of the gradients. eps is a
    real hyperparameter: large eps makes Adam behave like SGD with debiased momentum."""
    denom = _adam_denominator(sqr_avg, sqr_mom, sqr_damp, step, eps)
    torch._foreach_addcdiv_(ps, grad_avg, denom, [-lr / debias(mom, mom_damp, s) for s in step])


@with_defaults(eps=1e-5)
def radam_step(
    ps: Tensors,
    lr: float,
    mom: float,
    mom_damp: float,
    sqr_mom: float,
    sqr_damp: float,
    step: list[int],
    grad_avg: Tensors,
    sqr_avg: Tensors,
    eps: float,
    **kwargs: Any,
) -> None:
    """RAdam (Liu et al. 2019; torch.optim.RAdam's update): while too few squared gradients have
    been averaged for their variance to be trusted (rho_t <= 5), step along the debiased momentum
    alone; after that, Adam's step scaled by the rectifier r_t, which grows towards 1. This is a
    warm-up derived from beta2, so a schedule that starts at its peak lr does not blow up."""
    rho_inf = 2 / (1 - sqr_mom) - 1
    rect_scales, plain_scales = [], []
    for s in step:
        bc1, bc2 = debias(mom, mom_damp, s), debias(sqr_mom, sqr_damp, s)
        rho = rho_inf - 2 * s * sqr_mom**s / bc2
        r = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5 if rho > 5 else 0
        rect_scales.append(bc2**0.5 * (lr * r / bc1) * -1)
        plain_scales.append(0.0 if r > 0 else -lr / bc1)
    # One multiplier per element for both cases, in torch's order of ops so results agree:
    # rectified, scale * sqrt(bc2) / (sqrt(v) + eps); plain, (sqrt(v) + eps) / 0 = inf, whose
    # reciprocal 0 leaves just the momentum scale. eps goes on before the debiasing factor.
    mult = torch._foreach_sqrt(sqr_avg)
    torch._foreach_add_(mult, eps)
    torch._foreach_div_(mult, rect_scales)
    torch._foreach_reciprocal_(mult)
    torch._foreach_add_(mult, plain_scales)
    torch._foreach_addcmul_(ps, grad_avg, mult)


@with_defaults(eps=1e-6, wd=0.0, max_trust=10.0)
def lamb_step(
    ps: Tensors,
    lr: float,
    mom: float,
    mom_damp: float,
    sqr_mom: float,
    sqr_damp: float,
    step: list[int],
    grad_avg: Tensors,
    sqr_avg: Tensors,
    eps: float,
    wd: float,
    max_trust: float,
    **kwargs: Any,
) -> None:
    """LAMB (You et al. 2019): the Adam direction plus wd * w, rescaled per tensor by the trust
    ratio |w| / |update|, clipped at max_trust (1 where either norm is 0)."""
    update = torch._foreach_div(grad_avg, [debias(mom, mom_damp, s) for s in step])
    torch._foreach_div_(update, _adam_denominator(sqr_avg, sqr_mom, sqr_damp, step, eps))
    if wd != 0:
        torch._foreach_add_(update, ps, alpha=wd)
    # Norms stay on the device (no .item()), so the step never waits for the GPU.
    w_norm = torch.stack(torch._foreach_norm(ps))
    u_norm = torch.stack(torch._foreach_norm(update))
    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
    scale = ratio.clamp(max=max_trust) * -lr
    torch._foreach_mul_(update, list(scale.unbind()))
    torch._foreach_add_(ps, update)


# --- Muon: momentum, then the nearest semi-orthogonal direction ---

# The quintic Newton-Schulz coefficients of Keller Jordan's Muon (also torch.optim.Muon's): chosen
# for the steepest slope at 0, so a few iterations push every singular value into ~[0.7, 1.2]
# instead of converging slowly to exactly 1, which training does not need.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its matmuls are fast: a GPU, or a CPU with AVX-512 BF16 or AMX (several times
    fp32's rate; the iteration tolerates the rounding). A CPU without them (AVX2 only) emulates
    bf16 matmuls some 50x slower than fp32 (4.1 s against 85 ms for the `cpu` recipe's filter
    banks, each step), so there the iteration runs in fp32."""
    return torch.bfloat16 if device.type != "cpu" or cpu_has_bf16() else torch.float32


def orthogonalize(
    m: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Approximately U V^T for m = U S V^T, by `steps` Newton-Schulz iterations in `dtype`
    (default ``newton_schulz_dtype``: bf16 as torch.optim.Muon, where the hardware has it). m is
    2-D; the result has its shape and dtype."""
    a, b, c = NS_COEFFS
    x = m.to(dtype or newton_schulz_dtype(m.device))
    wide = x.size(0) <= x.size(1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm, so every singular value <= 1
    for _ in range(steps):  # x <- a x + (b G + c G^2) x, with G = x x^T
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(m.dtype)


@with_defaults(ns_steps=5, ortho=True, renorm=False)
def muon_step(
    ps: Tensors, grads: Tensors, lr: float, mom: float, grad_avg: Tensors, ns_steps: int, ortho: bool,
    renorm: bool, **kwargs: Any,
) -> None:
    """Muon (Jordan et al. 2024). grad_avg is the EWMA of the gradients (AverageGrad with
    dampening), so (1 - mom) g + mom * avg is the Nesterov direction g + mom * buf of SGD's
    undampened buffer, times (1 - mom). Every matrix or conv filter bank (ndim >= 2, flattened to
    out x rest) steps along that direction orthogonalised, scaled by sqrt(max(1, out/rest)) as
    torch.optim.Muon does (the same operations in the same order, so the two agree to the bit).
    Vectors (biases, norms), and every tensor of a group with ortho=False (a classifier head),
    take torch.optim.SGD's Nesterov step (mom < 1).

    renorm=True first rescales each orthogonalised tensor to norm sqrt(out) (airbench94_muon): for a
    conv followed by BatchNorm the scale does nothing to the function, but fixing it keeps the
    update's size relative to the weights, i.e. the effective lr, what the schedule says."""
    for p, g, avg in zip(ps, grads, grad_avg):
        d = g.lerp(avg, mom)
        if ortho and p.ndim >= 2:
            m = d.reshape(len(d), -1)
            if renorm:
                p.mul_(math.sqrt(len(p)) / p.norm().clamp(min=1e-12))
            p.add_(orthogonalize(m, ns_steps).view_as(d), alpha=-lr * math.sqrt(max(1.0, m.size(0) / m.size(1))))
        else:
            p.add_(d, alpha=-lr / (1 - mom))
