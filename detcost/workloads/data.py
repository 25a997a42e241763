"""Seeded synthetic data that a conv net can learn.

Inputs are smoothed Gaussian images drawn from the data seed; labels come from a fixed
"teacher" rule (a seeded projection of pooled inputs), so a net that trains gets better
than chance on a held-out evaluation batch, and evaluation accuracy means something.
Everything is generated on the CPU with explicit generators (identical on every
device), then staged on the device before timing.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from detcost.workloads.base import Batch

TEACHER_SEED = 1234  # fixed: the labelling rule is the same in every trial
EVAL_SEED = 4321  # fixed: the evaluation batch is the same in every trial
POOL_BATCHES = 16  # distinct training batches staged on the device, cycled in seeded order


def _images(n: int, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, channels, size, size, generator=gen)
    # Spatial structure, so convolutions have something to find.
    return F.avg_pool2d(x, 3, stride=1, padding=1) * 3.0


def _teacher(shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(TEACHER_SEED)
    return torch.randn(*shape, generator=gen)


def classify(x: torch.Tensor, classes: int) -> torch.Tensor:
    """Labels from a fixed rule: argmax of a fixed projection of per-channel statistics.

    The statistics (mean and mean of the positive part, over all pixels) do not depend on
    where a pattern sits, so conv nets with global pooling can learn the rule.
    """
    mean, std = _reference_stats(x.shape[1], x.shape[-1])
    stats = (_stats(x) - mean) / std
    return (stats @ _teacher((stats.shape[1], classes))).argmax(1)


def _stats(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.mean((2, 3)), F.relu(x).mean((2, 3))], dim=1)


@functools.cache
def _reference_stats(channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and spread of the statistics over a fixed reference sample, so that every
    class is common; fixed per image size, so a label never depends on its batch."""
    ref = _stats(_images(512, channels, size, torch.Generator().manual_seed(TEACHER_SEED + 1)))
    return ref.mean(0), ref.std(0)


def segment(x: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-pixel labels from a fixed rule: argmax of a fixed 1x1 mix of smoothed channels."""
    smooth = F.avg_pool2d(x, 5, stride=1, padding=2)
    return torch.einsum("nchw,ck->nkhw", smooth, _teacher((x.shape[1], classes))).argmax(1)


def make_batch(n: int, channels: int, size: int, classes: int, seed: int, task: str) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = _images(n, channels, size, gen)
    y = classify(x, classes) if task == "classify" else segment(x, classes)
    return x, y


def staged_batches(
    *,
    n: int,
    channels: int,
    sizes: list[int],
    classes: int,
    data_seed: int,
    device: str,
    task: str = "classify",
) -> list[Batch]:
    """One batch per step (len(sizes) steps): a seeded pool, staged on the device.

    `sizes[i]` is the image size at step i (constant for most workloads). The pool holds
    `POOL_BATCHES` batches per distinct size; which pool batch a step uses is drawn from
    the data seed, so changing the data seed changes both samples and order.
    """
    order = torch.Generator().manual_seed(data_seed)
    pools: dict[int, list[Batch]] = {}
    for size in sorted(set(sizes)):
        pools[size] = [
            tuple(t.to(device) for t in make_batch(n, channels, size, classes, data_seed * 1009 + size * 31 + k, task))
            for k in range(POOL_BATCHES)
        ]
    picks = torch.randint(0, POOL_BATCHES, (len(sizes),), generator=order).tolist()
    return [pools[size][k] for size, k in zip(sizes, picks)]


def eval_batch(n: int, channels: int, size: int, classes: int, device: str, task: str = "classify") -> Batch:
    x, y = make_batch(n, channels, size, classes, EVAL_SEED, task)
    return x.to(device), y.to(device)
