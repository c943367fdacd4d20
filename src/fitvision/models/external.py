"""Pretrained networks from timm or torchvision ("timm:NAME", "torchvision:NAME") as bodies.

Optional: neither library is a dependency. The result works with param_groups/freeze (its head
is found by ``head_module``, its final layer by ``final_layer_name``) and a Learner. A saved run rebuilds it with pretrained=False: its
own weights replace the downloaded ones.
"""

from __future__ import annotations

import importlib.util

from torch import nn

from fitvision.errors import FitVisionError
from fitvision.models.groups import final_layer_name

EXTERNAL_LIBRARIES = ("timm", "torchvision")


def is_external(model_name: str) -> bool:
    """A "library:NAME" model (timm or torchvision) rather than one of fitvision's registry."""
    return ":" in model_name


def check_external(spec: str) -> None:
    """FitVisionError unless ``spec`` is timm:NAME or torchvision:NAME with that library installed."""
    lib, _, name = spec.partition(":")
    if lib not in EXTERNAL_LIBRARIES or not name:
        raise FitVisionError(f"external model '{spec}' must be timm:NAME or torchvision:NAME")
    if importlib.util.find_spec(lib) is None:
        raise FitVisionError(f"model '{spec}' needs {lib}, which is not installed: pip install {lib}")


def external_model(spec: str, num_classes: int, pretrained: bool = True) -> nn.Module:
    """A pretrained timm or torchvision network, its final layer sized for num_classes."""
    check_external(spec)
    lib, _, name = spec.partition(":")
    try:
        return _build_external(lib, name, num_classes, pretrained)
    except FitVisionError:
        raise
    except Exception as e:  # unknown name, no network for the weights, ...: the library's words
        what = "with its pretrained weights " if pretrained else ""
        first = (str(e).strip().splitlines() or [""])[0]  # one line: hub errors run to many
        raise FitVisionError(f"model '{spec}' could not be built {what}by {lib}: "
                             f"{type(e).__name__}: {first}") from None


def _build_external(lib: str, name: str, num_classes: int, pretrained: bool) -> nn.Module:
    if lib == "timm":
        import timm

        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    import torchvision

    model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    path = final_layer_name(model)
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    old = model.get_submodule(path)
    setattr(parent, path.rpartition(".")[2], nn.Linear(old.in_features, num_classes))
    return model
