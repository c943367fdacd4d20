"""The Learner: the step, the loop, recording, evaluation, precision, and a real learning test."""

import io
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fakeloader import TinyNet, make_learner, make_loaders, same, weights
from fitvision.errors import FitVisionError
from fitvision.train.checkpoint import load_checkpoint
from fitvision.train.seeding import seed_everything
from fitvision.train.hooks import (TABLE_HEADER, Checkpointer, EarlyStopping, Progress, TrainAccuracy, TrainState,
                                   epoch_row)
from fitvision.train.ema import ModelEMA
from fitvision.train.learner import Learner
from fitvision.train import device as device_module
from fitvision.train.device import cpu_has_bf16, resolve_precision


def test_learns_the_synthetic_task():
    learn = make_learner()
    before = learn.validate()[1]
    history = learn.fit_one_cycle(3, max_lr=0.02)
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[-1]["val_acc"] >= 0.9 > before
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_same_seed_twice_gives_identical_weights():
    runs = []
    for _ in range(2):
        learn = make_learner(seed=3)
        learn.fit_one_cycle(2, max_lr=0.02)
        runs.append(weights(learn))
    assert same(*runs)
    other = make_learner(seed=4)
    other.fit_one_cycle(2, max_lr=0.02)
    assert not same(runs[0], weights(other))


def test_recording_per_batch_and_per_epoch():
    learn = make_learner()
    learn.fit_one_cycle(2, max_lr=0.01)
    s = learn.state
    assert s.steps_per_epoch == 9 and s.total_steps == 18 and s.step == 18
    assert [b["step"] for b in s.batches] == list(range(18))
    assert [b["epoch"] for b in s.batches] == [0] * 9 + [1] * 9
    # torch's OneCycleLR at max_lr 0.01: starts at 0.01/25, peaks, ends at 0.01/25/1e4; momentum inverse
    assert s.batches[0]["lr"] == pytest.approx(0.0004) and s.batches[-1]["lr"] == pytest.approx(4e-8)
    assert s.batches[0]["mom"] == pytest.approx(0.95) and min(b["mom"] for b in s.batches) < 0.87
    assert learn.opt.param_groups[0]["lr"] == pytest.approx(4e-8)
    row = s.history[1]
    assert row["train_loss"] == pytest.approx(np.mean([b["loss"] for b in s.batches[9:]]))
    assert row["lr"] == s.batches[-1]["lr"] and row["seconds"] >= row["train_seconds"] > 0
    assert (row["val_loss"], row["val_acc"]) == learn.validate()


def test_fit_one_cycle_steps_like_torch_one_cycle_lr():
    learn = make_learner()
    learn.fit_one_cycle(2, max_lr=0.02)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=18)
    lrs, moms = [], []
    for _ in range(18):  # the seed records the lr before sched.step(): the lr the batch used
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    np.testing.assert_allclose([b["lr"] for b in learn.state.batches], lrs, rtol=0, atol=1e-9)
    np.testing.assert_allclose([b["mom"] for b in learn.state.batches], moms, rtol=0, atol=1e-9)


def test_fractional_epochs():
    learn = make_learner()
    history = learn.fit(1.5)
    assert learn.state.step == 14  # round(1.5 * 9)
    assert len(history) == 2 and learn.state.batches[-1]["epoch"] == 1


def test_epoch_row_counts_from_one_of_n_under_the_header():
    row = {"epoch": 2, "lr": 0.009351, "train_loss": 1.23451, "val_loss": 1.12339, "val_acc": 0.61234,
           "train_acc": 0.65341, "seconds": 25.4}
    line = epoch_row(row, 12, 3725.0)
    assert line == "   3/12      1.2345    1.1234   0.6123     0.6534   9.35e-03   0:25   1:02:05"
    assert TABLE_HEADER == "epoch    train_loss  val_loss  val_acc  train_acc  lr         time   elapsed"
    # each value ends under its column's name
    values = ("3/12", "1.2345", "1.1234", "0.6123", "0.6534", "9.35e-03", "0:25", "1:02:05")
    for name, value in zip(TABLE_HEADER.split(), values):
        assert TABLE_HEADER.index(name) <= line.index(value) + len(value) - 1, name
    del row["train_acc"]  # train_acc_limit 0: a dash in its column
    assert epoch_row(row, 12, 3725.0) == "   3/12      1.2345    1.1234   0.6123          -   9.35e-03   0:25   1:02:05"


def test_train_accuracy_is_the_unaugmented_accuracy_on_its_images():
    """history's train_acc: the model's accuracy on the fixed training images, in eval mode (no
    dropout, no augmentation), exactly what validate gives on them after the epoch."""
    from fakeloader import FakeLoader, blobs

    x, y = blobs(96, seed=3)
    subset = FakeLoader(x, y, 32)  # no augment, no shuffle
    learn = make_learner()
    learn.hooks.insert(0, TrainAccuracy(learn, subset))
    history = learn.fit(2)
    assert [set(r) >= {"train_acc"} for r in history] == [True, True]
    assert history[-1]["train_acc"] == learn.validate(subset, tta=False)[1]
    assert learn.model.training  # the evaluation put the model back as it was


def test_progress_without_a_tty_prints_plain_lines():
    out = io.StringIO()
    learn = make_learner(hooks=[Progress(stream=out, interval=0.0)])
    learn.fit(2)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == TABLE_HEADER
    assert lines[1].startswith("epoch 1/2 batch 1/9 loss ") and " img/s eta " in lines[1]
    assert lines[9].startswith("epoch 1/2 batch 9/9 loss ") and lines[9].endswith("; evaluating")
    assert lines[10].startswith("    1/2  ") and lines[-1].startswith("    2/2  ")
    assert len(lines) == 1 + 2 * 10
    assert not any(c in text for c in "\r\x1b\b")
    assert text.count(" eta ") == 18  # one ETA a line: the run's


def test_progress_bar_in_a_terminal():
    out = io.StringIO()
    learn = make_learner(hooks=[Progress(stream=out, bar=True, refresh=0, tta=True)])
    learn.fit(2)
    text = out.getvalue()
    assert "epoch 2/2" in text and "img/s" in text and "run eta=" in text and "loss=" in text and "\r" in text
    assert "epoch 1/2 evaluating" in text and "epoch 2/2 evaluating with TTA" in text
    assert "<" not in text  # tqdm's own (the epoch's) remaining time is not shown
    assert [line for line in text.splitlines() if line.strip().startswith("2/2")]


def test_validate_is_plain_cross_entropy_and_accuracy():
    learn = make_learner()
    learn.fit(1)
    learn.model.eval()
    x, y = torch.cat([b[0] for b in learn.valid_dl]), torch.cat([b[1] for b in learn.valid_dl])
    with torch.no_grad():
        logits = learn.model(x)
    learn.model.train()
    loss, acc = learn.validate()
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == (logits.argmax(1) == y).float().mean().item()
    assert learn.model.training  # evaluation put the mode back


def test_extra_metrics_join_the_epoch_row():
    def top2(log_probs, targets):
        return (log_probs.topk(2, dim=1).indices == targets[:, None]).any(1).float().mean()

    learn = make_learner(metrics={"top2": top2})
    row = learn.fit(1)[0]
    log_probs, targets = learn.get_log_preds()
    assert row["top2"] == pytest.approx(top2(log_probs, targets).item()) and row["top2"] >= row["val_acc"]


def test_flip_tta_averages_the_mirror_image():
    learn = make_learner()
    learn.fit(1)
    probs, targets = learn.get_preds(tta=True)
    learn.model.eval()
    x = torch.cat([b[0] for b in learn.valid_dl])
    with torch.no_grad():
        want = (learn.model(x).softmax(1) + learn.model(x.flip(3)).softmax(1)) / 2
    torch.testing.assert_close(probs, want, rtol=1e-5, atol=1e-6)
    assert probs.dtype == torch.float32 and targets.dtype == torch.int64
    assert not torch.allclose(probs, learn.get_preds(tta=False)[0])


def test_predict_applies_the_eval_transform_only():
    train_dl, valid_dl = make_loaders()
    seen = []

    def eval_tf(x, generator=None, epoch=0):
        seen.append(x.dtype)
        return x.float() / 255 - 0.5

    valid_dl.transform = eval_tf
    seed_everything(0)
    learn = Learner(TinyNet(), train_dl, valid_dl, progress=False, precision="fp32")
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    probs = learn.predict(images)
    learn.model.eval()
    with torch.no_grad():
        want = learn.model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5).softmax(1)
    torch.testing.assert_close(probs, want)
    assert seen == [torch.uint8]
    torch.testing.assert_close(learn.predict(torch.from_numpy(images).permute(0, 3, 1, 2)), probs)
    with pytest.raises(FitVisionError, match=r"predict expects a batch of uint8 images, got torch.float32"):
        learn.predict(torch.zeros(1, 3, 8, 8))


class RecordingSGD:
    """Plain SGD that records the largest |grad| and the gradient norm it was given."""

    def __init__(self, params, lr):
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.max_abs, self.norms = [], []

    def step(self):
        grads = [p.grad for p in self.param_groups[0]["params"] if p.grad is not None]
        self.max_abs.append(max(g.abs().max().item() for g in grads))
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        for p in self.param_groups[0]["params"]:
            if p.grad is not None:
                p.data.add_(p.grad, alpha=-self.param_groups[0]["lr"])

    def zero_grad(self, set_to_none=True):
        for p in self.param_groups[0]["params"]:
            p.grad = None

    def state_dict(self):
        return {}


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_gradient_clipping(mode):
    learn = make_learner(opt_func=lambda m: RecordingSGD(m.parameters(), 0.1), clip=0.01, clip_mode=mode)
    learn.fit(1)
    opt = learn.opt
    if mode == "value":
        assert max(opt.max_abs) == pytest.approx(0.01)
        assert max(opt.norms) > 0.01
    else:
        assert max(opt.norms) == pytest.approx(0.01, rel=1e-4)
        assert max(opt.max_abs) < 0.01
    unclipped = make_learner(opt_func=lambda m: RecordingSGD(m.parameters(), 0.1))
    unclipped.fit(1)
    assert max(unclipped.opt.max_abs) > 0.05


def test_fp16_grad_scaler_path_clips_the_true_gradients():
    """The CUDA fp16 path (autocast fp16 + GradScaler), run on the CPU: clipping must see unscaled grads."""
    learn = make_learner(opt_func=lambda m: RecordingSGD(m.parameters(), 0.1), clip=0.01)
    learn.precision = "fp16"  # resolve_precision allows fp16 on CUDA only; the step logic is the same
    learn.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    learn.fit(1)
    assert max(learn.opt.max_abs) == pytest.approx(0.01)  # 0.01 / 65536 if clipped before unscaling
    assert learn.scaler.get_scale() == 2.0 ** 16 and learn.state.history[0]["val_acc"] > 0


def test_label_smoothing_reaches_the_loss():
    learn = make_learner(label_smoothing=0.3)
    x, y = next(iter(learn.train_dl))
    torch.manual_seed(5)  # the same dropout mask for both forwards
    loss = learn.train_step(x, y, {"lr": 0.0}).item()  # lr 0: the weights do not move
    torch.manual_seed(5)
    with torch.no_grad():
        out = learn.model(x)
    assert loss == pytest.approx(F.cross_entropy(out, y, label_smoothing=0.3).item(), rel=1e-6)
    assert loss != pytest.approx(F.cross_entropy(out, y).item(), rel=1e-3)


def test_ema_update_and_use():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay warms up to min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.module.weight, 0.1 * before + 0.9 * model.weight)
    learn = make_learner(ema=0.99)
    learn.fit(1)
    assert learn.ema.updates == 9
    assert not same(weights(learn), {k: v for k, v in learn.ema.module.state_dict().items()})
    learn.ema.module.eval()
    x = torch.cat([b[0] for b in learn.valid_dl])
    with torch.no_grad():
        want = learn.ema.module(x).softmax(1)
    torch.testing.assert_close(learn.get_preds()[0], want)


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    calls = {"n": 0}

    def loss_func(out, y):
        calls["n"] += 1
        loss = F.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] == 9 + 4 else loss  # epoch 1, batch 3

    learn = make_learner(loss_func=loss_func)
    learn.hooks.append(Checkpointer(learn, ckpt))
    with pytest.raises(FitVisionError) as e:
        learn.fit(3)
    assert str(e.value) == ("the loss became nan at epoch 1, batch 3 (lr 0.01): training diverged; lower the "
                            "learning rate (--lr) and train again (a checkpoint written before it is intact)")
    state = load_checkpoint(ckpt)
    assert state["state"]["step"] == 9 and len(state["state"]["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_early_stopping_from_history():
    hook = EarlyStopping(patience=2)
    state = TrainState()
    for epoch, loss in enumerate([1.0, 0.8, 0.85, 0.9]):
        state.history.append({"epoch": epoch, "val_loss": loss, "val_acc": 0.5})
        hook.on_epoch_end(state)
        assert state.stop == (epoch == 3)
    assert state.stop_reason == "early stop: val_loss has not improved for 2 epochs (best 0.8000 at epoch 1)"
    # a NaN epoch is never the best: the loss improving after it does not stop the run
    state = TrainState()
    for epoch, loss in enumerate([float("nan"), 2.0, 1.5]):
        state.history.append({"epoch": epoch, "val_loss": loss, "val_acc": 0.5})
        EarlyStopping(patience=1).on_epoch_end(state)
    assert not state.stop
    learn = make_learner(hooks=[EarlyStopping(patience=0)])
    learn.fit_one_cycle(5)
    assert len(learn.state.history) == 1 and learn.state.step == 9 and learn.state.done


def test_save_load_round_trip(tmp_path):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "w.safetensors")
    other = make_learner(seed=1)
    assert not same(weights(learn), weights(other))
    other.load(path)
    assert same(weights(learn), weights(other))


def test_freeze_trains_the_head_only():
    learn = make_learner()
    body = {k: v.clone() for k, v in learn.model.body.state_dict().items() if "weight" in k and "1." not in k}
    head = learn.model.classifier.weight.clone()
    learn.freeze(train_bn=False)
    learn.fit(1)
    assert all(torch.equal(v, learn.model.body.state_dict()[k]) for k, v in body.items())
    assert not torch.equal(head, learn.model.classifier.weight)
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_precision_rules():
    cpu = torch.device("cpu")
    with pytest.raises(FitVisionError) as e:
        resolve_precision("fp16", cpu)
    assert str(e.value) == "precision fp16 needs a CUDA GPU (GradScaler); use bf16 or fp32 on the CPU"
    with pytest.raises(FitVisionError, match=r"unknown precision 'half' \(valid: auto, fp32, bf16, fp16\)"):
        resolve_precision("half", cpu)
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")


def test_bf16_asked_for_on_a_cpu_without_it_warns_and_runs(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning) as record:
        assert resolve_precision("bf16", cpu) == "bf16"
    assert [str(w.message) for w in record] == [
        "this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 runs emulated, several times slower than "
        "fp32 (--precision auto picks fp32 here)"]
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: nothing to say
        assert resolve_precision("bf16", cpu) == "bf16"


def test_bf16_autocast_keeps_fp32_weights():
    learn = make_learner(precision="bf16")
    x, y = next(iter(learn.train_dl))
    with learn.autocast():
        out = learn.model(x)
    assert out.dtype == torch.bfloat16
    learn.fit(1)
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    assert learn.state.history[0]["val_acc"] > 0.5


def test_compile_warm_up_leaves_no_trace():
    plain = make_learner()
    plain.fit(1)
    compiled = make_learner(compile="eager")  # the eager backend: compiles in a blink, same numbers
    compiled.fit(1)
    assert compiled._warmed_up
    assert same(weights(plain), weights(compiled))


def test_channels_last_model_and_input():
    learn = make_learner(channels_last=True)
    conv = learn.model.body[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    learn.fit(1)
    assert math.isfinite(learn.state.history[0]["val_loss"])


@pytest.mark.slow
def test_real_cifar_learning(data_dir, monkeypatch):
    """3,000 real CIFAR-10 images, two epochs of the seed 003 CNN: far above chance (10%)."""
    from fitvision.data.augment import CIFAR_STATS, eval_pipeline, train_pipeline
    from fitvision.data.dataset import load_dataset
    from fitvision.data.loader import DeviceLoader
    from fitvision.models import create_model

    monkeypatch.setenv("FITVISION_DATA_DIR", str(data_dir))
    ds = load_dataset("cifar10")
    rng = np.random.default_rng(0)
    train = np.sort(rng.permutation(len(ds.train_y))[:3000])
    valid = np.sort(rng.permutation(len(ds.valid_y))[:1000])  # the test split is sorted by class
    mean, std = CIFAR_STATS
    train_dl = DeviceLoader(ds.train_x[train], ds.train_y[train], 100, shuffle=True, seed=0,
                            transform=train_pipeline("crop_flip", 32, mean, std))
    valid_dl = DeviceLoader(ds.valid_x[valid], ds.valid_y[valid], 500, transform=eval_pipeline(32, mean, std))
    seed_everything(0)
    learn = Learner(create_model("cnn", num_classes=10), train_dl, valid_dl, progress=False, precision="fp32",
                    clip=0.1)
    history = learn.fit_one_cycle(2, max_lr=0.01, wd=1e-4)
    assert history[-1]["val_acc"] >= 0.35, history


def test_lookahead_pulls_weights_to_their_average_and_ends_there():
    from torch import nn

    from fitvision.train.ema import Lookahead

    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    la = Lookahead(model, every=2, base=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(model, 1, 4)  # not due: untouched
    assert torch.equal(model.weight, start + 1)
    la.step(model, 2, 4)  # due: decay 0.5**2 * (2/4)**3 = 1/32 -> average moves 31/32 of the way
    assert torch.allclose(model.weight, start + 31 / 32)
    with torch.no_grad():
        model.weight.add_(5.0)
    la.step(model, 3, 3)  # last step, not due: the model ends at the average
    assert torch.allclose(model.weight, start + 31 / 32)


def _conv_bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))


def test_seed_recipe_decays_every_parameter_like_torch_adam():
    """Seed 001 passes model.parameters() to torch.optim.Adam(weight_decay=1e-4): biases and
    BatchNorm decay too. The seed recipe must take exactly that step."""
    import copy
    import dataclasses

    from fitvision.recipes import get_recipe

    cfg = dataclasses.replace(get_recipe("seed"), device="cpu")
    ours, theirs = _conv_bn_net(), _conv_bn_net()
    learner = Learner.from_config(cfg, ours, [], [], progress=False)
    ref = torch.optim.Adam(theirs.parameters(), lr=cfg.lr, betas=(cfg.momentum, cfg.beta2), eps=cfg.eps,
                           weight_decay=cfg.wd)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(ours.parameters(), theirs.parameters()):
            g = torch.randn(p.shape, generator=gen) * 1e-3  # small: the decay term is visible against it
            p.grad, q.grad = g.clone(), copy.deepcopy(g)
        learner.opt.step()
        ref.step()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-7), name


def test_general_and_imagenette_keep_biases_undecayed_cpu_decays_them_per_step_like_weights():
    import dataclasses

    from fitvision.recipes import get_recipe

    for name in ("general", "imagenette", "cpu"):
        cfg = dataclasses.replace(get_recipe(name), device="cpu", opt="adam")
        groups = {g["name"]: g for g in Learner.from_config(cfg, _conv_bn_net(), [], [], progress=False).opt.param_groups}
        # cpu (airbench's way): biases at bias_lr_mult x the lr with wd / bias_lr_mult, the same decay per step
        bias_wd = cfg.wd / cfg.bias_lr_mult if name == "cpu" else 0.0
        assert groups["body_no_decay"]["wd"] == bias_wd and groups["head_no_decay"]["wd"] == bias_wd, name
        assert groups["body"]["wd"] == cfg.wd, name
    assert bias_wd > 0 and groups["body_no_decay"]["lr"] * bias_wd == pytest.approx(groups["body"]["lr"] * cfg.wd)


def test_a_busy_cpu_gets_one_fewer_thread(monkeypatch):
    """Beside a process keeping a core busy, training takes one thread fewer (bench/contention.py:
    37% of the idle throughput with 2 threads, 58% with 1); pinned or chosen counts are left alone."""
    import subprocess
    import sys

    from fitvision.errors import FitVisionError
    from fitvision.train import device

    assert [device.threads_beside(b, 2) for b in (0.0, 0.4, 0.6, 1.0, 2.0)] == [2, 2, 1, 1, 1]
    assert device.threads_beside(2.2, 8) == 6
    before = torch.get_num_threads()
    monkeypatch.delenv("FITVISION_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setattr(device, "busy_cores", lambda seconds=0.25: 1.0)
        torch.set_num_threads(2)
        note = device.share_cpu()
        assert torch.get_num_threads() == 1 and note == (
            f"other processes keep 1.0 of {os.cpu_count()} cores busy: training on 1 of 2 threads "
            "(FITVISION_CPU_THREADS=N pins the count)")
        monkeypatch.setattr(device, "busy_cores", lambda seconds=0.25: 0.0)
        assert device.share_cpu() is None and torch.get_num_threads() == 2  # idle again: all threads back
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice
        assert device.share_cpu() is None and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("FITVISION_CPU_THREADS", "3")
        assert device.share_cpu() is None and torch.get_num_threads() == 3
        monkeypatch.setenv("FITVISION_CPU_THREADS", "two")
        with pytest.raises(FitVisionError, match="FITVISION_CPU_THREADS must be a positive integer or 'fixed', got 'two'"):
            device.share_cpu()
    finally:
        torch.set_num_threads(before)
    # the measurement itself: a busy process shows as (about) one busy core
    monkeypatch.undo()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert device.busy_cores(0.5) >= 0.7
    finally:
        hog.kill()
        hog.wait()
