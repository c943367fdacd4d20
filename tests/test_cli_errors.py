"""Every error a user can cause: one `error: ...` line on stderr and exit 1; usage errors exit 2.

Most run in-process through cli.main (fast); a few go through `python -m fitvision` to check the
real entry point end to end.
"""

import json
import os
import re
import subprocess
import sys
import types

import pytest
from PIL import Image

from fakerun import make_fake_run
from fitvision.cli import main
from fitvision.errors import FitVisionError


def _fail(capsys, argv, code=1):
    """Run the CLI, check the exit code and that stderr is exactly one line (an unknown flag,
    exit 2 via SystemExit, prints the subcommand's usage first); return the last line."""
    try:
        rc = main(argv)
    except SystemExit as e:  # the parser's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == (2 if "unrecognized arguments" in err else 1), err
    return lines[-1]


def _class_folders(root, per_class: int, side: int):
    """An unsplit folder dataset: classes a and b, per_class distinct side x side PNGs each."""
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (side, side), (c * 200, i * 40, 0)).save(root / cls / f"{i}.png")
    return root


def _split_folders(root, blue: int = 90):
    """A split folder dataset: train/ and valid/ of classes a and b, 4 and 2 distinct 16 px PNGs each."""
    for c, cls in enumerate(("a", "b")):
        for split, n in (("train", 4), ("valid", 2)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (c * 200, i * 40, blue)).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture
def tiny_run(tmp_path):
    """A real, loadable run: an untrained tiny resnet9 saved with modelfile.save_model."""
    pytest.importorskip("fitvision.models")
    from fitvision.models import create_model
    from fitvision.train.modelfile import save_model

    run = make_fake_run(tmp_path / "run", classes=["a", "b", "c"])
    model = create_model("resnet9", num_classes=3, width=0.125)
    meta = json.loads((run / "model.json").read_text())
    meta["model_kwargs"] = {"num_classes": 3, "width": 0.125}
    save_model(run, model, meta)
    return run


# --------------------------------------------------------------------------- run directories
@pytest.mark.parametrize("command", [["eval"], ["predict"], ["report"]])
def test_missing_run_dir(capsys, tmp_path, command):
    missing = tmp_path / "no-such-run"
    argv = command + [str(missing)] + (["x.jpg"] if command == ["predict"] else [])
    assert _fail(capsys, argv) == f"error: run directory not found: {missing}"


@pytest.mark.parametrize("command", [["eval"], ["predict"]])
def test_run_dir_without_model_json(capsys, tmp_path, command):
    argv = command + [str(tmp_path)] + (["x.jpg"] if command == ["predict"] else [])
    assert _fail(capsys, argv) == f"error: {tmp_path} is not a finished run: model.json is missing"


def test_hand_edited_model_json_or_weights_are_named_not_crashed_on(capsys, tmp_path, tiny_run):
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    meta_path = tiny_run / "model.json"
    meta = json.loads(meta_path.read_text())
    predict = ["predict", str(tiny_run), str(tmp_path / "x.png")]
    meta_path.write_text("[1, 2]")
    assert _fail(capsys, predict) == (f"error: {meta_path} is corrupt: it lacks model, model_kwargs, classes, "
                                      "mean, std, input_size, storage_size")
    meta_path.write_text(json.dumps({**meta, "classes": ["a", "b"]}))  # the head has 3 outputs
    assert _fail(capsys, predict) == f"error: {meta_path} is corrupt: its classes do not match the model's 3 outputs"
    meta_path.write_text(json.dumps({**meta, "model_kwargs": {"num_classes": 3, "width": 0.25}}))
    line = _fail(capsys, predict)
    assert line.startswith(f"error: {tiny_run / 'model.safetensors'} does not fit the model model.json describes (")


def test_report_on_a_folder_that_is_no_run(capsys, tmp_path):
    assert _fail(capsys, ["report", str(tmp_path)]) == \
        f"error: {tmp_path} is not a fitvision run: no model.json or history.csv"


# --------------------------------------------------------------------------- predict
def test_unreadable_image_is_one_error_line_and_the_others_are_predicted(capsys, tmp_path, tiny_run):
    pytest.importorskip("fitvision.data.augment")
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 40), (10, 200, 30)).save(good)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    missing = tmp_path / "missing.png"
    rc = main(["predict", str(tiny_run), str(good), str(bad), str(missing), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: cannot read image {bad}: ")
    assert lines[1] == f"error: image not found: {missing}"
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(good)]
    assert abs(sum(p["prob"] for p in results[0]["top"]) - 1.0) < 1e-5  # 3 classes, top 3


def test_predict_a_folder_predicts_the_images_in_it(capsys, tmp_path, tiny_run):
    pytest.importorskip("fitvision.data.augment")
    for name in ("b/2.png", "a/1.PNG", "a/notes.txt"):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / "imgs" / name).write_text("not an image, and not listed")
        else:
            Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / "imgs" / name, format="PNG")
    (tmp_path / "empty").mkdir()
    # before the fix: "error: cannot read image ...imgs: [Errno 21] Is a directory: ..."
    rc = main(["predict", str(tiny_run), str(tmp_path / "imgs"), str(tmp_path / "empty"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert err == f"error: no images in folder {tmp_path / 'empty'}\n"
    assert [r["file"] for r in json.loads(out)] == [str(tmp_path / "imgs" / "a" / "1.PNG"),
                                                    str(tmp_path / "imgs" / "b" / "2.png")]


def test_predict_expands_a_quoted_pattern(capsys, tmp_path, tiny_run):
    pytest.importorskip("fitvision.data.augment")
    (tmp_path / "imgs").mkdir()
    for name in ("2.png", "1.png"):
        Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / "imgs" / name)
    # a shell that does not expand the pattern (Windows, or quotes) hands it over as it is
    rc = main(["predict", str(tiny_run), str(tmp_path / "imgs" / "*.png"), str(tmp_path / "none" / "*.jpg"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1 and err == f"error: image not found: {tmp_path / 'none' / '*.jpg'}\n"
    assert [r["file"] for r in json.loads(out)] == [str(tmp_path / "imgs" / "1.png"), str(tmp_path / "imgs" / "2.png")]


def test_predict_bad_topk(capsys, tiny_run, tmp_path):
    line = _fail(capsys, ["predict", str(tiny_run), "x.png", "--topk", "0"], code=2)
    assert line == "error: --topk must be at least 1, got 0"
    assert "invalid int value: 'many'" in _fail(capsys, ["predict", str(tiny_run), "x.png", "--topk", "many"], code=2)


def test_eval_bad_crop_pct(capsys, tiny_run):
    for value in ("0", "1.5"):
        line = _fail(capsys, ["eval", str(tiny_run), "--crop-pct", value], code=2)
        assert line == f"error: --crop-pct must be in (0, 1], got {value}"


def test_predict_needs_an_image_usage_error(capsys, tmp_path):
    assert "the following arguments are required: IMAGE" in _fail(capsys, ["predict", str(tmp_path)], code=2)


# --------------------------------------------------------------------------- names
def test_unknown_dataset_lists_the_catalog(capsys):
    pytest.importorskip("fitvision.data.sources")
    from fitvision.data.sources import CATALOG

    line = _fail(capsys, ["datasets", "info", "cifar11"])
    assert line == (f"error: unknown dataset 'cifar11': not a catalog name ({', '.join(CATALOG)}) "
                    "nor an existing folder or archive; did you mean 'cifar10'?")
    line = _fail(capsys, ["datasets", "info", "mnist"])  # nothing close: no guess
    assert line == (f"error: unknown dataset 'mnist': not a catalog name ({', '.join(CATALOG)}) "
                    "nor an existing folder or archive")


def test_unknown_model_lists_the_registry(capsys, tmp_path):
    pytest.importorskip("fitvision.train.run")
    from fitvision.models import list_models

    line = _fail(capsys, ["train", "--model", "resnet10", "--data", str(tmp_path / "nodata"), "--out",
                          str(tmp_path / "r")], code=2)
    assert line == (f"error: unknown model 'resnet10' (did you mean 'resnet9'? valid: {', '.join(list_models())}, "
                    "or timm:NAME / torchvision:NAME)")
    line = _fail(capsys, ["train", "--model", "vgg", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")],
                 code=2)  # nothing close: no guess
    assert line == f"error: unknown model 'vgg' (valid: {', '.join(list_models())}, or timm:NAME / torchvision:NAME)"


# --------------------------------------------------------------------------- option values
@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "epochs must be > 0, got -1.0"),
    (["--crop-pct", "0"], "crop_pct must be in (0, 1], got 0.0"),
    (["--crop-pct", "1.2"], "crop_pct must be in (0, 1], got 1.2"),
    # set-up problems that train_run found only after making the run directory
    (["--device", "tpu"], "unknown device 'tpu' (valid: auto, cpu, cuda, cuda:N)"),
    (["--device", "cpu", "--precision", "fp16"], "precision fp16 needs a CUDA GPU (GradScaler)"),
    (["--epochs", "2", "--freeze-epochs", "2"], "--freeze-epochs 2 leaves no epoch of the 2 to train"),
    (["--init-from", "no/such/run"], "run directory not found: no/such/run"),
])
def test_bad_option_values(capsys, tmp_path, flags, message):
    pytest.importorskip("fitvision.train.run")
    line = _fail(capsys, ["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")] + flags, code=2)
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "r").exists()  # rejected before any work


@pytest.mark.parametrize("config, message", [
    ({"pct_start": 0.0}, "pct_start must be in (0, 1) with sched one_cycle, got 0.0"),
    ({"sched": "flat_cos", "pct_start": 1.0}, "pct_start must be in (0, 1) with sched flat_cos, got 1.0"),
    ({"label_smoothing": 1.5}, "label_smoothing must be in [0, 1), got 1.5"),
    ({"opt": "adam", "beta2": 1.0}, "beta2 must be in [0, 1), got 1.0"),
    ({"opt": "sgd", "momentum": 1.5}, "momentum must be in [0, 1), got 1.5"),
    ({"tta_confident": 1.5}, "tta_confident must be in [0, 1], got 1.5"),
    ({"sched": "exponential", "div_factor": 0}, "div_factor must be > 0, got 0.0"),
])
def test_out_of_range_config_values_fail_before_any_work(capsys, tmp_path, config, message):
    pytest.importorskip("fitvision.train.run")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config))
    line = _fail(capsys, ["train", "--config", str(cfg), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")],
                 code=2)
    assert line == f"error: {message}"
    assert not (tmp_path / "r").exists()


def test_unknown_config_key(capsys, tmp_path):
    pytest.importorskip("fitvision.train.run")
    from fitvision.config import field_names

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 1, "epochz": 3}))
    line = _fail(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")], code=2)
    assert line == (f"error: unknown config key 'epochz' (did you mean 'epochs'? valid keys: "
                    f"{', '.join(sorted(field_names()))})")


def test_datasets_show_errors(capsys, tmp_path):
    pytest.importorskip("fitvision.data.decode")
    assert _fail(capsys, ["datasets", "show"], code=2) == "error: 'fitvision datasets show' needs a dataset name or path"
    assert _fail(capsys, ["datasets", "show", "cifar10", "--n", "0"], code=2) == "error: --n must be at least 1, got 0"
    assert _fail(capsys, ["datasets", "show", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")]) == (
        f"error: unknown dataset '{tmp_path / 'nope'}': not a catalog name (cifar10, cifar100, imagenette, "
        "imagewoof) nor an existing folder or archive")


def test_usage_errors_exit_2(capsys):
    assert _fail(capsys, ["predict", "r", "x.png", "--topk", "many"], code=2) == (
        "fitvision predict: error: argument --topk: invalid int value: 'many' (see 'fitvision predict --help')")
    assert _fail(capsys, ["eval"], code=2) == ("fitvision eval: error: the following arguments are required: run "
                                               "(see 'fitvision eval --help')")
    assert "invalid choice: 'list'" in _fail(capsys, ["datasets", "list"], code=2)


@pytest.mark.parametrize("argv, message", [
    # a bad value: one line, the config's own wording, the nearest name
    (["train", "--epochs", "many"], "argument --epochs: must be a number, got 'many'"),
    (["train", "--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),  # trained to NaN before
    (["train", "--wd", "nan"], "argument --wd: must be a finite number, got 'nan'"),
    (["train", "--bs", "1.5"], "argument --bs: must be an integer, got '1.5'"),
    (["train", "--opt", "adm"], "argument --opt: invalid choice 'adm' (did you mean 'adam'? valid: adam, adamw, "
                                "ewma, lamb, momentum, muon, nesterov, radam, sgd, torch_adam, torch_adamw, torch_sgd)"),
    (["train", "--precision", "fp8"], "argument --precision: invalid choice 'fp8' (valid: auto, fp32, bf16, fp16)"),
    (["train", "--sched", "cosnie"], "argument --sched: invalid choice 'cosnie' (did you mean 'cosine'? valid: "
                                     "constant, cosine, cosine_warmup, exponential, flat_cos, linear, one_cycle, "
                                     "one_cycle_linear, step)"),
    (["lr-find", "--aug", "crop_flp"], "argument --aug: invalid choice 'crop_flp' (did you mean 'crop_flip'? valid: "
                                       "none, flip, crop_flip, crop_flip_alt, crop_flip_cutout, dihedral, rrc_flip, perspective, heavy)"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys, argv, message):
    prog = " ".join(["fitvision", argv[0]])
    assert _fail(capsys, argv, code=2) == f"{prog}: error: {message} (see '{prog} --help')"


def test_unknown_flags_and_commands_say_what_was_meant(capsys):
    """An unknown flag: the subcommand's usage, then the flag and the nearest one (not its value)."""
    assert _fail(capsys, ["train", "--lrr", "0.1"], code=2) == (
        "fitvision train: error: unrecognized arguments: --lrr (did you mean '--lr'?)")
    assert capsys.readouterr().err == ""  # (read by _fail) the first of the two lines was the usage:
    try:
        main(["train", "--lrr", "0.1"])
    except SystemExit:
        pass
    assert capsys.readouterr().err.splitlines()[0] == "usage: fitvision train [options]"
    assert _fail(capsys, ["tune", "--trails", "4"], code=2) == (
        "fitvision tune: error: unrecognized arguments: --trails (did you mean '--trials'?)")
    assert _fail(capsys, ["train", "--frobnicate"], code=2) == "fitvision train: error: unrecognized arguments: --frobnicate"
    assert _fail(capsys, ["report", "a", "b"], code=2) == "fitvision report: error: unrecognized arguments: b"
    assert _fail(capsys, ["trian"], code=2) == (
        "fitvision: error: unknown command 'trian' (did you mean 'train'? valid: datasets, models, recipes, train, "
        "lr-find, eval, predict, report, tune, export, completion) (see 'fitvision --help')")


def test_lr_find_takes_only_the_flags_it_uses(capsys):
    """lr-find evaluates nothing and sweeps the lr itself: --epochs and --tta were read and dropped."""
    from fitvision.cli import build_parser
    from fitvision.options import LR_FIND_UNUSED, flag

    why = "lr-find does not use it: it sweeps the lr over a fixed number of batches and evaluates nothing"
    for name in ("epochs", "tta"):
        assert _fail(capsys, ["lr-find", flag(name), "3"], code=2) == (
            f"fitvision lr-find: error: unrecognized arguments: {flag(name)} ({why})")
    args = build_parser().parse_args(["lr-find", "--opt", "sgd", "--bs", "64"])
    assert (args.opt, args.bs) == ("sgd", 64)
    assert not any(hasattr(args, name) for name in LR_FIND_UNUSED)


def test_flags_are_never_taken_by_their_prefix(capsys):
    """argparse's prefix matching is off: --init is its own flag, and a shortened one is unknown."""
    from fitvision.cli import build_parser, train_config_from_args

    args = build_parser().parse_args(["train", "--init", "lsuv"])
    assert (args.init, args.init_from) == ("lsuv", None)
    assert train_config_from_args(args)[0].init == "lsuv"
    assert train_config_from_args(build_parser().parse_args(["train", "--ema", "0.999"]))[0].ema == 0.999
    assert _fail(capsys, ["train", "--ema", "1.5"], code=2) == "error: ema must be < 1 (a decay per step), got 1.5"
    assert _fail(capsys, ["train", "--epoch", "3"], code=2) == (
        "fitvision train: error: unrecognized arguments: --epoch (did you mean '--epochs'?)")
    assert _fail(capsys, ["--vers"], code=2) == "fitvision: error: unrecognized arguments: --vers (did you mean '--version'?)"
    assert build_parser().parse_args(["datasets", "show", "cifar10", "--aug", "rrc_flip"]).aug == "rrc_flip"
    assert build_parser().parse_args(["datasets", "show", "cifar10", "--aug"]).aug == "recipe"
    assert _fail(capsys, ["datasets", "show", "cifar10", "--aug", "rrc_flp"], code=2) == (
        "error: unknown augmentation 'rrc_flp' (did you mean 'rrc_flip'? valid: none, flip, crop_flip, crop_flip_alt, "
        "crop_flip_cutout, dihedral, rrc_flip, perspective, heavy)")


# --------------------------------------------------------------------------- the real entry point
def test_entry_point_error_line_and_no_traceback(tmp_path):
    missing = tmp_path / "gone"
    proc = subprocess.run([sys.executable, "-m", "fitvision", "eval", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == f"error: run directory not found: {missing}\n"
    assert proc.stdout == ""


def test_data_warnings_are_one_plain_line(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fitvision.data.decode")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    for cls in ("a", "b"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ds" / cls / "0.png")
    (tmp_path / "ds" / "a" / "bad.png").write_bytes(b"no picture")
    assert main(["datasets", "info", str(tmp_path / "ds")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: 1 unreadable image(s) in ") and ".py:" not in err[0]


def test_one_class_is_refused(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fitvision.train.run")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "ds" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "ds" / "cat" / f"{i}.png")
    line = _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--valid-pct", "0.25", "--out", str(tmp_path / "r")])
    assert line == f"error: {tmp_path / 'ds'} has one class (cat); a classifier needs at least two class folders"
    assert not (tmp_path / "r").exists()  # a start that fails leaves no half-made run directory behind
    monkeypatch.chdir(tmp_path)  # nor, without --out, a stray runs/<stamp>-model folder
    _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--valid-pct", "0.25"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("pct, counts", [("0.9", "0 training and 4 validation"), ("0.1", "4 training and 0 validation")])
def test_valid_pct_that_empties_a_side_says_so(capsys, tmp_path, monkeypatch, pct, counts):
    pytest.importorskip("fitvision.train.run")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _class_folders(tmp_path / "ds", per_class=2, side=8)
    line = _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--valid-pct", pct, "--out", str(tmp_path / "r")])
    # before the fix the hint was "(unsplit data: pass --valid-pct)", which had been passed
    assert line == (f"error: ds has {counts} images; both are needed (--valid-pct {pct} of 4 images leaves one "
                    "side empty; choose a fraction that leaves images on both)")
    assert not (tmp_path / "r").exists()


def test_too_small_size_is_one_line_before_any_run_directory(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fitvision.train.run")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _class_folders(tmp_path / "ds", per_class=4, side=16)
    line = _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--valid-pct", "0.25", "--model", "speednet",
                          "--size", "7", "--out", str(tmp_path / "r")])
    # The reason in brackets is torch's own first line (its wording varies across torch versions).
    assert line.startswith("error: speednet cannot train on 7x7 px images (") and "too small" in line
    assert line.endswith("); use a larger --size")
    assert not (tmp_path / "r").exists()


def test_out_that_is_a_file(capsys, tmp_path):
    pytest.importorskip("fitvision.train.run")
    (tmp_path / "r").write_text("notes")
    line = _fail(capsys, ["train", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert line == f"error: --out {tmp_path / 'r'} is a file, not a folder for the run"


def test_train_warns_once_about_skipped_images(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fitvision.train.run")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _split_folders(tmp_path / "ds", blue=0)
    (tmp_path / "ds" / "train" / "a" / "bad.png").write_bytes(b"no picture")
    assert main(["train", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn", "--width", "0.25",
                 "--epochs", "1", "--bs", "4", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert err.count("unreadable image(s)") == 1, err  # the report's reload of the data does not repeat it


@pytest.mark.parametrize("checkpointed", [False, True])
def test_ctrl_c_during_training_says_how_to_go_on(capsys, tmp_path, monkeypatch, checkpointed):
    pytest.importorskip("fitvision.train.run")
    from fitvision.train.learner import Learner

    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _split_folders(tmp_path / "ds")
    out = tmp_path / "r"

    def interrupted_fit(self, *args, **kwargs):
        if checkpointed:  # as after a finished epoch
            (out / "checkpoint.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(Learner, "fit", interrupted_fit)
    line = _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn",
                          "--width", "0.25", "--epochs", "1", "--out", str(out)], code=130)
    assert line == ("error: interrupted; " + (f"continue with: fitvision train --resume --out {out}" if checkpointed
                                              else f"no epoch finished, nothing to resume; train into {out} again"))


def test_config_file_infinity_is_refused(capsys, tmp_path):
    pytest.importorskip("fitvision.train.run")
    (tmp_path / "c.json").write_text('{"lr": "inf"}')
    line = _fail(capsys, ["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")], code=2)
    assert line == "error: config key 'lr' must be a finite number, got 'inf'"


def test_config_files_from_a_pipe_without_a_suffix_and_on_python_310(tmp_path, monkeypatch):
    """`--config <(echo '{"lr": 0.1}')` is a pipe named /dev/fd/N: read, JSON by its first "{";
    TOML otherwise; TOML through tomli where tomllib is missing (Python 3.10)."""
    import threading

    from fitvision.config import load_config_file

    fifo = tmp_path / "63"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('{"lr": 0.1, "epochs": 2}'))
    writer.start()
    assert load_config_file(fifo) == {"lr": 0.1, "epochs": 2}
    writer.join()
    (tmp_path / "plain").write_text('lr = 0.2\nopt = "sgd"\n')
    assert load_config_file(tmp_path / "plain") == {"lr": 0.2, "opt": "sgd"}
    with pytest.raises(FitVisionError, match=r"^config file not found: .*folder$"):
        (tmp_path / "folder").mkdir()
        load_config_file(tmp_path / "folder")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10 has no tomllib
    monkeypatch.setitem(sys.modules, "tomli", types.SimpleNamespace(loads=lambda text: {"from": "tomli"}))
    assert load_config_file(tmp_path / "plain") == {"from": "tomli"}
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(FitVisionError) as e:
        load_config_file(tmp_path / "plain")
    assert str(e.value) == "TOML configs on Python 3.10 need tomli: pip install tomli (or pass a .json config)"


def test_ctrl_c_during_the_report_says_fitvision_report_rebuilds_it(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fitvision.train.run")
    import fitvision.report.html as html

    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _split_folders(tmp_path / "ds")
    out = tmp_path / "r"

    def interrupted_report(run_dir, *args, **kwargs):
        raise KeyboardInterrupt

    original = html.write_report
    monkeypatch.setattr(html, "write_report", interrupted_report)
    line = _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn",
                          "--width", "0.25", "--epochs", "1", "--out", str(out)], code=130)
    assert line == f"error: interrupted; the run is complete, its report is not: fitvision report {out} rebuilds it"
    assert (out / "summary.json").is_file() and (out / "model.safetensors").is_file()
    monkeypatch.setattr(html, "write_report", original)
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


def test_quiet_and_no_progress(capsys, tmp_path, monkeypatch):
    """--quiet prints nothing on success; --no-progress drops the per-epoch lines, keeps setup and result."""
    pytest.importorskip("fitvision.train.run")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _split_folders(tmp_path / "ds")
    base = ["train", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn", "--width", "0.25",
            "--epochs", "2", "--bs", "4"]
    assert main([*base, "-q", "--out", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "quiet" / "summary.json").is_file()
    log = (tmp_path / "quiet" / "train.log").read_text()  # the run's log has everything all the same
    assert re.search(r"\n\S+ \S+     2/2  ", log) and " done: val_acc" in log
    assert re.match(r"\S+ \S+ recipe general\n", log)  # where the settings came from, the log's first line
    assert main([*base, "--no-progress", "--out", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr().out
    assert "2/2" not in plain and "done: val_acc" in plain and plain.startswith("recipe general")
    assert main([*base, "--out", str(tmp_path / "loud")]) == 0  # last: the library's verbosity back to info
    loud = capsys.readouterr().out
    assert "\n    2/2 " in loud and "done: val_acc" in loud and loud.startswith("recipe general")
    assert loud.count("recipe general") == 1  # the terminal shows it once; the log has it too
    # config.json: "auto" asked, what this run resolved recorded
    config = json.loads((tmp_path / "loud" / "config.json").read_text())
    assert (config["device"], config["precision"]) == ("cpu", "bf16" if _bf16_fast() else "fp32")


def _bf16_fast() -> bool:
    from fitvision.train.device import resolve_precision

    import torch

    return resolve_precision("auto", torch.device("cpu")) == "bf16"


def test_a_planted_train_log_link_is_refused(capsys, tmp_path, monkeypatch):
    """A run folder from elsewhere with RUN/train.log a symbolic link: fitvision must not append
    to the file it points at."""
    pytest.importorskip("fitvision.train.run")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _split_folders(tmp_path / "ds")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").symlink_to(victim)
    line = _fail(capsys, ["train", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn",
                          "--width", "0.25", "--epochs", "1", "--bs", "4", "--out", str(tmp_path / "run")])
    assert line == f"error: {tmp_path / 'run' / 'train.log'} is a symbolic link: fitvision appends the run's log there"
    assert victim.read_text() == "keep me\n"
