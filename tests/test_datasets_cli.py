"""`fitvision datasets` and `fitvision datasets info`, on tiny data and on the real CIFAR-10."""

import json
import time

import numpy as np
from PIL import Image

from fitvision.cli import main
from fitvision.data import readers
from fitvision.data.classnames import readable
from fitvision.data.dataset import load_dataset
from fitvision.data.layout import folder_layout


def _folder(root, classes=("cat", "dog"), n=(3, 2)):
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), n):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_catalog_listing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FITVISION_DATA_DIR", str(tmp_path))
    (tmp_path / "imagenette2-320").mkdir()
    assert main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["cifar10", "cifar100", "imagenette", "imagewoof"]
    assert {r["name"]: r["location"] for r in rows}["imagenette"] == str(tmp_path / "imagenette2-320")
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cifar10 ") and lines[0].endswith("not found locally (downloaded on first use)")
    assert lines[2].endswith(str(tmp_path / "imagenette2-320"))


def test_info_on_a_folder(tmp_path, capsys):
    root = _folder(tmp_path / "pets")
    assert main(["datasets", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"name": "pets", "train": 6, "valid": 4, "classes": ["cat", "dog"], "image_size": [24, 24],
                    "location": str(root)}
    assert main(["datasets", "info", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "name        pets", "train       6", "valid       4", "classes     cat, dog", "image_size  24x24",
        f"location    {root}"]


def test_info_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FITVISION_DATA_DIR", str(tmp_path))
    assert main(["datasets", "info", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nope': not a catalog name (cifar10, cifar100, imagenette, "
                          "imagewoof) nor an existing folder or archive")
    assert err.count("\n") == 1
    assert main(["datasets", "info"]) == 2  # a usage error
    assert capsys.readouterr().err == "error: 'fitvision datasets info' needs a dataset name or path\n"


def test_imagenette_layout_from_the_real_archive(data_dir):
    # listing only (no decode): the official split, 10 wnid classes
    layout = folder_layout(readers.Source(data_dir / "imagenette2-224.tgz"))
    assert (len(layout.train), len(layout.valid)) == (9469, 3925)
    assert layout.classes == sorted(layout.classes) and len(layout.classes) == 10
    assert layout.classes[0] == "n01440764"
    # every folder is one of the ids fitvision names (load_dataset shows the names)
    assert readable(layout.classes) == ["tench", "English springer", "cassette player", "chain saw", "church",
                                        "French horn", "garbage truck", "gas pump", "golf ball", "parachute"]


def test_cifar10_info_from_the_real_archive(data_dir, monkeypatch, capsys):
    # the one test that decodes all 60,000 JPEGs (once per test session)
    monkeypatch.setenv("FITVISION_DATA_DIR", str(data_dir))
    assert main(["datasets", "info", "cifar10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"name": "cifar10", "train": 50000, "valid": 10000,
                    "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"],
                    "image_size": [32, 32], "location": str(data_dir / "cifar10-jpeg.tgz")}
    start = time.perf_counter()
    ds = load_dataset("cifar10")
    assert time.perf_counter() - start < 2.0  # memory-mapped from the cache
    assert isinstance(ds.train_x, np.memmap) and ds.train_x.shape == (50000, 32, 32, 3)
    assert np.bincount(ds.train_y).tolist() == [5000] * 10 and np.bincount(ds.valid_y).tolist() == [1000] * 10
    # real pixels: the channel means of the training split match the seeds' CIFAR stats
    means = ds.train_x.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(means, [0.4914, 0.4822, 0.4465], atol=0.01)
