"""Random hyperparameter search (seed 003): train many short runs, pick the best on validation.

The validation split is carved from the training data (``valid_pct``), so the test set is
looked at once at most: when the best configuration is retrained on all the training data.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import time
import typing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from fitvision.config import TrainConfig, coerce
from fitvision.errors import FitVisionError, Terminated
from fitvision.files import write_json
from fitvision.logs import logger

TUNE_VALID_PCT = 0.1  # used when the base config carves no validation split of its own
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
    integer: bool = False  # an int field (bs, epochs as int): draws are rounded
    choices: tuple = ()

    def sample(self, rng: random.Random) -> Any:
        if self.choices:
            return rng.choice(self.choices)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return round(value) if self.integer else value


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
    if dim.integer:  # draws are rounded, so the rounded ends themselves can come up
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


def sample_configs(space: dict[str, Dim], trials: int, seed: int) -> list[dict[str, Any]]:
    """The trials' parameters, drawn from one seeded RNG: the same seed gives the same search."""
    rng = random.Random(seed)
    return [{name: dim.sample(rng) for name, dim in space.items()} for _ in range(trials)]


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _read_val_acc(run_dir: Path) -> float:
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    acc = float(summary["val_acc"])
    if not math.isfinite(acc):
        raise FitVisionError(f"validation accuracy is {acc}")
    return acc


def run_trial(cfg: TrainConfig, train: Callable[[TrainConfig], Any]) -> dict[str, Any]:
    """Train once; a failure a search should survive (NaN, OOM, bad value) becomes status 'failed'."""
    start = time.perf_counter()
    try:
        val_acc, status, error = _read_val_acc(train(cfg)), "ok", ""
    except FitVisionError as e:
        val_acc, status, error = float("nan"), "failed", str(e)
    except Exception as e:  # OOM is recoverable for the next trial; anything else is a bug
        if not _is_oom(e):
            raise
        val_acc, status, error = float("nan"), "failed", f"out of memory: {str(e).splitlines()[0]}"
        _free_device_memory()
    return {"val_acc": val_acc, "seconds": round(time.perf_counter() - start, 2), "status": status,
            "error": error}


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_trials_csv(path: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    from fitvision.files import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["trial", *names, "val_acc", "seconds", "status", "error"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest val_acc among successful trials; the earliest wins a tie."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise FitVisionError(f"all {len(rows)} trials failed; see the error column of trials.csv")
    return max(ok, key=lambda r: (r["val_acc"], -r["trial"]))


def _default_train(cfg: TrainConfig):
    from fitvision.train.run import train_run

    return train_run(cfg)


SEARCH_FILE = "search.json"  # what the search is (base config, space, trials): enough to continue it


def tune(base: TrainConfig, space: dict[str, Dim], trials: int, out: str | Path, retrain: bool = False,
         train: Callable[[TrainConfig], Any] = _default_train) -> dict[str, Any]:
    """Run the search, write trials.csv and best.json in ``out``, and return best.json's content.

    ``train`` maps a TrainConfig to a finished run directory (``train_run``; a stand-in in tests).
    An interrupted search goes on with ``resume_tune(out)``.
    """
    if trials < 1:
        raise FitVisionError(f"--trials must be at least 1, got {trials}")
    check_space(base, space)
    out = Path(out)
    if (out / "trials.csv").exists() or (out / SEARCH_FILE).exists():  # its trial-NNN runs would refuse,
        # one by one, to be overwritten
        raise FitVisionError(f"{out} already holds a search; continue it with --resume, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    search = replace(base, valid_pct=base.valid_pct or TUNE_VALID_PCT, out="", resume=False)
    spec = {"base": asdict(search), "space": [asdict(d) for d in space.values()], "trials": trials, "retrain": retrain}
    write_json(out / SEARCH_FILE, spec)
    return _search(search, space, trials, out, retrain, train, rows=[])


def resume_tune(out: str | Path, train: Callable[[TrainConfig], Any] = _default_train) -> dict[str, Any]:
    """Continue the search in ``out`` where it stopped: finished trials are kept as trials.csv
    records them, an interrupted trial resumes from its last checkpoint (or starts again if it
    had none), and the remaining trials draw the same parameters they would have drawn."""
    from fitvision.config import updated

    out = Path(out)
    if not (out / SEARCH_FILE).is_file():
        raise FitVisionError(f"cannot resume: {out / SEARCH_FILE} does not exist")
    spec = json.loads((out / SEARCH_FILE).read_text())
    search = updated(TrainConfig(), spec["base"])
    space = {d["name"]: Dim(**{**d, "choices": tuple(d["choices"])}) for d in spec["space"]}
    rows = _read_trials_csv(out / "trials.csv", list(space)) if (out / "trials.csv").exists() else []
    return _search(search, space, spec["trials"], out, spec["retrain"], train, rows)


def _read_trials_csv(path: Path, names: list[str]) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{"trial": int(r["trial"]), **{n: coerce(n, r[n]) for n in names}, "val_acc": float(r["val_acc"]),
                 "seconds": float(r["seconds"]), "status": r["status"], "error": r["error"]}
                for r in csv.DictReader(f)]


def _continued(cfg: TrainConfig) -> TrainConfig:
    """A run left behind by an interrupted search: resume it if it saved a checkpoint."""
    from fitvision.train import checkpoint
    from fitvision.train.checkpoint import CHECKPOINT

    return replace(cfg, resume=True) if checkpoint.exists(Path(cfg.out) / CHECKPOINT) else cfg


def _search(search: TrainConfig, space: dict[str, Dim], trials: int, out: Path, retrain: bool,
            train: Callable[[TrainConfig], Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(space)
    for i, params in enumerate(sample_configs(space, trials, search.seed)):
        if i < len(rows):  # finished before an interruption
            continue
        cfg = _continued(replace(search, **params, out=str(out / f"trial-{i:03d}")))
        logger.info(f"trial {i + 1}/{trials}: {format_params(params)}" + (" (resuming)" if cfg.resume else ""))
        try:
            result = _finished_trial(cfg) or run_trial(cfg, train)
        except KeyboardInterrupt as e:  # the trial's own advice (--resume that trial) would not go on with the search
            done = (f"after {len(rows)} of {trials} trials (recorded in {out / 'trials.csv'})" if rows else
                    "before its first trial finished")
            raise _interrupted(e, f"the search stopped {done}; continue with: fitvision tune --resume --out {out}"
                               ) from None
        rows.append({"trial": i, **params, **result})
        write_trials_csv(out / "trials.csv", rows, names)
        logger.info(f"  -> {rows[-1]['status']} val_acc {rows[-1]['val_acc']:.4f} in {rows[-1]['seconds']:.1f}s")
    best = best_trial(rows)
    result = {"trial": best["trial"], "params": {k: best[k] for k in names}, "val_acc": best["val_acc"],
              "run_dir": str(out / f"trial-{best['trial']:03d}"), "valid_pct": search.valid_pct,
              "trials": trials, "failed": sum(r["status"] != "ok" for r in rows)}
    if retrain:
        try:
            result.update(_retrain(search, result["params"], out, train))
        except KeyboardInterrupt as e:
            raise _interrupted(e, f"the search stopped while retraining its best trial; continue with: "
                                  f"fitvision tune --resume --out {out}") from None
    write_json(out / "best.json", result)
    return result


def _interrupted(e: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """The same interruption (Ctrl-C, or a SIGTERM: Terminated) with the search's advice."""
    return Terminated(message, e.signum) if isinstance(e, Terminated) else KeyboardInterrupt(message)


def _finished_trial(cfg: TrainConfig) -> dict[str, Any] | None:
    """The record of a trial that finished just before the search was interrupted, before
    trials.csv took it in; None if it has not finished."""
    summary = Path(cfg.out) / "summary.json"
    if not summary.is_file():
        return None
    seconds = float(json.loads(summary.read_text()).get("train_seconds", 0.0))
    try:
        return {"val_acc": _read_val_acc(Path(cfg.out)), "seconds": seconds, "status": "ok", "error": ""}
    except FitVisionError as e:
        return {"val_acc": float("nan"), "seconds": seconds, "status": "failed", "error": str(e)}


def _retrain(search: TrainConfig, params: dict[str, Any], out: Path, train) -> dict[str, Any]:
    """The best configuration on all the training data; its validation set is the test set, seen once."""
    cfg = _continued(replace(search, **params, valid_pct=0.0, out=str(out / "retrain"), resume=False))
    run_dir = cfg.out if _finished_trial(cfg) else train(cfg)
    return {"retrain_run": str(run_dir), "test_acc": _read_val_acc(Path(run_dir))}
