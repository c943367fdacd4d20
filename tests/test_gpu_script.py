"""bench/gpu.sh --dry: the GPU check's steps at toy size on the CPU, so the script is known to work
before it first meets a GPU (issue 30)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run(tmp_path, data_dir):
    peer = ROOT.parent / "shared" / "peers" / "airbench94_muon.py"
    if not peer.is_file():
        pytest.skip("../shared/peers/airbench94_muon.py is not beside the checkout")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "FITVISION_CACHE_DIR": os.environ.get("FITVISION_CACHE_DIR", str(tmp_path / "cache"))}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["system"] for r in rows] == ["fitvision, gpu recipe"] * 3 + [
        "fitvision, seed recipe", "airbench94_muon", "fitvision, seed001_sgd recipe"]
    assert [r["seed"] for r in rows[:3]] == [0, 1, 2]
    assert all(r["rc"] == 0 and 0 <= r["val_acc"] <= 1 for r in rows[:4] + rows[5:])
    assert rows[4]["skipped"] == "needs CUDA: data and script checked"
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| fitvision, gpu recipe | 3/3 |" in table and "| airbench94_muon | 0 | needs CUDA" in table
    assert "| fitvision, seed001_sgd recipe | 1/1 |" in table
    assert "7 skipped" in proc.stdout  # the CUDA tests ran (and skipped, without a GPU)
    import torch

    train = torch.load(tmp_path / "out" / "peer" / "cifar10" / "train.pt")  # the original's data format
    assert train["images"].shape == (500, 32, 32, 3) and train["images"].dtype == torch.uint8
    assert train["labels"].dtype == torch.int64 and len(set(train["labels"][:100].tolist())) == 10  # shuffled
