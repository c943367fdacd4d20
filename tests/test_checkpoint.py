"""Resume checkpoints: exact round trips, safe loading, atomic writes, in-process exact resume."""

import random

import numpy as np
import pytest
import torch

from fakeloader import Crash, make_learner, same, weights
from fitvision.errors import FitVisionError
from fitvision.train.checkpoint import load_checkpoint, save_checkpoint
from fitvision.train.seeding import rng_state, set_rng_state
from fitvision.train.hooks import Checkpointer


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], \
        float(np.random.randn())


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    first = _draws()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert _draws() == first


def test_checkpoint_round_trip_is_exact(tmp_path):
    learn = make_learner(ema=0.9)
    learn.fit(1)
    path = tmp_path / "checkpoint.pt"
    learn.save_checkpoint(path)
    ck = load_checkpoint(path)
    assert same(ck["model"], weights(learn))
    assert same(ck["ema"]["module"], learn.ema.module.state_dict()) and ck["ema"]["updates"] == 9
    opt = learn.opt.state_dict()
    for i, s in opt["state"].items():
        assert all(torch.equal(v, ck["opt"]["state"][i][k]) if torch.is_tensor(v) else v == ck["opt"]["state"][i][k]
                   for k, v in s.items())
    assert ck["opt"]["param_groups"] == opt["param_groups"]
    assert ck["state"] == learn.state.to_dict()
    assert ck["state"]["step"] == 9 and len(ck["state"]["batches"]) == 9
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


class Evil:
    def __reduce__(self):
        return (open, ("/tmp/fitvision-pwned", "w"))


def test_loading_never_runs_pickled_code(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "payload": Evil()}, path)
    with pytest.raises(FitVisionError, match=r"checkpoint.pt is corrupt or not a fitvision checkpoint: "):
        load_checkpoint(path)
    import os

    assert not os.path.exists("/tmp/fitvision-pwned")


def test_load_errors(tmp_path):
    with pytest.raises(FitVisionError) as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(e.value) == f"no checkpoint to resume from: {tmp_path / 'nope.pt'} does not exist"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FitVisionError, match=r"junk.pt is corrupt or not a fitvision checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(FitVisionError) as e:
        load_checkpoint(tmp_path / "other.pt")
    assert str(e.value) == f"{tmp_path / 'other.pt'} is not a fitvision checkpoint (format 1)"


def test_a_failed_save_leaves_the_old_checkpoint_intact(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "bad": lambda: 0})  # unpicklable: fails while serialising
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    full = make_learner(ema=0.9)
    full.fit(3)
    path = tmp_path / "checkpoint.pt"
    crashed = make_learner(ema=0.9)
    crashed.hooks += [Checkpointer(crashed, path, every_batches=4), Crash(at=14)]
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(3)
    assert load_checkpoint(path)["state"]["step"] == 12  # epoch 1, batch 3: mid-epoch
    resumed = make_learner(ema=0.9, init_seed=7)  # a different init: everything must come from the checkpoint
    resumed.fit(3, resume_from=path)
    assert same(weights(full), weights(resumed))
    assert same(full.ema.module.state_dict(), resumed.ema.module.state_dict())
    assert [b["loss"] for b in full.state.batches] == [b["loss"] for b in resumed.state.batches]
    strip = [{k: v for k, v in row.items() if "seconds" not in k} for row in full.state.history]
    assert strip == [{k: v for k, v in row.items() if "seconds" not in k} for row in resumed.state.history]


def test_resume_keeps_the_thread_count_the_run_started_with(tmp_path, monkeypatch):
    """A run that started beside a busy process trained on fewer threads (device.share_cpu); its
    resume, on an idle machine, must use as many, or CPU reductions split differently."""
    monkeypatch.delenv("FITVISION_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        learn = make_learner()
        learn.fit(1)
        learn.save_checkpoint(tmp_path / "checkpoint.pt")
        assert load_checkpoint(tmp_path / "checkpoint.pt")["threads"] == 1
        torch.set_num_threads(2)
        make_learner().fit(1, resume_from=tmp_path / "checkpoint.pt")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice wins
        make_learner().fit(1, resume_from=tmp_path / "checkpoint.pt")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resume_refuses_another_run_length(tmp_path):
    learn = make_learner()
    learn.fit(1)
    learn.save_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(FitVisionError) as e:
        make_learner().fit(2, resume_from=tmp_path / "checkpoint.pt")
    assert str(e.value) == (f"{tmp_path / 'checkpoint.pt'} was written for 9 steps of 9 per epoch, this run has "
                            "18 of 9; resume with the same config")
