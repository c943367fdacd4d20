"""Seed knobs reachable from config and CLI (issue 28): normalization presets and explicit values,
PyTorch's default init, and xresnet's depth 0 with the seed's conv-ReLU-BN order."""

import pytest
import torch
from torch import nn

from fitvision.config import TrainConfig, validate
from fitvision.data.augment import NORMALIZE_PRESETS, normalization_stats
from fitvision.errors import FitVisionError
from fitvision.models import create_model


def test_normalize_presets_and_explicit_values():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    assert normalization_stats("half", images) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # seed 002's Normalize
    assert normalization_stats("imagenet", images) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalization_stats("cifar", images) == NORMALIZE_PRESETS["cifar"]
    assert normalization_stats("0.1,0.2,0.3/0.5,0.5,0.25", images) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.25))
    validate(TrainConfig(normalize="0.1,0.2,0.3/0.5,0.5,0.25"))
    with pytest.raises(FitVisionError, match=r"^unknown normalize 'imagnet' \(did you mean 'imagenet'\?"):
        validate(TrainConfig(normalize="imagnet"))
    with pytest.raises(FitVisionError, match=r"three means and three positive stds as 'm1,m2,m3/s1,s2,s3', "
                                             r"got '0,0,0/1,0,1'$"):
        validate(TrainConfig(normalize="0,0,0/1,0,1"))


def test_normalize_reaches_the_run(tmp_path, monkeypatch):
    """model.json carries the stats the run normalised with, so predict uses them too."""
    import json

    from fitvision.cli import main
    from test_cli_errors import _split_folders

    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    _split_folders(tmp_path / "ds")
    assert main(["train", "--data", str(tmp_path / "ds"), "--model", "cnn", "--width", "0.25", "--epochs", "1",
                 "--bs", "4", "--normalize", "half", "--init", "torch", "-q", "--out", str(tmp_path / "r")]) == 0
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    assert (meta["mean"], meta["std"]) == ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert "PyTorch's default init on 4 conv and linear layers" in (tmp_path / "r" / "train.log").read_text()


def test_torch_init_is_pytorchs_layer_default_not_kaiming():
    from fitvision.models.init import torch_default_init

    torch.manual_seed(0)
    model = create_model("resnet9")
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][5]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)  # the zoo's Kaiming normal
    assert torch_default_init(model) == 9  # 8 convs and the linear head
    bound = 1 / fan_in ** 0.5  # kaiming_uniform with a = sqrt(5): within sqrt(6 / (6 fan_in))
    assert conv.weight.abs().max().item() <= bound and conv.weight.std().item() == pytest.approx(bound / 3 ** 0.5,
                                                                                                   rel=0.05)


def test_xresnet_depth_0_with_the_seeds_conv_relu_bn_order():
    plain = create_model("xresnet", depth=0)
    assert not any(type(m).__name__ == "Residual" for m in plain.modules())
    seed = create_model("xresnet", depth=0, order="act_bn")
    first = seed.stem[0]
    assert [type(m) for m in first] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d] and first[0].bias is not None
    assert [type(m) for m in plain.stem[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and plain.stem[0][0].bias is None
    assert seed(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    # the seed's model: 3 stem layers 3->16->32->64, then nfs 64,64,128,256, each a stride-2 conv_layer
    convs = [m for m in seed.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 16, 1), (16, 32, 2), (32, 64, 2), (64, 64, 2), (64, 64, 2), (64, 128, 2), (128, 256, 2)]
    with pytest.raises(FitVisionError, match=r"unknown order 'bnact' \(did you mean 'bn_act'\?"):
        create_model("xresnet", order="bnact")
    with pytest.raises(FitVisionError, match="depth must be >= 0, got -1"):
        create_model("xresnet", depth=-1)


def test_seed_003_cnn_variants_batchnorm_and_dropout():
    plain, varied = create_model("cnn"), create_model("cnn", bn=True, dropout=0.5)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in plain.modules())
    assert "classifier.2.weight" in plain.state_dict()  # saved runs of the plain CNN still load
    assert sum(isinstance(m, nn.BatchNorm2d) for m in varied.modules()) == 3
    assert [m.p for m in varied.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert varied(torch.randn(2, 3, 32, 32)).shape == (2, 10)
