"""Command-line interface: argparse subcommands that call library functions.

Exit status: 0 success; 2 usage error (argparse's, or a UsageError: options wrong in themselves,
found before any work); 1 any other failure. Both failures print one ``error: ...`` line on
stderr (a traceback only when FITVISION_DEBUG=1).
Library modules are imported inside the handlers so `fitvision --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings

from fitvision import __version__
from fitvision.errors import FitVisionError, Terminated, UsageError
from fitvision.listing import cmd_models, cmd_recipes
from fitvision.options import EPILOG, LR_FIND_UNUSED, FitVisionParser, add_config_flags, config_flags, flag, given_flags


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


# --------------------------------------------------------------------------- datasets
def cmd_datasets(args) -> int:
    from fitvision.data.sources import catalog_status

    if args.action is None:
        rows = catalog_status()
        if args.json:
            _print_json(rows)
            return 0
        width = max(len(r["description"]) for r in rows)
        for r in rows:
            where = r["location"] or "not found locally (downloaded on first use)"
            print(f"{r['name']:<12} {r['description']:<{width}}  {where}")
        return 0
    if args.target is None:
        raise UsageError(f"'fitvision datasets {args.action}' needs a dataset name or path")
    if args.action == "info":
        from fitvision.data.dataset import dataset_info

        info = dataset_info(args.target, storage_size=args.size)
        if args.json:
            _print_json(info)
        else:
            for k, v in info.items():
                shown = ", ".join(map(str, v)) if k == "classes" else "x".join(map(str, v)) if k == "image_size" else v
                print(f"{k:<11} {shown}")
        return 0
    if args.action == "show":
        from fitvision.report.plots import show_dataset

        if args.n < 1:
            raise UsageError(f"--n must be at least 1, got {args.n}")
        aug, size, note = _preview_aug(args.aug, args.target)
        out = show_dataset(args.target, args.out or "batch.png", aug=aug, n=args.n, seed=args.seed,
                           storage_size=args.size, size=size, title_note=note)
        print(f"wrote {out}")
        return 0
    raise FitVisionError(f"unknown datasets action '{args.action}' (valid: info, show)")


def _preview_aug(aug: str | None, target: str) -> tuple[str | None, int, str]:
    """(preset, size in px, title note) for `datasets show --aug [PRESET]`: alone, the augmentation
    and size the auto recipe would train this data with, named as the recipe's."""
    from fitvision.data.augment import PRESETS
    from fitvision.errors import check_choice
    from fitvision.recipes import resolve_recipe

    if aug is None:
        return None, 0, ""
    if aug != "recipe":
        try:
            check_choice("augmentation", aug, PRESETS)
        except FitVisionError as e:
            raise UsageError(str(e)) from None
        return aug, 0, ""
    cfg, _ = resolve_recipe("auto", data=target)
    return cfg.aug, cfg.size, f" (recipe {cfg.recipe}'s)"


# --------------------------------------------------------------------------- train
def train_config_from_args(args):
    """Recipe, then config file, then flags: later ones win. Anything wrong with them is a
    usage error (exit 2): nothing has been read or written yet."""
    try:
        return _train_config(args)
    except UsageError:
        raise
    except FitVisionError as e:
        raise UsageError(str(e)) from e


def _train_config(args):
    from fitvision.recipes import resolve_config
    from fitvision.train.setup import preflight

    settings = config_flags(args)
    cfg, why = resolve_config(settings.pop("recipe"), args.config, **settings)
    preflight(cfg)  # the device, precision, phases and --init-from run: still before any work
    return cfg, why


def _refuse_resume_overrides(args, what: str = "run", extra: list[str] = ()) -> None:
    """--resume continues a run (or a search) as its config.json (search.json) says; any other
    option would be dropped without a word (an epoch count, a learning rate), so name them and
    stop instead."""
    given = given_flags(args, ignore=("out", "resume")) + (["--config"] if args.config is not None else [])
    given += list(extra)
    if given:
        file = "config.json" if what == "run" else "search.json"
        advice = ("to train on with other settings, start a new run from its weights with --init-from RUN"
                  if what == "run" else "to search with other settings, start a new search in another --out")
        raise UsageError(f"--resume continues the {what} in --out exactly as its {file} says; drop "
                         f"{', '.join(given)} ({advice})")


def cmd_train(args) -> int:
    from fitvision.train.run import train_run

    if args.resume:
        _refuse_resume_overrides(args)
    cfg, why = train_config_from_args(args)
    if args.nproc is not None or args.nnodes != 1 or args.rdzv_endpoint:  # one line, not one per process
        from fitvision.train.launch import check_launch, launch

        nproc = 1 if args.nproc is None else args.nproc
        try:
            check_launch(cfg, nproc, args.nnodes, args.rdzv_endpoint)
        except FitVisionError as e:
            raise UsageError(str(e)) from None
        return launch(args.argv, nproc, args.nnodes, args.rdzv_endpoint)
    why = f"resuming {args.out} with the settings in its config.json" if args.resume else why
    if os.environ.get("RANK", "0") == "0" and not args.quiet:  # under torchrun, rank 0 speaks for all
        print(why)
    train_run(cfg, progress=args.progress and not args.quiet, why=why)
    return 0


def cmd_lr_find(args) -> int:
    from fitvision.train.run import lr_find_run

    cfg, why = train_config_from_args(args)
    print(why)
    lr_find_run(cfg)
    return 0


# --------------------------------------------------------------------------- eval / predict / report
def cmd_eval(args) -> int:
    from fitvision.train.evaluate import evaluate_run, format_evaluation

    if args.crop_pct is not None:
        from fitvision.data.augment import check_crop_pct

        try:
            check_crop_pct(args.crop_pct)
        except FitVisionError:
            raise UsageError(f"--crop-pct must be in (0, 1], got {args.crop_pct:g}") from None
    result = evaluate_run(args.run, data=args.data, tta=args.tta, crop_pct=args.crop_pct)
    if args.json:
        _print_json(result)
    else:
        print("\n".join(format_evaluation(result)))
    return 0


def cmd_predict(args) -> int:
    from fitvision.train.evaluate import predict_files

    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1, got {args.topk}")
    results = predict_files(args.run, args.images, topk=args.topk)
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            # decode errors name the file already; name it only where one does not
            where = "" if r["file"] in r["error"] else f"{r['file']}: "
            print(f"error: {where}{r['error']}", file=sys.stderr)
    ok = [r for r in results if "error" not in r]
    if args.json:
        _print_json(ok)
    else:
        for r in ok:
            top = ", ".join(f"{p['class']} {p['prob']:.3f}" for p in r["top"])
            print(f"{r['file']}: {top}")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from fitvision.report.html import render_run_report

    path = render_run_report(args.run)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- tune / export
def cmd_tune(args) -> int:
    import time

    from fitvision.tune import check_space, format_params, parse_space, resume_tune, tune
    from fitvision.tune.options import given_search_flags, search_options

    opts = search_options(args)  # an unknown sampler or pruner, --workers 0: usage errors, before any work
    if args.resume:
        _refuse_resume_overrides(args, what="search", extra=given_search_flags(args))
        if not args.out:
            raise UsageError("--resume needs --out DIR: the search directory to continue")
        if not args.join:
            print(f"resuming the search in {args.out} with the settings in its search.json")
        out, best = args.out, resume_tune(args.out, workers=opts["workers"], join=args.join)
        if best is None:  # a worker of --workers N: the command that started it reports
            return 0
    else:
        if args.space is None:
            raise UsageError('tune needs --space, e.g. --space "lr=1e-4..1e-1:log,bs=128|256"')
        try:
            space = parse_space(args.space)  # a syntax error should not wait for the recipe to resolve
        except FitVisionError as e:
            raise UsageError(str(e)) from e
        trials = 8 if args.trials is None else args.trials
        if trials < 1:
            raise UsageError(f"--trials must be at least 1, got {trials}")
        cfg, why = train_config_from_args(args)
        try:
            check_space(cfg, space)  # a bad value among the choices is a usage error, found before any trial
        except FitVisionError as e:
            raise UsageError(str(e)) from e
        print(why)
        out = cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-tune"
        best = tune(cfg, space, trials, out, retrain=args.retrain, **opts)
    print(f"best: trial {best['trial']} ({format_params(best['params'])}) val_acc {best['val_acc']:.4f}; wrote {out}/best.json")
    if "test_acc" in best:
        print(f"retrained on all training data: test_acc {best['test_acc']:.4f} ({best['retrain_run']})")
    return 0


def cmd_export(args) -> int:
    from fitvision.export import export_run

    path = export_run(args.run, args.format, args.out, input_dtype=args.input_dtype)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- parser
COMMANDS = ("datasets", "models", "recipes", "train", "lr-find", "eval", "predict", "report", "tune", "export")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI. With ``command`` (a name, or "" for none), only that subcommand gets the
    config's flags: their choices come from the registries, which import torch, and `fitvision
    --help` or `fitvision eval` need not wait."""
    from fitvision.tune.options import add_search_options

    parser = FitVisionParser(
        prog="fitvision",
        description="Train image classifiers fast and well: CIFAR-10, Imagenette, or any folder of labelled images.",
    )
    parser.add_argument("--version", action="version", version=f"fitvision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FitVisionParser)

    def add(name: str, func, help: str, usage: str | None = None, **kwargs) -> FitVisionParser:
        p = sub.add_parser(name, help=help, description=help, usage=usage, **kwargs)
        p.set_defaults(func=func, parser=p)
        return p

    def config_options(p: FitVisionParser, name: str, skip=()) -> None:
        if command in (None, name):
            add_config_flags(p, skip=skip)

    p = add("datasets", cmd_datasets, "dataset catalog; `info` and `show` for one dataset")
    p.add_argument("action", nargs="?", choices=["info", "show"], help="info or show")
    p.add_argument("target", nargs="?", help="dataset name, folder or archive")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--out", default=None, help="output PNG for `show` (default batch.png)")
    p.add_argument("--aug", nargs="?", const="recipe", default=None, metavar="PRESET",
                   help="`show`: the images as training sees them, through PRESET; alone: the augmentation "
                        "the recipe would train this data with")
    p.add_argument("--augment", dest="aug", action="store_const", const="recipe", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=32, help="`show`: number of images (default 32)")
    p.add_argument("--seed", type=int, default=0, help="`show`: which images and augmentations (default 0)")
    p.add_argument("--size", type=int, default=160, help="storage size for images larger than 32 px (default 160)")

    for name, func, what in (("models", cmd_models, "the model registry"), ("recipes", cmd_recipes, "the recipes")):
        p = add(name, func, f"list {what}")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("train", cmd_train, "train a model and write a run directory", usage="%(prog)s [options]", epilog=EPILOG)
    config_options(p, "train")
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar and no per-epoch lines (history.csv has them); the setup and result stay")
    p.add_argument("--nproc", type=int, default=None, metavar="N", help="train in N processes on this machine (runs torchrun)")
    p.add_argument("--nnodes", type=int, default=1, metavar="M", help="with --nproc: train on M machines, each running this")
    p.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="with --nnodes: HOST:PORT where the machines meet")

    why = "lr-find does not use it: it sweeps the lr over a fixed number of batches and evaluates nothing"
    p = add("lr-find", cmd_lr_find, "learning-rate range test; plots loss vs lr", usage="%(prog)s [options]",
            epilog=EPILOG, unused={flag(name): why for name in LR_FIND_UNUSED})
    config_options(p, "lr-find", skip=LR_FIND_UNUSED)

    p = add("eval", cmd_eval, "evaluate a run on its validation data")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", default=None, help="evaluate on other data with the same classes")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (default: as the run was evaluated in training)")
    p.add_argument("--crop-pct", type=float, default=None, metavar="P",
                   help="evaluate on the central fraction P of each image (default: the run's own, model.json)")
    p.add_argument("--json", action="store_true", help="machine-readable output, per-class metrics included")

    p = add("predict", cmd_predict, "classify image files with a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders of them, or quoted patterns such as 'shots/*.jpg'")
    p.add_argument("--topk", type=int, default=3, help="how many classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("report", cmd_report, "re-render plots and report.html of a run")
    p.add_argument("run", help="run directory")

    p = add("tune", cmd_tune, "hyperparameter search (Optuna) on a validation split of the training data",
            usage="%(prog)s --space SPACE [options]", epilog=EPILOG)
    add_search_options(p)
    config_options(p, "tune")

    p = add("export", cmd_export, "export a run to ONNX or TorchScript (preprocessing inside)")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", default=None, help="output file (default RUN/model.onnx or RUN/model.pt)")
    p.add_argument("--input-dtype", choices=["float", "uint8"], default="float",
                   help="input: float in [0, 1] (default) or uint8 in 0..255, NCHW RGB")

    p = add("completion", cmd_completion, "print a shell completion script (bash, zsh or tcsh)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="bash, zsh or tcsh")
    return parser


def cmd_completion(args) -> int:
    """The completion script, generated from the whole parser by shtab (every flag and choice)."""
    try:
        import shtab
    except ModuleNotFoundError:
        raise FitVisionError("shell completion needs shtab: pip install shtab") from None
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _command(argv: list[str]) -> str | None:
    """The subcommand named in argv (its first word that is not an option); "" when there is none
    or it is not one (`fitvision --help`, a typo): no command's config flags are needed then."""
    word = next((a for a in argv if not a.startswith("-")), None)
    if word == "completion":
        return None  # the script covers every command
    return word if word in COMMANDS else ""


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: its threads sleep when idle instead of spinning, which a core shared
    # with another process pays for (bench/contention.py: faster idle too). The user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, with its usage, not by the top-level parser
        getattr(args, "parser", parser).error("unrecognized arguments: " + " ".join(extra))
    args.argv = argv  # for --nproc, which runs the command again
    if args.command is None:
        parser.print_help()
        return 0
    from fitvision.logs import set_verbosity

    set_verbosity("warning" if getattr(args, "quiet", False) else "info")  # the setup and result lines, on stdout
    with warnings.catch_warnings():  # restores the default display on the way out
        warnings.showwarning = _show_warning
        return _run(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line for a user, not Python's path:line and source line."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _run(args) -> int:
    try:
        return args.func(args)
    except FitVisionError as e:
        if os.environ.get("FITVISION_DEBUG") == "1":
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except Terminated as e:  # SIGTERM: the run wrote a checkpoint and says how to go on
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:
        print("error: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fitvision predict ... | head`: the reader left; not an error. Point stdout at devnull
        # so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug, but the user still gets one line unless debugging
        debug = os.environ.get("FITVISION_DEBUG") == "1"
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (set FITVISION_DEBUG=1 for the traceback)"
        print(f"error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
