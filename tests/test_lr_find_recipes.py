"""lr_find on every recipe, as `fitvision lr-find` builds it, on real CIFAR-10 images."""

import json
import dataclasses
import math

import pytest
import torch

from fitvision.recipes import RECIPES, resolve_config
from fitvision.train.setup import build

pytestmark = pytest.mark.usefixtures("data_dir")
SMALL = {"data": "cifar10", "train_limit": 1000, "valid_limit": 200, "bs": 100, "device": "cpu"}


def _learner(recipe: str, **settings):
    cfg, _ = resolve_config(recipe, **{**SMALL, **settings})
    return build(cfg, progress=False).learn


def test_default_recipe_suggests_what_the_sweep_without_lookahead_suggests():
    """The cpu recipe (what plain `fitvision lr-find` picks without a GPU) turns lookahead on.
    The sweep used to let it pull the weights back to their average every step, and suggested
    about 1e-6 where the same sweep without lookahead suggests about 1e-1."""
    cfg, why = resolve_config(None, **SMALL, size=16)  # 16 px, 50 steps: about half the time of 32 px and 100
    assert cfg.recipe == "cpu" and cfg.lookahead, why
    with_lookahead = build(cfg, progress=False).learn.lr_find(num_it=50)
    without = build(dataclasses.replace(cfg, lookahead=False), progress=False).learn.lr_find(num_it=50)
    ratio = with_lookahead.suggestion / without.suggestion
    assert 0.1 <= ratio <= 10, (with_lookahead.suggestion, without.suggestion)
    assert without.suggestion > 1e-3  # a real sweep: the loss fell, then diverged at a high lr


def test_a_step_without_progress_leaves_lookahead_alone():
    learn = _learner("cpu", train_limit=400)
    x, y = next(iter(learn.train_dl))
    average = [t.clone() for t in learn.lookahead.average]
    learn.train_step(x, y, {"lr": 0.1})  # no progress: the sweep's step
    assert all(torch.equal(a, b) for a, b in zip(average, learn.lookahead.average))
    learn.train_step(x, y, {"lr": 0.1}, progress=(5, 100))  # a fit's 5th step: lookahead averages
    assert not all(torch.equal(a, b) for a, b in zip(average, learn.lookahead.average))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_lr_find_runs_on_every_recipe_and_leaves_the_learner_as_it_was(recipe):
    learn = _learner(recipe, size=32, train_limit=512, bs=64)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    result = learn.lr_find(num_it=10)
    assert len(result.lrs) >= 5 and all(math.isfinite(v) for v in result.losses[:5])
    # (a 10-step sweep of a small constant-lr recipe may find its lowest loss at the first lr:
    # the suggestion is then a tenth of the sweep's start, the lowest it can be)
    assert result.lrs[0] / 10 <= result.suggestion <= 10 and result.suggestion == result.lr_min / 10
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())


def test_recipes_command_lists_every_recipe_with_its_purpose_and_settings(capsys):
    from fitvision.cli import main
    from fitvision.recipes import PURPOSES, RECIPES, recipe_table

    assert set(PURPOSES) == set(RECIPES)  # a new recipe says what it is for
    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == recipe_table() and [r["name"] for r in rows] == sorted(RECIPES)
    cpu = next(r for r in rows if r["name"] == "cpu")
    assert cpu["settings"].startswith("speednet x0.75, 12 epochs, bs 2000, muon (muon_lr 0.24, lr 1.5), ")
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("recipe") and len(lines) == 1 + 2 * len(RECIPES)
    assert lines[1].split(None, 1) == ["cpu", PURPOSES["cpu"]]
