"""The ``fitvision tune`` options beyond the training ones: how to search (sampler, pruner), where
the study lives (storage, study name) and how many processes share it. Kept here so cli.py stays
a thin list of subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from fitvision.errors import FitVisionError, UsageError
from fitvision.options import choice_type
from fitvision.tune.study import PRUNERS, SAMPLERS

_SEARCH_FLAGS = ("--space", "--trials", "--retrain", "--sampler", "--pruner", "--storage", "--study")


def add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=None, help="number of configurations to try (default 8)")
    p.add_argument("--space", default=None,
                   help='search space, e.g. "lr=1e-4..1e-1:log,wd=1e-5..1e-3:log,bs=128|256" '
                        '(with --resume --out DIR: the interrupted search\'s own)')
    p.add_argument("--retrain", action="store_true",
                   help="retrain the best on all training data and report test accuracy once")
    p.add_argument("--sampler", default=None, type=choice_type("sampler", SAMPLERS), choices=SAMPLERS, metavar="NAME",
                   help="tpe (default) or random")
    p.add_argument("--pruner", default=None, type=choice_type("pruner", PRUNERS), choices=PRUNERS, metavar="NAME",
                   help="median (default), hyperband or none: stop bad trials early")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the Optuna storage to share the study through: postgresql://..., mysql://..., "
                        "sqlite:///FILE or a journal file path (default OUT/study.db)")
    p.add_argument("--study", default=None, metavar="NAME", help="study name in --storage (default fitvision-tune)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes on this machine sharing the study (default 1)")
    p.add_argument("--join", action="store_true", help=argparse.SUPPRESS)  # a worker of --workers N


def search_options(args) -> dict[str, Any]:
    """sampler, pruner, storage, study and workers from the command line, checked (a usage error)."""
    from fitvision.tune.study import check_choices

    opts = {"sampler": args.sampler or "tpe", "pruner": args.pruner or "median", "storage": args.storage,
            "study": args.study, "workers": 1 if args.workers is None else args.workers}
    try:
        check_choices(opts["sampler"], opts["pruner"], opts["workers"])
    except FitVisionError as e:
        raise UsageError(str(e)) from None
    return opts


def given_search_flags(args) -> list[str]:
    """The search's own options on a --resume command line, which search.json already fixes."""
    return [f for f in _SEARCH_FLAGS if getattr(args, f[2:]) not in (None, False)]
