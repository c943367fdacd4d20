"""The lr range test: exponential sweep, stop on divergence, exact restore, spike-proof suggestion."""

import math

import numpy as np
import pytest
import torch

from fakeloader import make_learner, same, weights
from fitvision.errors import FitVisionError
from fitvision.train.lr_find import LRFindResult, plot_lr_find, suggest_lr


def _opt_state(learn):
    sd = learn.opt.state_dict()
    return {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in sd["state"].items()}, \
        sd["param_groups"]


def test_sweep_is_exponential_and_stops_on_divergence():
    learn = make_learner(opt_func=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    result = learn.lr_find(start_lr=1e-5, end_lr=100.0, num_it=60)
    assert result.diverged and 10 < len(result.lrs) < 60
    ratios = np.diff(np.log(result.lrs))
    np.testing.assert_allclose(ratios, math.log(1e7) / 59)
    assert result.lrs[0] == pytest.approx(1e-5)
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert 1e-4 < result.suggestion < 1.0 and result.suggestion == pytest.approx(result.lr_min / 10)


def test_restores_model_optimizer_and_rng_exactly():
    learn = make_learner(ema=0.9)
    learn.fit(1)  # optimizer state exists
    before, opt_before = weights(learn), _opt_state(learn)
    ema_before = {k: v.clone() for k, v in learn.ema.module.state_dict().items()}
    rng = torch.get_rng_state()
    learn.lr_find(num_it=20)
    assert same(before, weights(learn))
    assert same(ema_before, learn.ema.module.state_dict())
    state, groups = _opt_state(learn)
    assert groups == opt_before[1]
    assert all(torch.equal(v, opt_before[0][i][k]) if torch.is_tensor(v) else v == opt_before[0][i][k]
               for i, s in state.items() for k, v in s.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in learn.model.parameters())


def test_a_fit_after_lr_find_is_the_same_fit():
    plain = make_learner()
    plain.fit_one_cycle(2, max_lr=0.02)
    probed = make_learner()
    probed.lr_find(num_it=30)
    probed.fit_one_cycle(2, max_lr=0.02)
    assert same(weights(plain), weights(probed))


def test_suggestion_ignores_an_early_spike():
    lrs = list(np.geomspace(1e-6, 10, 100))
    # a bowl with its minimum at lr ~1e-2, plus a tall spike at lr ~3e-6 followed by a steep drop
    loss = [2.0 - 1.5 * math.exp(-((math.log10(lr) + 2) ** 2) / 2) for lr in lrs]
    loss[5] += 5.0
    lr_min, suggestion = suggest_lr(lrs, loss)
    assert lr_min == pytest.approx(1e-2, rel=0.15)
    assert suggestion == pytest.approx(lr_min / 10)
    with pytest.raises(FitVisionError, match="lr_find recorded no finite loss; lower start_lr"):
        suggest_lr([1e-3], [math.nan])


def test_bad_range():
    with pytest.raises(FitVisionError) as e:
        make_learner().lr_find(start_lr=1.0, end_lr=0.1)
    assert str(e.value) == "lr_find needs 0 < start_lr < end_lr, got 1.0 and 0.1"


def test_plot(tmp_path):
    lrs = list(np.geomspace(1e-5, 1, 50))
    smoothed = [1 + (math.log10(lr) + 2) ** 2 / 10 for lr in lrs]
    result = LRFindResult(lrs=lrs, losses=smoothed, smoothed=smoothed, lr_min=1e-2, suggestion=1e-3)
    path = plot_lr_find(result, tmp_path / "plots" / "lr_find.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
