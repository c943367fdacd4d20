"""The composable optimizer against torch.optim, the LAMB paper, and its own round trips."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.optim import Optimizer, create_optimizer, get_hyper, optimizer_names, set_hyper
from fitvision.optim.schedules import one_cycle, step_pos
from fitvision.optim.steppers import AverageGrad, StepCount, debiased_momentum_step, momentum_step

pytestmark = pytest.mark.usefixtures("one_thread")


STEPS = 100
TOL = 1e-6  # float32 throughout; the matching recipes use torch's own foreach ops, so in fact 0


def small_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    )
    return model.to(dtype)


def groups_of(model, wd):
    """The layout fitvision.models.param_groups produces: a decay group and a no-decay group."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return [
        {"params": decay, "weight_decay": wd, "lr_mult": 1.0, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 0.5, "name": "no_decay"},
    ]


def batches(n, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 6, 6, generator=g, dtype=dtype), torch.randint(0, 10, (8,), generator=g))
            for _ in range(n)]


def train(model, opt, data, sched=None):
    """Plain loop; with sched, each hyperparameter in it follows it through set_hyper."""
    for i, (x, y) in enumerate(data):
        for key, fn in (sched or {}).items():
            set_hyper(opt, key, fn(step_pos(i, len(data))))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


PARITY = [
    # (our recipe, the torch.optim optimizer it must match); weight decay is L2 except for adamw
    ("sgd", lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.0)),
    ("momentum", lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9)),
    ("nesterov", lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True)),
    ("adam", lambda g: torch.optim.Adam(g, lr=0.05, betas=(0.9, 0.99), eps=1e-5, foreach=True)),
    ("adamw", lambda g: torch.optim.AdamW(g, lr=0.05, betas=(0.9, 0.99), eps=1e-5, foreach=True)),
    # 100 steps at beta2 0.99: steps 1-5 are the un-rectified momentum steps, the rest rectified
    ("radam", lambda g: torch.optim.RAdam(g, lr=0.05, betas=(0.9, 0.99), eps=1e-5, foreach=True)),
]


@pytest.mark.parametrize("name,make_torch", PARITY, ids=[p[0] for p in PARITY])
def test_matches_torch_optim_over_100_steps(name, make_torch):
    """lr (and momentum, where there is one) follow one-cycle through set_hyper on both sides."""
    wd = 0.05
    ours, theirs = small_model(), small_model()
    start = copy.deepcopy(ours)
    opt = create_optimizer(name, groups_of(ours, wd), lr=0.05, momentum=0.9, beta2=0.99, eps=1e-5, wd=wd)
    tgroups = groups_of(theirs, wd)
    for g in tgroups:
        g["lr"] = 0.05 * g["lr_mult"]
    ref = make_torch(tgroups)
    sched = one_cycle(0.05, total_steps=STEPS)
    if name == "sgd":
        del sched["mom"]  # plain SGD has no momentum (set_hyper would turn torch's on)
    data = batches(STEPS)
    train(ours, opt, data, sched)
    train(theirs, ref, data, sched)
    assert max_diff(ours, theirs) <= TOL
    assert max_diff(ours, start) > 1e-2  # they did move, so agreeing means something


def lamb_reference(params, grads_per_step, lr, b1, b2, eps, wd):
    """LAMB as written in You et al. 2019 (Algorithm 2, with seed 004's trust-ratio clip at 10),
    one tensor at a time, no foreach."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    ratios = []
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (w, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            r = m_hat / (v_hat.sqrt() + eps) + wd * w
            w_norm, r_norm = w.norm().item(), r.norm().item()
            ratio = min(w_norm / r_norm, 10.0) if w_norm > 0 and r_norm > 0 else 1.0
            ratios.append(ratio)
            params[i] = w - lr * ratio * r
    return params, ratios


def test_lamb_matches_paper_equations():
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (6,), (3, 3)]
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    init[1].zero_()  # |w| = 0: ratio 1
    init[2].mul_(1e3)  # |w| >> |update|: ratio clipped at 10
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(20)]
    params = [nn.Parameter(w.clone()) for w in init]
    opt = create_optimizer("lamb", params, lr=0.01, momentum=0.9, beta2=0.99, eps=1e-6, wd=0.01)
    for step_grads in grads:
        for p, gr in zip(params, step_grads):
            p.grad = gr.clone()
        opt.step()
    expected, ratios = lamb_reference([w.clone() for w in init], grads, 0.01, 0.9, 0.99, 1e-6, 0.01)
    assert 10.0 in ratios and 1.0 in ratios and any(1 < r < 10 for r in ratios)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-12)


def one_step_update(name, wd_mode, wd=0.1):
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = create_optimizer(name, [p], lr=0.1, wd=wd, wd_mode=wd_mode)
    for _ in range(3):
        p.grad = torch.tensor([0.5, 0.5, -0.25], dtype=torch.float64)
        opt.step()
    return p.detach().clone()


def test_decoupled_and_l2_differ_under_adam_and_agree_under_sgd():
    adam_l2, adam_dec = one_step_update("adam", "l2"), one_step_update("adam", "decoupled")
    assert (adam_l2 - adam_dec).abs().max() > 1e-3
    sgd_l2, sgd_dec = one_step_update("sgd", "l2"), one_step_update("sgd", "decoupled")
    torch.testing.assert_close(sgd_l2, sgd_dec, rtol=0, atol=1e-14)
    assert (sgd_l2 - one_step_update("sgd", "l2", wd=0.0)).abs().max() > 1e-3  # decay did act


def test_no_decay_group_keeps_its_weights_under_decay():
    w, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    groups = [{"params": [w], "weight_decay": 0.5}, {"params": [b], "weight_decay": 0.0}]
    opt = create_optimizer("sgd", groups, lr=0.1, wd_mode="decoupled")
    set_hyper(opt, "wd", 0.5)
    w.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.95))


def test_ewma_with_debiasing_is_the_weighted_mean_of_gradients():
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Optimizer([p], [AverageGrad(dampening=True), StepCount(), debiased_momentum_step], lr=1.0, mom=0.8)
    grads = [torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.0]), torch.tensor([-2.0, 5.0])]
    expected = torch.zeros(2, dtype=torch.float64)
    for t, gr in enumerate(grads, start=1):
        p.grad = gr.double()
        opt.step()
        weights = [0.8 ** (t - 1 - k) for k in range(t)]  # the mean the debiased EWMA computes
        expected -= sum(w * g.double() for w, g in zip(weights, grads[:t])) / sum(weights)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_dampened_momentum_without_debias():
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = Optimizer([p], [AverageGrad(dampening=True), momentum_step], lr=1.0, mom=0.9)
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    opt.step()  # avg: 0.1, then 0.9 * 0.1 + 0.1 = 0.19
    torch.testing.assert_close(p.detach(), torch.tensor([-0.29], dtype=torch.float64))


@pytest.mark.parametrize("name", ["momentum", "adam", "radam", "lamb", "ewma", "muon"])
def test_state_dict_round_trip_resumes_exactly(name):
    data = batches(20, seed=3)
    uninterrupted = small_model()
    opt = create_optimizer(name, groups_of(uninterrupted, 0.01), lr=0.01, wd=0.01)
    train(uninterrupted, opt, data)

    first = small_model()
    opt1 = create_optimizer(name, groups_of(first, 0.01), lr=0.01, wd=0.01)
    train(first, opt1, data[:10])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # tensors and plain python only

    resumed = small_model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = create_optimizer(name, groups_of(resumed, 0.5), lr=0.5, wd=0.5)  # hypers come from the file
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, data[10:])
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_state_dict_is_a_snapshot():
    model = small_model()
    opt = create_optimizer("adam", model.parameters(), lr=0.01)
    train(model, opt, batches(2))
    sd = opt.state_dict()
    before = sd["state"][0]["grad_avg"].clone()
    train(model, opt, batches(1, seed=5))
    assert torch.equal(sd["state"][0]["grad_avg"], before)
    assert sd["state"][0]["step"] == 2


def test_load_state_dict_rejects_another_model():
    opt = create_optimizer("adam", small_model().parameters(), lr=0.01)
    other = create_optimizer("adam", [nn.Parameter(torch.zeros(2))], lr=0.01)
    with pytest.raises(FitVisionError, match="optimizer state does not fit this model"):
        opt.load_state_dict(other.state_dict())


def test_load_state_dict_rejects_another_optimizer():
    model = small_model()
    momentum = create_optimizer("momentum", model.parameters(), lr=0.01)
    train(model, momentum, batches(1))
    adam = create_optimizer("adam", model.parameters(), lr=0.01)
    with pytest.raises(FitVisionError) as e:
        adam.load_state_dict(momentum.state_dict())
    assert str(e.value) == (
        "optimizer state holds ['grad_avg'] but this optimizer keeps ['grad_avg', 'sqr_avg', 'step']; "
        "resume with the same optimizer (--opt) as the run that saved it"
    )


def test_zero_grad_sets_to_none_or_zero():
    model = small_model()
    opt = create_optimizer("adam", model.parameters(), lr=0.01)
    train(model, opt, batches(1))
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_unknown_optimizer_names_the_valid_ones():
    with pytest.raises(FitVisionError) as e:
        create_optimizer("adagrad", small_model().parameters(), lr=0.01)
    assert str(e.value) == (
        "unknown optimizer 'adagrad' (valid optimizers: adam, adamw, ewma, lamb, momentum, muon, nesterov, "
        "radam, sgd, torch_adam, torch_adamw, torch_sgd)"
    )
    assert "sgd" in optimizer_names()


def test_bad_wd_mode_and_torch_adam_decoupled_are_refused():
    with pytest.raises(FitVisionError, match=r"^unknown wd_mode 'adamw' \(valid: l2, decoupled\)$"):
        create_optimizer("adam", small_model().parameters(), lr=0.01, wd_mode="adamw")
    with pytest.raises(FitVisionError, match="torch_adam only does L2 weight decay"):
        create_optimizer("torch_adam", small_model().parameters(), lr=0.01, wd_mode="decoupled")


@pytest.mark.parametrize("name", ["adam", "momentum", "torch_adam", "torch_adamw", "torch_sgd"])
def test_set_hyper_honours_multipliers_for_every_kind(name):
    model = small_model()
    opt = create_optimizer(name, groups_of(model, 1e-4), lr=0.01, momentum=0.9, wd=1e-4)
    set_hyper(opt, "lr", 0.2)
    set_hyper(opt, "mom", 0.85)
    set_hyper(opt, "wd", 3e-4)
    decay, no_decay = opt.param_groups
    assert (decay["lr"], no_decay["lr"]) == (0.2, 0.1)
    wd_key = "wd" if "wd" in decay else "weight_decay"
    assert (decay[wd_key], no_decay[wd_key]) == (3e-4, 0.0)
    mom = decay.get("mom", decay.get("momentum", decay.get("betas", (None,))[0]))
    assert mom == 0.85
    assert (get_hyper(opt, "lr"), get_hyper(opt, "mom"), get_hyper(opt, "wd")) == (0.2, 0.85, 3e-4)
    with pytest.raises(FitVisionError, match=r"^unknown hyperparameter 'beta' \(valid: lr, mom, wd\)$"):
        set_hyper(opt, "beta", 0.1)


def test_adam_large_eps_becomes_debiased_momentum_sgd():
    """eps is a real hyperparameter: with eps >> sqrt(v), Adam's step is lr/eps * debiased momentum."""
    a, b = nn.Parameter(torch.zeros(3, dtype=torch.float64)), nn.Parameter(torch.zeros(3, dtype=torch.float64))
    adam = create_optimizer("adam", [a], lr=1.0, eps=1e8)
    ewma = create_optimizer("ewma", [b], lr=1e-8)
    for k in range(5):
        grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (k + 1)
        a.grad, b.grad = grad.clone(), grad.clone()
        adam.step()
        ewma.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=0)


def test_state_lives_with_each_parameter_dtype():
    p16, p32 = nn.Parameter(torch.ones(4, dtype=torch.bfloat16)), nn.Parameter(torch.ones(4))
    opt = create_optimizer("adam", [p16, p32], lr=0.1)
    p16.grad, p32.grad = torch.ones(4, dtype=torch.bfloat16), torch.ones(4)
    opt.step()
    assert opt.state[p16]["grad_avg"].dtype == torch.bfloat16
    assert math.isclose(p32[0].item(), 0.9, rel_tol=1e-5)  # first Adam step moves by lr


@pytest.mark.parametrize("name", ["adam", "lamb", "torch_adamw"])
def test_works_on_models_param_groups(name):
    """The groups fitvision.models.param_groups makes: per-group decay and discriminative lrs."""
    from fitvision.models import create_model, param_groups

    torch.manual_seed(0)
    model = create_model("cnn")
    groups = param_groups(model, wd=1e-2, body_lr_mult=0.1)
    opt = create_optimizer(name, groups, lr=0.01, wd=1e-2, wd_mode="decoupled")
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"body": 1e-3, "body_no_decay": 1e-3, "head": 1e-2, "head_no_decay": 1e-2}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_grad_scaler_unscales_and_skips_inf_steps():
    """torch.amp.GradScaler drives the composable optimizer as it does torch.optim's."""
    model = nn.Linear(4, 2)
    opt = create_optimizer("adam", model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(3, 4)
    scaler.scale(model(x).sum()).backward()
    scaler.unscale_(opt)
    torch.testing.assert_close(model.bias.grad, torch.full((2,), 3.0))  # unscaled: d(sum)/d(bias) = 3
    scaler.step(opt)
    scaler.update()
    assert opt.state[model.bias]["step"] == 1
    opt.zero_grad()
    scaler.scale(model(x).sum()).backward()
    model.weight.grad[0, 0] = float("inf")
    before = model.weight.detach().clone()
    scaler.step(opt)  # skipped: the weights and the step count stay
    scaler.update()
    assert torch.equal(before, model.weight) and opt.state[model.bias]["step"] == 1
    assert scaler.get_scale() == 512.0
