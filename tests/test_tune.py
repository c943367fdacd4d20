"""fitvision tune on Optuna: the space, the samplers and pruners, results, resume, bad input.

Most searches train with a stand-in (FakeTrain) whose val_acc is a known function of lr and
which calls the search's hooks once an epoch, as train_run does; two run the real train_run on
a tiny image folder. Searches shared between processes and databases: test_tune_storage.py.
"""

import csv
import json
import math
import random
import sys
from pathlib import Path

import pytest

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError
from fitvision.train.hooks import TrainState
from fitvision.tune import Dim, parse_space, resume_tune, suggest, tune

optuna = pytest.importorskip("optuna")


def test_parse_space_ranges_and_choices():
    space = parse_space("lr=1e-4..1e-1:log, wd=0..1e-3,bs=128|256")
    assert space == {
        "lr": Dim("lr", 1e-4, 1e-1, log=True),
        "wd": Dim("wd", 0.0, 1e-3),
        "bs": Dim("bs", choices=(128, 256)),
    }


@pytest.mark.parametrize("text, message", [
    ("lr=1e-4..", "search space entry 'lr=1e-4..': expected NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A|B|C"),
    ("lr=1..2:", "search space entry 'lr=1..2:': unknown scale '' (valid: log, lin)"),
    ("lr", "search space entry 'lr': expected NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A|B|C"),
    ("lr=a..1", "search space entry 'lr=a..1': 'a' is not a number "
                "(expected NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A|B|C)"),
    ("lr=0..1:log", "search space entry 'lr=0..1:log': a :log range needs LOW > 0"),
    ("lr=1..0.1", "search space entry 'lr=1..0.1': LOW must be below HIGH"),
    ("lr=0.1|0.2,lr=0.3|0.4", "search space names 'lr' twice"),
    ("model=1..2", "search space entry 'model=1..2': 'model' is not numeric; list choices A|B"),
    ("bs=64|big", "config key 'bs' must be an integer, got 'big'"),
    ("valid_pct=0|0.2", "search space cannot set 'valid_pct': the split must stay fixed across trials; "
                        "pass --valid-pct"),
    ("", "empty search space: expected NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A|B|C"),
])
def test_parse_space_errors(text, message):
    with pytest.raises(FitVisionError) as e:
        parse_space(text)
    assert str(e.value) == message


def test_parse_space_unknown_key_names_it():
    with pytest.raises(FitVisionError, match=r"^unknown config key 'learning_rate' \(valid keys: .*\blr\b"):
        parse_space("learning_rate=0.1..1")


def test_suggest_draws_in_range_and_log_uniform():
    space = parse_space("lr=1e-4..1e-1:log,bs=100..200,opt=sgd|adam")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    draws = []
    for _ in range(600):
        trial = study.ask()
        draws.append(suggest(trial, space))
        study.tell(trial, 0.0)
    assert all(1e-4 <= d["lr"] <= 1e-1 and 100 <= d["bs"] <= 200 and isinstance(d["bs"], int) for d in draws)
    assert {d["opt"] for d in draws} == {"sgd", "adam"}
    # Log-uniform: each decade gets about a third of the draws (a linear draw would give ~1% below 1e-3).
    below = sum(d["lr"] < 1e-3 for d in draws) / len(draws)
    assert 0.25 < below < 0.42


class FakeTrain:
    """Stands in for train_run(cfg, hooks=...): trains ``cfg.epochs`` epochs whose val_acc climbs to
    a known function of lr (best near lr=1e-2), calling the hooks' on_epoch_end as the loop does,
    then writes summary.json."""

    def __init__(self, fail_lr_above=None):
        self.fail_lr_above = fail_lr_above
        self.configs = []
        self.epochs_run = {}  # run dir -> epochs trained

    @staticmethod
    def final_acc(cfg):
        return 1.0 - abs(math.log10(cfg.lr) + 2.0) / 10 + (cfg.bs == 256) * 0.01

    def __call__(self, cfg: TrainConfig, hooks=()):
        self.configs.append(cfg)
        if self.fail_lr_above is not None and cfg.lr > self.fail_lr_above:
            raise FitVisionError("loss became NaN at epoch 1; lower --lr")
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        epochs = max(1, round(cfg.epochs))
        state = TrainState(total_steps=epochs)
        for epoch in range(epochs):
            state.step, state.epoch = epoch + 1, epoch
            state.history.append({"epoch": epoch, "val_acc": self.final_acc(cfg) * (epoch + 1) / epochs})
            self.epochs_run[cfg.out] = epoch + 1
            for hook in hooks:
                hook.on_epoch_end(state)
        (run / "summary.json").write_text(json.dumps({"val_acc": self.final_acc(cfg)}))
        return run


def _params(path):
    return [{k: v for k, v in r.items() if k not in ("val_acc", "seconds", "status", "error")}
            for r in csv.DictReader(open(path / "trials.csv"))]


def test_a_search_is_seeded_by_the_configs_seed(tmp_path):
    space = parse_space("lr=1e-4..1:log,bs=128|256,opt=sgd|adam")
    for sampler in ("random", "tpe"):
        runs = {}
        for name, seed in (("a", 5), ("b", 5), ("c", 6)):
            tune(TrainConfig(epochs=1, seed=seed), space, trials=12, out=tmp_path / sampler / name, train=FakeTrain(),
                 sampler=sampler, pruner="none")
            runs[name] = _params(tmp_path / sampler / name)
        assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
        assert len({r["lr"] for r in runs["a"]}) == 12


def test_tpe_models_the_results_after_a_third_of_the_budget(tmp_path):
    """TPE draws its first trials at random, as the random sampler would, then from its model: with
    8 trials after 3 (Optuna's default of 10 start-up trials left TPE pure random search here)."""
    from fitvision.tune.study import startup_trials

    assert [startup_trials(n) for n in (4, 8, 10, 30, 100)] == [3, 3, 3, 10, 10]
    space = parse_space("lr=1e-4..1:log")
    lrs = {}
    for sampler in ("random", "tpe"):
        tune(TrainConfig(epochs=1, seed=3), space, trials=8, out=tmp_path / sampler, train=FakeTrain(),
             sampler=sampler, pruner="none")
        lrs[sampler] = [float(r["lr"]) for r in _params(tmp_path / sampler)]
    assert lrs["tpe"][:3] == lrs["random"][:3]
    assert all(a != b for a, b in zip(lrs["tpe"][3:], lrs["random"][3:]))


def test_tune_picks_best_val_acc_and_records_failures(tmp_path):
    space = parse_space("lr=1e-4..1:log,bs=128|256")
    fake = FakeTrain(fail_lr_above=0.1)
    base = TrainConfig(data="tiny", epochs=1, seed=5)
    result = tune(base, space, trials=8, out=tmp_path, retrain=True, train=fake, sampler="random", pruner="none")

    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [str(i) for i in range(8)]
    assert sorted(float(r["lr"]) for r in rows) == sorted(c.lr for c in fake.configs[:8])
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(float(r["lr"]) > 0.1 for r in failed)
    assert all(r["error"] == "loss became NaN at epoch 1; lower --lr" for r in failed)
    assert all(r["val_acc"] == "nan" for r in failed)
    ok = [r for r in rows if r["status"] == "ok"]
    best = max(ok, key=lambda r: float(r["val_acc"]))

    saved = json.loads((tmp_path / "best.json").read_text())
    assert saved == result
    assert saved["trial"] == int(best["trial"])
    assert saved["val_acc"] == float(best["val_acc"])
    assert saved["params"] == {"lr": float(best["lr"]), "bs": int(best["bs"])}
    assert saved["failed"] == len(failed) and saved["pruned"] == 0
    assert saved["study"] == "fitvision-tune" and saved["storage"] == f"sqlite:///{tmp_path / 'study.db'}"
    # Trials validate on a split of the training data; only the retrain sees the test set.
    assert all(c.valid_pct == 0.1 for c in fake.configs[:8])
    retrain = fake.configs[-1]
    assert retrain.valid_pct == 0.0 and retrain.lr == saved["params"]["lr"] and retrain.bs == saved["params"]["bs"]
    assert saved["test_acc"] == json.loads((tmp_path / "retrain" / "summary.json").read_text())["val_acc"]


def test_tune_keeps_users_valid_pct_and_fails_when_all_trials_fail(tmp_path):
    fake = FakeTrain(fail_lr_above=0.0)
    with pytest.raises(FitVisionError, match=r"^all 2 trials failed; see the error column of trials.csv$"):
        tune(TrainConfig(valid_pct=0.2), parse_space("lr=0.1|0.2"), trials=2, out=tmp_path, train=fake)
    assert [c.valid_pct for c in fake.configs] == [0.2, 0.2]
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 3
    with pytest.raises(FitVisionError) as e:
        tune(TrainConfig(), parse_space("lr=0.1|0.2"), trials=2, out=tmp_path, train=fake)
    assert str(e.value) == f"{tmp_path} already holds a search; continue it with --resume, or choose another --out"


def test_tune_records_oom_but_raises_bugs(tmp_path):
    def oom(cfg, hooks):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(FitVisionError, match="all 1 trials failed"):
        tune(TrainConfig(), parse_space("lr=0.1|0.2"), trials=1, out=tmp_path / "a", train=oom)
    row = next(csv.DictReader(open(tmp_path / "a" / "trials.csv")))
    assert row["status"] == "failed" and row["error"].startswith("out of memory: CUDA out of memory")

    def bug(cfg, hooks):
        raise ZeroDivisionError("a bug, not a bad hyperparameter")

    with pytest.raises(ZeroDivisionError):
        tune(TrainConfig(), parse_space("lr=0.1|0.2"), trials=1, out=tmp_path / "b", train=bug)


def test_ctrl_c_says_where_the_search_stopped(tmp_path):
    fake = FakeTrain()

    def interrupted_second(cfg, hooks):
        if fake.configs:
            raise KeyboardInterrupt(f"continue with: fitvision train --resume --out {cfg.out}")
        return fake(cfg)

    with pytest.raises(KeyboardInterrupt) as e:  # before: the trial's advice, which resumes no search
        tune(TrainConfig(), parse_space("lr=0.1|0.2"), trials=3, out=tmp_path, train=interrupted_second)
    assert str(e.value) == (f"the search stopped after 1 of 3 trials (recorded in {tmp_path / 'trials.csv'}); "
                            f"continue with: fitvision tune --resume --out {tmp_path}")
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 2
    fake.configs.append("a first trial seen, so the next one is interrupted")
    with pytest.raises(KeyboardInterrupt) as e:
        tune(TrainConfig(), parse_space("lr=0.1|0.2"), trials=3, out=tmp_path / "b", train=interrupted_second)
    assert str(e.value) == ("the search stopped before its first trial finished; continue with: "
                            f"fitvision tune --resume --out {tmp_path / 'b'}")


def test_random_module_state_untouched(tmp_path):
    random.seed(1)
    before = random.random()
    random.seed(1)
    tune(TrainConfig(), parse_space("lr=0.1..0.2"), trials=3, out=tmp_path, train=FakeTrain(), sampler="random")
    assert random.random() == before


def test_cli_bad_space_is_one_line_error(capsys):
    from fitvision.cli import main

    assert main(["tune", "--trials", "2", "--space", "lr=1e-4..0.1:cubic"]) == 2  # a usage error
    assert capsys.readouterr().err == ("error: search space entry 'lr=1e-4..0.1:cubic': "
                                       "unknown scale 'cubic' (valid: log, lin)\n")


@pytest.mark.parametrize("space, message", [
    ("opt=sgd|adamm", "search space value opt=adamm: unknown optimizer 'adamm' (valid optimizers: "),
    ("epochs=0|1", "search space value epochs=0: epochs must be > 0, got 0.0"),
    ("bs=0..2", "search space value bs=0: bs must be > 0, got 0"),  # round(uniform(0, 2)) can be 0
    ("pct_start=0.5..2", "search space value pct_start=2: pct_start must be in (0, 1) with sched one_cycle, got 2.0"),
])
def test_tune_refuses_a_space_value_that_no_trial_could_train_with(tmp_path, space, message):
    fake = FakeTrain(fail_lr_above=1.0)
    with pytest.raises(FitVisionError) as e:  # before the fix: those trials ran, and failed one by one
        tune(TrainConfig(), parse_space(space), trials=4, out=tmp_path, train=fake)
    assert str(e.value).startswith(message)
    assert fake.configs == [] and not (tmp_path / "trials.csv").exists()


def test_tune_space_range_ends_may_be_open_bounds(tmp_path):
    fake = FakeTrain(fail_lr_above=1.0)  # momentum must be < 1 and lr > 0: draws inside the ranges are
    tune(TrainConfig(), parse_space("momentum=0..1,lr=0..0.1"), trials=2, out=tmp_path, train=fake)
    assert len(fake.configs) == 2


def test_cli_bad_space_value_is_a_usage_error(capsys, tmp_path):
    from fitvision.cli import main

    assert main(["tune", "--trials", "2", "--space", "aug=flip|flipp", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("error: search space value aug=flipp: unknown augmentation 'flipp' "
                                              "(valid: ")
    assert not (tmp_path / "t").exists()


def test_tune_with_real_training_validates_on_carved_training_images(tmp_path, capsys):
    """Two real trials through the CLI: each trial holds out 10% of the training images, and
    the retrain validates on the folder's own valid split (the test set), once."""
    from fitvision.cli import main
    from synthetic_images import make_image_folder

    data = make_image_folder(tmp_path / "data", ["r", "g", "b"], 20, 5)
    assert main(["tune", "--trials", "2", "--space", "lr=1e-3|3e-3", "--data", str(data), "--model", "mlp",
                 "--epochs", "1", "--bs", "8", "--precision", "fp32", "--device", "cpu",
                 "--out", str(tmp_path / "tune"), "--retrain"]) == 0
    best = json.loads((tmp_path / "tune" / "best.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "tune" / "trials.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert best["val_acc"] == max(float(r["val_acc"]) for r in rows)
    for i in range(2):
        summary = json.loads((tmp_path / "tune" / f"trial-{i:03d}" / "summary.json").read_text())
        assert (summary["num_train"], summary["num_valid"]) == (54, 6)  # 60 training images, 10% held out
        assert float(rows[i]["val_acc"]) == summary["val_acc"]
    retrain = json.loads((tmp_path / "tune" / "retrain" / "summary.json").read_text())
    assert (retrain["num_train"], retrain["num_valid"]) == (60, 15)
    assert best["test_acc"] == retrain["val_acc"]
    assert f"best: trial {best['trial']}" in capsys.readouterr().out


def _rows(path):
    """trials.csv without its timing column, which no two runs share."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(path / "trials.csv"))]


def test_interrupted_search_resumes_where_it_stopped(tmp_path):
    """Ctrl-C in the third of five trials, after its first checkpoint: --resume keeps the two
    finished trials, resumes the third from its checkpoint and ends as an uninterrupted search."""
    space, base = parse_space("lr=1e-4..1:log,bs=128|256"), TrainConfig(epochs=1, seed=3)
    tune(base, space, trials=5, out=tmp_path / "whole", retrain=True, train=FakeTrain())

    first = FakeTrain()

    def interrupted_third(cfg, hooks):
        if len(first.configs) == 2:
            Path(cfg.out).mkdir(parents=True)
            (Path(cfg.out) / "checkpoint.pt").write_bytes(b"an epoch's checkpoint")
            raise KeyboardInterrupt(f"continue with: fitvision train --resume --out {cfg.out}")
        return first(cfg, hooks)

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt) as e:
        tune(base, space, trials=5, out=out, retrain=True, train=interrupted_third)
    assert str(e.value) == (f"the search stopped after 2 of 5 trials (recorded in {out / 'trials.csv'}); "
                            f"continue with: fitvision tune --resume --out {out}")

    second = FakeTrain()

    def resumed(cfg, hooks):
        if cfg.resume:  # train_run would go on from the checkpoint; the stand-in finishes the run
            assert (Path(cfg.out) / "checkpoint.pt").is_file()
            (Path(cfg.out) / "checkpoint.pt").unlink()
            Path(cfg.out).rmdir()
        return second(cfg, hooks)

    result = resume_tune(out, train=resumed)
    assert [(c.out, c.resume) for c in second.configs] == [
        (str(out / "trial-002"), True), (str(out / "trial-003"), False), (str(out / "trial-004"), False),
        (str(out / "retrain"), False)]
    assert _rows(out) == _rows(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "best.json").read_text())
    assert result == {**whole, **{k: whole[k].replace("whole", "cut") for k in ("run_dir", "retrain_run", "storage")}}
    assert json.loads((out / "best.json").read_text()) == result


def test_resume_keeps_a_trial_that_finished_unrecorded_and_needs_a_search(tmp_path):
    fake = FakeTrain()

    def stop_after_first_run(cfg, hooks):
        fake(cfg, hooks)
        raise KeyboardInterrupt("after the run, before trials.csv took it in")

    with pytest.raises(KeyboardInterrupt):
        tune(TrainConfig(), parse_space("lr=0.01|0.1"), trials=2, out=tmp_path / "s", train=stop_after_first_run)
    resume_tune(tmp_path / "s", train=fake)
    assert [c.out for c in fake.configs] == [str(tmp_path / "s" / "trial-000"), str(tmp_path / "s" / "trial-001")]
    assert [r["status"] for r in _rows(tmp_path / "s")] == ["ok", "ok"]
    with pytest.raises(FitVisionError) as e:
        resume_tune(tmp_path / "nothing", train=fake)
    assert str(e.value) == f"cannot resume: {tmp_path / 'nothing' / 'search.json'} does not exist"


@pytest.mark.parametrize("argv, message", [
    (["tune", "--resume", "--out", "S", "--lr", "0.1", "--trials", "3"],
     "--resume continues the search in --out exactly as its search.json says; drop --lr, --trials (to search "
     "with other settings, start a new search in another --out)"),
    (["tune", "--resume", "--out", "S", "--sampler", "random", "--storage", "x.log", "--workers", "2"],
     "--resume continues the search in --out exactly as its search.json says; drop --sampler, --storage (to "
     "search with other settings, start a new search in another --out)"),
    (["tune", "--resume"], "--resume needs --out DIR: the search directory to continue"),
    (["tune", "--trials", "2"], 'tune needs --space, e.g. --space "lr=1e-4..1e-1:log,bs=128|256"'),
])
def test_cli_tune_resume_usage_errors(capsys, argv, message):
    from fitvision.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_median_pruner_stops_bad_trials_after_an_epoch(tmp_path):
    """Four epochs a trial; lr far from 1e-2 climbs to a low val_acc. Once three trials have
    finished, a trial below their median at an epoch stops there: recorded as pruned, with the
    val_acc it had, having trained fewer epochs; good trials train all four."""
    fake = FakeTrain()
    result = tune(TrainConfig(epochs=4, seed=1), parse_space("lr=1e-6..1e2:log"), trials=12, out=tmp_path, train=fake,
                  sampler="random", pruner="median")
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert len(rows) == 12 and pruned and result["pruned"] == len(pruned)
    trained = {Path(out).name: n for out, n in fake.epochs_run.items()}
    for r in rows:
        name = f"trial-{int(r['trial']):03d}"
        if r["status"] == "pruned":
            epoch = int(r["error"].split()[3])
            assert r["error"] == f"pruned after epoch {epoch} (val_acc {float(r['val_acc']):.4f})"
            assert trained[name] == epoch + 1 < 4
            assert not (tmp_path / name / "summary.json").exists()
        else:
            assert r["status"] == "ok" and trained[name] == 4
    best_pruned = max(FakeTrain.final_acc(TrainConfig(lr=float(r["lr"]))) for r in pruned)
    assert result["val_acc"] > best_pruned  # what pruning stopped was worse than what it kept


@pytest.mark.parametrize("pruner", ["hyperband", "none"])
def test_other_pruners_run(tmp_path, pruner):
    result = tune(TrainConfig(epochs=3), parse_space("lr=1e-6..1e2:log"), trials=6, out=tmp_path, train=FakeTrain(),
                  pruner=pruner)
    assert result["pruned"] == 0 if pruner == "none" else result["pruned"] >= 0
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 7


def test_the_prune_hook_stops_a_real_training_run(tmp_path):
    """The real train_run with the search's hook: a trial the pruner stops after epoch 1 of 3
    ends at once, its run directory holding the two epochs it trained and no results."""
    from synthetic_images import make_image_folder

    from fitvision.train.run import train_run
    from fitvision.tune.trial import PruneHook, Pruned

    class Trial:  # what the hook needs of an optuna trial
        reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) == 2

    data = make_image_folder(tmp_path / "data", ["r", "g"], 12, 4)
    cfg = TrainConfig(data=str(data), model="mlp", epochs=3, bs=8, precision="fp32", device="cpu",
                      out=str(tmp_path / "run"))
    with pytest.raises(Pruned) as e:
        train_run(cfg, progress=False, hooks=[PruneHook(Trial())])
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(float(r["epoch"])) for r in history] == [0, 1] == [s for s, _ in Trial.reported]
    assert str(e.value) == f"pruned after epoch 1 (val_acc {Trial.reported[1][1]:.4f})"
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "grid"], "fitvision tune: error: argument --sampler: invalid choice 'grid' (valid: tpe, random) "
                            "(see 'fitvision tune --help')"),
    (["--sampler", "rnadom"], "fitvision tune: error: argument --sampler: invalid choice 'rnadom' (did you mean "
                              "'random'? valid: tpe, random) (see 'fitvision tune --help')"),
    (["--pruner", "asha"], "fitvision tune: error: argument --pruner: invalid choice 'asha' (valid: median, "
                           "hyperband, none) (see 'fitvision tune --help')"),
    (["--workers", "0"], "error: --workers must be at least 1, got 0"),
])
def test_cli_bad_search_options_are_one_line_and_write_nothing(capsys, tmp_path, flags, message):
    from fitvision.cli import main

    argv = ["tune", "--trials", "2", "--space", "lr=0.1|0.2", "--out", str(tmp_path / "t"), *flags]
    try:
        code = main(argv)
    except SystemExit as e:  # the parser's own errors
        code = e.code
    assert code == 2
    assert capsys.readouterr().err == f"{message}\n"
    assert not (tmp_path / "t").exists()


def test_without_optuna_tune_says_how_to_install_it(capsys, tmp_path, monkeypatch):
    from fitvision.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["tune", "--trials", "2", "--space", "lr=0.1|0.2", "--out", str(tmp_path / "t")]) == 1
    assert capsys.readouterr().err == ("error: fitvision tune runs on Optuna, which is not installed: "
                                       "pip install 'fitvision[tune]'\n")
    assert not (tmp_path / "t").exists()
