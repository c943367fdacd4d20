"""The search space: ``--space`` parsed into Dims, checked against the base config, and drawn
through an Optuna trial (``suggest``) so that the sampler, not this module, picks the values.

    space = parse_space("lr=1e-4..1e-1:log,wd=1e-5..1e-3:log,bs=128|256")
    check_space(base_cfg, space)          # every drawable value trains, or one line now
    params = suggest(trial, space)        # {"lr": 0.0031, "wd": 2.4e-05, "bs": 256}
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, replace
from typing import Any

from fitvision.config import TrainConfig, coerce
from fitvision.errors import FitVisionError

_RANGE = re.compile(r"^(?P<low>[^.][^:]*?)\.\.(?P<high>[^.:][^:]*)(?::(?P<scale>.*))?$")
_NOT_SEARCHABLE = {"out": "each trial gets OUT/trial-NNN", "resume": "trials always start afresh",
                   "valid_pct": "the split must stay fixed across trials; pass --valid-pct"}
_SYNTAX = "expected NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A|B|C"


@dataclass(frozen=True)
class Dim:
    """One searched config field: a (log-)uniform range, or a list of choices."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False  # an int field (bs): drawn between the rounded ends
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """This dimension's value in an Optuna trial (a value it already holds, when resumed)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, round(self.low), round(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def suggest(trial, space: dict[str, Dim]) -> dict[str, Any]:
    return {name: dim.suggest(trial) for name, dim in space.items()}


def _number(entry: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FitVisionError(f"search space entry '{entry}': '{text}' is not a number ({_SYNTAX})") from None


def _field_kind(name: str) -> type:
    coerce(name, "0")  # an unknown key fails here, with the list of valid ones
    return typing.get_type_hints(TrainConfig)[name]


def _parse_dim(entry: str) -> Dim:
    name, sep, value = (s.strip() for s in entry.partition("="))
    if not sep or not name or not value:
        raise FitVisionError(f"search space entry '{entry}': {_SYNTAX}")
    kind = _field_kind(name)
    if name in _NOT_SEARCHABLE:
        raise FitVisionError(f"search space cannot set '{name}': {_NOT_SEARCHABLE[name]}")
    match = _RANGE.match(value)
    if match:
        if kind not in (int, float):
            raise FitVisionError(f"search space entry '{entry}': '{name}' is not numeric; list choices A|B")
        if match["scale"] not in (None, "log", "lin"):
            raise FitVisionError(f"search space entry '{entry}': unknown scale '{match['scale']}' (valid: log, lin)")
        low, high = _number(entry, match["low"]), _number(entry, match["high"])
        log = match["scale"] == "log"
        if not low < high:
            raise FitVisionError(f"search space entry '{entry}': LOW must be below HIGH")
        if log and low <= 0:
            raise FitVisionError(f"search space entry '{entry}': a :log range needs LOW > 0")
        if kind is int and (round(low) > round(high) or (log and round(low) < 1)):
            raise FitVisionError(f"search space entry '{entry}': '{name}' is an integer; give whole ends"
                                 + (" of at least 1" if log else ""))
        return Dim(name, low, high, log, integer=kind is int)
    if ".." in value:
        raise FitVisionError(f"search space entry '{entry}': {_SYNTAX}")
    choices = tuple(coerce(name, c.strip()) for c in value.split("|"))
    return Dim(name, choices=choices)


def parse_space(text: str) -> dict[str, Dim]:
    """'lr=1e-4..1e-1:log,wd=1e-5..1e-3:log,bs=128|256' -> {name: Dim}."""
    space: dict[str, Dim] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        dim = _parse_dim(entry)
        if dim.name in space:
            raise FitVisionError(f"search space names '{dim.name}' twice")
        space[dim.name] = dim
    if not space:
        raise FitVisionError(f"empty search space: {_SYNTAX}")
    return space


def check_space(base: TrainConfig, space: dict[str, Dim]) -> None:
    """Every value the search can draw must be valid on top of the base config: a typo such as
    opt=sgd|adamm would otherwise fail only its own trials, perhaps hours into the search."""
    for dim in space.values():
        for value, inside in _drawable_ends(dim):
            problem = _problem(base, dim.name, value)
            # an end that fails may be an open bound (momentum=0..1): fine if just inside it passes
            if problem and (inside is None or _problem(base, dim.name, inside)):
                shown = f"{value:g}" if isinstance(value, float) else value
                raise FitVisionError(f"search space value {dim.name}={shown}: {problem}")


def _drawable_ends(dim: Dim) -> list[tuple[Any, Any]]:
    """(value, a value just inside it or None): the choices, or a range's two ends."""
    if dim.choices:
        return [(c, None) for c in dim.choices]
    if dim.integer:  # the rounded ends themselves can come up
        return [(round(dim.low), None), (round(dim.high), None)]
    inset = (dim.high - dim.low) * 1e-9
    return [(dim.low, dim.low + inset), (dim.high, dim.high - inset)]


def _problem(base: TrainConfig, name: str, value: Any) -> str:
    from fitvision.config import validate

    try:
        validate(replace(base, **{name: value}))
    except FitVisionError as e:
        return str(e)
    return ""


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
