import copy

import pytest
import torch
from torch import nn

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError
from fitvision.train.hooks import Hook, Phases
from fitvision.train.learner import Learner
from fitvision.train.modelfile import save_model
from fitvision.models import final_layer_name
from fitvision.train.transfer import BODY_LR_MULT, Phase, apply_init_from, fine_tune_phases


class TinyNet(nn.Module):
    """The model interface transfer relies on: a body, and a classifier ending in the final layer."""

    def __init__(self, num_classes=4, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, width),
                                        nn.ReLU(), nn.Linear(width, num_classes))

    def get_classifier(self):
        return self.classifier[-1]

    def forward(self, x):
        return self.classifier(self.body(x))


def save_run(path, model, classes, name="tinynet", width=8):
    meta = {"model": name, "model_kwargs": {"num_classes": len(classes), "width": width}, "classes": classes,
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [8, 8], "storage_size": 8}
    save_model(path, model, meta)
    return path


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(1)
    model = TinyNet(4)
    with torch.no_grad():  # non-default BN statistics, so that copying them is visible
        model.body[1].running_mean.uniform_()
    return model, save_run(tmp_path / "src", model, ["a", "b", "c", "d"])


def test_body_loaded_head_fresh_for_new_classes(source):
    src_model, run = source
    torch.manual_seed(2)
    target = TinyNet(3)
    fresh_head = copy.deepcopy(target.get_classifier().state_dict())
    info = apply_init_from(target, run, classes=["x", "y", "z"])

    src, dst = src_model.state_dict(), target.state_dict()
    body_keys = [k for k in dst if not k.startswith("classifier.4.")]
    assert len(body_keys) == 9  # conv w/b, bn w/b/mean/var/count, hidden fc w/b
    for key in body_keys:
        assert torch.equal(dst[key], src[key]), key
    for key, value in target.get_classifier().state_dict().items():
        assert torch.equal(value, fresh_head[key])
    assert info == {"init_from": str(run), "loaded": 9, "head_reset": True, "source_classes": ["a", "b", "c", "d"]}


def test_same_classes_copies_the_head_too(source):
    src_model, run = source
    target = TinyNet(4)
    info = apply_init_from(target, TrainConfig(model="tinynet", width=1.0, init_from=str(run)),
                           classes=["a", "b", "c", "d"])
    assert info["head_reset"] is False and info["loaded"] == 11
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(target.eval()(x), src_model.eval()(x))


def test_same_class_count_but_other_classes_resets_head(source):
    _, run = source
    target = TinyNet(4)
    before = target.get_classifier().weight.clone()
    assert apply_init_from(target, run, classes=["w", "x", "y", "z"])["head_reset"] is True
    assert torch.equal(target.get_classifier().weight, before)


def test_other_architecture_names_both(source):
    _, run = source
    cfg = TrainConfig(model="resnet9", width=1.0, init_from=str(run))
    with pytest.raises(FitVisionError) as e:
        apply_init_from(TinyNet(3), cfg)
    assert str(e.value) == (f"--init-from {run} holds a tinynet(width=8), which cannot initialise a "
                            "resnet9(width=1.0); train with --model tinynet or start from a resnet9 run")


def test_other_width_names_the_layer(source):
    _, run = source
    cfg = TrainConfig(model="tinynet", width=0.5, init_from=str(run))
    with pytest.raises(FitVisionError) as e:
        apply_init_from(TinyNet(3, width=4), cfg)
    assert str(e.value) == (f"--init-from {run} holds a tinynet(width=8), which does not fit this "
                            "tinynet(width=0.5): 'body.0.weight' is shape (8, 3, 3, 3) there, (4, 3, 3, 3) here")


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FitVisionError, match=r"^run directory not found: .*nope$"):
        apply_init_from(TinyNet(3), tmp_path / "nope")


def test_final_layer_name():
    assert final_layer_name(TinyNet()) == "classifier.4"
    assert final_layer_name(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))) == "2"
    with pytest.raises(FitVisionError) as e:
        final_layer_name(nn.Sequential(nn.Conv2d(2, 2, 1)))
    assert str(e.value) == "Sequential has no classifier layer: cannot tell its head from its body"


@pytest.mark.parametrize("kwargs, phases", [
    ({}, [Phase(10, False, 1.0)]),
    ({"init_from": "run"}, [Phase(10, False, BODY_LR_MULT)]),
    ({"init_from": "run", "freeze": True}, [Phase(10, True, 1.0)]),
    ({"init_from": "run", "freeze": True, "freeze_epochs": 3}, [Phase(3, True, 1.0), Phase(7, False, BODY_LR_MULT)]),
    ({"freeze": True, "freeze_epochs": 2}, [Phase(2, True, 1.0), Phase(8, False, 1.0)]),
    ({"init_from": "run", "freeze_epochs": 3}, [Phase(3, True, 1.0), Phase(7, False, BODY_LR_MULT)]),
])
def test_fine_tune_phases(kwargs, phases):
    assert fine_tune_phases(TrainConfig(epochs=10, **kwargs)) == phases


@pytest.mark.parametrize("kwargs, message", [
    ({"freeze_epochs": -1}, "--freeze-epochs must be 0 or more, got -1"),
    ({"freeze": True, "freeze_epochs": 10}, "--freeze-epochs 10 leaves no epoch of the 10 to train the whole "
                                            "network; use fewer, or --freeze alone"),
])
def test_fine_tune_phases_errors(kwargs, message):
    with pytest.raises(FitVisionError) as e:
        fine_tune_phases(TrainConfig(epochs=10, **kwargs))
    assert str(e.value) == message


class Batches:
    """The loader interface the Learner needs: set_epoch, len, and (x, y) batches."""

    def __init__(self, n=32, bs=16, classes=3):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y, self.bs = torch.randn(n, 3, 8, 8, generator=gen), torch.arange(n) % classes, bs

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.y) // self.bs

    def __iter__(self):
        return ((self.x[i:i + self.bs], self.y[i:i + self.bs]) for i in range(0, len(self.y), self.bs))


class Recorder(Hook):
    """Per epoch: did the body conv / the final layer change, and the body and head lrs used."""

    def __init__(self, model, learn):
        self.model, self.learn, self.epochs = model, learn, []

    def _weights(self):
        return self.model.body[0].weight.clone(), self.model.get_classifier().weight.clone()

    def on_fit_start(self, state):
        self.start = self._weights()

    def on_batch_end(self, state):
        self.lrs = {g["name"]: g["lr"] for g in self.learn.opt.param_groups}

    def on_epoch_end(self, state):  # runs before Phases switches to the next epoch's phase
        now = self._weights()
        self.epochs.append((not torch.equal(now[0], self.start[0]), not torch.equal(now[1], self.start[1]),
                            self.lrs["body"] / self.lrs["head"]))
        self.start = now


def test_phases_train_head_then_all_with_a_slower_body():
    """The plan as train_run applies it (hooks.Phases on a Learner): head only, then all, body slower."""
    torch.manual_seed(0)
    model = TinyNet(3)
    learn = Learner(model, Batches(), Batches(), lr=0.01, progress=False, precision="fp32")
    recorder = Recorder(model, learn)
    cfg = TrainConfig(epochs=3, init_from="run", freeze=True, freeze_epochs=1)
    learn.hooks += [recorder, Phases(learn, fine_tune_phases(cfg))]
    learn.fit(3)
    # (body conv changed, final layer changed, body lr / head lr) for each epoch
    assert recorder.epochs == [(False, True, pytest.approx(1.0)),
                               (True, True, pytest.approx(BODY_LR_MULT)),
                               (True, True, pytest.approx(BODY_LR_MULT))]
    assert all(p.requires_grad for p in model.parameters())


def test_cli_init_from_loads_and_freezes_the_body(tmp_path, capsys):
    """End to end: pretrain, then fine-tune on other classes with the body frozen, via the CLI."""
    from safetensors.torch import load_file

    from fitvision.cli import main
    from synthetic_images import make_image_folder

    src = make_image_folder(tmp_path / "src", ["r", "g", "b"], 16, 4)
    dst = make_image_folder(tmp_path / "dst", ["x", "y"], 16, 4, seed=1)
    common = ["--model", "cnn", "--bs", "8", "--precision", "fp32", "--device", "cpu", "--epochs", "1"]
    assert main(["train", "--data", str(src), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--data", str(dst), "--init-from", str(tmp_path / "a"), "--freeze",
                 "--out", str(tmp_path / "b"), *common]) == 0
    assert f"note      initialised from {tmp_path / 'a'}: 6 tensors, head reset for the new classes" \
        in capsys.readouterr().out
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    body = [k for k in a if k.startswith("features.")]
    assert len(body) == 6 and all(torch.equal(a[k], b[k]) for k in body)  # loaded, then frozen for the run
    assert a["classifier.2.weight"].shape == (3, 2048) and b["classifier.2.weight"].shape == (2, 2048)

    assert main(["train", "--data", str(dst), "--init-from", str(tmp_path / "a"), "--model", "convnet",
                 "--out", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err == (f"error: --init-from {tmp_path / 'a'} holds a cnn(width=1.0), "
                                       "which cannot initialise a convnet(width=1.0); train with --model cnn "
                                       "or start from a convnet run\n")


def test_external_model_needs_its_library():
    import importlib.util

    from fitvision.models.external import external_model

    with pytest.raises(FitVisionError) as e:
        external_model("keras:resnet", 3)
    assert str(e.value) == "external model 'keras:resnet' must be timm:NAME or torchvision:NAME"
    for lib in ("timm", "torchvision"):
        if importlib.util.find_spec(lib) is None:
            with pytest.raises(FitVisionError) as e:
                external_model(f"{lib}:resnet18", 3)
            assert str(e.value) == f"model '{lib}:resnet18' needs {lib}, which is not installed: pip install {lib}"


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_external_model_head_sized_for_new_classes(lib):
    pytest.importorskip(lib, reason=f"{lib} not installed (optional)")
    from fitvision.models.external import external_model

    model = external_model(f"{lib}:resnet18", 3, pretrained=False).eval()
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    assert model.get_submodule(final_layer_name(model)).out_features == 3


def _fake_timm(monkeypatch) -> list:
    """A stand-in for timm (not installable here: it needs torchvision): create_model builds a
    small network whose "pretrained" weights are fixed numbers a fresh init never draws."""
    import importlib.machinery
    import sys
    import types

    built = []

    def create_model(name, pretrained=False, num_classes=1000):
        if name != "tinynet":
            raise RuntimeError(f"Unknown model ({name})\nsecond line of the library's message")
        built.append(pretrained)
        net = TinyNet(num_classes)
        if pretrained:
            with torch.no_grad():
                net.body[0].weight.copy_(torch.linspace(-0.5, 0.5, net.body[0].weight.numel()).view_as(
                    net.body[0].weight))
        return net

    timm = types.ModuleType("timm")
    timm.__spec__ = importlib.machinery.ModuleSpec("timm", None)
    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return built


def test_cli_trains_evaluates_and_predicts_a_timm_model(tmp_path, monkeypatch, capsys):
    """--model timm:NAME: pretrained body frozen with --freeze, saved, rebuilt without a download."""
    import json

    from safetensors.torch import load_file

    from fitvision.cli import main
    from synthetic_images import make_image_folder

    built = _fake_timm(monkeypatch)
    data = make_image_folder(tmp_path / "data", ["r", "g", "b"], 16, 4)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "timm:tinynet", "--freeze", "--bs", "8", "--epochs", "1",
                 "--precision", "fp32", "--device", "cpu", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "model     timm:tinynet: 339 parameters" in out
    assert "note      timm:tinynet: pretrained weights, final layer new for 3 classes" in out
    weights = load_file(str(run / "model.safetensors"))
    pretrained = torch.linspace(-0.5, 0.5, 8 * 3 * 3 * 3).view(8, 3, 3, 3)
    assert torch.equal(weights["body.0.weight"], pretrained)  # loaded, then frozen for the run
    assert json.loads((run / "model.json").read_text())["model_kwargs"] == {"num_classes": 3}
    assert built == [True]
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run), "--json"]) == 0  # rebuilt from model.json: the architecture only
    assert built == [True, False]  # no second download
    assert json.loads(capsys.readouterr().out)["val_acc"] == pytest.approx(summary["val_acc"], abs=1e-6)
    image = next((data / "valid" / "g").iterdir())
    assert main(["predict", str(run), str(image)]) == 0 and built == [True, False, False]
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_timm_model_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from fitvision.cli import main
    from synthetic_images import make_image_folder

    data = make_image_folder(tmp_path / "data", ["r", "g"], 4, 2)
    common = ["--data", str(data), "--epochs", "1", "--device", "cpu"]
    _fake_timm(monkeypatch)
    assert main(["train", *common, "--model", "timm:tinynet", "--model-options", "drop=0.1",
                 "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == ("error: model 'timm:tinynet' is built by its library as it is: "
                                       "model_options and width apply to fitvision's own models only\n")
    from fitvision.cli import build_parser, train_config_from_args

    cfg, _ = train_config_from_args(build_parser().parse_args(["train", "--recipe", "cpu", "--model", "timm:tinynet"]))
    assert cfg.width == 1.0  # the recipe's 0.75 was for speednet
    assert main(["train", *common, "--model", "timm:nosuchnet", "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err == ("error: model 'timm:nosuchnet' could not be built with its pretrained "
                                       "weights by timm: RuntimeError: Unknown model (nosuchnet)\n")
    assert main(["train", *common, "--model", "keras:resnet", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == "error: external model 'keras:resnet' must be timm:NAME or torchvision:NAME\n"
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # refused before any work


def test_body_lr_mult_scales_each_groups_own_multiplier():
    """Fine-tune phases slow the body down without erasing its groups' own multipliers (biases at
    64x the lr), and going back to 1x restores them exactly."""
    torch.manual_seed(0)
    model = TinyNet(3)
    cfg = TrainConfig(lr=0.01, bias_lr_mult=64.0, device="cpu", precision="fp32")
    learn = Learner.from_config(cfg, model, Batches(), Batches(), progress=False)
    mults = lambda: {g["name"]: g["lr_mult"] for g in learn.opt.param_groups}  # noqa: E731
    assert mults() == {"body": 1.0, "body_no_decay": 64.0, "head": 1.0, "head_no_decay": 64.0}
    learn.set_body_lr_mult(0.1)
    assert mults() == {"body": 0.1, "body_no_decay": pytest.approx(6.4), "head": 1.0, "head_no_decay": 64.0}
    learn.set_body_lr_mult(1.0)
    assert mults() == {"body": 1.0, "body_no_decay": 64.0, "head": 1.0, "head_no_decay": 64.0}
