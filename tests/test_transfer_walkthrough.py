"""docs/transfer.md's CIFAR-10 -> CIFAR-100 walkthrough, its three commands cut to seconds: the
CIFAR-10 body from the real archive, CIFAR-100 from an archive in the official layout (100
classes) built here, since the real one is not on this machine."""

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fitvision.cli import main

SMALL = ["--width", "0.25", "--epochs", "1", "--train-limit", "400", "--valid-limit", "200", "--bs", "100",
         "--no-progress", "-q"]


def _cifar100(path: Path, rng) -> list[str]:
    names = [f"class{i:02d}" for i in range(100)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for split, n in (("train", 400), ("test", 200)):
            data = pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                 b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [0] * n}, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{split}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        meta = pickle.dumps({b"fine_label_names": [n.encode() for n in names]}, protocol=2)
        info = tarfile.TarInfo("cifar-100-python/meta")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
    path.write_bytes(buf.getvalue())
    return names


def test_the_cifar10_to_cifar100_walkthrough_runs(tmp_path, monkeypatch):
    real = os.environ.get("FITVISION_DATA_DIR")
    if not real or not (Path(real) / "cifar10-jpeg.tgz").is_file():
        pytest.skip("real datasets absent: set FITVISION_DATA_DIR")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar10-jpeg.tgz").symlink_to(Path(real) / "cifar10-jpeg.tgz")
    names = _cifar100(data_dir / "cifar-100-python.tar.gz", np.random.default_rng(0))
    monkeypatch.setenv("FITVISION_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", "seed", "--out", "runs/cifar10", *SMALL]) == 0
    # cut to one epoch, --freeze-epochs 2 becomes --freeze: the head alone, so the body must stay CIFAR-10's
    assert main(["train", "--recipe", "seed", "--data", "cifar100", "--init-from", "runs/cifar10",
                 "--freeze", "--out", "runs/cifar100", *SMALL]) == 0
    assert main(["train", "--recipe", "seed", "--data", "cifar100", "--out", "runs/cifar100-scratch", *SMALL]) == 0
    meta = json.loads(Path("runs/cifar100/model.json").read_text())
    assert meta["classes"] == names and meta["model_kwargs"]["num_classes"] == 100
    ten, hundred = load_file("runs/cifar10/model.safetensors"), load_file("runs/cifar100/model.safetensors")
    scratch = load_file("runs/cifar100-scratch/model.safetensors")
    assert hundred["classifier.3.weight"].shape[0] == 100 and ten["classifier.3.weight"].shape[0] == 10
    convs = [k for k, v in ten.items() if v.ndim == 4]  # the body's conv filters (BatchNorm trains under --freeze)
    assert len(convs) == 8 and all(torch.equal(ten[k], hundred[k]) for k in convs)
    assert not any(torch.equal(ten[k], scratch[k]) for k in convs)  # from scratch: another body
