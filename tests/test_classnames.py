"""Imagenette/Imagewoof class folders are WordNet ids; runs, reports and predictions show names."""

import json

import pytest
import torch

from fakerun import make_fake_run
from fitvision.data.classnames import WORDNET_NAMES, readable, same_classes
from fitvision.data.dataset import load_dataset
from fitvision.errors import FitVisionError
from fitvision.models import create_model
from fitvision.train import evaluate as inference
from fitvision.train.modelfile import save_model
from synthetic_images import make_image_folder

IMAGENETTE_IDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
                  "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
IMAGENETTE_NAMES = ["tench", "English springer", "cassette player", "chain saw", "church",
                    "French horn", "garbage truck", "gas pump", "golf ball", "parachute"]


def test_readable_names_only_when_every_class_is_a_known_id():
    assert readable(IMAGENETTE_IDS) == IMAGENETTE_NAMES
    assert readable(["n02099601", "n02115641"]) == ["golden retriever", "dingo"]
    assert readable(["n01440764", "cat"]) == ["n01440764", "cat"]  # a mix stays as it is
    assert readable(["n99999999"]) == ["n99999999"]
    assert readable([]) == []
    assert len(set(WORDNET_NAMES.values())) == 20  # Imagenette's ten and Imagewoof's ten, all distinct
    assert same_classes(IMAGENETTE_IDS, IMAGENETTE_NAMES) and not same_classes(IMAGENETTE_IDS, IMAGENETTE_NAMES[::-1])


def test_wordnet_folders_load_with_names_in_id_order(tmp_path):
    # Folders created in a shuffled order: the label numbers follow the sorted ids, as before.
    order = [3, 0, 9, 5, 1, 8, 2, 7, 4, 6]
    root = make_image_folder(tmp_path / "nette", [IMAGENETTE_IDS[i] for i in order], n_train=2, n_valid=1)
    ds = load_dataset(root)
    assert ds.classes == IMAGENETTE_NAMES
    # make_image_folder brightens channel (position in its list) % 3: label k must hold the
    # images of the id sorted k-th, whatever order the folders were made in.
    for k in range(10):
        images = ds.train_x[ds.train_y == k]
        assert len(images) == 2
        assert int(images.reshape(-1, 3).mean(0).argmax()) == order.index(k) % 3
    mixed = make_image_folder(tmp_path / "mixed", ["n01440764", "zebra"], n_train=1, n_valid=1)
    assert load_dataset(mixed).classes == ["n01440764", "zebra"]


def test_a_run_that_stored_ids_evaluates_and_predicts_with_names(tmp_path):
    root = make_image_folder(tmp_path / "nette", IMAGENETTE_IDS, n_train=1, n_valid=2, size=32)
    run_dir = make_fake_run(tmp_path / "run", classes=IMAGENETTE_IDS, data=str(root))
    torch.manual_seed(0)
    model = create_model("resnet9", num_classes=10, width=0.125).eval()
    meta = json.loads((run_dir / "model.json").read_text())
    meta["model_kwargs"] = {"num_classes": 10, "width": 0.125}
    save_model(run_dir, model, meta)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["valid_limit"] = 0
    (run_dir / "config.json").write_text(json.dumps(cfg))
    run = inference.load_run(run_dir, device="cpu")
    assert run.classes == IMAGENETTE_NAMES
    result = inference.evaluate_run(run)
    assert result["num_valid"] == 20 and set(result["per_class_acc"]) == set(IMAGENETTE_NAMES)
    image = next((root / "valid" / "n03888257").iterdir())
    (pred,) = inference.predict_files(run, [image], topk=10)
    assert {t["class"] for t in pred["top"]} == set(IMAGENETTE_NAMES)


def test_other_classes_are_still_refused(tmp_path):
    root = make_image_folder(tmp_path / "other", ["ant", "bee"], n_train=1, n_valid=1, size=32)
    run_dir = make_fake_run(tmp_path / "run", classes=IMAGENETTE_IDS[:2], data=str(root))
    save_model(run_dir, create_model("resnet9", num_classes=2, width=0.125),
               {**json.loads((run_dir / "model.json").read_text()), "model_kwargs": {"num_classes": 2, "width": 0.125}})
    with pytest.raises(FitVisionError, match=r"has classes \['ant', 'bee'\], the model was trained on \['tench', "):
        inference.evaluate_run(inference.load_run(run_dir, device="cpu"))


def test_report_of_a_run_that_stored_ids_shows_names(tmp_path):
    from fitvision.report.html import render_run_report

    run_dir = make_fake_run(tmp_path / "run", classes=IMAGENETTE_IDS, data=str(tmp_path / "absent"))
    page = render_run_report(run_dir).read_text()
    assert "golf ball" in page and "n03445777" not in page
