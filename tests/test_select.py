"""Hardest-first selection: the kept images are those with the highest recorded loss, epochs
shrink and the fit counts their steps, the learner records every image's loss, resume is exact."""

import math

import numpy as np
import pytest
import torch

from fakeloader import Crash, TinyNet, blobs, same, weights
from fitvision.config import TrainConfig, validate
from fitvision.data.loader import DeviceLoader, fit_steps
from fitvision.data.select import HardestFirst
from fitvision.errors import FitVisionError
from fitvision.train.checkpoint import load_checkpoint
from fitvision.train.hooks import Checkpointer
from fitvision.train.learner import Learner
from fitvision.train.rundir import epochs_done
from fitvision.train.seeding import seed_everything


def test_choose_keeps_the_highest_losses_in_the_shuffled_order():
    hardest = HardestFirst(8, frac=0.5, start=1)
    hardest.losses = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.4])
    order = torch.tensor([7, 3, 0, 5, 1, 6, 2, 4])
    assert torch.equal(hardest.choose(order, epoch=0, keep=4), order)  # before start: everything
    assert hardest.choose(order, epoch=1, keep=4).tolist() == [7, 3, 5, 1]
    hardest.losses[:] = 5.0  # the epoch's choice is made once, at its start
    assert hardest.choose(order, epoch=1, keep=4).tolist() == [7, 3, 5, 1]


def _loader(n=100, bs=10, frac=0.5, start=1, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return DeviceLoader(x, np.arange(n) % 4, bs, shuffle=True, seed=seed, hardest=HardestFirst(n, frac, start))


def test_selecting_epochs_hand_out_the_hardest_images_in_whole_batches():
    dl = _loader()
    assert [dl.batches(e) for e in range(3)] == [10, 5, 5]
    assert (dl.steps(3), dl.steps(2.5), fit_steps(dl, 1)) == (20, 17, 10)  # 10 + 5 + round(2.5)
    seen = []
    for _ in dl:  # epoch 0: all 100, each recording its loss: its index
        seen.append(dl.hardest.handed)
        dl.hardest.record(dl.hardest.handed.float())
    assert sorted(torch.cat(seen).tolist()) == list(range(100))
    batches = list(dl)  # epoch 1: the 50 highest indices, 5 batches of 10
    assert len(batches) == 5 and all(len(yb) == 10 for _, yb in batches)
    assert sorted(dl.order(1).tolist()) == list(range(50, 100))
    with pytest.raises(FitVisionError, match="got 3 losses for a batch of 10 images"):
        dl.hardest.record(torch.zeros(3))


def _learner(hooks=(), init_seed=0, frac=0.5):
    seed_everything(init_seed)
    x, y = blobs(384)
    images = (x.sigmoid() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    train = DeviceLoader(images[:288], y[:288].numpy(), 32, shuffle=True, seed=0,
                         hardest=HardestFirst(288, frac, start=1) if frac else None)
    valid = DeviceLoader(images[288:], y[288:].numpy(), 64)
    return Learner(TinyNet(), train, valid, lr=1e-2, precision="fp32", progress=False, hooks=list(hooks))


def test_the_learner_records_each_image_loss_and_trains_the_shortened_epochs():
    learn = _learner()
    learn.fit(3)
    s, hardest = learn.state, learn.train_dl.hardest
    assert s.total_steps == s.step == 9 + 4 + 4 == len(s.batches)  # round(0.5 * 288 / 32) = 4 batches
    assert [r["images"] for r in s.history] == [288, 128, 128]
    assert torch.isfinite(hardest.losses).all()  # epoch 0 trained every image
    # the last step's recorded per-image losses average to the loss the step reported
    assert math.isclose(hardest.losses[hardest.handed].mean().item(), s.batches[-1]["loss"], rel_tol=1e-5)
    assert epochs_done(s) == 3 and s.history[-1]["val_acc"] > 0.5  # 4 classes: chance is 0.25
    plain = _learner(frac=0.0)
    plain.fit(3)
    assert plain.state.total_steps == 27 and epochs_done(plain.state) == 3


def test_resume_mid_epoch_of_a_selecting_fit_is_exact(tmp_path):
    full = _learner()
    full.fit(3)
    path = tmp_path / "checkpoint.pt"
    crashed = _learner()
    crashed.hooks += [Checkpointer(crashed, path, every_batches=2), Crash(at=12)]
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(3)
    assert load_checkpoint(path)["state"]["step"] == 12  # epoch 2, batch 3 of 4: mid-epoch
    resumed = _learner(init_seed=7)  # everything, the recorded losses included, from the checkpoint
    resumed.fit(3, resume_from=path)
    assert same(weights(full), weights(resumed))
    assert [b["loss"] for b in full.state.batches] == [b["loss"] for b in resumed.state.batches]
    assert torch.equal(full.train_dl.hardest.losses, resumed.train_dl.hardest.losses)


def test_a_checkpoint_without_selection_is_refused_by_a_selecting_run(tmp_path):
    plain = _learner(frac=0.0)
    plain.fit(1)
    plain.save_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(FitVisionError, match="^the checkpoint was written without hardest-first selection; "
                                             "resume with the same config$"):
        _learner(frac=0.99).fit(1, resume_from=tmp_path / "checkpoint.pt")  # the same 9 steps


@pytest.mark.parametrize("frac", [-0.1, 1.5])
def test_hardest_frac_outside_0_1_is_refused(frac):
    with pytest.raises(FitVisionError, match=f"hardest_frac must be in \\[0, 1\\], got {frac}"):
        validate(TrainConfig(hardest_frac=frac))
