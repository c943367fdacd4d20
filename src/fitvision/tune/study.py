"""The Optuna side of a search: the storage, the sampler, the pruner, and the study that ties them.

Optuna is an optional extra (``pip install 'fitvision[tune]'``); this is the one module that
imports it, inside functions, so ``import fitvision.tune`` works without it.

A study holds exactly ``trials`` slots, enqueued once by whichever process created the study:
workers only ever take a waiting slot (``claim.next_trial``), never create a trial, so N
processes on one storage run exactly ``trials`` trials between them. (Optuna's own
MaxTrialsCallback counts after each trial, and concurrent workers can overshoot it.)
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from fitvision.errors import FitVisionError, check_choice

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_STUDY = "fitvision-tune"
STUDY_DB = "study.db"  # the default storage, a SQLite file in the search's --out
HEARTBEAT_SECONDS = 20  # a worker's trial is stale once its heartbeat is GRACE_SECONDS old
GRACE_SECONDS = 120  # (RDB storages: measured on the database's clock, not the workers')
_SLOTS = "fitvision_slots"  # study attribute: the slots are all enqueued
_SEARCH = "fitvision_search"  # study attribute: what the search is, to refuse a different one
_READY_WAIT = 60.0  # seconds a joining worker waits for the creator to enqueue the slots


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise FitVisionError("fitvision tune runs on Optuna, which is not installed: "
                             "pip install 'fitvision[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # fitvision logs each trial its own way
    return optuna


def check_choices(sampler: str, pruner: str, workers: int) -> None:
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("pruner", pruner, PRUNERS)
    check_workers(workers)


def check_workers(workers: int) -> None:
    if workers < 1:
        raise FitVisionError(f"--workers must be at least 1, got {workers}")


def storage_url(storage: str | None, out: Path) -> str:
    """--storage as given, or the search's own SQLite file."""
    return storage or f"sqlite:///{(Path(out) / STUDY_DB).resolve()}"


def masked(url: str) -> str:
    """The URL to show: its password replaced by ***."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: hide whatever sits between ':' and '@'
        scheme, rest = url.split("://", 1)
        user, at, host = rest.rpartition("@")
        return f"{scheme}://{user.split(':', 1)[0]}:***@{host}" if at and ":" in user else url


def open_storage(url: str, on_stale: Callable | None = None):
    """An Optuna storage for ``url`` (any SQLAlchemy URL, or a journal file path), connected now:
    an unreachable database is one line before any trial or file."""
    optuna = import_optuna()
    for attempt in range(3):
        try:
            with quiet():
                if "://" not in url:
                    return _journal(optuna, url)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS, **_stale_callback(optuna, on_stale))
                if url.startswith("sqlite"):
                    _serialise_sqlite(storage.engine)
                return storage
        except Exception as e:  # the drivers' errors have no common type; the message is what helps
            if _lost_creation_race(e) and attempt < 2:  # two workers made the tables at once: the other won
                time.sleep(1.0)
                continue
            raise FitVisionError(f"cannot open --storage {masked(url)}: {_reason(e)}") from None
    raise AssertionError("unreachable")


# What a database says when two workers create the storage's tables at once and this one lost:
# a table made meanwhile, or the schema version row (alembic_version) written meanwhile.
_CREATION_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")


def _lost_creation_race(e: Exception) -> bool:
    return any(marker in str(e) for marker in _CREATION_RACE)


def _serialise_sqlite(engine) -> None:
    """Each transaction takes the database's write lock when it begins (BEGIN IMMEDIATE).

    Taking a trial reads its state, then writes RUNNING: the storage's SELECT ... FOR UPDATE
    makes that one atomic step on PostgreSQL and MySQL, but SQLite ignores FOR UPDATE, and its
    Python driver begins a transaction only at the write, so two workers could both read
    WAITING and both run the trial. Under the write lock, the second reads RUNNING."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off; ours below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners (creating the tables) are dropped


def _reason(e: Exception) -> str:
    """The driver's own first line, without SQLAlchemy's wrapping ("(psycopg.OperationalError) ...")."""
    if isinstance(e, ImportError) and isinstance(e.__cause__ or e.__context__, ImportError):
        return f"{e.__cause__ or e.__context__} (the database driver: pip install 'fitvision[postgres]' for PostgreSQL)"
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _journal(optuna, path: str):
    journal = optuna.storages.journal if hasattr(optuna.storages, "journal") else None
    backend = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage  # optuna < 4
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(backend(str(path)))


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):  # several workers write one file: wait for the lock, not fail at once
        return {"connect_args": {"timeout": 120}}
    if url.startswith(("postgresql", "mysql")):  # a host that drops packets: fail in seconds, not minutes
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def _stale_callback(optuna, on_stale: Callable | None) -> dict[str, Any]:
    """The keyword for the stale-trial callback: renamed in Optuna 5."""
    if on_stale is None:
        return {}
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    return {"heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
            else "failed_trial_callback": on_stale}


def startup_trials(trials: int) -> int:
    """How many of a search's trials TPE draws at random before it models the results: a third of
    the budget, 3 to 10. (Optuna's default, 10 whatever the budget, made TPE exactly random
    search at fitvision's default of 8 trials, and at the 10 of docs/benchmarks.md's first run.)"""
    return min(10, max(3, trials // 3))


def make_sampler(name: str, seed: int, trials: int):
    """A fresh sampler for one trial, seeded by the search's seed and the trial's number: the
    same search (one worker) draws the same values, even across an interruption."""
    optuna = import_optuna()
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with quiet():  # constant_liar (parallel workers see each other's running trials) is experimental
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup_trials(trials))


def make_pruner(name: str, epochs: float):
    optuna = import_optuna()
    if name == "median":  # a trial below the median of the others at the same epoch stops
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, round(epochs)))
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def quiet():
    """Optuna's ExperimentalWarning for the parts used here (heartbeat, constant_liar): not the user's concern."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_study(storage, name: str, search: dict[str, Any], trials: int, sampler: str, pruner: str, epochs: float):
    """Create the study with its ``trials`` slots, or join the one that exists, which must be the
    same search (the same space, trials and training settings)."""
    optuna = import_optuna()
    kwargs = {"study_name": name, "storage": storage, "sampler": make_sampler(sampler, 0, trials),
              "pruner": make_pruner(pruner, epochs)}
    try:
        study = optuna.create_study(direction="maximize", load_if_exists=False, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        _wait_for_slots(study, name)
        if study.user_attrs.get(_SEARCH) != search:
            raise FitVisionError(f"study '{name}' in that storage is another search (another space, number of "
                                 f"trials or training settings); choose another --study") from None
        return study
    study.set_user_attr(_SEARCH, search)
    for slot in range(trials):
        study.enqueue_trial({}, user_attrs={"slot": slot})
    study.set_user_attr(_SLOTS, trials)
    return study


def _wait_for_slots(study, name: str) -> None:
    """A worker that started with its creator waits the few seconds the slots take to enqueue."""
    deadline = time.monotonic() + _READY_WAIT
    while _SLOTS not in study.user_attrs:
        if time.monotonic() > deadline:
            raise FitVisionError(f"study '{name}' has no trial slots: the process that created it stopped before "
                                 f"enqueueing them; delete the study (or its --out) and start again")
        time.sleep(0.5)
