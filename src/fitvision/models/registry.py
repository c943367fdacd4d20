"""Model registry: ``@register_model`` builders, ``create_model`` by name, ``model_table``.

A builder is a function ``(num_classes=10, in_channels=3, width=1.0, **options) -> nn.Module``
whose docstring's first paragraph is the model's description. The built-in modules
(``zoo``, and ``speednet`` when present) register their builders when first needed, so
importing fitvision.models stays cheap and free of side effects.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fitvision.errors import FitVisionError, did_you_mean

_BUILTIN_MODULES = ("fitvision.models.zoo", "fitvision.models.speednet", "fitvision.models.resnetd")
_COMMON = ("num_classes", "in_channels", "width")
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str

    def options(self) -> list[str]:
        """The keyword arguments the builder takes beyond num_classes, in_channels and width."""
        params = inspect.signature(self.builder).parameters.values()
        return [p.name for p in params if p.name not in _COMMON and p.kind not in _VARIADIC]

    def takes_any_option(self) -> bool:
        params = inspect.signature(self.builder).parameters.values()
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


_REGISTRY: dict[str, ModelEntry] = {}
# An option's default says what it takes (a float option accepts an int: "drop=1").
_OPTION_KINDS: dict[type, tuple[type | tuple[type, ...], str]] = {
    bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number"), str: (str, "a word")}


def register_model(builder: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator: ``@register_model`` or ``@register_model(name="other")`` on a builder function."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        params = inspect.signature(fn).parameters
        missing = [p for p in _COMMON if p not in params]
        if missing:
            raise TypeError(f"model builder {key!r} must accept {', '.join(missing)}")
        if key in _REGISTRY and _REGISTRY[key].builder is not fn:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelEntry(key, fn, _summary(inspect.getdoc(fn) or ""))
        return fn

    return add(builder) if builder is not None else add


def _summary(doc: str) -> str:
    """A docstring's first paragraph on one line: the whole sentence, not its first line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        # speednet arrives in its own module; import whatever built-in modules exist.
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def list_models() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _load_builtins()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise FitVisionError(f"unknown model '{name}' ({did_you_mean(name, _REGISTRY)}valid: {valid})")
    return _REGISTRY[name]


def check_options(name: str, options: Iterable[str]) -> ModelEntry:
    """The model's registry entry; FitVisionError naming the valid options if it does not take one of these."""
    entry = get_entry(name)
    unknown = sorted(k for k in options if k not in entry.options())
    if unknown and not entry.takes_any_option():
        valid = ", ".join(entry.options()) or "none"
        raise FitVisionError(f"model '{name}' has no option(s) {', '.join(unknown)} (valid: {valid})")
    if isinstance(options, Mapping):  # values too: "whiten=maybe" must not build a model that whitens
        params = inspect.signature(entry.builder).parameters
        for key, value in options.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if type(default) not in _OPTION_KINDS:  # no default, or None: anything goes to the builder
                continue
            expected, words = _OPTION_KINDS[type(default)]
            # a bool is an int to Python, but "true" is no layer count
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise FitVisionError(f"model '{name}' option {key} takes {words}, got {value!r}")
    return entry


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 **kwargs) -> nn.Module:
    """Build a registered model. Options a model does not take raise FitVisionError naming them."""
    entry = check_options(name, kwargs)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise FitVisionError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise FitVisionError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(width, (int, float)) or not width > 0:
        raise FitVisionError(f"width must be a positive number, got {width!r}")
    try:
        return entry.builder(num_classes=num_classes, in_channels=in_channels, width=float(width), **kwargs)
    except (TypeError, ValueError) as e:  # an option of the wrong type or shape, e.g. widths="64"
        raise FitVisionError(f"model '{name}' cannot be built with {kwargs}: {e}") from e


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_table() -> list[dict]:
    """``[{"name", "params", "description"}]`` at 10 classes, width 1, built on the meta device
    (shapes only, no memory, no init cost: AlexNet's 57M parameters count instantly)."""
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        rows.append({"name": name, "params": count_params(model), "description": _REGISTRY[name].description})
    return rows
