"""Seeding: every RNG a training run draws from, and derived seeds for each trial.

`seed_everything` touches Python's `random`, NumPy's global generator, torch's CPU
generator and the generator of every CUDA device (`torch.manual_seed` covers both;
it does not initialise CUDA). DataLoader order needs two more pieces, which users
forget: a seeded `torch.Generator` for the sampler and a `worker_init_fn` that seeds
each worker's `random` and NumPy from the seed torch gives that worker. The derived
seeds (`derive_seed`) are the record's rule and the worker seeding (`worker_init_fn`) the
loader's, the functions the trials call, imported here rather than written twice.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from detcost.errors import UsageError
from detcost.loader import seed_worker as worker_init_fn
from detcost.record import derive_seed

__all__ = ["MAX_SEED", "check_seed", "data_generator", "derive_seed", "seed_everything", "worker_init_fn"]

MAX_SEED = 2**32 - 1  # NumPy's legacy seeding accepts 0 .. 2**32 - 1


def check_seed(seed: int) -> int:
    if not 0 <= int(seed) <= MAX_SEED:
        raise UsageError(f"seed {seed} is out of range; use 0 to {MAX_SEED}")
    return int(seed)


def seed_everything(seed: int) -> int:
    """Seed `random`, NumPy, torch on the CPU and torch on every CUDA device."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device, lazily, without initialising CUDA
    return seed


def data_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded generator, e.g. `DataLoader(..., generator=data_generator(seed))`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(check_seed(seed))
    return gen
