"""LSUV initialisation (seed 004): every conv and linear layer at unit variance where seed 004
measures it, after its activation.

A layer's measured output is the output of the ReLU it feeds (through dropout at most); a layer
that feeds BatchNorm, or no activation module (a classifier), is measured at its own output, and
that output is also centred when the layer has a bias. All in the forward pass as training sees
it: BatchNorm on batch statistics, dropout off. The tests measure it independently with their own
hooks after lsuv_init is done.
"""

import io
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.models import create_model, lsuv_init

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
PER_CLASS = 10  # 100 test images, 10 of each class
LAYERS = (nn.Conv2d, nn.Linear)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar_batch(data_dir):
    """Real CIFAR-10 test images, straight from the archive (the test split comes first in it)."""
    pattern = re.compile(r"cifar10/test/[a-z]+/(\d+)\.jpg$")
    images = []
    with tarfile.open(data_dir / "cifar10-jpeg.tgz", "r:gz") as tar:
        for member in tar:
            if "/train/" in member.name:
                break
            match = pattern.search(member.name)
            if match and int(match.group(1)) < PER_CLASS:
                data = tar.extractfile(member).read()
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert len(images) == 10 * PER_CLASS
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]


def measure(model, x):
    """{layer: (mean, std, centred)} for every conv/linear layer, at the ReLU it feeds (through
    dropout) or else its own output; centred: whether LSUV should also have zeroed the mean."""
    calls, handles = [], []
    for name, m in model.named_modules():
        if not list(m.children()):
            def hook(m, _inp, out, name=name):  # computed at once: a later in-place ReLU changes out
                calls.append((name, m, out.float().mean().item(), out.float().std().item()))
            handles.append(m.register_forward_hook(hook))
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    stats = {}
    for i, (name, m, mean, std) in enumerate(calls):
        if isinstance(m, LAYERS):
            after = [c for c in calls[i + 1:] if not isinstance(c[1], nn.Dropout)]
            if after and isinstance(after[0][1], nn.ReLU):
                stats[name] = (*after[0][2:], False)
            else:
                stats[name] = (mean, std, m.bias is not None)
    return stats


@pytest.mark.parametrize("name,kwargs", [
    ("resnet9", {"width": 0.125}),
    ("cnn", {}),
    ("convnet", {"dropout": True}),
    ("mlp", {"hidden": 128}),
    ("alexnet", {"width": 0.125}),
])
def test_lsuv_unit_variance_on_real_cifar(cifar_batch, name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    result = lsuv_init(model, cifar_batch)
    stats = measure(model, cifar_batch)
    assert [r[0] for r in result] == list(stats)  # every conv/linear layer, input to output
    for layer, mean, std in result:
        got_mean, got_std, centred = stats[layer]
        assert abs(got_std - 1) <= 0.01 and (abs(got_mean) <= 0.01 or not centred), (layer, stats[layer])
        assert (got_mean, got_std) == pytest.approx((mean, std), abs=1e-5)  # what lsuv_init reports is true


def test_lsuv_measures_each_layer_after_its_activation(cifar_batch):
    """Seed 004 hooks its ConvLayer (conv + ReLU): the ReLU's output gets unit std. Measured at the
    conv's own output instead (before), the ReLU halved the variance: std about 0.58."""
    torch.manual_seed(0)
    model = create_model("cnn")
    lsuv_init(model, cifar_batch)
    relu_std = []
    handles = [m.register_forward_hook(lambda _m, _i, out: relu_std.append(out.std().item()))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(cifar_batch)
    for h in handles:
        h.remove()
    assert len(relu_std) == 3 and all(abs(s - 1) <= 0.01 for s in relu_std), relu_std


def test_lsuv_covers_every_conv_including_those_feeding_batchnorm(cifar_batch):
    """xresnet's convs have no bias and feed BatchNorm: each is scaled to unit output std (before,
    LSUV left them alone and touched 1 layer of 16, the head); their means cannot move."""
    torch.manual_seed(0)
    model = create_model("xresnet", width=0.125)
    result = lsuv_init(model, cifar_batch)
    stats = measure(model, cifar_batch)  # (in train mode: moves the BatchNorm running statistics)
    assert len(stats) == 16 and [r[0] for r in result] == list(stats)
    for layer, (mean, std, centred) in stats.items():
        assert abs(std - 1) <= 0.01 and (abs(mean) <= 0.01 or not centred), (layer, stats[layer])
    assert sum(centred for *_, centred in stats.values()) == 1  # only the head has a bias


def test_lsuv_restores_modes_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = create_model("resnet9", width=0.125).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    result = lsuv_init(model, torch.randn(16, 3, 32, 32))
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(abs(mean) <= 1e-3 and abs(std - 1) <= 1e-3 for _, mean, std in result)


def test_lsuv_skips_fixed_layers_and_accepts_a_batch_tuple():
    torch.manual_seed(0)
    model = create_model("cnn", width=0.25)
    model.features[0].weight.requires_grad_(False)
    w = model.features[0].weight.clone()
    x = torch.randn(8, 3, 32, 32)
    result = lsuv_init(model, (x, torch.zeros(8, dtype=torch.long)))
    assert [r[0] for r in result] == ["features.3", "features.6", "classifier.2"]
    assert torch.equal(model.features[0].weight, w)


def test_lsuv_constant_batch_is_an_error():
    model = create_model("mlp", hidden=16)
    with pytest.raises(FitVisionError, match=r"^LSUV: layer 'hidden.linear' gives a constant output \(std 0\) "
                                             r"on this batch; pass a batch of varied, normalised images$"):
        lsuv_init(model, torch.zeros(4, 3, 32, 32))
