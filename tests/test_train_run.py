"""`fitvision train` end to end on a tiny real CIFAR-10 subset: the run directory, resume, recipes."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fitvision.cli import main
from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError
from fitvision.recipes import resolve_recipe

TINY = ["--recipe", "seed", "--data", "cifar10", "--model", "cnn", "--epochs", "2", "--bs", "50", "--train-limit", "500",
        "--valid-limit", "200", "--precision", "fp32", "--device", "cpu"]
SUMMARY_KEYS = {"val_acc", "val_loss", "epochs", "train_seconds", "train_images_per_second", "device", "model",
                "params", "dataset", "num_train", "num_valid", "seed"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The real datasets and a decode cache shared by this module's runs (set by hand: module scope)."""
    data = os.environ.get("FITVISION_DATA_DIR", "")
    if not data or not (Path(data) / "cifar10-jpeg.tgz").is_file():
        pytest.skip("real datasets absent: set FITVISION_DATA_DIR to the folder holding cifar10-jpeg.tgz")
    cache = os.environ.get("FITVISION_TEST_CACHE_DIR") or str(tmp_path_factory.getbasetemp() / "fitvision-cache")
    return {"FITVISION_DATA_DIR": data, "FITVISION_CACHE_DIR": cache}


@pytest.fixture(scope="module")
def run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import contextlib
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = main(["train", *TINY, "--out", str(out)])
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert code == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.fixture
def real_env(env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_run_directory_holds_every_file(run):
    out, stdout = run
    for name in ["config.json", "history.csv", "batches.csv", "model.safetensors", "model.json", "checkpoint.pt",
                 "preds.npz", "summary.json", "report.html", "plots/accuracy.png", "plots/loss.png", "plots/lr.png",
                 "plots/confusion.png"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["epochs"], summary["num_train"], summary["num_valid"], summary["model"], summary["dataset"],
            summary["seed"], summary["device"]) == (2, 500, 200, "cnn", "cifar10", 0, "cpu")
    assert summary["train_seconds"] > 0 and summary["train_images_per_second"] > 0 and summary["params"] == 113_738
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "train_acc"]
    assert all(0 <= float(r["train_acc"]) <= 1 for r in rows)  # 500 training images, unaugmented
    assert [r["epoch"] for r in rows] == ["0", "1"] and float(rows[-1]["val_acc"]) == summary["val_acc"]
    with open(out / "batches.csv") as f:
        batches = list(csv.DictReader(f))
    assert list(batches[0]) == ["step", "epoch", "lr", "mom", "loss"] and len(batches) == 20
    lines = stdout.splitlines()
    assert lines[0] == "recipe seed"
    assert any(line.startswith("model     cnn width 1: 113,738 parameters") for line in lines)
    rows = [line for line in lines if line.lstrip().startswith(("1/2 ", "2/2 "))]
    assert len(rows) == 2 and rows[1].startswith("    2/2  ") and " 4.00e-08 " in rows[1]  # 0.01 / 25 / 1e4
    assert lines[lines.index(rows[0]) - 1] == (
        "epoch    train_loss  val_loss  val_acc  train_acc  lr         time   elapsed")
    assert lines[-3:-1] == ["writing the weights, predictions and summary.json", "writing the plots and report.html"]
    assert lines[-1].startswith(f"done: val_acc {summary['val_acc']:.4f}")


def test_train_log_is_the_terminals_lines_timestamped(run):
    """RUN/train.log: every line the run printed from its setup on, after a local timestamp."""
    import re

    out, stdout = run
    log = (out / "train.log").read_text().splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
    assert all(stamp.match(line) for line in log), log
    printed = stdout.splitlines()
    assert [line[20:] for line in log] == printed[printed.index(log[0][20:]):]
    assert log[0][20:] == "recipe seed" and log[-1][20:].startswith("done: ")  # where the settings came from, first
    assert log[1][20:].startswith("data      cifar10: 500 train / 200 valid")


def test_preds_and_model_json_reproduce_the_evaluation(run, real_env):
    from fitvision.data.augment import eval_pipeline
    from fitvision.data.dataset import load_dataset
    from fitvision.train.modelfile import load_model

    out, _ = run
    preds = np.load(out / "preds.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert preds["probs"].shape == (200, 10) and preds["probs"].dtype == np.float32
    assert float((preds["probs"].argmax(1) == preds["targets"]).mean()) == pytest.approx(summary["val_acc"], abs=1e-7)
    ds = load_dataset("cifar10")
    idx = preds["indices"]
    assert len(set(idx.tolist())) == 200 and np.array_equal(ds.valid_y[idx], preds["targets"])
    model, meta = load_model(out)
    assert meta["input_size"] == [32, 32] and meta["classes"][0] == "airplane"
    assert meta["model_kwargs"] == {"num_classes": 10, "in_channels": 3, "width": 1.0}
    tf = eval_pipeline(meta["input_size"][0], meta["mean"], meta["std"])
    x = tf(torch.from_numpy(np.ascontiguousarray(ds.valid_x[idx])).permute(0, 3, 1, 2))
    with torch.no_grad():
        probs = model(x).softmax(1).numpy()
    np.testing.assert_allclose(probs, preds["probs"], atol=1e-5)


def test_resume_of_a_finished_run_rewrites_the_same_results(run, real_env, capsys):
    out, _ = run
    before = json.loads((out / "summary.json").read_text())
    preds = np.load(out / "preds.npz")["probs"]
    assert main(["train", "--resume", "--out", str(out)]) == 0
    after = json.loads((out / "summary.json").read_text())
    assert (after["val_acc"], after["val_loss"], after["epochs"]) == (before["val_acc"], before["val_loss"], 2)
    assert np.array_equal(np.load(out / "preds.npz")["probs"], preds)
    assert "run dir   " + str(out) + " (resuming)" in capsys.readouterr().out


def test_a_run_directory_is_never_overwritten(run, capsys):
    out, _ = run
    assert main(["train", *TINY, "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"error: {out} already holds a run; pass --resume to continue it, "
                                       "or choose another --out\n")
    assert main(["train", "--resume", "--out", str(out / "nope")]) == 1
    assert capsys.readouterr().err == f"error: cannot resume: {out / 'nope' / 'checkpoint.pt'} does not exist\n"
    # options beside --resume would be dropped silently (e.g. more epochs): refused, the run untouched
    summary = (out / "summary.json").read_text()
    assert main(["train", "--resume", "--out", str(out), "--epochs", "3", "--lr", "0.5", "--tta"]) == 2
    assert capsys.readouterr().err == ("error: --resume continues the run in --out exactly as its config.json says; "
                                       "drop --epochs, --lr, --tta (to train on with other settings, start a new "
                                       "run from its weights with --init-from RUN)\n")
    assert (out / "summary.json").read_text() == summary


def test_same_seed_twice_identical_weights(real_env, tmp_path, capsys):
    from safetensors.torch import load_file

    args = ["--data", "cifar10", "--model", "cnn", "--epochs", "1", "--bs", "50", "--train-limit", "200",
            "--valid-limit", "100", "--precision", "fp32"]
    for name in ("a", "b"):
        assert main(["train", *args, "--out", str(tmp_path / name)]) == 0
    assert main(["train", *args, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (load_file(str(tmp_path / n / "model.safetensors")) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    ia, ic = np.load(tmp_path / "a" / "preds.npz")["indices"], np.load(tmp_path / "c" / "preds.npz")["indices"]
    assert not np.array_equal(ia, ic)  # the seed picks the subsets too


def test_lr_find_command(real_env, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["lr-find", "--data", "cifar10", "--model", "cnn", "--bs", "16", "--train-limit", "320",
                 "--valid-limit", "50", "--precision", "fp32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "suggested lr: " in text and f"plot: {out / 'lr_find.png'}" in text
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "lr_find.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["lr", "loss", "smoothed"] and 10 < len(rows) <= 100


def test_resolve_recipe():
    cfg, why = resolve_recipe("seed")
    assert why == "recipe seed" and (cfg.model, cfg.opt, cfg.lr, cfg.bs, cfg.epochs) == ("resnet9", "adam", 0.01, 400, 16)
    assert cfg.normalize == "cifar" and cfg.recipe == "seed"
    cfg, why = resolve_recipe("seed", data="/data/flowers")
    assert cfg.data == "/data/flowers" and cfg.normalize == "auto"
    assert why == "recipe seed; normalising /data/flowers with its own channel stats, not CIFAR's"
    cfg, why = resolve_recipe("auto")
    want = "gpu" if torch.cuda.is_available() else "cpu"
    assert cfg.recipe == want and cfg.model == "speednet" and why.startswith(f"recipe auto -> {want}: ")
    cfg, why = resolve_recipe("auto", model="cnn")
    assert cfg.recipe == "general" and why == f"recipe auto -> general: the '{want}' recipe is tuned for speednet, not cnn"
    cfg, why = resolve_recipe("auto", data="/data/flowers")
    assert cfg.recipe == "general" and cfg.normalize == "auto"
    cfg, why = resolve_recipe("auto", data="imagenette")
    assert why == "recipe auto -> imagenette: the recipe for Imagenette-size images (128 px)"
    assert (cfg.recipe, cfg.size, cfg.storage_size, cfg.aug, cfg.tta) == ("imagenette", 128, 160, "rrc_flip", False)
    assert (cfg.model, cfg.model_options, cfg.opt, cfg.sched) == ("xresnet18", "act=silu", "muon", "one_cycle_linear")
    with pytest.raises(FitVisionError, match=r"unknown recipe 'fastest' \(valid recipes: auto, "):
        resolve_recipe("fastest")
    assert isinstance(cfg, TrainConfig)


def test_real_pipeline_resumes_mid_epoch_exactly(real_env, tmp_path):
    """The real DeviceLoader + augmentation + model, crashed mid-epoch and resumed: the same weights."""
    from fitvision.optim.schedules import create_schedule
    from fitvision.train.checkpoint import load_checkpoint
    from fitvision.train.hooks import Checkpointer, Hook
    from fitvision.train.setup import build

    class Crash(Hook):
        def on_batch_end(self, state):
            if state.step == 6:
                raise KeyboardInterrupt

    cfg = TrainConfig(data="cifar10", model="cnn", epochs=2, bs=50, train_limit=200, valid_limit=100,
                      precision="fp32", device="cpu", ema=0.5)
    ckpt = tmp_path / "checkpoint.pt"

    def run(crash=False, resume_from=None):
        learn = build(cfg, progress=False).learn
        if crash:
            learn.hooks += [Checkpointer(learn, ckpt, every_batches=5), Crash()]
        learn.fit(cfg.epochs, create_schedule(cfg, total_steps=8), resume_from=resume_from)
        return learn

    full = run()
    with pytest.raises(KeyboardInterrupt):
        run(crash=True)
    assert load_checkpoint(ckpt)["state"]["step"] == 5  # epoch 1, after its first batch
    resumed = run(resume_from=ckpt)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_acc"] for r in full.state.history] == [r["val_acc"] for r in resumed.state.history]


def test_recipe_model_options_follow_the_model_the_user_picks(monkeypatch):
    """A recipe's model options (say act=mish for xresnets) stay for a model that takes them, are
    dropped for one that does not (which then trains), and options the user gives are never touched."""
    import dataclasses

    from fitvision.cli import build_parser, train_config_from_args
    from fitvision.recipes import RECIPES
    from fitvision.recipes import recipe_model_options

    assert recipe_model_options("xresnet18", "act=mish,sa=true") == "act=mish,sa=true"
    assert recipe_model_options("resnet9", "act=mish") == ""
    monkeypatch.setitem(RECIPES, "imagenette", dataclasses.replace(RECIPES["imagenette"], model_options="act=mish"))

    def config(*argv):
        return train_config_from_args(build_parser().parse_args(["train", "--data", "imagenette", *argv]))[0]

    assert config().model_options == "act=mish"
    assert config("--model", "xresnet18").model_options == "act=mish"
    assert config("--model", "resnet9").model_options == ""
    assert config("--model", "xresnet18", "--model-options", "blur=true").model_options == "blur=true"
    with pytest.raises(FitVisionError, match=r"^model 'resnet9' has no option\(s\) act "):
        config("--model", "resnet9", "--model-options", "act=mish")


def test_setup_lines_show_muons_own_lr_for_the_filters(real_env):
    """With Muon the body weights step at muon_lr and muon_momentum: the printed setup says so."""
    import dataclasses

    from fitvision.recipes import get_recipe
    from fitvision.train.setup import build, describe

    cfg = dataclasses.replace(get_recipe("imagenette"), data="cifar10", model="cnn", model_options="", size=32,
                              epochs=1, train_limit=64, valid_limit=32, device="cpu")
    line = next(x for x in describe(build(cfg, progress=False)) if x.startswith("optimiser "))
    assert line.startswith("optimiser muon lr 0.2, body weights 0.04 momentum 0.85 renormed (one_cycle_linear), "
                           "wd 0.0005 (l2), no clipping, batch 64, 1 epochs x 1 batches, seed 0")
    cfg = dataclasses.replace(cfg, opt="adam", lr=3e-3, sched="one_cycle")
    line = next(x for x in describe(build(cfg, progress=False)) if x.startswith("optimiser "))
    assert line.startswith("optimiser adam lr 0.003 (one_cycle), wd 0.0005 (l2)")


def test_the_setup_says_why_auto_is_fp32_on_a_cpu_without_native_bf16(real_env, monkeypatch):
    from fitvision.train import device, setup
    from fitvision.train.setup import build, describe

    def lines(native: bool, precision: str = "auto") -> list[str]:
        for module in (device, setup):  # the precision's choice and the note's
            monkeypatch.setattr(module, "cpu_has_bf16", lambda: native)
        cfg = TrainConfig(data="cifar10", model="cnn", epochs=1, bs=50, train_limit=100, valid_limit=50,
                          device="cpu", precision=precision)
        return describe(build(cfg, progress=False))

    note = "note      precision auto -> fp32: this CPU has no native bf16 (AVX-512 BF16 or AMX)"
    without = lines(native=False)
    assert note in without and any("precision fp32" in line for line in without)
    assert note not in lines(native=True)  # auto is bf16 there
    assert note not in lines(native=False, precision="fp32")  # asked for: nothing to explain
