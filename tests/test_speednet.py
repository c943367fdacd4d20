import torch

from fitvision.models import create_model


def test_whitening_init_decorrelates_patches():
    torch.manual_seed(0)
    # Correlated "images": smooth noise, so neighbouring pixels and channels covary strongly.
    base = torch.randn(64, 1, 18, 18)
    imgs = torch.nn.functional.avg_pool2d(base, 3, 1) + 0.1 * torch.randn(64, 3, 16, 16)
    model = create_model("speednet", width=0.25)
    model.init_from_data(imgs, eps=1e-9)  # eps shrinks tiny-eigenvalue directions; off here
    with torch.no_grad():
        out = model.whiten(imgs) - model.whiten.bias.view(1, -1, 1, 1)
    half = out[:, : out.shape[1] // 2].permute(0, 2, 3, 1).reshape(-1, out.shape[1] // 2)
    cov = (half - half.mean(0)).T @ (half - half.mean(0)) / len(half)
    assert torch.allclose(cov, torch.eye(len(cov)), atol=0.02)
    # The second half is the negation of the first: GELU sees both signs.
    assert torch.equal(model.whiten.weight[:12], -model.whiten.weight[12:])


def test_whiten_eps_option_damps_the_rarest_patch_directions():
    import pytest

    from fitvision.errors import FitVisionError

    torch.manual_seed(0)
    imgs = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 18, 18), 3, 1) + 0.01 * torch.randn(64, 3, 16, 16)
    norms = {}
    for eps in (5e-4, 1e-2):
        model = create_model("speednet", width=0.25, whiten_eps=eps)
        assert model.whiten_eps == eps
        model.init_from_data(imgs)  # the model's own eps
        with torch.no_grad():
            out = model.whiten(imgs)[:, :12]
        norms[eps] = out.permute(1, 0, 2, 3).reshape(12, -1).std(1)  # per eigen-direction, rarest first
    # each direction's output std is sqrt(eigenvalue / (eigenvalue + eps)): a larger eps shrinks the
    # rare (tiny-eigenvalue) directions a lot and the dominant one hardly at all
    assert norms[1e-2][0] < 0.5 * norms[5e-4][0]
    assert torch.isclose(norms[1e-2][-1], norms[5e-4][-1], rtol=0.02)
    with pytest.raises(FitVisionError, match=r"^speednet: whiten_eps must be above 0, got 0$"):
        create_model("speednet", whiten_eps=0.0)


def test_speednet_shapes_and_frozen_parts():
    model = create_model("speednet", num_classes=7, width=0.5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert not model.whiten.weight.requires_grad
    bn_weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn_weights and not any(w.requires_grad for w in bn_weights)


def test_convs_option_adds_a_residual_third_conv_to_the_named_groups():
    import pytest

    from fitvision.errors import FitVisionError

    plain = create_model("speednet", width=0.25)
    deep = create_model("speednet", width=0.25, convs="2-2-3")
    assert [hasattr(g, "conv3") for g in deep.groups] == [False, False, True]
    assert not any(hasattr(g, "conv3") for g in plain.groups)
    c = deep.groups[2].conv3.weight.shape[0]
    assert sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in plain.parameters()) == c * c * 9 + 2 * c
    # the third conv's output is added to the group's pooled activation
    g = deep.groups[2].eval()
    x = torch.randn(2, g.conv1.in_channels, 8, 8)
    with torch.no_grad():
        pooled = g.act(g.norm1(g.pool(g.conv1(x))))
        expected = pooled + g.act(g.norm3(g.conv3(g.act(g.norm2(g.conv2(pooled))))))
        assert torch.equal(g(x), expected)
    assert deep(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for bad in ("2-2", "2-2-4", "two"):
        with pytest.raises(FitVisionError, match=r"^speednet: convs takes three counts of 2 or 3 joined by '-' "
                                                 rf"\(e\.g\. 2-2-3\), got '{bad}'$"):
            create_model("speednet", convs=bad)


def test_widths_option_sets_each_groups_channels():
    import pytest

    from fitvision.errors import FitVisionError

    net = create_model("speednet", width=0.75, widths="48-192-256")
    assert [g.conv1.out_channels for g in net.groups] == [48, 192, 256]
    assert net.classifier[-1].in_features == 256
    default = create_model("speednet", width=0.75)
    assert [g.conv1.out_channels for g in default.groups] == [48, 192, 192]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for bad in ("48-192", "48-0-256", "a-b-c"):
        with pytest.raises(FitVisionError) as e:
            create_model("speednet", widths=bad)
        assert str(e.value) == f"speednet: widths takes three channel counts joined by '-' (e.g. 48-192-256), got '{bad}'"
