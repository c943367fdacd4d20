"""The command line made from the one config: a flag for every TrainConfig field, with the field's
help, unit and default, and the choices of every enumerated field; and the parser every fitvision
command uses, whose errors are one line (an unknown flag adds the subcommand's usage and the
nearest flag).

    p = FitVisionParser(prog="fitvision train")
    add_config_flags(p)                  # --data ... --recipe, in four groups
    settings = config_flags(p.parse_args(argv))   # {field: value or None}
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import Any, Callable

from fitvision.config import TrainConfig, coerce
from fitvision.errors import FitVisionError, did_you_mean

# The section a field starts, in TrainConfig's order: the help lists the flags in these groups.
_GROUPS = {"data": "data", "model": "model", "epochs": "optimisation", "seed": "loop and output",
           "tensorboard": "tracking (optional extras)"}

# lr-find sweeps the learning rate over a fixed number of batches and evaluates nothing: these
# fields would be read and ignored, so lr-find has no flags for them (asked, it says so).
LR_FIND_UNUSED = frozenset({
    "epochs", "lr", "sched", "pct_start", "div_factor", "final_div_factor", "ema", "lookahead",
    "stem_bias_epochs", "progressive_size", "progressive_epochs", "tta", "tta_shift", "tta_confident",
    "epoch_valid_limit", "train_acc_limit", "crop_pct", "early_stop", "freeze_epochs", "resume", "checkpoint_every", "sync_bn",
    "tensorboard", "mlflow", "mixup", "cutmix", "mix_prob", "mix_switch_prob",
})

EPILOG = ("Defaults shown are the config's own; a recipe (--recipe, `fitvision recipes`) sets many of them, "
          "then --config FILE, then flags: later ones win. Fractional and per-batch units are in each help.")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def choices() -> dict[str, tuple[str, ...]]:
    """The valid values of every enumerated field, from the registries themselves (imports torch)."""
    from fitvision.data.augment import PRESETS
    from fitvision.data.decode import RESIZE_FILTERS, RESIZE_METHODS
    from fitvision.models.init import INITS
    from fitvision.optim.factory import WD_MODES, optimizer_names
    from fitvision.optim.schedules import SCHEDULES
    from fitvision.recipes import RECIPES
    from fitvision.train.device import PRECISIONS
    from fitvision.train.learner import CLIP_MODES

    return {"aug": PRESETS, "resize_method": RESIZE_METHODS, "resize_filter": RESIZE_FILTERS, "init": INITS,
            "opt": tuple(optimizer_names()), "wd_mode": WD_MODES, "clip_mode": CLIP_MODES,
            "sched": tuple(SCHEDULES), "precision": PRECISIONS, "recipe": ("auto", *RECIPES)}


def _converter(name: str, valid: tuple[str, ...] | None) -> Callable[[str], Any]:
    """argparse's type= for a field: the config's own conversion and range of names, so the
    message is the one a config file would get, on one line."""
    def convert(text: str) -> Any:
        if valid is not None:
            choice_type(name, valid)(text)
        try:
            return coerce(name, text)
        except FitVisionError as e:
            raise argparse.ArgumentTypeError(str(e).replace(f"config key '{name}' ", "")) from None
    convert.__name__ = name  # argparse names the type in some messages
    return convert


def choice_type(name: str, valid: tuple[str, ...]) -> Callable[[str], str]:
    """argparse's type= for a fixed list of names: one line with the nearest one."""
    def convert(text: str) -> str:
        if text not in valid:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} ({did_you_mean(text, valid)}valid: "
                                             f"{', '.join(valid)})")
        return text
    convert.__name__ = name
    return convert


_METAVARS = {int: "N", float: "X", str: "TEXT"}
_SPECIAL = {  # flags whose value is optional: --mlflow alone means MLflow's default tracking URI
    "mlflow": {"nargs": "?", "const": "default", "metavar": "URI"},
}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flags(p: argparse.ArgumentParser, skip: typing.Iterable[str] = (), with_choices: bool = True) -> None:
    """A flag for every TrainConfig field but those in skip, each defaulting to None (not given)."""
    hints = typing.get_type_hints(TrainConfig)
    valid = choices() if with_choices else {}
    skip = set(skip)
    p.add_argument("--config", default=None, metavar="FILE", help="TOML or JSON file setting any of the fields below")
    group = p
    for f in dataclasses.fields(TrainConfig):
        if f.name in _GROUPS:
            group = p.add_argument_group(_GROUPS[f.name])
        if f.name in skip:
            continue
        kind, text = hints[f.name], f.metadata["help"]
        if kind is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{text} (default: {'on' if f.default else 'off'})")
            continue
        names = valid.get(f.name)
        listed = f"; one of: {', '.join(names)}" if names else ""
        if f.name == "model" and with_choices:  # timm:NAME and torchvision:NAME too, so no argparse choices
            from fitvision.models import list_models

            listed = f"; fitvision's: {', '.join(list_models())}"
        options = {"type": _converter(f.name, names), "metavar": "NAME" if names else _METAVARS[kind],
                   **_SPECIAL.get(f.name, {})}
        if names:
            options["choices"] = names  # for shell completion; the converter has checked already
        group.add_argument(flag(f.name), dest=f.name, default=None,
                           help=f"{text} (default: {_shown(f.default)}{listed})", **options)


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} for every field the parser has a flag for; None where not given."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}


def given_flags(args: argparse.Namespace, ignore: typing.Iterable[str] = ()) -> list[str]:
    """The config flags given on the command line, spelled as flags."""
    ignore = set(ignore)
    return [flag(name) for name, value in config_flags(args).items() if value is not None and name not in ignore]


class FitVisionParser(argparse.ArgumentParser):
    """An ArgumentParser with no prefix matching (`--init lsuv` must not become --init-from) and
    one-line errors: a bad value or a missing argument is one line; an unknown flag adds the usage
    and the nearest flag. Exit status 2, as argparse's."""

    def __init__(self, *args, unused: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.unused = unused or {}  # flag -> why this command does not take it

    def error(self, message: str) -> typing.NoReturn:
        prefix, command = "unrecognized arguments: ", re.match(r"argument COMMAND: invalid choice: '(.*?)'", message)
        if command:  # `fitvision trian`
            names = [a.dest for a in self._subparsers._group_actions[0]._choices_actions] if self._subparsers else []
            message = f"unknown command '{command[1]}' ({did_you_mean(command[1], names)}valid: {', '.join(names)})"
        if message.startswith(prefix):
            message = self.unrecognized(message[len(prefix):].split())
            self.print_usage(sys.stderr)
        else:
            message += f" (see '{self.prog} --help')"
        self.exit(2, f"{self.prog}: error: {message}\n")

    def unrecognized(self, words: list[str]) -> str:
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        if any(w.startswith("-") for w in words):  # `--lrr 0.1`: the 0.1 is only the flag's value
            words = [w for w in words if w.startswith("-")]
        parts = []
        for word in words:
            name = word.split("=", 1)[0]
            if name in self.unused:
                parts.append(f"{name} ({self.unused[name]})")
            elif name.startswith("-"):
                hint = did_you_mean(name, known).rstrip("; ")
                parts.append(f"{word} ({hint})" if hint else word)
            else:
                parts.append(word)
        return "unrecognized arguments: " + ", ".join(parts)
