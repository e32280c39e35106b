"""Workloads that need no download: ``charlm``, ``digits``, ``quadratic``; and a user's own.

``make_task(name, **options)`` builds a built-in one; see ``gossamer.tasks.base``
for the ``Task`` / ``Shard`` contract, each task module for its data and
defaults, and ``gossamer.tasks.protocol`` for a user's own task (``as_task``
checks one and wraps it; ``task_name`` is the name results carry).
``gossamer.tasks.weights.save_model`` writes a trained model as safetensors.
This package imports only ``gossamer.errors`` (and ``gossamer.seeding``) from gossamer.
"""

from gossamer.tasks.base import TASK_NAMES, Shard, Task, make_task
from gossamer.tasks.protocol import UserTask, as_task, check_task, task_name
from gossamer.tasks.weights import save_model

__all__ = ["TASK_NAMES", "Shard", "Task", "UserTask", "as_task", "check_task", "make_task", "save_model", "task_name"]
