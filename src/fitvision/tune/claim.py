"""Who runs which trial: a worker takes a waiting slot, beats a heartbeat while it trains, gives
the slot back when interrupted, and takes over the slots of workers that died.

Every step is one of the storage's atomic moves, so no trial runs twice:

- taking a slot is WAITING -> RUNNING, which the storage grants to one worker only;
- an interrupted worker (Ctrl-C, SIGTERM) puts its own trial back to WAITING, its parameters and
  reports kept, and whoever takes it next resumes its run directory;
- a dead worker's trial (killed, lost machine) is failed, RUNNING -> FAIL, which also succeeds for
  one worker only, and that worker enqueues a retry of the same slot with the same parameters,
  which resumes the same run directory. A worker is known dead at once where it ran on this
  machine (its pid is gone), elsewhere once its heartbeat is GRACE_SECONDS old (RDB storages;
  journal files have no heartbeat).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from fitvision.files import pid_alive
from fitvision.tune.study import HEARTBEAT_SECONDS, import_optuna, make_pruner, make_sampler, quiet


def worker_host() -> str:
    """This machine and pid namespace: pids mean something only among workers that share it
    (two containers may share a host name and a database, not their pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def trial_seed(seed: int, slot: int) -> int:
    """The sampler's seed for one slot: mixed, since nearby seeds give nearby first draws in
    numpy's legacy RandomState (seeds 100003 and 100004 both draw 0.30 first)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


def _trial_id(study, number: int) -> int:
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def next_trial(storage, name: str, sampler: str, pruner: str, seed: int, epochs: float, trials: int):
    """A waiting slot taken for this worker, as an optuna Trial; None when none is left.

    Each trial gets a study object of its own: its trial cache starts empty (the sampler sees
    every trial finished so far) and its sampler is seeded by (seed, slot)."""
    optuna = import_optuna()
    waiting = optuna.trial.TrialState.WAITING
    queued = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=(waiting,))
    for candidate in sorted(queued, key=_slot):  # a retried slot first: it has epochs to resume
        slot = _slot(candidate)
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(pruner, epochs),
                                  sampler=make_sampler(sampler, trial_seed(seed, slot), trials))
        study.get_trials(deepcopy=False, states=(waiting,))  # (the study's storage cache learns the trial ids)
        trial_id = _trial_id(study, candidate.number)
        try:
            if not study._storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING):
                continue  # another worker took it first
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        trial = optuna.trial.Trial(study, trial_id)
        trial.set_user_attr("host", worker_host())
        trial.set_user_attr("pid", os.getpid())
        return trial
    return None


def _slot(trial) -> int:
    return int(trial.user_attrs.get("slot", trial.number))


def give_back(trial) -> None:
    """Put this worker's interrupted trial back in the queue (kept: its parameters and reports)."""
    optuna = import_optuna()
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # already failed as stale
        trial.storage.set_trial_state_values(_trial_id(trial.study, trial.number), optuna.trial.TrialState.WAITING)


def retry(study, failed) -> None:
    """The slot of a trial whose worker died, queued again with the same parameters."""
    study.enqueue_trial(dict(failed.params), user_attrs={"slot": _slot(failed), "retry_of": failed.number})


def reclaim_dead(storage, name: str) -> int:
    """Fail and retry the running trials whose worker is gone; returns how many."""
    optuna = import_optuna()
    study = optuna.load_study(study_name=name, storage=storage)
    reclaimed = 0
    for running in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _dead_here(running.user_attrs):
            continue
        trial_id = _trial_id(study, running.number)
        try:
            if not study._storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first, and retries it
        retry(study, study._storage.get_trial(trial_id))
        reclaimed += 1
    with quiet():  # the heartbeat's half: workers on other machines (calls ``retry`` for each)
        optuna.storages.fail_stale_trials(study)
    return reclaimed


def _dead_here(attrs: dict) -> bool:
    if attrs.get("host") != worker_host() or "pid" not in attrs:
        return False
    pid = int(attrs["pid"])
    if pid == os.getpid():
        return True  # a trial this process left running: it is no longer running it
    return not pid_alive(pid)


@contextlib.contextmanager
def heartbeat(trial) -> Iterator[None]:
    """Beat the trial's heartbeat from a thread while the block runs (storages that have one)."""
    storage = trial.storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        yield
        return
    stop, trial_id = threading.Event(), _trial_id(trial.study, trial.number)

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost connection: the next beat tries again
                storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name="fitvision-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
