"""The body/head split: optimizer parameter groups and the transfer helpers freeze/unfreeze.

The head is ``model.classifier`` (see ``base.ImageClassifier``); a model without one (any
plain ``nn.Module``) uses its last ``nn.Linear``. torch.compile and DDP wrappers are looked
through.
"""

from __future__ import annotations

from torch import nn

from fitvision.errors import FitVisionError

_BN = nn.modules.batchnorm._BatchNorm


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile (``_orig_mod``) and DistributedDataParallel (``module``)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def head_module(model: nn.Module) -> nn.Module:
    """The head (frozen last, its own parameter groups): ``model.classifier`` (fitvision's models:
    pooling, dropout and linear layers), else the last ``nn.Linear``."""
    model = unwrap(model)
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Module):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FitVisionError(f"{type(model).__name__} has neither a classifier nor a linear layer to use as head")
    return linears[-1]


def final_layer_name(model: nn.Module) -> str:
    """The module name of the layer that maps features to class scores (the one a new set of
    classes replaces): ``get_classifier()`` (fitvision's and timm's models), else the last
    ``nn.Linear`` in the head."""
    model = unwrap(model)
    if hasattr(model, "get_classifier"):
        layer = model.get_classifier()
    else:
        head = getattr(model, "classifier", model)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        layer = linears[-1] if linears else None
    for name, module in model.named_modules():
        if module is layer and name:
            return name
    raise FitVisionError(f"{type(model).__name__} has no classifier layer: cannot tell its head from its body")


def _no_decay(name: str, p: nn.Parameter, norm_params: set[int]) -> bool:
    # Biases and normalisation scales/shifts: decaying them only fights BatchNorm's own scaling.
    return p.ndim <= 1 or name.endswith(".bias") or id(p) in norm_params


def param_groups(model: nn.Module, wd: float, body_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer groups ``{"params", "weight_decay", "wd_mult", "lr_mult", "name"}``.

    Names: body, body_no_decay, head, head_no_decay (empty groups left out). Frozen
    parameters are included, so that ``unfreeze`` needs no new optimizer: they have no
    gradient while frozen and optimizers skip them. ``lr_mult`` scales the schedule's lr
    (``body_lr_mult`` < 1 gives the body a smaller lr than the head: discriminative lrs).
    """
    model = unwrap(model)
    head_ids = {id(p) for p in head_module(model).parameters()}
    norm_ids = {id(p) for m in model.modules()
                if isinstance(m, (_BN, nn.LayerNorm, nn.GroupNorm)) for p in m.parameters()}
    groups = {key: [] for key in ("body", "body_no_decay", "head", "head_no_decay")}
    for name, p in model.named_parameters():
        part = "head" if id(p) in head_ids else "body"
        groups[part + ("_no_decay" if _no_decay(name, p, norm_ids) else "")].append(p)
    # wd_mult says which groups follow a later set_hyper("wd", ...): the weights, even when built
    # with wd 0 (fit_one_cycle(wd=...) on a Learner made without decay), never the no-decay groups.
    return [{"params": params, "name": key,
             "weight_decay": 0.0 if key.endswith("_no_decay") else wd,
             "wd_mult": 0.0 if key.endswith("_no_decay") else 1.0,
             "lr_mult": 1.0 if key.startswith("head") else body_lr_mult}
            for key, params in groups.items() if params]


def freeze(model: nn.Module, train_bn: bool = True) -> None:
    """Train the head only (seed 003's transfer learning); ``unfreeze`` undoes it.

    ``train_bn=True`` (fastai's default) keeps the body's BatchNorm scales and shifts trainable
    and its running statistics updating: cheap, and it lets the frozen features adapt to the new
    data's statistics. ``train_bn=False`` freezes those too and keeps body BatchNorm in eval
    mode (running statistics used, never updated), so the body is exactly the trained feature
    extractor; a fitvision model keeps this through later ``model.train()`` calls, a plain
    ``nn.Module`` only until its next ``train()``. Parameters the model itself keeps fixed
    (``requires_grad=False`` before the call, e.g. speednet's whitening conv) stay fixed.
    """
    inner = unwrap(model)
    head = head_module(inner)
    head_ids = {id(p) for p in head.parameters()}
    head_mods = set(head.modules())
    body_bns = [m for m in inner.modules() if isinstance(m, _BN) and m not in head_mods]
    bn_ids = {id(p) for m in body_bns for p in m.parameters()}
    frozen = set(getattr(inner, "frozen_by_freeze", ()))
    for name, p in inner.named_parameters():
        keep = id(p) in head_ids or (train_bn and id(p) in bn_ids)
        if p.requires_grad and not keep:
            p.requires_grad_(False)
            frozen.add(name)
    # A plain attribute, not a buffer: it is bookkeeping for unfreeze, not model state.
    inner.frozen_by_freeze = frozen
    if not train_bn:
        if hasattr(inner, "bn_frozen"):
            inner.bn_frozen = True
        for m in body_bns:
            m.eval()


def unfreeze(model: nn.Module) -> None:
    """Make trainable again what ``freeze`` froze; body BatchNorm follows the model's mode again."""
    inner = unwrap(model)
    frozen = getattr(inner, "frozen_by_freeze", set())
    for name, p in inner.named_parameters():
        if name in frozen:
            p.requires_grad_(True)
    inner.frozen_by_freeze = set()
    if getattr(inner, "bn_frozen", False):
        inner.bn_frozen = False
    inner.train(inner.training)
