"""Training in several processes under torchrun (gloo on the CPU): one run directory, the same
step as one process with the whole batch, restarts after a killed rank, two nodes, bad input.

Each torchrun launch costs a few seconds of process start-up; the runs are tiny.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fitvision.cli import main
from synthetic_images import make_image_folder

TESTS = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32",
                                reason="torch.distributed (gloo) on a POSIX system")


def _env(**extra: str) -> dict:
    path = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """cmd in a session of its own: on timeout torchrun and every rank it started are killed,
    so that no orphan keeps the cores busy for the tests after it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun(args: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", *args], timeout, **env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ddp") / "data", ["ant", "bee"], 16, 4)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet9", "--width", "0.25", "--bs", "8", "--epochs", "3",
            "--device", "cpu", "--precision", "fp32", "--out", str(out), *extra]


@pytest.mark.slow
def test_two_processes_learn_a_cifar10_subset_and_write_one_run_directory(data_dir, tmp_path):
    run = tmp_path / "run"
    done = _torchrun(["--standalone", "--nproc-per-node", "2", "-m", "fitvision", "train", "--data", "cifar10",
                      "--train-limit", "2000", "--valid-limit", "500", "--model", "resnet9", "--width", "0.25",
                      "--epochs", "3", "--bs", "100", "--device", "cpu", "--out", str(run)], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_acc"] > 0.3, summary  # chance is 0.1
    assert summary["num_valid"] == 500  # the sharded evaluation gathered back whole
    assert done.stdout.count("done: val_acc") == 1  # rank 0 alone reports
    assert "2 processes, each 50 images of every batch of 100" in done.stdout


# One optimizer step of a model without BatchNorm, three ways: 2 ranks x 4 images, 1 process x 8,
# 1 process x 8 in 2 accumulated chunks. The gradient of the batch's mean loss is the same.
STEP = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from fitvision.data.loader import DeviceLoader
    from fitvision.train import distributed
    from fitvision.train.learner import Learner

    out, accum = sys.argv[1], int(sys.argv[2])
    w = distributed.init("cpu") if distributed.launched() else distributed.World()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    dl = DeviceLoader(x, y, 8 // w.size, shuffle=True, drop_last=True, seed=3, rank=w.rank, world_size=w.size)
    learn = Learner(model, dl, dl, lr=0.1, accum=accum, progress=False)
    learn.fit(1)
    if w.is_main:
        torch.save({k: v.clone() for k, v in learn.model.state_dict().items()}, out)
    del learn  # DistributedDataParallel's reducer must go before its process group (else abort at exit)
    distributed.shutdown()
""")


def test_one_step_of_two_ranks_equals_one_process_and_accumulation(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP)
    ddp = _torchrun(["--standalone", "--nproc-per-node", "2", str(script), str(tmp_path / "ddp.pt"), "1"])
    assert ddp.returncode == 0, ddp.stderr[-8000:]
    for name, accum in (("one.pt", "1"), ("accum.pt", "2")):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / name), accum], capture_output=True,
                              text=True, env=_env(), timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    one, ddp_w, accum_w = (torch.load(tmp_path / n) for n in ("one.pt", "ddp.pt", "accum.pt"))
    for k in one:
        assert torch.allclose(ddp_w[k], one[k], atol=1e-6, rtol=1e-5), k
        assert torch.allclose(accum_w[k], one[k], atol=1e-6, rtol=1e-5), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in one.values())


# What trains changes during the fit: the conv's bias stops after epoch 1 (FreezeAfter, as
# SpeedNet's stem bias), the head's bias, frozen at the start, trains from epoch 1 on.
FREEZING = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from fitvision.data.loader import DeviceLoader
    from fitvision.train import distributed
    from fitvision.train.hooks import FreezeAfter, Hook
    from fitvision.train.learner import Learner

    class Unfreeze(Hook):
        def __init__(self, p):
            self.p = p

        def on_epoch_end(self, state):
            self.p.requires_grad_(True)

    w = distributed.init("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model[3].bias.requires_grad_(False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    dl = DeviceLoader(x, y, 8 // w.size, shuffle=True, drop_last=True, seed=3, rank=w.rank, world_size=w.size)
    hooks = [FreezeAfter([model[0].bias], 1), Unfreeze(model[3].bias)]
    learn = Learner(model, dl, dl, lr=0.1, progress=False, hooks=hooks)
    learn.fit(3)
    images = [row["images"] for row in learn.state.history]
    end = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"start": start, "end": end, "images": images}, f"{sys.argv[1]}.{w.rank}")
    del learn
    distributed.shutdown()
""")


def test_freezing_and_unfreezing_during_a_fit_keeps_the_ranks_equal(tmp_path):
    script = tmp_path / "freezing.py"
    script.write_text(FREEZING)
    done = _torchrun(["--standalone", "--nproc-per-node", "2", str(script), str(tmp_path / "w")])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"w.{r}") for r in (0, 1)]
    for k in ranks[0]["end"]:  # every gradient was averaged: the ranks hold the same weights
        assert torch.equal(ranks[0]["end"][k], ranks[1]["end"][k]), k
    assert ranks[0]["images"] == ranks[1]["images"] == [16, 16, 16]  # both ranks' shards: the global count
    start, end = ranks[0]["start"], ranks[0]["end"]
    assert not torch.equal(start["3.bias"], end["3.bias"]) and not torch.equal(start["0.bias"], end["0.bias"])


# The CLI, with a pause per step (time for checkpoints) and, on the first attempt only, rank 1
# killing itself with SIGKILL at step KILL_AT: torchrun restarts the group, which resumes.
KILLER = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from fitvision.cli import main
    from fitvision.train.learner import Learner

    kill_at = int(os.environ.get("FV_TEST_KILL_AT", "0"))
    step = Learner.train_step

    def train_step(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if kill_at and first_attempt and self.world.rank == 1 and self.state.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss

    Learner.train_step = train_step
    sys.exit(main(sys.argv[1:]))
""")


def test_a_rank_killed_with_sigkill_restarts_and_ends_bitwise_equal(data, tmp_path):
    script, config = tmp_path / "killer.py", tmp_path / "every2.json"
    script.write_text(KILLER)
    config.write_text('{"checkpoint_every": 2}')
    runs = {}
    for name, kill_at in (("full", "0"), ("killed", "7")):  # step 7: epoch 1, batch 3; checkpoint at 6
        run = tmp_path / name
        done = _torchrun(["--standalone", "--nproc-per-node", "2", "--max-restarts", "2", str(script),
                          *_train_args(data, run, "--config", str(config))], FV_TEST_KILL_AT=kill_at)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = load_file(str(run / "model.safetensors"))
    assert runs["full"].keys() == runs["killed"].keys()
    assert all(runs["full"][k].equal(runs["killed"][k]) for k in runs["full"])
    history = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    assert len(history) == 4  # a header and 3 epochs, not more: the restarted group resumed


# torchrun keeps one store across the restarts of a group: on the second attempt rank 0 joins late,
# so rank 1 finds in the store whatever rank 0 published on the first attempt, unless attempts
# are kept apart (distributed.init).
LATE = textwrap.dedent("""
    import os, signal, sys, time
    import torch.distributed as dist
    from fitvision.train import distributed

    attempt, rank = distributed.restart_count(), int(os.environ["RANK"])
    if attempt == 1 and rank == 0:
        time.sleep(3)
    distributed.init("cpu")
    dist.barrier()
    if attempt == 0 and rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(5 if attempt == 0 else 0)  # (rank 0 of the first attempt: torchrun stops it)
    distributed.shutdown()
    print(f"attempt {attempt} rank {rank} done")
""")


def test_a_restarted_group_does_not_read_the_addresses_of_the_attempt_before(tmp_path):
    script = tmp_path / "late.py"
    script.write_text(LATE)
    done = _torchrun(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", str(script)], timeout=120,
                     FITVISION_DIST_TIMEOUT="20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(re.findall(r"attempt \d rank \d done", done.stdout)) == ["attempt 1 rank 0 done",
                                                                           "attempt 1 rank 1 done"]


def test_two_nodes_on_one_machine_train_together(data, tmp_path):
    """One node by hand (torchrun), the other through `fitvision train --nnodes 2 --rdzv-endpoint`."""
    port, run = _free_port(), tmp_path / "run"
    by_hand = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "fitvision",
               "-m", "fitvision", *_train_args(data, run)]
    launcher = [sys.executable, "-m", "fitvision", *_train_args(data, run), "--nproc", "1", "--nnodes", "2",
                "--rdzv-endpoint", f"127.0.0.1:{port}"]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              start_new_session=True) for cmd in (by_hand, launcher)]
    try:
        outs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outs]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert sum(out.count("done: val_acc") for out, _ in outs) == 1


def test_nproc_runs_torchrun_and_checks_the_batch_first(data, tmp_path, capsys):
    assert main([*_train_args(data, tmp_path / "bad"), "--bs", "9", "--nproc", "2"]) == 2
    assert capsys.readouterr().err == ("error: --bs 9 does not divide evenly over 2 processes: choose a batch "
                                       "size that is a multiple of 2\n")
    assert main([*_train_args(data, tmp_path / "bad"), "--bs", "8", "--accum", "3"]) == 1
    assert capsys.readouterr().err == ("error: --bs 8 does not divide evenly over 3 accumulation steps: choose a "
                                       "batch size that is a multiple of 3\n")
    assert not (tmp_path / "bad").exists()
    done = _run([sys.executable, "-m", "fitvision", *_train_args(data, tmp_path / "run"), "--nproc", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "note      2 processes, each 4 images of every batch of 8" in done.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bs"] == 8


def test_resume_with_another_number_of_processes_is_one_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    done = _torchrun(["--standalone", "--nproc-per-node", "2", "-m", "fitvision", *_train_args(data, run)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["train", "--resume", "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"error: {run / 'checkpoint.pt'} was written by 2 processes, this run has 1: "
                                       "resume with the same number of processes (--nproc, or torchrun's "
                                       "--nproc-per-node x --nnodes)\n")


@pytest.mark.parametrize("flags, message", [
    (["--nproc", "0"], "--nproc must be at least 1, got 0"),
    (["--nproc", "2", "--nnodes", "2"], "--nnodes needs --rdzv-endpoint HOST:PORT: the address where the nodes meet "
                                        "(the first node's host and a free port)"),
    (["--nproc", "2", "--rdzv-endpoint", "10.0.0.1:29400"], "--rdzv-endpoint is for several machines: pass --nnodes too"),
    (["--nnodes", "2", "--rdzv-endpoint", "10.0.0.1"], "--rdzv-endpoint must be HOST:PORT (a port from 1 to 65535), "
                                                       "got '10.0.0.1'"),
    (["--nproc", "2", "--nnodes", "3", "--rdzv-endpoint", "h:1"], "--bs 8 does not divide evenly over 6 processes: "
                                                                  "choose a batch size that is a multiple of 6"),
])
def test_launcher_flags_that_cannot_work_are_one_line(data, tmp_path, capsys, flags, message):
    assert main([*_train_args(data, tmp_path / "run"), *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_an_unreachable_rendezvous_endpoint_is_one_line_and_starts_nothing(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FITVISION_RDZV_TIMEOUT", "2")
    base = [*_train_args(data, tmp_path / "run"), "--nproc", "1", "--nnodes", "2"]
    assert main([*base, "--rdzv-endpoint", "no-such-host.invalid:29400"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the rendezvous endpoint no-such-host.invalid:29400: no address for "
                          "'no-such-host.invalid' (") and err.endswith("); check --rdzv-endpoint\n")
    host = "203.0.113.1"  # a documentation address (TEST-NET-3): not this machine, and nothing answers there
    t0 = time.monotonic()
    assert main([*base, "--rdzv-endpoint", f"{host}:29400"]) == 1
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the rendezvous endpoint {host}:29400 (")
    assert err.endswith(f") within 2 s: start the command on {host} first, or check --rdzv-endpoint and the "
                        "firewall (FITVISION_RDZV_TIMEOUT sets the wait)\n")
    assert not (tmp_path / "run").exists()
