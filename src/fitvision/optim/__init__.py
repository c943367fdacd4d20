"""fitvision.optim: the composable optimizer of seed 004, its recipes, and schedules."""

from fitvision.optim.factory import create_optimizer, get_hyper, optimizer_names, set_hyper
from fitvision.optim.optimizer import Optimizer, Stat
from fitvision.optim.policy import configure_optimizer, optimizer_groups

__all__ = ["Optimizer", "Stat", "configure_optimizer", "create_optimizer", "get_hyper", "optimizer_names",
           "optimizer_groups", "set_hyper"]
