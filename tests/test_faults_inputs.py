"""Issue 31, inputs: images in sub-folders of class folders, files that are no regular files, and a
hostile model.json. The cases that could hang run the CLI in a subprocess with a timeout, so a
regression fails instead of stopping the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from fakerun import make_fake_run
from PIL import Image

from fitvision.cli import main
from fitvision.data.dataset import load_dataset
from fitvision.data.items import get_files
from fitvision.errors import FitVisionError
from fitvision.train.modelfile import read_meta

FITVISION = Path(sys.executable).parent / "fitvision"
HANG_LIMIT = 60  # s; the slow part of each subprocess is importing torch


def _png(path: Path, colour=(200, 30, 30), size=24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    x = rng.integers(0, 40, (size, size, 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8) // 2
    Image.fromarray(x).save(path)
    return path


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FITVISION_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(FITVISION)] + args, capture_output=True, text=True, timeout=HANG_LIMIT, env=env,
                          check=False)


@pytest.fixture
def tiny_run(tmp_path):
    """A loadable run: an untrained tiny resnet9 over classes a, b, c."""
    from fitvision.models import create_model
    from fitvision.train.modelfile import save_model

    run = make_fake_run(tmp_path / "run", classes=["a", "b", "c"])
    meta = json.loads((run / "model.json").read_text())
    meta["model_kwargs"] = {"num_classes": 3, "width": 0.125}
    save_model(run, create_model("resnet9", num_classes=3, width=0.125), meta)
    return run


# --------------------------------------------------------------------------- (4) nested images
def _messy_split(root: Path) -> Path:
    for name in ("train/cat/1.png", "train/cat/2019/2.png", "train/cat/2019/raw/3.png", "train/dog/4.png",
                 "train/dog/extra/5.png", "valid/cat/6.png", "valid/dog/old/7.png"):
        _png(root / name, (200, 30, 30) if "/cat/" in name else (30, 30, 200))
    return root


def test_nested_images_in_a_split_folder_belong_to_their_class_folder(tmp_path, capsys):
    # before: the four images below train/<class>/<sub>/ and valid/<class>/<sub>/ were dropped without a word
    root = _messy_split(tmp_path / "pets")
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"]
    assert (len(ds.train_y), len(ds.valid_y), ds.nested) == (5, 2, 4)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1] and ds.valid_y.tolist() == [0, 1]
    assert main(["datasets", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["train"], info["valid"], info["nested"]) == (5, 2, 4)
    assert main(["datasets", "info", str(root)]) == 0
    assert "nested      4" in capsys.readouterr().out.splitlines()


def test_nested_images_in_an_unsplit_folder_belong_to_their_class_folder(tmp_path):
    # before: cat/sub/ and dog/sub/ were refused as "would merge into one class 'sub'", and a
    # lone cat/2019/ became a class "2019"
    root = tmp_path / "shots"
    for name in ("cat/1.png", "cat/sub/2.png", "cat/2019/3.png", "dog/4.png", "dog/sub/5.png", "dog/a/b/6.png"):
        _png(root / name)
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"]
    assert (ds.train_y.tolist(), len(ds.valid_y), ds.nested) == ([0, 0, 0, 1, 1, 1], 0, 4)


def test_training_and_predict_see_the_same_images_of_a_folder(tmp_path):
    """`predict FOLDER` lists images at any depth; the dataset now holds every one of them."""
    from fitvision.data import layout, readers

    root = _messy_split(tmp_path / "pets")
    found = layout.folder_layout(readers.Source(root))
    assert sorted(found.train + found.valid) == sorted(p.relative_to(root).as_posix() for p in get_files(root))


def test_the_setup_notes_say_how_many_images_were_nested(tmp_path):
    from fitvision.train.imagedata import ImageData

    data = ImageData(_messy_split(tmp_path / "pets"), bs=4, device="cpu")
    assert "4 of the 7 images are in sub-folders of their class folders" in data.notes


def test_a_class_folder_holding_only_sub_folders_is_not_empty(tmp_path):
    root = tmp_path / "pets"
    _png(root / "train/cat/1.png")
    _png(root / "train/dog/2021/2.png")
    _png(root / "valid/cat/3.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "class folder(s) hold no images" warning
        ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"] and ds.nested == 1


def test_a_cache_built_under_the_old_rule_is_built_again(tmp_path, monkeypatch):
    """Caches from before kept no "nested" count, and left nested images out: not reused."""
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    root = _messy_split(tmp_path / "pets")
    load_dataset(root)
    (meta_path,) = (tmp_path / "cache").glob("pets-*/meta.json")
    meta = json.loads(meta_path.read_text())
    del meta["nested"]
    meta_path.write_text(json.dumps(meta))
    assert load_dataset(root).nested == 4
    assert json.loads(meta_path.read_text())["nested"] == 4


# --------------------------------------------------------------------------- (7) regular files only
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@needs_fifo
def test_a_fifo_in_a_data_folder_is_skipped_like_an_unreadable_image(tmp_path):
    # before: the decode opened the FIFO and waited for a writer forever
    root = tmp_path / "pets"
    for name in ("train/cat/1.png", "train/dog/2.png", "valid/cat/3.png", "valid/dog/4.png"):
        _png(root / name)
    os.mkfifo(root / "train/cat/pipe.png")
    os.symlink(root / "train/cat/pipe.png", root / "train/dog/link-to-pipe.jpg")
    done = _cli(["datasets", "info", str(root), "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["train"] == 2
    assert done.stderr.strip() == (f"warning: 2 unreadable image(s) in {root} skipped: train/cat/pipe.png (not a "
                                   "regular file but a FIFO); train/dog/link-to-pipe.jpg (not a regular file but "
                                   "a FIFO)")


@needs_fifo
def test_a_fifo_given_to_predict_is_one_error_line(tmp_path, tiny_run):
    good = _png(tmp_path / "good.png")
    link = tmp_path / "link.png"
    link.symlink_to(good)  # a symlink to a regular file is read
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    done = _cli(["predict", str(tiny_run), str(fifo), str(good), str(link)], tmp_path)
    assert done.returncode == 1
    assert done.stderr == f"error: {fifo} is not a regular file but a FIFO\n"
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [str(good), str(link)]


@needs_fifo
def test_a_fifo_named_like_a_cifar_batch_is_one_error_line(tmp_path):
    import pickle

    root = tmp_path / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    x, y = np.zeros((2, 3072), dtype=np.uint8), [0, 1]
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({b"data": x, b"labels": y}, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    os.mkfifo(root / "data_batch_1")
    done = _cli(["datasets", "info", str(tmp_path / "cifar")], tmp_path)
    assert done.returncode == 1
    assert done.stderr == (f"error: {tmp_path / 'cifar'}: {root / 'data_batch_1'} is a FIFO, "
                           "not a CIFAR batch file\n")


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_device_is_not_read_as_an_image():
    from fitvision.data.decode import decode_image

    with pytest.raises(FitVisionError, match="^/dev/null is not a regular file but a character device$"):
        decode_image("/dev/null")


# --------------------------------------------------------------------------- (6) model.json
BAD_FIELDS = [
    ("input_size", [40000, 40000], "input_size must be [height, width], whole numbers from 1 to 4096, got [40000, 40000]"),
    ("input_size", [32], "input_size must be [height, width], whole numbers from 1 to 4096, got [32]"),
    ("input_size", [32, 0], "input_size must be [height, width], whole numbers from 1 to 4096, got [32, 0]"),
    ("input_size", [32.5, 32], "input_size must be [height, width], whole numbers from 1 to 4096, got [32.5, 32]"),
    ("input_size", [True, 32], "input_size must be [height, width], whole numbers from 1 to 4096, got [true, 32]"),
    ("input_size", "32x32", 'input_size must be [height, width], whole numbers from 1 to 4096, got "32x32"'),
    ("std", [0.2, 0, 0.2], "std must be 3 finite numbers, one per RGB channel, each above 0, got [0.2, 0, 0.2]"),
    ("std", [0.2, -0.2, 0.2], "std must be 3 finite numbers, one per RGB channel, each above 0, got [0.2, -0.2, 0.2]"),
    ("std", [0.2, float("nan"), 0.2], ("std must be 3 finite numbers, one per RGB channel, each above 0, got "
                                       "[0.2, NaN, 0.2]")),
    ("mean", [0.5, float("inf"), 0.5], "mean must be 3 finite numbers, one per RGB channel, got [0.5, Infinity, 0.5]"),
    ("mean", [0.5, 0.5], "mean must be 3 finite numbers, one per RGB channel, got [0.5, 0.5]"),
    ("mean", [0.5, "0.5", 0.5], 'mean must be 3 finite numbers, one per RGB channel, got [0.5, "0.5", 0.5]'),
    ("classes", "abc", 'classes must be a list of class names (strings), got "abc"'),
    ("classes", [1, 2, 3], "classes must be a list of class names (strings), got [1, 2, 3]"),
    ("classes", ["a", "a", "b"], 'classes must be distinct names, got ["a", "a", "b"]'),
    ("model", 9, "model must be a model name, got 9"),
    ("model_kwargs", [3], "model_kwargs must be an object of the model's options, got [3]"),
    ("model_kwargs", {"num_classes": "3"}, ('model_kwargs must be an object whose num_classes is a whole number, '
                                            'got {"num_classes": "3"}')),
    ("storage_size", 10**9, "storage_size must be a whole number from 1 to 4096, got 1000000000"),
    ("storage_size", "160", 'storage_size must be a whole number from 1 to 4096, got "160"'),
    ("crop_pct", 0, "crop_pct must be a number in (0, 1], got 0"),
    ("resize_method", "stretch", 'resize_method must be "crop" or "squish", got "stretch"'),
    ("resize_filter", "cubic", 'resize_filter must be "bicubic" or "bilinear" or "lanczos" or "nearest" or '
                               '"bicubic_nearest", got "cubic"'),
    ("fitvision_version", 1, "fitvision_version must be a version string, got 1"),
    ("classes", ["a", "b"], None),  # 3 outputs: the message train_run's users already know
]


@pytest.mark.parametrize("field,value,message", BAD_FIELDS, ids=lambda v: str(v)[:24])
def test_each_bad_model_json_field_is_named(tmp_path, field, value, message):
    run = make_fake_run(tmp_path / "run", classes=["a", "b", "c"])
    path = run / "model.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "model_kwargs": {"num_classes": 3}, field: value}))
    expected = message and f"{path} is corrupt: {message}"
    expected = expected or f"{path} is corrupt: its classes do not match the model's 3 outputs"
    with pytest.raises(FitVisionError) as e:
        read_meta(run)
    assert str(e.value) == expected


def test_a_zero_std_fails_predict_instead_of_printing_nan(tmp_path, tiny_run, capsys):
    # before: NaN probabilities on stdout and exit status 0
    path = tiny_run / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "std": [0, 0, 0]}))
    assert main(["predict", str(tiny_run), str(_png(tmp_path / "x.png"))]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: {path} is corrupt: std must be 3 finite numbers, one per RGB channel, "
                                 "each above 0, got [0, 0, 0]\n")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from Linux's /proc")
def test_a_huge_input_size_is_refused_before_any_allocation(tmp_path, tiny_run):
    """40000x40000 would allocate 19 GB for the resized image: refused from model.json alone, in
    well under the time and memory of importing torch twice (a subprocess: a regression cannot
    take the test process down with it)."""
    path = tiny_run / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "input_size": [40000, 40000]}))
    image = _png(tmp_path / "x.png")
    # VmHWM: this process's own peak (ru_maxrss would carry over pytest's across the fork and exec).
    probe = ("import sys; from fitvision.cli import main; rc = main(sys.argv[1:]); "
             "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')), "
             "file=sys.stderr); sys.exit(rc)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, "predict", str(tiny_run), str(image)], capture_output=True,
                          text=True, timeout=HANG_LIMIT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert time.perf_counter() - start < HANG_LIMIT
    error, max_rss_kib = done.stderr.splitlines()
    assert done.returncode == 1 and error == (f"error: {path} is corrupt: input_size must be [height, width], "
                                              "whole numbers from 1 to 4096, got [40000, 40000]")
    assert int(max_rss_kib) < 2 * 1024 * 1024  # < 2 GiB: torch and the tiny model, no 19 GB image


def test_load_model_and_export_read_model_json_through_the_same_checks(tmp_path, tiny_run):
    from fitvision.export import export_run
    from fitvision.train.modelfile import load_model

    path = tiny_run / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "input_size": [32, 40000]}))
    expected = f"{path} is corrupt: input_size must be [height, width], whole numbers from 1 to 4096, got [32, 40000]"
    for load in (lambda: load_model(tiny_run), lambda: export_run(tiny_run, "torchscript", out=tmp_path / "m.pt")):
        with pytest.raises(FitVisionError) as e:
            load()
        assert str(e.value) == expected
