"""Fault injection on a training run: SIGTERM (preemption), a corrupt latest checkpoint, a full or
read-only disk, a damaged run folder, leftovers of a killed process (issue 31).

The runs are real CLI runs on a tiny synthetic image folder (2 classes, 16 px, 4 batches an
epoch), in subprocesses where a signal is involved, each a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from synthetic_images import make_image_folder

from fitvision.cli import main
from fitvision.files import _host_tag, is_leftover
from fitvision.train.checkpoint import load_checkpoint

TESTS = Path(__file__).parent
STEPS = 4  # batches an epoch: 2 classes x 16 images / batch 8
EPOCHS = 3

# The child is the CLI itself, with one thread (the same float reductions in every process) and,
# for the tests, a hook into the step: SIGTERM sent to itself after step K, or a pause per step.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from fitvision.cli import main
    from fitvision.train.learner import Learner

    mode, value, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    step = Learner.train_step

    def train_step(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        if mode == "term_at" and self.state.step + 1 == int(value):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the step's bookkeeping runs
        if mode == "slow":
            time.sleep(value)
        return loss

    Learner.train_step = train_step
    sys.exit(main(argv))
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults") / "data", ["ant", "bee"], 16, 4)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet9", "--width", "0.25", "--bs", "8",
            "--epochs", str(EPOCHS), "--device", "cpu", "--precision", "fp32", "--out", str(out), *extra]


def _child(tmp_path: Path, mode: str, value: float, argv: list[str]) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), mode, str(value), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """The weights of an uninterrupted run, to compare every interrupted-and-resumed one with."""
    tmp = tmp_path_factory.mktemp("reference")
    rc, _, err = _finish(_child(tmp, "none", 0, _argv(data, tmp / "run")))
    assert rc == 0, err
    return load_file(str(tmp / "run" / "model.safetensors"))


def _resume_and_compare(tmp_path: Path, run: Path, reference: dict) -> str:
    rc, out, err = _finish(_child(tmp_path, "none", 0, ["train", "--resume", "--out", str(run)]))
    assert rc == 0, err
    weights = load_file(str(run / "model.safetensors"))
    assert weights.keys() == reference.keys()
    assert all(weights[k].equal(reference[k]) for k in weights), [k for k in weights if not weights[k].equal(reference[k])]
    assert not (run / "checkpoint.prev.pt").exists()  # a finished run keeps one checkpoint
    return err


def test_sigterm_mid_epoch_writes_a_checkpoint_and_the_resumed_run_is_bitwise_exact(data, tmp_path, reference):
    run = tmp_path / "run"
    rc, out, err = _finish(_child(tmp_path, "term_at", 6, _argv(data, run)))  # step 6: epoch 1, batch 2
    assert rc == 143
    assert err == (f"error: stopped by SIGTERM at epoch 1, step 6 of {EPOCHS * STEPS}; checkpoint written; "
                   f"continue with: fitvision train --resume --out {run}\n")
    assert load_checkpoint(run / "checkpoint.pt")["state"]["step"] == 6
    assert not (run / "model.safetensors").exists()
    _resume_and_compare(tmp_path, run, reference)


def test_sigterm_from_outside_at_any_moment_loses_nothing(data, tmp_path, reference):
    """Sent by another process at whatever the run is doing (a step, an evaluation, a checkpoint write)."""
    run = tmp_path / "run"
    proc = _child(tmp_path, "slow", 0.2, _argv(data, run))
    deadline = time.time() + 120
    while not (run / "history.csv").exists():  # the first epoch is done: mid-run
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run wrote no history.csv in time"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 143, err
    assert err.startswith("error: stopped by SIGTERM at epoch ") and err.endswith(
        f"; continue with: fitvision train --resume --out {run}\n") and err.count("\n") == 1
    _resume_and_compare(tmp_path, run, reference)


def test_sigterm_before_training_starts_leaves_no_run(data, tmp_path):
    """Before the fit (data, model) there is nothing to save: SIGTERM stops at once, nothing written."""
    script = tmp_path / "early.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import fitvision.train.run as run
        build = run.build
        def slow_build(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            return build(*a, **k)
        run.build = slow_build
        from fitvision.cli import main
        sys.exit(main({_argv(data, tmp_path / 'early')!r}))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143
    assert proc.stderr == (f"error: stopped by SIGTERM before training started; no epoch finished, nothing to "
                           f"resume; train into {tmp_path / 'early'} again\n")
    assert not (tmp_path / "early").exists()


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(data, tmp_path, reference):
    run, config = tmp_path / "run", tmp_path / "every2.json"
    config.write_text('{"checkpoint_every": 2}')
    rc, _, err = _finish(_child(tmp_path, "term_at", 7, _argv(data, run, "--config", str(config))))
    assert rc == 143, err
    assert load_checkpoint(run / "checkpoint.prev.pt")["state"]["step"] == 6
    with open(run / "checkpoint.pt", "r+b") as f:  # a disk that lied about its write
        f.truncate(1000)
    err = _resume_and_compare(tmp_path, run, reference)
    assert err == (f"warning: {run / 'checkpoint.pt'} is corrupt or not a fitvision checkpoint: "
                   f"{err.split('checkpoint: ', 1)[1].split(';')[0]}; resuming from the checkpoint before it, "
                   f"{run / 'checkpoint.prev.pt'}\n")


def test_the_latest_checkpoint_missing_falls_back_too(data, tmp_path, reference):
    """A kill between moving the old checkpoint aside and renaming the new one in."""
    run = tmp_path / "run"
    rc, _, err = _finish(_child(tmp_path, "term_at", 5, _argv(data, run)))
    assert rc == 143, err
    (run / "checkpoint.pt").rename(run / "checkpoint.prev.pt")
    err = _resume_and_compare(tmp_path, run, reference)
    assert "does not exist; resuming from the checkpoint before it" in err


def test_disk_full_at_a_checkpoint_names_the_file(data, tmp_path, capsys, monkeypatch):
    replace = os.replace

    def full(src, dst):
        if Path(dst).name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    run = tmp_path / "run"
    assert main(_argv(data, run)) == 1
    assert capsys.readouterr().err == (f"error: cannot write {run / 'checkpoint.pt'}: the disk is full; "
                                       "free some space or choose another place\n")
    assert sorted(p.name for p in run.iterdir()) == ["batches.csv", "config.json", "history.csv",
                                                     "train.log"]  # no temporary file left


@pytest.mark.parametrize("name", ["history.csv", "model.safetensors", "model.json", "preds.npz", "summary.json",
                                  "plots/accuracy.png", "report.html"])
def test_disk_full_at_each_kind_of_run_file(data, tmp_path, capsys, monkeypatch, name):
    """Every run-directory write goes through files.atomic_path: the same line, no temporary file left."""
    replace, run = os.replace, tmp_path / "run"

    def full(src, dst):
        if Path(dst) == run / name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert main(_argv(data, run, "--epochs", "1")) == 1
    assert capsys.readouterr().err == (f"error: cannot write {run / name}: the disk is full; "
                                       "free some space or choose another place\n")
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (a real full disk), where this process may mount one (root); else skip."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers the same path")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_disk_at_a_checkpoint(data, small_tmpfs, capsys):
    run = small_tmpfs / "run"  # config.json fits, the 5 MB checkpoint does not
    assert main(_argv(data, run)) == 1
    assert capsys.readouterr().err == (f"error: cannot write {run / 'checkpoint.pt'}: the disk is full; "
                                       "free some space or choose another place\n")
    assert sorted(p.name for p in run.iterdir()) == ["batches.csv", "config.json", "history.csv", "train.log"]


def test_a_read_only_out_fails_before_any_work(data, tmp_path, capsys, monkeypatch):
    import fitvision.train.setup as setup

    monkeypatch.setattr(setup, "build", lambda *a, **k: pytest.fail("the data was loaded"))
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount, where possible
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
            pytest.skip("root, and cannot mount a read-only tmpfs here")
        reason = "the file system is read-only"
    else:
        ro.chmod(0o555)
        reason = "permission denied"
    try:
        assert main(_argv(data, ro / "run")) == 1
        assert capsys.readouterr().err == f"error: cannot write --out {ro / 'run'}: {reason} ({ro})\n"
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        ro.chmod(0o755)


def test_resume_with_config_json_missing_or_corrupt(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    advice = f"to train on from its weights, start a new run with --init-from {run}"
    assert main(["train", "--resume", "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"error: cannot resume: {run / 'config.json'} is missing (it holds the "
                                       f"run's settings); {advice}\n")
    (run / "config.json").write_text("{bad")
    assert main(["train", "--resume", "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"error: cannot resume: {run / 'config.json'} is unreadable or corrupt "
                                       "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); "
                                       f"{advice}\n")
    (run / "config.json").write_bytes(b'{"epochs": "\xff"}')
    assert main(["train", "--resume", "--out", str(run)]) == 1
    assert "is unreadable or corrupt ('utf-8' codec can't decode byte 0xff" in capsys.readouterr().err
    (run / "config.json").write_text("[1, 2]")
    assert main(["train", "--resume", "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"error: cannot resume: {run / 'config.json'} does not hold a table of "
                                       f"settings; {advice}\n")


def test_a_config_file_that_is_not_utf8_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"epochs": 1, "lr": "\xff"}')
    assert main(["train", "--config", str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: a config file must be UTF-8 text (byte 21 is not)\n"


def test_leftovers_of_a_killed_run_are_removed_and_a_live_ones_kept(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_argv(data, run, "--epochs", "1")) == 0
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = run / f".checkpoint.pt.fv-{_host_tag()}-999999-abc123.tmp"  # pid 999999: no such process
        dead_plot = run / "plots" / f".loss.png.fv-{_host_tag()}-999999-x.tmp"
        alive = run / f".checkpoint.pt.fv-{_host_tag()}-{live.pid}-def456.tmp"
        foreign = run / ".checkpoint.pt.someone-elses.tmp"  # not a fitvision name: never touched
        for p in (dead, dead_plot, alive, foreign):
            p.write_bytes(b"partial")
        assert is_leftover(dead) and not is_leftover(alive) and not is_leftover(foreign)
        assert main(["train", "--resume", "--out", str(run)]) == 0  # a finished run: results written again
        assert not dead.exists() and not dead_plot.exists()
        assert alive.exists() and foreign.exists()
    finally:
        live.kill()
        live.wait()
    capsys.readouterr()


def test_sigterm_stops_a_search_with_the_searchs_advice(data, tmp_path):
    out = tmp_path / "search"
    argv = ["tune", "--data", str(data), "--model", "resnet9", "--width", "0.25", "--bs", "8", "--epochs", "2",
            "--device", "cpu", "--precision", "fp32", "--space", "lr=1e-3..1e-2:log", "--trials", "2",
            "--valid-pct", "0.25", "--out", str(out)]
    rc, _, err = _finish(_child(tmp_path, "term_at", 3, argv))
    assert rc == 143, err
    assert err == (f"error: the search stopped before its first trial finished; continue with: "
                   f"fitvision tune --resume --out {out}\n")
    assert json.loads((out / "search.json").read_text())["trials"] == 2


def test_a_full_disk_for_the_log_is_one_warning_and_the_run_goes_on(tmp_path, capsys):
    """RUN/train.log on a full disk: logging would print a traceback for every line; one warning instead."""
    import logging

    from fitvision.logs import logger, run_log

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    with run_log(tmp_path / "train.log"):
        handler = next(h for h in logger.handlers if hasattr(h, "failed"))
        handler.setStream(Full())
        logger.info("one")
        logger.info("two")
    assert capsys.readouterr().err == (f"warning: cannot append to {tmp_path / 'train.log'} (No space left on "
                                       "device); the run goes on without its log\n")
    assert not any(hasattr(h, "failed") for h in logging.getLogger("fitvision").handlers)  # removed at the end


def test_a_run_whose_weights_went_nan_is_an_error_not_a_result(tmp_path, monkeypatch):
    """Seen with xresnet depth=0 on 32 px under bf16: a conv's weights went NaN where the forward
    pass multiplies them by zero padding, so the training loss stayed finite and the run "finished"
    with val_loss nan. Now the run fails, naming the parameter."""
    from fitvision.config import TrainConfig
    from fitvision.errors import FitVisionError
    from fitvision.train.hooks import Hook
    from fitvision.train.run import train_run

    from test_cli_errors import _split_folders

    class Poison(Hook):
        def __init__(self):
            self.learn = None

        def on_batch_end(self, state):
            if state.step == state.total_steps:  # the last step: the final evaluation sees it
                import torch

                with torch.no_grad():
                    self.learn.model.classifier[-1].weight.fill_(float("nan"))

    poison = Poison()
    import fitvision.train.setup as setup

    build = setup.build

    def spy(cfg, *a, **k):
        s = build(cfg, *a, **k)
        poison.learn = s.learn
        return s

    monkeypatch.setattr("fitvision.train.run.build", spy)
    cfg = TrainConfig(data=str(_split_folders(tmp_path / "ds")), model="cnn", width=0.25, epochs=1, bs=4,
                      out=str(tmp_path / "run"))
    with pytest.raises(FitVisionError) as e:
        train_run(cfg, progress=False, hooks=[poison])
    assert str(e.value) == ("the final evaluation's loss is nan (NaN or inf in classifier.2.weight): the weights are "
                            "not usable; train again with --precision fp32 or a lower --lr")
    assert not (tmp_path / "run" / "summary.json").exists()
