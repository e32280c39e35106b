"""Test-wide settings.

Tests use small models, for which torch's intra-op threads only add
contention (badly so on a loaded 2-core CI machine), so the test process uses
one thread. Subprocess peers started by tests set the same through the
environment.
"""

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
