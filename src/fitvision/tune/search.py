"""`fitvision tune`: a hyperparameter search on Optuna, many short runs picked on validation.

The validation split is carved from the training data (``valid_pct``), so the test set is
looked at once at most: when the best configuration is retrained on all the training data.

    best = tune(base_cfg, parse_space("lr=1e-4..1e-1:log"), trials=8, out="runs/tune")
    best = resume_tune("runs/tune")       # after Ctrl-C, a kill or a lost machine

OUT/search.json says what the search is; the study (OUT/study.db, or --storage) holds its
trials. Any number of processes running the same search share the study: each takes waiting
slots until none is left (fitvision.tune.claim), so the study ends with exactly ``trials``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError, Terminated
from fitvision.files import write_json
from fitvision.tune import claim, study as studies, trial as one_trial
from fitvision.tune.space import Dim, check_space
from fitvision.tune.trial import Train, retrain as retrain_best, run_trial

TUNE_VALID_PCT = 0.1  # used when the base config carves no validation split of its own
SEARCH_FILE = "search.json"  # what the search is (base config, space, trials, study): enough to continue it
_WAIT_SECONDS = 2.0  # how often a worker with nothing left to take looks at the others' trials
_MACHINE_LOCAL = ("data", "device", "out", "resume")  # may differ between workers of one study


def tune(base: TrainConfig, space: dict[str, Dim], trials: int, out: str | Path, retrain: bool = False,
         train: Train | None = None, sampler: str = "tpe", pruner: str = "median", storage: str | None = None,
         study: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Run the search, write trials.csv and best.json in ``out``, and return best.json's content.

    ``train`` maps (TrainConfig, hooks) to a finished run directory (``train_run``; a stand-in in
    tests). The same call again (or ``resume_tune(out)``) continues the search.
    """
    studies.check_choices(sampler, pruner, workers)
    if trials < 1:
        raise FitVisionError(f"--trials must be at least 1, got {trials}")
    check_space(base, space)
    studies.import_optuna()
    out = Path(out)
    search = replace(base, valid_pct=base.valid_pct or TUNE_VALID_PCT, out="", resume=False)
    spec = json.loads(json.dumps({
        "base": asdict(search), "space": [asdict(d) for d in space.values()], "trials": trials, "retrain": retrain,
        "sampler": sampler, "pruner": pruner, "storage": storage, "study": study or studies.DEFAULT_STUDY}))
    held = (out / SEARCH_FILE).is_file() and json.loads((out / SEARCH_FILE).read_text())
    if (held or (out / "trials.csv").exists()) and held != spec:  # its trials would mix with this one's
        raise FitVisionError(f"{out} already holds a search; continue it with --resume, or choose another --out")
    return _run(spec, out, train, workers, join=False)


def resume_tune(out: str | Path, train: Train | None = None, workers: int = 1, join: bool = False) -> dict[str, Any] | None:
    """Continue the search in ``out`` where it stopped: finished trials are kept, an interrupted
    trial resumes from its last checkpoint (or starts again if it had none), the others follow.
    ``join``: only run trials (a worker of ``--workers N``); returns None."""
    out = Path(out)
    if not (out / SEARCH_FILE).is_file():
        raise FitVisionError(f"cannot resume: {out / SEARCH_FILE} does not exist")
    studies.check_workers(workers)
    studies.import_optuna()
    return _run(json.loads((out / SEARCH_FILE).read_text()), out, train, workers, join)


def _run(spec: dict[str, Any], out: Path, train: Train | None, workers: int, join: bool) -> dict[str, Any] | None:
    from fitvision.config import updated

    search = updated(TrainConfig(), spec["base"])
    space = {d["name"]: Dim(**{**d, "choices": tuple(d["choices"])}) for d in spec["space"]}
    url = studies.storage_url(spec["storage"], out)
    if spec["storage"]:  # a database that cannot be reached: one line, and nothing written
        storage = studies.open_storage(url, on_stale=claim.retry)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        storage = studies.open_storage(url, on_stale=claim.retry)
    if not (out / SEARCH_FILE).is_file():
        write_json(out / SEARCH_FILE, spec)
    shared = {k: v for k, v in spec.items() if k not in ("base", "retrain", "storage", "study")}
    shared["base"] = {k: v for k, v in spec["base"].items() if k not in _MACHINE_LOCAL}
    with studies.quiet():
        studies.open_study(storage, spec["study"], shared, spec["trials"], spec["sampler"], spec["pruner"],
                           search.epochs)
    if workers > 1:
        from fitvision.tune.workers import run_workers

        run_workers(workers, out, lambda: _advice(storage, spec, out))
    else:
        _work(storage, spec, search, space, out, train or one_trial.default_train)
    if join:
        return None
    return _finish(storage, spec, search, space, out, train or one_trial.default_train)


def _work(storage, spec: dict[str, Any], search: TrainConfig, space: dict[str, Dim], out: Path, train: Train) -> None:
    """Take waiting trials until none is left, then wait for the other workers' running ones
    (taking over those of dead workers), so that the results written next are the whole study's."""
    name, names = spec["study"], list(space)
    try:
        claim.reclaim_dead(storage, name)  # a killed worker's trial, queued again at once
        while True:
            with studies.quiet():
                trial = claim.next_trial(storage, name, spec["sampler"], spec["pruner"], search.seed, search.epochs,
                                         spec["trials"])
            if trial is None:
                if claim.reclaim_dead(storage, name):
                    continue
                if not _running(storage, name):
                    return
                time.sleep(_WAIT_SECONDS)
                continue
            run_trial(trial, search, space, out, train, f"{int(trial.user_attrs['slot']) + 1}/{spec['trials']}")
            write_trials_csv(out / "trials.csv", study_rows(storage, name), names)
    except KeyboardInterrupt as e:  # the trial's own advice (--resume that run) would not go on with the search
        raise _interrupted(e, _advice(storage, spec, out)) from None


def _running(storage, name: str) -> bool:
    from optuna.trial import TrialState

    return any(t.state == TrialState.RUNNING for t in _trials(storage, name))


def _trials(storage, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _advice(storage, spec: dict[str, Any], out: Path) -> str:
    rows = study_rows(storage, spec["study"])
    done = (f"after {len(rows)} of {spec['trials']} trials (recorded in {out / 'trials.csv'})" if rows else
            "before its first trial finished")
    return f"the search stopped {done}; continue with: fitvision tune --resume --out {out}"


def _interrupted(e: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """The same interruption (Ctrl-C, or a SIGTERM: Terminated) with the search's advice."""
    return Terminated(message, e.signum) if isinstance(e, Terminated) else KeyboardInterrupt(message)


_STATUS = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}


def study_rows(storage, name: str) -> list[dict[str, Any]]:
    """One row per finished slot, as trials.csv has them: a retried slot by its last trial."""
    latest: dict[int, Any] = {}
    for t in _trials(storage, name):
        slot = int(t.user_attrs.get("slot", t.number))
        if slot not in latest or t.number > latest[slot].number:
            latest[slot] = t
    rows = []
    for slot, t in sorted(latest.items()):
        if t.state.name in _STATUS:
            acc = t.value if t.state.name != "FAIL" and t.value is not None else math.nan
            rows.append({"trial": slot, **t.params, "val_acc": acc, "seconds": t.user_attrs.get("seconds", 0.0),
                         "status": _STATUS[t.state.name], "error": t.user_attrs.get("error", "")})
    return rows


def write_trials_csv(path: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    from fitvision.files import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["trial", *names, "val_acc", "seconds", "status", "error"],
                            lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest val_acc among the trials that ran to their end; the earliest wins a tie."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        pruned = sum(r["status"] == "pruned" for r in rows)
        raise FitVisionError(f"all {len(rows)} trials failed" + (f" or were pruned ({pruned} pruned)" if pruned else "")
                             + "; see the error column of trials.csv")
    return max(ok, key=lambda r: (r["val_acc"], -r["trial"]))


def _finish(storage, spec: dict[str, Any], search: TrainConfig, space: dict[str, Dim], out: Path,
            train: Train) -> dict[str, Any]:
    names = list(space)
    rows = study_rows(storage, spec["study"])
    write_trials_csv(out / "trials.csv", rows, names)
    best = best_trial(rows)
    result = {"trial": best["trial"], "params": {k: best[k] for k in names}, "val_acc": best["val_acc"],
              "run_dir": str(out / f"trial-{best['trial']:03d}"), "valid_pct": search.valid_pct,
              "trials": spec["trials"], "failed": sum(r["status"] == "failed" for r in rows),
              "pruned": sum(r["status"] == "pruned" for r in rows), "study": spec["study"],
              "storage": studies.masked(studies.storage_url(spec["storage"], out))}
    if spec["retrain"]:
        try:
            result.update(retrain_best(search, result["params"], out, train))
        except KeyboardInterrupt as e:
            raise _interrupted(e, f"the search stopped while retraining its best trial; continue with: "
                                  f"fitvision tune --resume --out {out}") from None
    write_json(out / "best.json", result)
    return result
