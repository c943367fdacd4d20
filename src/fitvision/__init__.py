"""fitvision: train image classifiers fast and well.

    import fitvision as fv
    data = fv.ImageData("cifar10")
    learn = fv.Learner(data, "resnet9")
    learn.fit_one_cycle(5)

Public API only. Names load on first use (PEP 562), so ``import fitvision`` imports neither
torch nor anything else and changes nothing: no logging handlers, no threads, no files.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fitvision.errors import FitVisionError

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    "ImageData": "fitvision.train.imagedata",
    "Learner": "fitvision.api",
    "load": "fitvision.api",
    "fit": "fitvision.api",  # not "train": fitvision.train is the training subpackage
    "Run": "fitvision.train.evaluate",
    "TrainConfig": "fitvision.config",
    "resolve_config": "fitvision.recipes",
    "RECIPES": "fitvision.recipes",
    "create_model": "fitvision.models",
    "list_models": "fitvision.models",
    "create_optimizer": "fitvision.optim",
    "set_verbosity": "fitvision.logs",
}

__all__ = ["FitVisionError", "__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from fitvision.api import Learner, fit, load
    from fitvision.config import TrainConfig
    from fitvision.logs import set_verbosity
    from fitvision.models import create_model, list_models
    from fitvision.optim import create_optimizer
    from fitvision.recipes import RECIPES, resolve_config
    from fitvision.train.evaluate import Run
    from fitvision.train.imagedata import ImageData


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'fitvision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
