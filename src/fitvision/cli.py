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
        out = show_dataset(args.target, args.out or "batch.png", augment=args.augment, n=args.n, seed=args.seed,
                           storage_size=args.size)
        print(f"wrote {out}")
        return 0
    raise FitVisionError(f"unknown datasets action '{args.action}' (valid: info, show)")


# --------------------------------------------------------------------------- train
_TRAIN_FLAGS = [
    # flag, config field, type, help
    ("--data", "data", str, "dataset name, folder or archive (default cifar10)"),
    ("--model", "model", str, "architecture name (see `fitvision models`), or timm:NAME / torchvision:NAME"),
    ("--width", "width", float, "channel width multiplier"),
    ("--model-options", "model_options", str, "extra model arguments, e.g. \"dirac=false,bn_scale=true\""),
    ("--epochs", "epochs", float, "number of epochs"),
    ("--bs", "bs", int, "batch size (the global batch under torchrun / --nproc)"),
    ("--accum", "accum", int, "gradient accumulation: each batch in K forward/backward passes"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--opt", "opt", str, "optimizer: sgd, nesterov, adam, adamw, radam, lamb, ..."),
    ("--wd", "wd", float, "weight decay"),
    ("--clip", "clip", float, "gradient clipping threshold (0 = off)"),
    ("--sched", "sched", str, "schedule: one_cycle, cosine, linear, constant, step, ..."),
    ("--aug", "aug", str, "augmentation preset"),
    ("--size", "size", int, "training input size in pixels"),
    ("--crop-pct", "crop_pct", float, "evaluate on the central fraction of each image (default 1)"),
    ("--resize-method", "resize_method", str, "how images become stored squares: crop (centre) or squish"),
    ("--train-limit", "train_limit", int, "use at most N training images"),
    ("--valid-limit", "valid_limit", int, "evaluate on at most N validation images"),
    ("--valid-pct", "valid_pct", float, "validation fraction for unsplit data"),
    ("--seed", "seed", int, "random seed (split, shuffle, augmentation, init)"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:N"),
    ("--precision", "precision", str, "auto, fp32, bf16, fp16"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing"),
    ("--ema", "ema", float, "EMA of the weights, decay per step (e.g. 0.999; 0 = off): evaluated and saved"),
    ("--early-stop", "early_stop", int, "stop after PATIENCE epochs without val_loss improvement"),
    ("--init", "init", str, "weight init: default (each model's own) or lsuv (seed 004)"),
    ("--init-from", "init_from", str, "run directory whose weights initialise the body"),
    ("--freeze-epochs", "freeze_epochs", int, "train only the head for the first K epochs"),
    ("--out", "out", str, "run directory (default runs/<timestamp>-<name>)"),
]
_TRAIN_SWITCHES = [
    ("--compile", "compile", "torch.compile the model (with warm-up)"),
    ("--tta", "tta", "flip test-time augmentation at evaluation"),
    ("--freeze", "freeze", "train only the head (see --freeze-epochs)"),
    ("--resume", "resume", "continue the run in --out from its last checkpoint"),
    ("--sync-bn", "sync_bn", "BatchNorm statistics over all processes (torchrun on CUDA)"),
]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="named recipe, or auto (default): best for this hardware")
    p.add_argument("--config", default=None, help="TOML or JSON file setting any config field")
    for flag, dest, kind, help_ in _TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=kind, default=None, help=help_)
    for flag, dest, help_ in _TRAIN_SWITCHES:
        p.add_argument(flag, dest=dest, action="store_true", default=None, help=help_)


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

    flags = {dest: getattr(args, dest) for _, dest, _, _ in _TRAIN_FLAGS}
    flags.update({dest: getattr(args, dest) for _, dest, _ in _TRAIN_SWITCHES})
    cfg, why = resolve_config(args.recipe, args.config, **flags)
    preflight(cfg)  # the device, precision, phases and --init-from run: still before any work
    return cfg, why


def _refuse_resume_overrides(args, what: str = "run", extra: list[str] = ()) -> None:
    """--resume continues a run (or a search) as its config.json (search.json) says; any other
    option would be dropped without a word (an epoch count, a learning rate), so name them and
    stop instead."""
    given = [flag for flag, dest, _, _ in _TRAIN_FLAGS if dest != "out" and getattr(args, dest) is not None]
    given += [flag for flag, dest, _ in _TRAIN_SWITCHES if dest != "resume" and getattr(args, dest) is not None]
    given += [flag for flag in ("--recipe", "--config") if getattr(args, flag[2:]) is not None]
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
    if os.environ.get("RANK", "0") == "0" and not args.quiet:  # under torchrun, rank 0 speaks for all
        print(f"resuming {args.out} with the settings in its config.json" if args.resume else why)
    train_run(cfg, progress=args.progress and not args.quiet)
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
def build_parser() -> argparse.ArgumentParser:
    from fitvision.tune.options import add_search_options

    parser = argparse.ArgumentParser(
        prog="fitvision", allow_abbrev=False,  # no prefixes: `--init lsuv` must not become --init-from
        description="Train image classifiers fast and well: CIFAR-10, Imagenette, or any folder of labelled images.",
    )
    parser.add_argument("--version", action="version", version=f"fitvision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=lambda **kw: argparse.ArgumentParser(allow_abbrev=False, **kw))

    p = sub.add_parser("datasets", help="dataset catalog; `info` and `show` for one dataset")
    p.add_argument("action", nargs="?", choices=["info", "show"], help="info or show")
    p.add_argument("target", nargs="?", help="dataset name, folder or archive")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--out", default=None, help="output PNG for `show`")
    p.add_argument("--augment", action="store_true", help="`show`: apply the training augmentation")
    p.add_argument("--n", type=int, default=32, help="`show`: number of images")
    p.add_argument("--seed", type=int, default=0, help="`show`: which images and augmentations")
    p.add_argument("--size", type=int, default=160, help="storage size for images larger than 32 px")
    p.set_defaults(func=cmd_datasets)

    for name, func, what in (("models", cmd_models, "the model registry"), ("recipes", cmd_recipes, "the recipes")):
        p = sub.add_parser(name, help=f"list {what}")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)

    p = sub.add_parser("train", help="train a model and write a run directory")
    _add_train_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar and no per-epoch lines (history.csv has them); the setup and result stay")
    p.add_argument("--nproc", type=int, default=None, help="train in N processes on this machine (runs torchrun)")
    p.add_argument("--nnodes", type=int, default=1, help="with --nproc: train on M machines, each running this")
    p.add_argument("--rdzv-endpoint", default=None, help="with --nnodes: HOST:PORT where the machines meet")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="learning-rate range test; plots loss vs lr")
    _add_train_options(p)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("eval", help="evaluate a run on its validation data")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", default=None, help="evaluate on other data with the same classes")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (default: as the run was evaluated in training)")
    p.add_argument("--crop-pct", type=float, default=None, metavar="P",
                   help="evaluate on the central fraction P of each image (default: the run's own, model.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders of them, or quoted patterns such as 'shots/*.jpg'")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="re-render plots and report.html of a run")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("tune", help="hyperparameter search (Optuna) on a validation split of the training data")
    add_search_options(p)
    _add_train_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="export a run to ONNX or TorchScript (preprocessing inside)")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", default=None, help="output file (default RUN/model.onnx or RUN/model.pt)")
    p.add_argument("--input-dtype", choices=["float", "uint8"], default="float",
                   help="input: float in [0, 1] (default) or uint8 in 0..255, NCHW RGB")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc, which runs the command again
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
