"""evaluate_run and predict_files against an independent reference: the model applied by hand."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fitvision.models")
pytest.importorskip("fitvision.data.decode")
pytest.importorskip("fitvision.data.augment")

from fakerun import make_fake_run  # noqa: E402
from fitvision.models import create_model  # noqa: E402
from fitvision.train import evaluate as inference  # noqa: E402
from fitvision.train.modelfile import save_model  # noqa: E402

CLASSES = ["blue", "green", "red"]
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _images(n, colour_idx, seed, size=32):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, size, size, 3)).astype(np.uint8)
    x[..., colour_idx] += 150
    return x


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny class-folder dataset: train/ and valid/, 3 colour classes, 32x32 PNGs."""
    root = tmp_path_factory.mktemp("colours")
    for split, n in (("train", 4), ("valid", 7)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i, img in enumerate(_images(n, 2 - c, seed=c + 10 * len(split))):
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, folder):
    """A loadable run: an untrained tiny resnet9 (random init is enough for parity)."""
    torch.manual_seed(0)
    run = make_fake_run(tmp_path_factory.mktemp("run") / "r", classes=CLASSES, data=str(folder))
    model = create_model("resnet9", num_classes=3, width=0.125).eval()
    meta = {"model": "resnet9", "model_kwargs": {"num_classes": 3, "width": 0.125}, "classes": CLASSES,
            "mean": MEAN, "std": STD, "input_size": [32, 32], "storage_size": 160, "fitvision_version": "0.1.0"}
    save_model(run, model, meta)
    cfg = json.loads((run / "config.json").read_text())
    cfg["valid_limit"] = 0
    (run / "config.json").write_text(json.dumps(cfg))
    return inference.load_run(run, device="cpu")


def _reference_probs(run, images_nhwc):
    """The model applied by hand: (x / 255 - mean) / std, fp32 forward, softmax."""
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return run.model(x).float().softmax(1).numpy()


def test_predict_matches_the_model_applied_by_hand(tmp_path, run):
    images = _images(5, 0, seed=3)
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(files[-1])
    results = inference.predict_files(run, files, topk=3)
    ref = _reference_probs(run, images)
    for r, p in zip(results, ref):
        assert [t["class"] for t in r["top"]] == [CLASSES[i] for i in np.argsort(-p)]
        np.testing.assert_allclose([t["prob"] for t in r["top"]], np.sort(p)[::-1], rtol=1e-4, atol=1e-6)
        assert abs(sum(t["prob"] for t in r["top"]) - 1) < 1e-5
    # one path, not in a list: that one file (not one "file" per character of its name)
    for one in (str(files[0]), files[0]):
        [alone] = inference.predict_files(run, one, topk=3)
        assert alone["file"] == str(files[0]) and alone["top"][0]["class"] == results[0]["top"][0]["class"]
        assert alone["top"][0]["prob"] == pytest.approx(results[0]["top"][0]["prob"], abs=1e-5)


def test_predict_any_format_and_size_with_a_bad_file_among_them(tmp_path, run):
    rgb = _images(1, 1, seed=4, size=96)[0]
    paths = {
        "big.jpg": lambda p: Image.fromarray(rgb).resize((400, 300)).save(p, quality=90),
        "grey.png": lambda p: Image.fromarray(rgb).convert("L").save(p),
        "alpha.png": lambda p: Image.fromarray(rgb).convert("RGBA").save(p),
        "small.bmp": lambda p: Image.fromarray(rgb).resize((20, 24)).save(p),
        "palette.gif": lambda p: Image.fromarray(rgb).convert("P").save(p),
        "exact.webp": lambda p: Image.fromarray(rgb[:32, :32]).save(p, lossless=True),
    }
    files = []
    for name, write in paths.items():
        write(tmp_path / name)
        files.append(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "big.jpg").read_bytes()[:200])
    files.insert(2, tmp_path / "broken.jpg")
    results = inference.predict_files(run, files, topk=2)
    assert [r["file"] for r in results] == [str(f) for f in files]
    assert "error" in results[2] and "broken.jpg" in results[2]["error"]
    for r in results[:2] + results[3:]:
        assert len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"]
    # The webp is exactly a 32x32 training-size image: decoded and predicted like the training data.
    np.testing.assert_allclose(results[-1]["top"][0]["prob"], _reference_probs(run, rgb[None, :32, :32]).max(),
                               rtol=1e-4)


def test_predict_batches_give_the_same_answers(tmp_path, run, monkeypatch):
    images = np.concatenate([_images(6, c, seed=20 + c) for c in range(3)])
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(files[-1])
    whole = inference.predict_files(run, files, topk=1)
    monkeypatch.setattr(inference, "PREDICT_BATCH", 4)  # chunk boundaries inside the list
    chunked = inference.predict_files(run, files, topk=1)
    assert [r["top"][0]["class"] for r in whole] == [r["top"][0]["class"] for r in chunked]
    np.testing.assert_allclose([r["top"][0]["prob"] for r in whole], [r["top"][0]["prob"] for r in chunked],
                               rtol=1e-5)


def test_predict_squares_images_as_training_did(tmp_path, run):
    from dataclasses import replace

    from fitvision.data.decode import decode_image

    wide = np.concatenate([_images(1, 0, seed=5)[0], _images(1, 2, seed=6)[0]], axis=1)  # 32x64, two halves
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    squished = decode_image(path, resize_method="squish")
    assert squished.shape == (32, 32, 3) and not np.array_equal(squished, decode_image(path))
    for method, decoded in (("crop", decode_image(path)), ("squish", squished)):
        r = replace(run, meta={**run.meta, "resize_method": method}) if method == "squish" else run
        assert r.resize_method == method  # a run without the key (older runs) cropped
        (got,) = inference.predict_files(r, [path], topk=3)
        np.testing.assert_allclose([t["prob"] for t in got["top"]],
                                   np.sort(_reference_probs(run, np.array(decoded)[None]))[0, ::-1], rtol=1e-4, atol=1e-6)


def test_predict_resizes_with_the_filter_training_used(tmp_path, run):
    """A run trained on nearest-resized images (--resize-filter nearest) predicts on images
    resized the same way; a run without the key (older runs) used bicubic."""
    from dataclasses import replace

    from fitvision.data.decode import decode_image

    big = np.kron(_images(1, 1, seed=7)[0], np.ones((3, 3, 1), np.uint8))  # 96 px
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)
    assert run.resize_filter == "bicubic"
    nearest = replace(run, meta={**run.meta, "resize_filter": "nearest", "storage_size": 32})  # stored at 32 px
    decoded = decode_image(path, storage_size=32, resize_filter="nearest")
    np.testing.assert_array_equal(decoded, big[1::3, 1::3])
    assert not np.array_equal(decoded, decode_image(path, storage_size=32))
    (got,) = inference.predict_files(nearest, [path], topk=3)
    np.testing.assert_allclose([t["prob"] for t in got["top"]],
                               np.sort(_reference_probs(run, decoded[None]))[0, ::-1], rtol=1e-4, atol=1e-6)


def test_evaluate_run_matches_a_hand_computation(run, folder):
    from fitvision.data.dataset import load_dataset

    ds = load_dataset(str(folder))
    probs = _reference_probs(run, np.array(ds.valid_x))
    preds = probs.argmax(1)
    out = inference.evaluate_run(run)
    assert out["num_valid"] == 21
    assert round(out["val_acc"] * 21) == int((preds == ds.valid_y).sum())
    assert abs(out["val_acc"] - (preds == ds.valid_y).mean()) < 1e-6  # a float32 mean, as train_run's
    loss = -np.log(probs[np.arange(21), ds.valid_y]).mean()
    assert abs(out["val_loss"] - loss) < 1e-4
    assert out["per_class_acc"] == {c: float((preds[ds.valid_y == i] == i).mean()) for i, c in enumerate(CLASSES)}
    top3 = np.argsort(-probs, 1)[:, :3]  # 3 classes: top-5 is capped at top-3, every image a hit
    assert out["top3_acc"] == 1.0 and (top3 == ds.valid_y[:, None]).any(1).all()
    for i, c in enumerate(CLASSES):
        hits = int(((preds == i) & (ds.valid_y == i)).sum())
        m = out["per_class"][c]
        assert m["support"] == int((ds.valid_y == i).sum()) and m["recall"] == out["per_class_acc"][c]
        assert m["precision"] == (hits / (preds == i).sum() if (preds == i).any() else 0.0)
    tta = inference.evaluate_run(run, tta=True)
    assert tta["num_valid"] == 21 and tta["val_loss"] != out["val_loss"]


def test_class_metrics_by_hand():
    """Four classes, six images: class 3 is never predicted, class 2 never present."""
    targets = torch.tensor([0, 0, 1, 1, 3, 0])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    second = torch.tensor([1, 0, 0, 3, 3, 1])  # the runner-up: image 4's true class, second
    log_probs = torch.full((6, 4), -9.0)
    log_probs[torch.arange(6), second] = -1.0
    log_probs[torch.arange(6), preds] = -0.5
    m = inference.class_metrics(log_probs, targets, ["a", "b", "c", "d"], k=2)
    assert m["top2_acc"] == pytest.approx(5 / 6)  # image 5 (a, predicted c then b) misses both
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((0.4 + 0.8 + 0.0) / 3)  # over the classes with images
    assert inference.format_evaluation({"val_acc": 0.5, "val_loss": 1.25, "num_valid": 6, **m})[:3] == [
        "val_acc 0.5000  top2_acc 0.8333  val_loss 1.2500  macro_f1 0.4000  (6 images)",
        "  class            precision  recall      f1  images",
        "  a                   0.5000  0.3333  0.4000       3"]


def test_evaluate_run_crop_pct_scores_another_central_crop(run):
    """A crop_pct given replaces model.json's for this evaluation only: the same figures as a run
    saved with that crop, and other figures than the run's own (the whole image)."""
    from fitvision.errors import FitVisionError

    whole = inference.evaluate_run(run)
    half = inference.evaluate_run(run, crop_pct=0.5)
    assert half["num_valid"] == 21 and half["val_loss"] != whole["val_loss"]
    cropped = inference.load_run(run.path, device="cpu")
    cropped.meta["crop_pct"] = 0.5  # as a run trained with --crop-pct 0.5 would have saved
    assert inference.evaluate_run(cropped) == half
    assert inference.evaluate_run(cropped, crop_pct=1.0) == whole
    with pytest.raises(FitVisionError) as e:
        inference.evaluate_run(run, crop_pct=1.5)
    assert str(e.value) == "crop_pct must be in (0, 1], got 1.5"


def test_evaluate_run_other_data_must_have_the_same_classes(run, tmp_path):
    from fitvision.errors import FitVisionError

    for split in ("train", "valid"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(_images(1, 0, seed=1)[0]).save(tmp_path / split / name / "0.png")
    with pytest.raises(FitVisionError, match=r"has classes \['cat', 'dog'\], the model was trained on"):
        inference.evaluate_run(run, data=str(tmp_path))


def test_evaluate_run_scores_other_data_on_its_own_validation_split(run, folder, tmp_path, monkeypatch):
    # a run that carved 20% of an unsplit folder for validation, evaluated on split data
    monkeypatch.setattr(run, "config", {**run.config, "valid_pct": 0.2, "valid_limit": 5})
    assert inference.evaluate_run(run, data=str(folder))["num_valid"] == 21  # all of valid/ (7 x 3)
    unsplit = tmp_path / "unsplit"
    for c, name in enumerate(CLASSES):  # no valid/: the run's valid_pct carves one, as training did
        (unsplit / name).mkdir(parents=True)
        for i, img in enumerate(_images(10, 2 - c, seed=c)):
            Image.fromarray(img).save(unsplit / name / f"{i}.png")
    assert inference.evaluate_run(run, data=str(unsplit))["num_valid"] == 6  # 20% of 30


def test_evaluate_run_on_other_unsplit_data_warns_once(run, tmp_path, monkeypatch):
    from fitvision.data.readers import DataWarning

    monkeypatch.setattr(run, "config", {**run.config, "valid_pct": 0.2})
    for c, name in enumerate(CLASSES):
        (tmp_path / "unsplit" / name).mkdir(parents=True)
        for i, img in enumerate(_images(5, 2 - c, seed=c)):
            Image.fromarray(img).save(tmp_path / "unsplit" / name / f"{i}.png")
    (tmp_path / "unsplit" / "red" / "bad.png").write_bytes(b"no picture")
    with pytest.warns(DataWarning, match="unreadable image") as caught:
        assert inference.evaluate_run(run, data=str(tmp_path / "unsplit"))["num_valid"] == 3  # 20% of 15
    assert len(caught) == 1  # before the fix the data was loaded twice, and warned twice


@pytest.mark.parametrize("tta", [[], ["--tta", "--tta-shift", "1", "--tta-confident", "0.5"]])
def test_eval_reproduces_train_runs_val_acc_exactly(folder, tmp_path, capsys, tta):
    """The acceptance check in small: `fitvision eval RUN` == summary.json, to the last bit (also
    with the TTA's shifted views gated by the mirror pair's confidence)."""
    pytest.importorskip("fitvision.train.run")
    from fitvision.cli import main

    out = tmp_path / "r"
    # valid_limit exercises train_run's seeded subset; bs 8 makes the eval batches (16) split the 18.
    assert main(["train", "--data", str(folder), "--model", "resnet9", "--width", "0.125", "--epochs", "1",
                 "--bs", "8", "--valid-limit", "18", "--seed", "3", "--out", str(out)] + tta) == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_valid"] == summary["num_valid"] == 18
    assert result["val_acc"] == summary["val_acc"]
    assert result["val_loss"] == summary["val_loss"]
    # preds.npz agrees image by image with a fresh evaluation, and its indices point at the images
    # with those labels (the report's mistakes grid relies on it).
    from fitvision.data.dataset import load_dataset

    z = np.load(out / "preds.npz")
    assert np.array_equal(load_dataset(str(folder)).valid_y[z["indices"]], z["targets"])
    counts = np.bincount(z["targets"][z["probs"].argmax(1) == z["targets"]], minlength=3)
    totals = np.bincount(z["targets"], minlength=3)
    assert result["per_class_acc"] == {c: counts[i] / totals[i] for i, c in enumerate(CLASSES) if totals[i]}


def test_crop_pct_is_kept_in_the_run_and_used_by_eval(folder, tmp_path, capsys):
    """A run trained with --crop-pct evaluates (eval, predict) on the same central crop."""
    from fitvision.cli import main

    out = tmp_path / "r"
    assert main(["train", "--data", str(folder), "--model", "resnet9", "--width", "0.125", "--epochs", "1",
                 "--bs", "8", "--crop-pct", "0.5", "--seed", "3", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["crop_pct"] == 0.5
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_loss"] == summary["val_loss"]
    assert main(["eval", str(out), "--json", "--crop-pct", "1"]) == 0  # the whole image, this once
    assert json.loads(capsys.readouterr().out)["val_loss"] != summary["val_loss"]
    assert json.loads((out / "model.json").read_text())["crop_pct"] == 0.5  # the run is left as it was
    run = inference.load_run(out, device="cpu")
    x = torch.from_numpy(_images(2, 0, seed=5)).permute(0, 3, 1, 2)
    x[:, :, 8:24, 8:24] = 0  # the centre black: only a pipeline that crops sees nothing else
    seen = inference._eval_pipeline(run)(x)
    assert seen.flatten(2).std(2).max() < 1e-6  # each channel one flat value: only the black centre
    run.meta["crop_pct"] = 1.0
    assert inference._eval_pipeline(run)(x).flatten(2).std(2).min() > 0.1  # the whole image: the border too


def test_saved_weights_are_readable_like_the_runs_other_files(run):
    # safetensors writes its file 0600; the run's files are all 0644 (shared, copied, served)
    assert {(run.path / name).stat().st_mode & 0o777 for name in ("model.safetensors", "model.json")} == {0o644}


def test_tta_gate_bench_counts_the_views_each_confidence_costs(run, tmp_path):
    """bench/tta_gate.py: 0 is six views for every image, a confidence no pair reaches is six too
    and the same scores, one every pair reaches is the mirror pair alone (two views)."""
    import importlib.util
    import shutil
    from pathlib import Path

    gated = tmp_path / "gated"
    shutil.copytree(run.path, gated)
    cfg = json.loads((gated / "config.json").read_text())
    (gated / "config.json").write_text(json.dumps({**cfg, "tta": True, "tta_shift": 1}))
    path = Path(__file__).resolve().parents[1] / "bench" / "tta_gate.py"
    spec = importlib.util.spec_from_file_location("bench_tta_gate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {row["confident"]: row for row in bench.gate_rows(str(gated), [0.0, 1.0, 1e-9])}
    assert [rows[p]["views_per_image"] for p in (0.0, 1.0, 1e-9)] == [6.0, 6.0, 2.0]
    assert (rows[1.0]["val_acc"], rows[1.0]["val_loss"]) == (rows[0.0]["val_acc"], rows[0.0]["val_loss"])
    pair = inference.evaluate_run(inference.load_run(run.path), tta=True)  # tta_shift 0: the mirror pair
    assert (rows[1e-9]["val_acc"], rows[1e-9]["val_loss"]) == (round(pair["val_acc"], 4), round(pair["val_loss"], 4))
