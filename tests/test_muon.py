"""Muon: the orthogonalising stepper against torch.optim.Muon, and how fitvision routes it."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from fitvision.config import TrainConfig
from fitvision.optim import create_optimizer, set_hyper
from fitvision.optim import steppers
from fitvision.optim.steppers import newton_schulz_dtype, orthogonalize
from fitvision.train.learner import Learner

pytestmark = pytest.mark.usefixtures("one_thread")


def test_orthogonalize_puts_every_singular_value_near_one():
    torch.manual_seed(0)
    for shape in [(16, 40), (40, 16), (24, 24)]:
        # singular values spread over a factor of 300
        u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
        s = torch.logspace(-1.5, 1, min(shape))
        out = orthogonalize(u @ torch.diag(s) @ v)
        assert out.shape == shape and out.dtype == torch.float32
        sv = torch.linalg.svdvals(out)
        assert sv.min() > 0.65 and sv.max() < 1.25  # the quintic's band, not exactly 1
        # and it keeps the singular vectors: out is close to u v^T
        assert torch.nn.functional.cosine_similarity((u @ v).flatten(), out.flatten(), dim=0) > 0.97


def twin_params(*start):
    """Two independent copies of the same starting tensors, as leaf parameters."""
    return [w.clone().requires_grad_() for w in start], [w.clone().requires_grad_() for w in start]


def step_both(ref, opt, theirs, ours, steps=100):
    """Both optimizers see the same random gradients for `steps` steps."""
    for _ in range(steps):
        for p, q in zip(theirs, ours):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        opt.step()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_matches_torch_optim_muon_bit_for_bit(monkeypatch):
    # torch.optim.Muon always iterates in bf16; fitvision does too where bf16 is native, which
    # this machine may lack (then it takes fp32: the next test)
    monkeypatch.setattr(steppers, "newton_schulz_dtype", lambda device: torch.bfloat16)
    torch.manual_seed(0)
    start = [torch.randn(16, 40), torch.randn(50, 12), torch.randn(8, 8)]
    theirs, ours = twin_params(*start)
    ref = torch.optim.Muon(theirs, lr=0.02, momentum=0.9, weight_decay=0.1)
    opt = create_optimizer("muon", ours, lr=0.02, momentum=0.9, wd=0.1, wd_mode="decoupled")
    step_both(ref, opt, theirs, ours)
    for p, q, w in zip(theirs, ours, start):
        assert torch.equal(p, q)
        assert (p - w).abs().max() > 0.1  # they moved


def test_newton_schulz_runs_in_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(steppers, "cpu_has_bf16", lambda: True)
    assert newton_schulz_dtype(cpu) == torch.bfloat16
    assert newton_schulz_dtype(torch.device("cuda")) == torch.bfloat16
    torch.manual_seed(0)
    m = torch.randn(48, 216)
    in_bf16 = orthogonalize(m)
    assert torch.equal(in_bf16, orthogonalize(m, dtype=torch.bfloat16))
    monkeypatch.setattr(steppers, "cpu_has_bf16", lambda: False)
    assert newton_schulz_dtype(cpu) == torch.float32
    in_fp32 = orthogonalize(m)
    assert torch.equal(in_fp32, orthogonalize(m, dtype=torch.float32))
    assert in_fp32.dtype == torch.float32 and not torch.equal(in_fp32, in_bf16)
    # the same direction up to bf16's rounding (8 mantissa bits, five iterations)
    assert (in_fp32 - in_bf16).abs().max() < 0.02
    assert torch.nn.functional.cosine_similarity(in_fp32.flatten(), in_bf16.flatten(), dim=0) > 0.999


def test_vectors_and_non_ortho_groups_take_torch_sgd_nesterov_steps():
    torch.manual_seed(0)
    start = [torch.randn(30), torch.randn(10, 6)]
    theirs, ours = twin_params(*start)
    ref = torch.optim.SGD(theirs, lr=0.1, momentum=0.85, nesterov=True)
    opt = create_optimizer("muon", [{"params": ours[:1]}, {"params": ours[1:], "name": "head"}],
                           lr=0.1, momentum=0.85)
    step_both(ref, opt, theirs, ours)
    for p, q, w in zip(theirs, ours, start):
        # the same step through an EWMA buffer rescaled by 1/(1 - mom): equal up to rounding
        assert (p - q).abs().max() < 1e-5
        assert (p - w).abs().max() > 0.1


def test_renorm_holds_the_filter_bank_norm_and_the_update_is_lr_sized():
    torch.manual_seed(0)
    w = (5 * torch.randn(32, 8, 3, 3)).requires_grad_()
    opt = create_optimizer("muon", [{"params": [w], "renorm": True}], lr=0.05, momentum=0.0)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    rescaled = before * math.sqrt(32) / before.norm()
    step = rescaled - w.detach()
    # an orthogonalised 32 x 72 direction: 32 singular values near 1, so norm ~ lr * sqrt(32)
    assert 0.6 * 0.05 * math.sqrt(32) < step.norm() < 1.25 * 0.05 * math.sqrt(32)
    opt.step()  # the next step starts again from norm sqrt(32)
    assert abs(w.norm().item() - math.sqrt(32)) < 0.05 * math.sqrt(32)


def test_from_config_routes_body_filters_to_muon_and_the_rest_to_sgd():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    cfg = TrainConfig(opt="muon", lr=1.5, momentum=0.85, wd=1e-3, muon_lr=0.24, muon_momentum=0.6,
                      muon_renorm=True, bias_lr_mult=64, device="cpu", precision="fp32")
    learner = Learner.from_config(cfg, model, [], [], progress=False)
    groups = {g["name"]: g for g in learner.opt.param_groups}
    body = groups["body"]
    assert body["lr"] == pytest.approx(0.24) and body["mom"] == 0.6 and body["renorm"] and body["ortho"]
    assert body["wd"] == 0.0  # renorm fixes the norm: decay would only fight it
    assert groups["head"]["ortho"] is False and groups["head"]["lr"] == pytest.approx(1.5)
    assert groups["body_no_decay"]["lr"] == pytest.approx(96.0) and groups["body_no_decay"]["mom"] == 0.85


def test_cpu_recipe_decays_biases_per_step_like_the_weights_and_steps_the_stem_bias_at_1x():
    from fitvision.recipes import RECIPES
    from fitvision.models import create_model

    cfg = dataclasses.replace(RECIPES["cpu"], device="cpu", precision="fp32")
    model = create_model("speednet", width=0.25)
    learner = Learner.from_config(cfg, model, [], [], progress=False)
    groups = {g["name"]: g for g in learner.opt.param_groups}
    assert groups["body_stem"]["params"] == [model.stem_bias]
    assert groups["body_stem"]["lr"] == pytest.approx(1.5) and groups["body_stem"]["wd"] == pytest.approx(1.33e-3)
    biases = groups["body_no_decay"]
    assert all(p is not model.stem_bias for p in biases["params"])
    # 64x the lr, 1/64 the L2 coefficient: 1.5 * 64 * 1.33e-3 / 64 = 0.002 of each bias per step, as for a weight
    assert biases["lr"] == pytest.approx(96.0) and biases["wd"] == pytest.approx(1.33e-3 / 64)
    set_hyper(learner.opt, "wd", 1e-3)  # a wd schedule keeps that ratio
    assert groups["body_no_decay"]["wd"] == pytest.approx(1e-3 / 64) and groups["body"]["wd"] == 0.0


def test_config_refuses_momentum_one_with_muon():
    from fitvision.config import validate
    from fitvision.errors import FitVisionError

    with pytest.raises(FitVisionError) as e:
        validate(TrainConfig(opt="muon", momentum=0.9, muon_momentum=1.0))
    assert str(e.value) == "muon_momentum must be in [0, 1) with opt muon, got 1.0"
    with pytest.raises(FitVisionError, match=r"^momentum must be in \[0, 1\), got 1.0$"):
        validate(TrainConfig(opt="nesterov", momentum=1.0))  # a momentum of 1 never forgets: any optimiser


def test_config_refuses_muon_momentum_under_a_momentum_schedule():
    from fitvision.config import validate
    from fitvision.errors import FitVisionError

    with pytest.raises(FitVisionError) as e:
        validate(TrainConfig(opt="muon", muon_momentum=0.6, sched="one_cycle"))
    assert str(e.value) == ("muon_momentum cannot be used with sched one_cycle, which schedules the momentum; "
                            "use one_cycle_linear or another schedule, or leave muon_momentum 0")
    validate(TrainConfig(opt="muon", muon_momentum=0.6, sched="one_cycle_linear"))
    validate(TrainConfig(opt="muon", sched="one_cycle"))  # every group follows the schedule's momentum
