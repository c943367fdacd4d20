"""Weight initialisation: Kaiming (the default every zoo model applies), PyTorch's own layer
defaults, and LSUV (seed 004)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.models.groups import unwrap

# "default": each model's own (Kaiming for the zoo); "torch": PyTorch's own layer defaults (what a
# model built from torch.nn gets with no init step: the seeds' 002 and 003); "lsuv": lsuv_init on a
# training batch (seed 004), after the model's own.
INITS = ("default", "torch", "lsuv")

INIT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


def torch_default_init(model: nn.Module) -> int:
    """Every conv and linear layer back to PyTorch's own initialisation (``reset_parameters``: weights
    uniform within sqrt(6 / ((1 + 5) fan_in)), Kaiming's with a = sqrt(5); biases within
    1 / sqrt(fan_in)). Norm layers keep what the model set (a zero-gamma BatchNorm stays zero);
    layers whose weight a parametrization computes (spectral norm) are left alone. Returns how many
    layers it reset."""
    count = 0
    for m in model.modules():
        if isinstance(m, INIT_LAYERS) and not nn.utils.parametrize.is_parametrized(m, "weight") \
                and not m.weight.is_meta:
            m.reset_parameters()
            count += 1
    return count


def kaiming_init(model: nn.Module, skip: Iterable[nn.Module] = ()) -> None:
    """Kaiming-normal weights (fan_in, ReLU gain) and zero biases on every conv and linear layer.

    Every layer the zoo initialises feeds a ReLU (directly or through BatchNorm), which is what
    the sqrt(2) gain assumes. ``skip`` keeps PyTorch's default (uniform, 1/sqrt(fan_in) bound)
    on the layers given: the zoo skips the final classifier so that the first logits are small.
    """
    skipped = set(skip)
    for m in model.modules():
        # Meta tensors (shape-only models, e.g. for counting parameters) hold no values to set.
        if isinstance(m, INIT_LAYERS) and m not in skipped and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# Modules that act on each unit (channel or feature) alone: what may sit between a layer and the
# activation whose output LSUV measures. Dropout is off during LSUV, so it passes values through.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus)
_PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd)


def _forward_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, nn.Module | None, bool]]:
    """Conv and linear layers in the order the forward pass calls them (each once), each with
    the activation module that takes its output (None if none does: a classifier, or an
    activation the model calls as a function) and whether a BatchNorm takes the output first."""
    calls: list[tuple[str, nn.Module]] = []  # every leaf module call, in order
    handles = []
    for name, m in model.named_modules():
        if not list(m.children()):
            def record(mod, _inp, _out, name=name):
                calls.append((name, mod))
            handles.append(m.register_forward_hook(record))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    order, seen = [], set()
    for i, (name, m) in enumerate(calls):
        if isinstance(m, INIT_LAYERS) and id(m) not in seen:
            seen.add(id(m))
            act, feeds_bn = None, False
            for _, nxt in calls[i + 1:]:
                if isinstance(nxt, _BN):
                    feeds_bn = True
                    break
                if isinstance(nxt, ACTIVATIONS):
                    act = nxt
                    break
                if not isinstance(nxt, _PASS_THROUGH):
                    break
            order.append((name, m, act, feeds_bn))
    return order


def _layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``x`` (at its first call)."""
    captured: list[torch.Tensor] = []

    def keep(_mod, args):
        if not captured:  # a clone: later in-place ops must not change what we hold
            captured.append(args[0].detach().clone())

    handle = layer.register_forward_pre_hook(keep)
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]


def _output_stats(layer: nn.Module, act: nn.Module | None, inp: torch.Tensor) -> tuple[float, float]:
    out = layer(inp)
    out = (act(out) if act is not None else out).float()
    return out.mean().item(), out.std().item()


def _lsuv_layer(model: nn.Module, layer: nn.Module, act: nn.Module | None, x: torch.Tensor, name: str,
                tol: float, max_iters: int) -> tuple[float, float]:
    # A layer's input depends only on the layers before it, so one forward pass gives it, and
    # the iterations below run the layer (and its activation) alone on that input: the same
    # output a full pass gives.
    inp = _layer_input(model, layer, x)
    mean, std = _output_stats(layer, act, inp)
    for _ in range(max_iters):
        if abs(std - 1) <= tol:
            break
        if not std > 1e-8:  # also catches NaN
            raise FitVisionError(f"LSUV: layer '{name}' gives a constant output (std {std:.3g}) on this "
                                 "batch; pass a batch of varied, normalised images")
        layer.weight.data /= std
        mean, std = _output_stats(layer, act, inp)
    # The mean step shifts every output by the same amount, so it leaves the std alone. After a
    # ReLU-like activation it could not: there the output's mean is positive by construction
    # (seed 004's GeneralRelu subtracts a constant after the ReLU for that), so the mean step is
    # for layers whose own output is measured.
    for _ in range(max_iters if layer.bias is not None and act is None else 0):
        if abs(mean) <= tol:
            break
        layer.bias.data -= mean
        mean, std = _output_stats(layer, act, inp)
    return mean, std


def lsuv_init(model: nn.Module, batch, tol: float = 1e-3, max_iters: int = 10) -> list[tuple[str, float, float]]:
    """Layer-sequential unit variance (Mishkin & Matas 2015; seed 004), input to output.

    Every conv and linear layer, in forward order, is measured where seed 004 measures it: after
    its activation (the first activation module its output reaches, through dropout or identity
    at most). Its weight is divided by that output's std until |std - 1| <= tol (at most
    ``max_iters`` times). Two cases measure the layer's own output instead: a layer whose output
    goes through BatchNorm first (xresnet's and ResNet9's convs: the BatchNorm would undo any
    scale after it, so the layer is scaled to unit output, which starts the BatchNorm's running
    statistics at the truth and sets the weights' norm, and with it their effective step size),
    and a layer no activation module follows (a classifier; an activation called as a function).
    Those with a bias also get the mean step: the output's mean is subtracted from the bias
    until |mean| <= tol. After a ReLU the mean is positive by design, so it is left as it is.
    Left alone: layers whose weight does not require grad (frozen, or fixed by design like
    speednet's whitening conv) and layers whose weight a parametrization computes (spectral
    norm sets its own scale).

    The passes run as training would see the network: BatchNorm normalises with the batch's
    own statistics, while dropout is off (a random mask would make the target move). The
    BatchNorm running statistics and the train/eval mode of every module are put back after.
    Returns ``[(layer_name, mean, std)]``: each layer's measured statistics when it was done,
    which later layers do not change (they come after it). A layer called twice in one forward
    pass (shared weights) is measured at its first call.
    """
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    model = unwrap(model)  # hooks need the eager module, not a torch.compile wrapper
    modes = {m: m.training for m in model.modules()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        with torch.no_grad():
            layers = [(n, m, act) for n, m, act, _ in _forward_order(model, x)
                      if not nn.utils.parametrize.is_parametrized(m, "weight") and m.weight.requires_grad]
            return [(name, *_lsuv_layer(model, layer, act, x, name, tol, max_iters)) for name, layer, act in layers]
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        for m, mode in modes.items():
            m.training = mode
