"""The top-level Python API (`import fitvision as fv`) on real CIFAR-10 images, end to end:
data, learner, lr_find, fit, plots, predict, export, and the CLI on the exported run."""

import json
import subprocess
import sys

import numpy as np
import pytest

import fitvision as fv
from fitvision.cli import main


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The API example, on 2,000 training images (the data module's cache shared by its tests)."""
    import os

    if not os.environ.get("FITVISION_DATA_DIR"):
        pytest.skip("real datasets absent: set FITVISION_DATA_DIR")
    data = fv.ImageData("cifar10", train_limit=2000, valid_limit=500, bs=100)
    learn = fv.Learner(data, "resnet9", width=0.25, progress=False)
    found = learn.lr_find(num_it=40)
    learn.fit_one_cycle(3, max_lr=0.01)
    run_dir = learn.export(tmp_path_factory.mktemp("api") / "mine")
    return data, learn, found, run_dir


def test_the_api_example_learns_and_exports_a_run_the_cli_accepts(learned, tmp_path, capsys):
    from PIL import Image

    data, learn, found, run_dir = learned
    assert found.suggestion > 0 and np.isfinite(found.suggestion)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_acc"] > 0.3  # chance is 0.1
    assert summary["epochs"] == 3 and summary["num_train"] == 2000 and summary["num_valid"] == 500
    # the exported run directory, as `fitvision train` writes one, through every CLI command
    image = data.valid_dl.images[0].permute(1, 2, 0).numpy()
    Image.fromarray(image).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_acc"] == summary["val_acc"]  # reproduced exactly
    assert main(["predict", str(run_dir), str(tmp_path / "a.png"), "--json"]) == 0
    [cli_pred] = json.loads(capsys.readouterr().out)
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and (tmp_path / "m.pt").is_file()
    # the learner, the loaded run and the CLI agree on one image, given as a path, PIL image or array
    got = learn.predict(str(tmp_path / "a.png"))
    assert got["class"] in data.classes and got["top"] == cli_pred["top"]
    assert learn.predict(Image.open(tmp_path / "a.png"))["top"] == cli_pred["top"]
    assert learn.predict(image)["top"] == cli_pred["top"]
    run = fv.load(run_dir)
    both = run.predict([str(tmp_path / "a.png"), image])
    # a batch of two: fp32 kernels may pick another blocking for it than for one image (AVX2
    # CPUs do), so the probabilities agree to rounding, the classes and their order exactly
    for p in both:
        assert [t["class"] for t in p["top"]] == [t["class"] for t in cli_pred["top"]]
        assert [t["prob"] for t in p["top"]] == pytest.approx([t["prob"] for t in cli_pred["top"]], abs=1e-5)
    assert run.evaluate()["val_acc"] == summary["val_acc"]


def test_show_batch_and_plot_confusion_return_figures(learned, tmp_path):
    from matplotlib.figure import Figure

    data, learn, _, _ = learned
    assert isinstance(learn.show_batch(n=8), Figure)
    assert isinstance(data.show_batch(n=4, augment=False), Figure)
    assert isinstance(learn.plot_confusion(), Figure)
    assert learn.plot_confusion(tmp_path / "cm.png").stat().st_size > 1000


def test_bad_input_is_one_clear_error(learned, tmp_path):
    data, learn, _, run_dir = learned
    with pytest.raises(fv.FitVisionError, match=r"^bs is a data setting: give it to ImageData, which built the loaders$"):
        fv.Learner(data, "resnet9", bs=10)
    with pytest.raises(fv.FitVisionError, match=r"^unknown model 'resnet10' \(did you mean 'resnet9'\? valid: "):
        fv.Learner(data, "resnet10")
    with pytest.raises(fv.FitVisionError, match=r"already holds a run; export to another folder$"):
        learn.export(run_dir)
    with pytest.raises(fv.FitVisionError, match=r"^cannot read an image from a dict"):
        learn.predict({"not": "an image"})


def test_fit_returns_the_run_fitvision_train_writes(learned, tmp_path):
    run = fv.fit(recipe="seed", data="cifar10", model="resnet9", width=0.25, epochs=2, bs=100, train_limit=1000,
                 valid_limit=200,
                 precision="fp32", out=str(tmp_path / "r"), progress=False)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert isinstance(run, fv.Run) and run.path == tmp_path / "r" and summary["recipe"] == "seed"
    assert run.evaluate()["val_acc"] == summary["val_acc"] > 0.2


def test_import_has_no_side_effects():
    code = ("import logging, sys, fitvision as fv; "
            "print('torch' in sys.modules, logging.getLogger('fitvision').handlers, sorted(fv.__all__)[:3])")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False [] ['FitVisionError', 'ImageData', 'Learner']"


def test_a_learner_on_a_busy_cpu_trains_on_fewer_threads(learned, monkeypatch):
    """As `fitvision train` does (device.share_cpu): a Learner made beside a busy process takes one
    thread fewer per busy core and says so in its notes; made on idle cores again, all threads."""
    import torch

    from fitvision.train import device

    data, *_ = learned
    before = torch.get_num_threads()
    monkeypatch.delenv("FITVISION_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(device, "busy_cores", lambda seconds=0.25: 1.0)
        learn = fv.Learner(data, "cnn", progress=False)
        assert torch.get_num_threads() == 1 and any("training on 1 of 2 threads" in n for n in learn.notes)
        monkeypatch.setattr(device, "busy_cores", lambda seconds=0.25: 0.0)
        learn = fv.Learner(data, "cnn", progress=False)
        assert torch.get_num_threads() == 2 and not any("threads" in n for n in learn.notes)
    finally:
        torch.set_num_threads(before)
