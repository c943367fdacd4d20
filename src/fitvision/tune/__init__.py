"""Hyperparameter search on Optuna (``fitvision tune``): the space, the study, the trials.

``import fitvision.tune`` imports neither Optuna nor torch; the search functions import Optuna
when they run, and say how to install it where it is missing.
"""

from fitvision.tune.search import best_trial, resume_tune, study_rows, tune
from fitvision.tune.space import Dim, check_space, format_params, parse_space, suggest
from fitvision.tune.study import PRUNERS, SAMPLERS

__all__ = ["Dim", "PRUNERS", "SAMPLERS", "best_trial", "check_space", "format_params", "parse_space",
           "resume_tune", "study_rows", "suggest", "tune"]
