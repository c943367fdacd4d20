"""The ImageNet-style XResNets (ResNet-D): structure, sizes and the identity start."""

import pytest
import torch

from fitvision.errors import FitVisionError
from fitvision.models import count_params, create_model
from fitvision.models.resnetd import ResBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parameter_counts_match_the_resnet_d_layouts():
    # torchvision's resnet18/34/50 with 10 classes hold 11,181,642 / 21,289,802 / 23,528,522. The
    # 3-conv stem (3->32->32->64, 28,768 parameters with its BatchNorms) replaces the 7x7 conv
    # (9,536): +19,232 each; the avg-pool shortcuts add no parameters.
    stem = 19_232
    assert count_params(create_model("xresnet18")) == 11_181_642 + stem
    assert count_params(create_model("xresnet34")) == 21_289_802 + stem
    assert count_params(create_model("xresnet50")) == 23_528_522 + stem


def test_blocks_start_as_their_shortcut():
    torch.manual_seed(0)
    for block in (ResBlock(16, 16), ResBlock(16, 32, stride=2), ResBlock(16, 8, stride=2, expansion=4)):
        block.eval()
        x = torch.randn(2, 16, 9, 9)
        with torch.no_grad():
            assert torch.equal(block(x), torch.relu(block.shortcut(x)))  # zero-initialised last BatchNorm


def test_downsampling_shortcut_averages_before_its_1x1_conv():
    block = ResBlock(8, 16, stride=2)
    pool, proj = block.shortcut[0], block.shortcut[1][0]
    assert isinstance(pool, torch.nn.AvgPool2d) and proj.kernel_size == (1, 1) and proj.stride == (1, 1)
    bottleneck = ResBlock(8, 4, stride=2, expansion=4)
    strides = [m.stride for m in bottleneck.branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(1, 1), (2, 2), (1, 1)]  # the stride on the 3x3 conv


def test_xresnet50_at_128px_downsamples_32x():
    model = create_model("xresnet50", width=0.125).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 128, 128))
    assert feats.shape == (1, 2048 // 8, 4, 4)


def test_mish_replaces_every_relu_and_unknown_activations_fail():
    relu = create_model("xresnet18", width=0.125)
    mish = create_model("xresnet18", width=0.125, act="mish")
    n_relu = sum(isinstance(m, torch.nn.ReLU) for m in relu.modules())
    assert n_relu == 3 + 8 * 2  # the stem's three, then two per basic block
    assert sum(isinstance(m, torch.nn.Mish) for m in mish.modules()) == n_relu
    assert not any(isinstance(m, torch.nn.ReLU) for m in mish.modules())
    silu = create_model("xresnet18", width=0.125, act="silu")
    assert sum(isinstance(m, torch.nn.SiLU) for m in silu.modules()) == n_relu
    assert count_params(mish) == count_params(relu)
    block = ResBlock(16, 16, act_cls=torch.nn.Mish).eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        assert torch.equal(block(x), torch.nn.functional.mish(block.shortcut(x)))
    with pytest.raises(FitVisionError, match=r"^unknown activation 'elu' \(valid: relu, mish, silu\)$"):
        create_model("xresnet50", act="elu")


def test_blur_stem_pool_low_passes_before_subsampling():
    from fitvision.models.resnetd import BlurPool

    pool = BlurPool(2)
    flat = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(pool(flat), torch.full((1, 2, 4, 4), 3.0))  # the filter sums to 1
    stripes = torch.zeros(1, 2, 8, 8)
    stripes[..., 1::2] = 1.0  # the highest horizontal frequency: plain subsampling sees all 0s
    assert torch.equal(stripes[..., ::2, ::2], torch.zeros(1, 2, 4, 4))
    assert torch.allclose(pool(stripes), torch.full((1, 2, 4, 4), 0.5))  # blurred to its mean
    plain, blur = create_model("xresnet18", width=0.125), create_model("xresnet18", width=0.125, blur=True)
    assert count_params(blur) == count_params(plain)  # the filter is fixed, not a parameter
    assert set(blur.state_dict()) == set(plain.state_dict())  # weights load either way
    with torch.no_grad():
        assert blur.eval().forward_features(torch.randn(1, 3, 128, 128)).shape == (1, 64, 4, 4)


def test_self_attention_starts_as_identity_and_computes_the_gram_product():
    from fitvision.models.resnetd import SimpleSelfAttention

    torch.manual_seed(0)
    sa = SimpleSelfAttention(6).eval()
    x = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        assert torch.equal(sa(x), x)  # gamma starts at 0
        sa.gamma.fill_(0.3)
        w = sa.conv.weight[:, :, 0]  # the spectrally normalised 1x1 weight: largest singular value 1
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)
        flat = x.reshape(2, 6, 20)
        expected = x + 0.3 * ((flat @ flat.transpose(1, 2)) @ (w @ flat)).reshape(2, 6, 5, 4)
        assert torch.allclose(sa(x), expected, atol=1e-5)
        # fp16 input whose Gram entries pass fp16's range (20 positions x 100^2 each): finite
        big = torch.full((1, 6, 5, 4), 100.0, dtype=torch.float16)
        sa.gamma.fill_(1e-6)
        assert sa(big).dtype == torch.float16 and torch.isfinite(sa(big).float()).all()
        flat = big.float().reshape(1, 6, 20)
        assert torch.isinf((flat.half() @ flat.half().transpose(1, 2))).all()  # what a plain fp16 product gives


def test_sa_option_adds_one_attention_in_the_first_stage():
    from fitvision.models.init import lsuv_init
    from fitvision.models.resnetd import SimpleSelfAttention

    plain, sa = create_model("xresnet50", width=0.125), create_model("xresnet50", width=0.125, sa=True)
    where = [n for n, m in sa.named_modules() if isinstance(m, SimpleSelfAttention)]
    assert where == ["stages.0.2.branch.3"]  # the last of the first stage's three blocks
    c = 256 // 8
    assert count_params(sa) == count_params(plain) + c * c + 1  # the 1x1 weight and gamma
    sa.train()
    for m in sa.modules():  # leave the zero-initialised start, where the branch (and so gamma's gradient) is 0
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    out = sa(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    attention = sa.get_submodule(where[0])
    assert attention.conv.parametrizations.weight.original.grad is not None
    assert attention.gamma.grad is not None and attention.gamma.grad.abs().item() > 0
    # LSUV leaves the spectrally normalised weight alone (it sets its own scale) and still runs.
    names = [name for name, _, _ in lsuv_init(create_model("xresnet18", width=0.125, sa=True), torch.randn(8, 3, 32, 32))]
    assert names and not any("branch.2" in name for name in names)


def test_resnext_blocks_group_a_hidden_width_of_4_per_64_channels_per_group():
    model = create_model("xse_resnext12")
    convs = [m for m in model.stages.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    # one block per stage, 64..512 channels: the grouped 3x3 widens to 32 x (4 per 64), the next narrows back
    assert [(c.in_channels, c.out_channels, c.groups) for c in convs] == [
        (64, 128, 32), (128, 64, 1), (64, 256, 32), (256, 128, 1),
        (128, 512, 32), (512, 256, 1), (256, 1024, 32), (1024, 512, 1)]
    assert [len(stage) for stage in model.stages] == [1, 1, 1, 1]
    # groups/se are options of every xresnet; their defaults leave xresnet18 as it was
    assert count_params(create_model("xresnet18", groups=1, se=0)) == count_params(create_model("xresnet18"))
    bottleneck = create_model("xresnet50", width=0.125, groups=4)
    assert {m.groups for m in bottleneck.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)} == {1, 4}
    with pytest.raises(FitVisionError, match=r"^groups must be >= 1 and se >= 0, got groups=0, se=16$"):
        create_model("xse_resnext12", groups=0)


def test_squeeze_excite_gates_each_channel_by_its_global_mean():
    from fitvision.models.resnetd import SqueezeExcite

    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=4).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        down, up = se.gate[1], se.gate[3]
        assert (down.out_channels, up.out_channels) == (2, 8)
        gate = torch.sigmoid(up(torch.relu(down(x.mean((2, 3), keepdim=True)))))
        assert torch.allclose(se(x), x * gate, atol=1e-6)
        # every block of xse_resnext12 ends its branch with one, before the residual sum
        blocks = [m for m in create_model("xse_resnext12").modules() if isinstance(m, ResBlock)]
        assert len(blocks) == 4 and all(isinstance(b.branch[-1], SqueezeExcite) for b in blocks)
