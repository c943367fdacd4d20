import subprocess
import sys

from fitvision import __version__
from fitvision.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"fitvision {__version__}"


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "fitvision", "train", "--epochs", "many"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("fitvision train: error: argument --epochs: must be a number, got 'many' "
                           "(see 'fitvision train --help')\n")


def test_every_config_field_is_a_flag_with_its_default(capsys):
    """The CLI is made from TrainConfig: walk its fields; each has a flag in `train --help` with its
    help, its default, and the valid names where the field is enumerated."""
    import dataclasses
    import re

    from fitvision.config import TrainConfig
    from fitvision.options import choices, flag

    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    enumerated = choices()
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("bool", bool):
            shown = f"{flag(f.name)}, --no-{flag(f.name)[2:]} {f.metadata['help']} (default: {'on' if f.default else 'off'})"
            assert shown in text, f.name
            continue
        match = re.search(re.escape(flag(f.name)) + r" (\S+) (.*?)\(default: ([^;)]*)(; one of: ([^)]*))?", text)
        assert match, f"{f.name} has no flag"
        assert match[2].strip() == " ".join(f.metadata["help"].split()), f.name
        default = f.default if isinstance(f.default, str) else f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        assert match[3] == (default or "''"), f.name
        if f.name in enumerated:
            assert match[5].split(", ") == list(enumerated[f.name]), f.name
    for name in ("recipe", "opt", "sched", "aug"):  # the four that listed no choices
        assert name in enumerated


def test_flags_set_their_fields_and_override_the_recipe(tmp_path):
    from fitvision.cli import build_parser, train_config_from_args

    argv = ["train", "--recipe", "seed", "--pct-start", "0.4", "--no-channels-last", "--tta-shift", "2",
            "--checkpoint-every", "50", "--storage-size", "96", "--lookahead", "--momentum", "0.8"]
    cfg, why = train_config_from_args(build_parser().parse_args(argv))
    assert why == "recipe seed"
    assert (cfg.pct_start, cfg.channels_last, cfg.tta_shift, cfg.checkpoint_every) == (0.4, False, 2, 50)
    assert (cfg.storage_size, cfg.lookahead, cfg.momentum, cfg.model, cfg.epochs) == (96, True, 0.8, "resnet9", 16)


def test_shell_completion_script_knows_every_flag_and_choice(capsys):
    import pytest

    pytest.importorskip("shtab")
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for word in ("--pct-start", "--checkpoint-every", "--no-channels-last", "lr-find", "one_cycle_linear", "rrc_flip"):
        assert word in script, word
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)  # it parses as bash
    assert proc.returncode == 0, proc.stderr


def test_datasets_show_previews_the_recipes_augmentation(tmp_path, monkeypatch):
    """`datasets show --aug` alone: the augmentation (and size) the auto recipe trains that data
    with, named in the title; `--aug PRESET` that preset."""
    from PIL import Image

    from fitvision.recipes import resolve_recipe
    from fitvision.report import plots

    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (100 * i, 50, 0)).save(tmp_path / "d" / c / f"{i}.png")
    titles = []
    monkeypatch.setattr(plots, "show_batch", lambda images, *a, title="", **k: titles.append((title, images.shape)))
    data = str(tmp_path / "d")
    cfg, _ = resolve_recipe("auto", data=data)
    assert main(["datasets", "show", data, "--aug", "--n", "4"]) == 0
    assert main(["datasets", "show", data, "--aug", "dihedral", "--n", "4"]) == 0
    assert main(["datasets", "show", data, "--n", "4"]) == 0
    size = cfg.size or 40
    assert titles == [(f"d: 4 training images, augmentation {cfg.aug} (recipe {cfg.recipe}'s)", (4, size, size, 3)),
                      ("d: 4 training images, augmentation dihedral", (4, 40, 40, 3)),
                      ("d: 4 training images", (4, 40, 40, 3))]


def test_help_does_not_wait_for_torch():
    """The registries' choices import torch: only the command that takes the config's flags builds them."""
    code = ("import sys\nfrom fitvision.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
