"""Seeding: every RNG a training run draws from, and derived seeds for each trial.

`seed_everything` touches Python's `random`, NumPy's global generator, torch's CPU
generator and the generator of every CUDA device (`torch.manual_seed` covers both;
it does not initialise CUDA). DataLoader order needs two more pieces, which users
forget: a seeded `torch.Generator` for the sampler and a `worker_init_fn` that seeds
each worker's `random` and NumPy from the seed torch gives that worker.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from detcost.errors import UsageError

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


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A seed for one purpose ("init", "data", ...) derived stably from a trial seed.

    Stable across Python processes and versions (not `hash()`, which is salted).
    """
    digest = hashlib.sha256(f"{seed}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def data_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded generator, e.g. `DataLoader(..., generator=data_generator(seed))`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(check_seed(seed))
    return gen


def worker_init_fn(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed a worker's `random` and NumPy from torch's seed.

    torch seeds each worker with `base_seed + worker_id`, where `base_seed` comes from
    the DataLoader's generator; `random` and NumPy are left alone unless seeded here.
    """
    worker_seed = torch.initial_seed() % (MAX_SEED + 1)
    random.seed(worker_seed)
    np.random.seed(worker_seed)
