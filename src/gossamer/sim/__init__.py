"""The simulator: scenarios run in one process on the simulated network."""

from .runner import run_algorithm, task_for
from .scenario import Scenario

__all__ = ["Scenario", "run_algorithm", "task_for"]
