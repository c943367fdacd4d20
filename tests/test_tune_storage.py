"""Searches shared through a storage: two workers on one SQLite study, `--workers 2`, a worker
killed with SIGKILL and the search rerun, PostgreSQL for real, and storages that cannot be opened.

The workers are `fitvision tune` processes. Most train with a stand-in (CHILD below: the
search's hooks called once an epoch, a marker checkpoint written after each), so that the
tests are about sharing, not training; `--workers 2` runs the real train_run.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from synthetic_images import make_image_folder

from fitvision.cli import main

optuna = pytest.importorskip("optuna")

CHILD = textwrap.dedent("""
    import json, math, os, sys, time
    from pathlib import Path
    import fitvision.tune.trial as one_trial
    from fitvision.cli import main
    from fitvision.train.hooks import TrainState

    log, delay, barrier, argv = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    waited = []

    def fake(cfg, hooks):
        if barrier and not waited:  # each of `barrier` workers takes a trial before any goes on
            (log.parent / f"started-{os.getpid()}").touch()
            deadline = time.time() + 60
            while len(list(log.parent.glob("started-*"))) < barrier and time.time() < deadline:
                time.sleep(0.05)
            waited.append(True)
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "run": run.name, "lr": cfg.lr, "resume": cfg.resume}) + "\\n")
        epochs, acc = max(1, round(cfg.epochs)), 1.0 - abs(math.log10(cfg.lr) + 2.0) / 10
        state = TrainState(total_steps=epochs)
        for epoch in range(epochs):
            time.sleep(delay)
            (run / "checkpoint.pt").write_bytes(b"epoch %d" % epoch)  # what the retry of a killed trial resumes
            state.step, state.epoch = epoch + 1, epoch
            state.history.append({"epoch": epoch, "val_acc": acc * (epoch + 1) / epochs})
            for hook in hooks:
                hook.on_epoch_end(state)
        (run / "summary.json").write_text(json.dumps({"val_acc": acc}))
        return run

    one_trial.default_train = fake
    sys.exit(main(argv))
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tune-storage") / "data", ["r", "g"], 12, 4)


def _argv(data: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return ["tune", "--space", "lr=1e-4..1:log,bs=8|16", "--trials", str(trials), "--epochs", "2", "--data", str(data),
            "--model", "mlp", "--device", "cpu", "--precision", "fp32", "--out", str(out), *extra]


def _worker(tmp_path: Path, log: Path, argv: list[str], delay: float = 0.05, barrier: int = 0) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), str(log), str(delay), str(barrier), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _csv(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "trials.csv")))


def _study(url: str, name: str = "fitvision-tune"):
    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.parametrize("storage", ["default", "journal"])
def test_two_workers_on_one_study_run_exactly_the_trials_once(data, tmp_path, storage):
    """Two `fitvision tune` processes, the same command: 8 trials between them, each once."""
    out, log = tmp_path / "search", tmp_path / "log.jsonl"
    extra = [] if storage == "default" else ["--storage", str(tmp_path / "journal.log")]
    workers = [_worker(tmp_path, log, _argv(data, out, 8, "--pruner", "none", *extra), barrier=2) for _ in range(2)]
    results = [_finish(p) for p in workers]
    assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
    ran = _log(log)
    assert sorted(e["run"] for e in ran) == [f"trial-{i:03d}" for i in range(8)]  # none twice, none left out
    assert len({e["pid"] for e in ran}) == 2  # both took trials
    rows = _csv(out)
    assert [r["trial"] for r in rows] == [str(i) for i in range(8)] and {r["status"] for r in rows} == {"ok"}
    assert sorted(float(r["lr"]) for r in rows) == sorted(e["lr"] for e in ran)
    url = f"sqlite:///{out / 'study.db'}" if storage == "default" else None
    study = _study(url or optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {e["pid"] for e in ran}
    best = json.loads((out / "best.json").read_text())
    assert all(f"best: trial {best['trial']} " in stdout for _, stdout, _ in results)


def test_workers_2_runs_real_trials_in_two_processes(data, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(_argv(data, out, 4, "--workers", "2", "--retrain")) == 0
    trials = _study(f"sqlite:///{out / 'study.db'}").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in trials)
    assert all(t.user_attrs["pid"] != os.getpid() for t in trials)  # the workers trained, not this process
    rows = _csv(out)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    for r in rows:
        if r["status"] == "ok":
            assert float(r["val_acc"]) == json.loads((out / f"trial-{int(r['trial']):03d}" / "summary.json").read_text())["val_acc"]
    best = json.loads((out / "best.json").read_text())
    assert (out / "retrain" / "summary.json").is_file() and "test_acc" in best
    assert f"best: trial {best['trial']}" in capsys.readouterr().out


def test_a_killed_search_resumes_without_rerunning_finished_trials(data, tmp_path):
    """SIGKILL in the third of five trials, after its first epoch: the rerun keeps the two
    finished trials, fails the killed one (its worker is gone) and retries it with the same
    parameters, resuming its run directory, then runs the last two: five trials in all."""
    out, first_log, second_log = tmp_path / "search", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    argv = _argv(data, out, 5, "--epochs", "3", "--pruner", "none")
    p = _worker(tmp_path, first_log, argv, delay=0.4)
    deadline = time.time() + 90
    while not (out / "trial-002" / "checkpoint.pt").exists():
        assert time.time() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    p.kill()
    p.communicate()
    assert [e["run"] for e in _log(first_log)] == ["trial-000", "trial-001", "trial-002"]
    url = f"sqlite:///{out / 'study.db'}"
    states = [t.state.name for t in _study(url).get_trials()]
    assert states == ["COMPLETE", "COMPLETE", "RUNNING", "WAITING", "WAITING"]

    rc, _, err = _finish(_worker(tmp_path, second_log, argv))
    assert rc == 0, err
    killed = _log(first_log)[2]
    rerun = _log(second_log)
    assert [(e["run"], e["resume"]) for e in rerun] == [("trial-002", True), ("trial-003", False), ("trial-004", False)]
    assert rerun[0]["lr"] == killed["lr"]  # the retry has the killed trial's parameters
    rows = _csv(out)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4"] and {r["status"] for r in rows} == {"ok"}
    trials = _study(url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    retry = trials[5]
    assert retry.user_attrs["retry_of"] == 2 and retry.user_attrs["slot"] == 2 and retry.params == trials[2].params
    assert sorted({t.user_attrs["slot"] for t in trials}) == [0, 1, 2, 3, 4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_storage_that_cannot_be_opened_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    pytest.importorskip("psycopg2")
    port = _free_port()  # nothing listens there
    out = tmp_path / "search"
    url = f"postgresql://fv:s3cret@127.0.0.1:{port}/fitvision"
    assert main(_argv(data, out, 2, "--storage", url, "--study", "s")) == 1
    err = capsys.readouterr().err  # the driver's own words follow the URL: psycopg 3 puts "connection failed: " first
    assert err.startswith(f"error: cannot open --storage postgresql://fv:***@127.0.0.1:{port}/fitvision: ")
    assert err.endswith(f"connection to server at \"127.0.0.1\", port {port} failed: Connection refused\n")
    assert err.count("\n") == 1 and "s3cret" not in err
    assert not out.exists()
    bad = tmp_path / "no" / "such" / "folder" / "s.db"
    assert main(_argv(data, out, 2, "--storage", f"sqlite:///{bad}")) == 1
    assert capsys.readouterr().err == f"error: cannot open --storage sqlite:///{bad}: unable to open database file\n"
    assert not out.exists()


OPEN = textwrap.dedent("""
    import sys, time
    from fitvision.errors import FitVisionError
    from fitvision.tune.study import open_storage

    url, start = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))  # every process creates the tables at the same moment
    try:
        open_storage(url)
    except FitVisionError as e:
        sys.exit(str(e))
""")


def test_workers_creating_one_new_storage_at_once_all_open_it(tmp_path):
    """The tables and their schema version row are written once; those who lose that race wait and open."""
    script, url = tmp_path / "open.py", f"sqlite:///{tmp_path / 'study.db'}"
    script.write_text(OPEN)
    start = str(time.time() + 3.0)
    procs = [subprocess.Popen([sys.executable, str(script), url, start], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (initdb in a temporary folder, a free port),
    stopped at the end. As root (CI) it runs as the `postgres` user: the server refuses root."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server here (initdb, pg_ctl); .ci/run installs it with apt-get install postgresql")
    pytest.importorskip("psycopg2")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="fv-pg-"))
    if os.geteuid() == 0:
        if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), root / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "fv", "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "start", "-o",
                    f"-p {port} -h 127.0.0.1 -k {root}"], check=True, capture_output=True)
    try:
        createdb = _pg_bin("createdb")
        subprocess.run([*as_user, createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "fv", "fitvision"],
                       check=True, capture_output=True)
        yield f"postgresql://fv@127.0.0.1:{port}/fitvision"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(data, tmp_path, postgres):
    """Two workers, each with its own --out (as on two machines), one study in PostgreSQL: six
    trials between them, each once; each --out holds the runs it trained and the whole table."""
    log = tmp_path / "log.jsonl"
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    workers = [_worker(tmp_path, log, _argv(data, out, 6, "--storage", postgres, "--study", "shared"), barrier=2)
               for out in outs]
    results = [_finish(p) for p in workers]
    assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
    ran = _log(log)
    assert sorted(e["run"] for e in ran) == [f"trial-{i:03d}" for i in range(6)] and len({e["pid"] for e in ran}) == 2
    assert sorted(p.name for out in outs for p in out.glob("trial-*")) == [f"trial-{i:03d}" for i in range(6)]
    trials = _study(postgres, "shared").get_trials()
    assert sorted(t.number for t in trials) == list(range(6)) and all(t.state.is_finished() for t in trials)
    assert [r["trial"] for r in _csv(outs[0])] == [str(i) for i in range(6)]
    assert _csv(outs[0]) == _csv(outs[1])
    best = [json.loads((out / "best.json").read_text()) for out in outs]
    assert best[0]["storage"] == postgres and {b["trial"] for b in best} == {best[0]["trial"]}
