"""The model registry and the interface every model shares, tested over the whole registry."""

import json
import re

import pytest
import torch
from torch import nn

from fitvision.cli import main
from fitvision.errors import FitVisionError
from fitvision.models import (count_params, create_model, freeze, list_models, model_table, param_groups,
                              register_model, unfreeze)
from fitvision.models import registry
from fitvision.models.layers import ConvBlock, LinearBlock, Residual, SimpleResidualBlock, prev_pow_2

SEED_MODELS = ["mlp", "convnet", "cnn", "alexnet", "resnet9", "xresnet"]
MODELS = list_models()
SMALL = 0.125  # width for tests that are not about size: every model stays tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def small(name, **kw):
    torch.manual_seed(0)
    return create_model(name, width=SMALL, **kw)


def test_registry_holds_the_seed_models():
    assert set(SEED_MODELS) <= set(MODELS)
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_forward_backward(name, size):
    model = small(name).train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:  # a model may keep some parameters fixed (speednet's whitening)
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_head_of_features(name):
    model = small(name).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert torch.equal(model(x), model.forward_head(feats))
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.get_classifier().in_features)


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model = small(name).eval()
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.num_classes == 5
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in body.items())
    with pytest.raises(FitVisionError, match=r"^num_classes must be a positive integer, got 0$"):
        model.reset_classifier(0)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_matches_contiguous(name):
    model = small(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_forward(name):
    model = small(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10)
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 0.02


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _head_names(model):
    return {"classifier." + n for n, _ in model.classifier.named_parameters()}


def _bn_names(model):
    return {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
            for pn, _ in m.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_freeze_without_bn_trains_only_the_head(name):
    model = small(name)
    before = _trainable(model)
    freeze(model, train_bn=False)
    assert _trainable(model) == _head_names(model) & before
    model.train()  # as a training loop would: frozen BatchNorm must stay in eval mode
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 32, 32))
    assert not any(m.training for m in bns)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bns, stats))
    unfreeze(model)
    assert _trainable(model) == before
    assert all(m.training for m in bns)


@pytest.mark.parametrize("name", MODELS)
def test_freeze_with_bn_trains_head_and_batchnorm(name):
    model = small(name).train()
    before = _trainable(model)
    freeze(model)
    assert _trainable(model) == (_head_names(model) | _bn_names(model)) & before
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    freeze(model, train_bn=False)  # freezing again, tighter, is still undone by one unfreeze
    unfreeze(model)
    assert _trainable(model) == before


def test_unfreeze_keeps_what_the_model_fixed():
    model = small("resnet9")
    model.conv1[0].weight.requires_grad_(False)  # fixed by the model's author, not by freeze
    freeze(model)
    unfreeze(model)
    assert not model.conv1[0].weight.requires_grad
    assert model.conv2[0].weight.requires_grad


def test_freeze_looks_through_compile_wrapper():
    model = small("resnet9")

    class Compiled(nn.Module):  # what torch.compile returns holds the model as _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    freeze(Compiled(model), train_bn=False)
    assert _trainable(model) == {"classifier.3.weight", "classifier.3.bias"}


@pytest.mark.parametrize("name", MODELS)
def test_param_groups_partition_the_parameters(name):
    model = small(name)
    groups = param_groups(model, wd=5e-4, body_lr_mult=0.1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) <= {"body", "body_no_decay", "head", "head_no_decay"}
    head_ids = {id(p) for p in model.classifier.parameters()}
    for g in groups:
        in_head = g["name"].startswith("head")
        assert all((id(p) in head_ids) == in_head for p in g["params"])
        assert g["lr_mult"] == (1.0 if in_head else 0.1)
        no_decay = g["name"].endswith("_no_decay")
        assert g["weight_decay"] == (0.0 if no_decay else 5e-4)
        assert all((p.ndim <= 1) == no_decay for p in g["params"])  # biases and norm params


def test_resnet9_matches_the_seed():
    assert count_params(create_model("resnet9")) == 6_575_370  # the seed's conv biases kept
    assert count_params(create_model("resnet9", conv_bias=False)) == 6_573_130


class SeedResNet9(nn.Module):
    """Seed 000/001's ResNet9 as the notebook describes it, the reference for parity."""

    def __init__(self):
        super().__init__()

        def block(ci, co, pool=False):
            layers = [nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU()]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        self.conv1, self.conv2 = block(3, 64), block(64, 128, True)
        self.res1 = nn.Sequential(block(128, 128), block(128, 128))
        self.conv3, self.conv4 = block(128, 256, True), block(256, 512, True)
        self.res2 = nn.Sequential(block(512, 512), block(512, 512))
        self.classifier = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), nn.Dropout(0.2), nn.Linear(512, 10))

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        out = self.res1(out) + out
        out = self.conv4(self.conv3(out))
        out = self.res2(out) + out
        return self.classifier(out)


def test_resnet9_loads_seed_weights_and_gives_the_same_outputs():
    torch.manual_seed(1)
    seed = SeedResNet9().eval()
    for m in seed.modules():  # non-trivial BatchNorm statistics, so the test can tell layers apart
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ours = create_model("resnet9").eval()
    ours.load_state_dict(seed.state_dict())  # strict: every key and shape matches
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=0, atol=0)


def test_resnet9_width_and_options():
    model = create_model("resnet9", width=0.5, dropout=0.0)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 64, 64, 128, 256, 256, 256]
    assert model.classifier[2].p == 0.0


def test_convnet_dropout_variant_is_the_seeds():
    plain, drop = create_model("convnet"), create_model("convnet", dropout=True)
    assert [m.p for m in drop.modules() if isinstance(m, nn.Dropout)] == [0.6, 0.6, 0.5]
    assert all(m.p == 0.0 for m in plain.modules() if isinstance(m, nn.Dropout))
    assert count_params(plain) == count_params(drop) == 545_098  # 2 convs, 8*8*64 -> 128 -> 10


def test_seed_parameter_counts():
    # Hand-computed from the seeds' layer shapes.
    assert count_params(create_model("mlp")) == 3072 * 500 + 500 + 500 * 10 + 10
    assert count_params(create_model("mlp", hidden=64)) == 3072 * 64 + 64 + 64 * 10 + 10
    assert count_params(create_model("cnn")) == 113_738
    with torch.device("meta"):
        assert count_params(create_model("alexnet")) == 59_666_250


def test_xresnet_stem_follows_prev_pow_2():
    assert [prev_pow_2(x) for x in (27, 9, 16, 17)] == [16, 8, 16, 16]
    model = create_model("xresnet", widths=(32, 64), depth=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 16, 1), (16, 32, 2), (32, 64, 2), (64, 32, 2), (32, 64, 2)]
    grey = create_model("xresnet", in_channels=1, width=SMALL)
    assert grey.stem[0][0].out_channels == 8
    deep = create_model("xresnet", depth=2, width=SMALL)
    assert sum(isinstance(m, Residual) for m in deep.modules()) == 2 * 4


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(FitVisionError) as e:
        create_model("resnet99")
    assert str(e.value) == f"unknown model 'resnet99' (did you mean 'resnet9'? valid: {', '.join(MODELS)})"


def test_bad_options_are_named():
    with pytest.raises(FitVisionError, match=r"^model 'resnet9' has no option\(s\) depth, hidden \(valid: dropout, conv_bias\)$"):
        create_model("resnet9", hidden=3, depth=2)
    with pytest.raises(FitVisionError, match=r"^width must be a positive number, got 0$"):
        create_model("cnn", width=0)
    with pytest.raises(FitVisionError, match=r"^num_classes must be a positive integer, got 0$"):
        create_model("cnn", num_classes=0)
    # values are checked against the option's default: "whiten=maybe" must not build a whitening net
    with pytest.raises(FitVisionError, match=r"^model 'speednet' option whiten takes true or false, got 'maybe'$"):
        create_model("speednet", whiten="maybe")
    with pytest.raises(FitVisionError, match=r"^model 'xresnet18' option se takes an integer, got 'abc'$"):
        create_model("xresnet18", se="abc")
    with pytest.raises(FitVisionError, match=r"^model 'xresnet18' option groups takes an integer, got True$"):
        create_model("xresnet18", groups=True)
    assert count_params(create_model("xresnet18", width=0.125, dropout=1)) > 0  # an int where a float goes


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(name="tiny")
    def tiny_builder(num_classes=10, in_channels=3, width=1.0, bias=True):
        """A linear probe for tests."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes, bias=bias))

    assert "tiny" in list_models()
    assert create_model("tiny", num_classes=3, bias=False)[1].bias is None
    assert {"name": "tiny", "params": 130, "description": "A linear probe for tests."} in model_table()
    with pytest.raises(TypeError, match="must accept num_classes, width"):
        register_model(lambda in_channels=3: None)
    with pytest.raises(ValueError, match="'tiny' is registered twice"):
        register_model(name="tiny")(lambda num_classes=10, in_channels=3, width=1.0: None)


def test_models_json_lists_every_seed_model(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    params = {r["name"]: r["params"] for r in rows}
    assert set(SEED_MODELS) <= set(params)
    assert params["resnet9"] == 6_575_370
    assert all(isinstance(r["params"], int) and r["params"] > 0 and r["description"] for r in rows)


def test_models_table_text(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "parameters", "description"]
    assert any(line.split()[:2] == ["resnet9", "6,575,370"] for line in lines)
    starts = {re.match(r"\S+\s+\S+\s+", line).end() for line in lines}  # descriptions start in one column
    assert len(starts) == 1
    assert all(line.rstrip().endswith((".", ")")) for line in lines[1:]), [ln for ln in lines if ln[-1] not in ".)"]


def test_seed_blocks():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    block = SimpleResidualBlock()
    expect = torch.relu(block.conv2(torch.relu(block.conv1(x)))) + x
    torch.testing.assert_close(block(x), expect)
    conv = ConvBlock(3, 4, dropout_p=0.6).eval()
    torch.testing.assert_close(conv(x), torch.max_pool2d(torch.relu(conv.conv(x)), 2))
    lin = LinearBlock(5, 2, activation=nn.Tanh())
    v = torch.randn(3, 5)
    torch.testing.assert_close(lin.eval()(v), torch.tanh(lin.linear(v)))
    res = Residual(nn.Conv2d(3, 3, 1))
    torch.testing.assert_close(res(x), x + res[0](x))


def test_kaiming_init_by_default_and_seeded():
    torch.manual_seed(3)
    model = create_model("resnet9", width=0.5)
    conv = model.res2[1][0]  # 256 -> 256, 3x3: fan_in 2304, 590k weights
    assert conv.weight.std().item() == pytest.approx((2 / 2304) ** 0.5, rel=0.01)
    assert torch.count_nonzero(conv.bias) == 0
    head = model.get_classifier()  # PyTorch's default: uniform within 1/sqrt(fan_in)
    assert head.weight.abs().max().item() <= 256 ** -0.5
    assert head.weight.std().item() == pytest.approx((1 / (3 * 256)) ** 0.5, rel=0.1)
    torch.manual_seed(3)
    again = create_model("resnet9", width=0.5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
