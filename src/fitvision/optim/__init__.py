"""fitvision.optim: the composable optimizer of seed 004, its recipes, and schedules."""

from fitvision.optim.factory import create_optimizer, get_hyper, optimizer_names, set_hyper
from fitvision.optim.optimizer import Optimizer, Stat

__all__ = ["Optimizer", "Stat", "create_optimizer", "get_hyper", "optimizer_names", "set_hyper"]
