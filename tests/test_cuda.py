"""The CUDA paths (marker `cuda`): skipped without a GPU; `bench/gpu.sh` runs them on one.

fp16 with GradScaler, bf16 autocast, channels_last, torch.compile, host-staged non-blocking
copies, and a DDP step over NCCL (one process, one GPU) through `fitvision train --nproc 1`.
"""

import json
import math

import pytest
import torch

from fakeloader import TinyNet, blobs

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs these)")]


def _learner(precision="fp32", **kwargs):
    from fitvision.data.loader import DeviceLoader
    from fitvision.train.learner import Learner
    from fitvision.train.seeding import seed_everything

    seed_everything(0)
    x, y = blobs(512, size=16)
    images = ((x - x.min()) / (x.max() - x.min()) * 255).round().to(torch.uint8)  # uint8 NCHW, as stored
    train = DeviceLoader(images[:384], y[:384], 64, shuffle=True, seed=0, device="cuda",
                         host_staging=kwargs.pop("host_staging", False))
    valid = DeviceLoader(images[384:], y[384:], 128, device="cuda")
    return Learner(TinyNet(), train, valid, lr=3e-3, precision=precision, device="cuda", progress=False, **kwargs)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_precisions_train_on_the_gpu(precision):
    learn = _learner(precision, channels_last=True)
    history = learn.fit(3)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["val_acc"] > 0.8  # the blobs are learnt in a few steps
    assert learn.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert learn.scaler.get_scale() > 0
    assert next(learn.model.parameters()).device.type == "cuda"


def test_channels_last_is_kept_on_the_gpu():
    learn = _learner("bf16", channels_last=True)
    learn.fit(1)
    conv = learn.model.body[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_compile_trains_like_eager_on_the_gpu():
    eager, compiled = _learner("bf16"), _learner("bf16", compile=True)
    a, b = eager.fit(2), compiled.fit(2)
    assert abs(a[-1]["val_acc"] - b[-1]["val_acc"]) <= 0.05 and b[-1]["val_acc"] > 0.8


def test_host_staged_non_blocking_copies_give_the_same_batches():
    staged, resident = _learner(host_staging=True).train_dl, _learner().train_dl
    assert staged.images.device.type == "cpu" and staged.images.is_pinned()
    for (xs, ys), (xr, yr) in zip(staged, resident):
        assert xs.device.type == "cuda" and torch.equal(xs, xr) and torch.equal(ys, yr)


def test_a_ddp_step_over_nccl_on_one_gpu(tmp_path, monkeypatch):
    from PIL import Image

    from fitvision.cli import main

    for c, cls in enumerate(("a", "b")):
        for split, n in (("train", 16), ("valid", 8)):
            (tmp_path / "ds" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (c * 200, i * 10, 90)).save(tmp_path / "ds" / split / cls / f"{i}.png")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--nproc", "1", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn",
                 "--epochs", "1", "--bs", "8", "--device", "cuda", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["epochs"] == 1
