"""A run killed with SIGKILL mid-epoch and resumed ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fitvision.files import is_leftover
from fitvision.train.checkpoint import load_checkpoint

TESTS = Path(__file__).parent

CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)  # the same thread count in every process: same float reductions
    sys.path.insert(0, sys.argv[4])
    from fakeloader import make_learner
    from fitvision.train.hooks import Checkpointer, Hook

    class Slow(Hook):  # gives the parent time to kill between checkpoints
        def on_batch_end(self, state):
            time.sleep(0.25)

    mode, ckpt, out = sys.argv[1:4]
    learn = make_learner(ema=0.9, lookahead=True)  # every piece of state a resume must restore
    learn.hooks.append(Checkpointer(learn, ckpt, every_batches=2))
    if mode == "slow":
        learn.hooks.append(Slow())
    learn.fit(3, resume_from=ckpt if mode == "resume" else None)
    learn.save(out)
""")


def _child(tmp_path, mode, ckpt, out):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), mode, str(ckpt), str(out), str(TESTS)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _step(ckpt: Path) -> int:
    try:
        return load_checkpoint(ckpt)["state"]["step"]
    except Exception:  # not there yet
        return -1


def test_sigkill_mid_epoch_then_resume_is_bitwise_exact(tmp_path):
    ckpt, steps_per_epoch = tmp_path / "run" / "checkpoint.pt", 9
    ckpt.parent.mkdir()
    child = _child(tmp_path, "slow", ckpt, tmp_path / "never.safetensors")
    deadline = time.time() + 120
    while True:  # wait for a mid-epoch checkpoint in the second epoch, then kill at once
        step = _step(ckpt)
        if step >= 10 and step % steps_per_epoch:
            break
        assert child.poll() is None, child.communicate()
        assert time.time() < deadline, "the child wrote no mid-epoch checkpoint in time"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL and not (tmp_path / "never.safetensors").exists()
    killed_at = _step(ckpt)
    assert killed_at % steps_per_epoch and killed_at < 3 * steps_per_epoch
    # Beside the checkpoint and the one before it, at most a write the kill cut short: a temporary
    # file of a dead process, which the next run on this folder removes (fitvision.files).
    left = [p for p in ckpt.parent.iterdir() if p.name not in ("checkpoint.pt", "checkpoint.prev.pt")]
    assert all(is_leftover(p) for p in left), left

    resumed = _child(tmp_path, "resume", ckpt, tmp_path / "resumed.safetensors")
    full = _child(tmp_path, "full", tmp_path / "full.pt", tmp_path / "full.safetensors")
    for proc in (resumed, full):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    a, b = load_file(str(tmp_path / "full.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a), [k for k in a if not a[k].equal(b[k])]
    # The final checkpoints hold the raw weights (the files above hold the EMA): equal too.
    end_resumed, end_full = load_checkpoint(ckpt), load_checkpoint(tmp_path / "full.pt")
    assert end_resumed["state"]["step"] == end_full["state"]["step"] == 3 * steps_per_epoch
    assert all(v.equal(end_full["model"][k]) for k, v in end_resumed["model"].items())
    assert [b["loss"] for b in end_resumed["state"]["batches"]] == [b["loss"] for b in end_full["state"]["batches"]]


if sys.platform == "win32":  # SIGKILL semantics
    pytestmark = pytest.mark.skip("POSIX only")
