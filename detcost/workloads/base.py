"""The workload interface: what a net + its data + its optimizer must give a trial.

Kept small so users can plug in their own (`--workloads package.module:factory`):
a factory takes a `WorkloadConfig` and returns a `Workload`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Size:
    """Batch, image size and step counts of one size preset (gpu, cpu, quick)."""

    batch: int
    image: int
    steps: int  # timed steps
    warmup: int  # steps before timing starts (cold start is measured over these)


@dataclass(frozen=True)
class WorkloadConfig:
    """Everything a factory needs; models are built from `init_seed`, data from `data_seed`."""

    device: str
    init_seed: int
    data_seed: int
    batch: int
    image: int
    total_steps: int  # warmup + timed: the factory provides one batch per step


@dataclass
class Workload:
    """A built workload: the trial runs `loss_fn(model(x), y)` for each (x, y) in `batches`.

    `batches` holds one entry per step, already on the device (entries may repeat the
    same tensors); `eval_batch` is fixed across seeds so logits can be compared.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Sequence[Batch]
    eval_batch: Batch
    notes: dict = field(default_factory=dict)
    # Set when a trial applies its axes (train.build), never by a factory: the training
    # step as the axes wrapped it (None: the plain step), and the model before any axis
    # wrapped it (torch.compile's module computes what this one does).
    step: Any = None
    model_as_built: nn.Module | None = None


Factory = Callable[[WorkloadConfig], Workload]
