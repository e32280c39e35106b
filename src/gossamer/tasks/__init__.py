"""Workloads that need no download: ``charlm``, ``digits``, ``quadratic``.

``make_task(name, **options)`` builds one; see ``gossamer.tasks.base`` for the
``Task`` / ``Shard`` contract and each task module for its data and defaults.
This package imports only ``gossamer.errors`` from gossamer.
"""

from gossamer.tasks.base import TASK_NAMES, Shard, Task, make_task

__all__ = ["TASK_NAMES", "Shard", "Task", "make_task"]
