"""multiscale: input size changes between steps, where `cudnn.benchmark` re-tunes."""

from __future__ import annotations

import torch

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import classification
from detcost.workloads.simple_cnn import SimpleCNN

DESCRIPTION = (
    "simple_cnn on input sizes that change every step (fixed seeded schedule). gpu size: 65 GFLOP a "
    "step (averaged over its sizes), under 1 TFLOP: at ~12 kFLOP an input value, with 16 staged "
    "batches for each of its 4 sizes, 1 TFLOP would draw 1.3G values on the host in every trial "
    "(~8 s); at this size a step is ~2 ms of kernels against well under 1 ms of launches, and what "
    "this workload shows, cudnn.benchmark tuning each new size, happens in the warm-up"
)
SIZES = {
    "gpu": Size(batch=128, image=64, steps=24, warmup=8),
    "cpu": Size(batch=16, image=32, steps=56, warmup=3),
    "quick": Size(batch=8, image=32, steps=9, warmup=2),
}
SCHEDULE_SEED = 7  # fixed: every trial sees the same sequence of shapes
SCALES = (0.5, 0.75, 1.0, 1.25)


def schedule(image: int, steps: int) -> list[int]:
    """Image size per step, from a fixed seed; sizes stay multiples of 8."""
    sizes = [max(8, int(round(image * s / 8)) * 8) for s in SCALES]
    gen = torch.Generator().manual_seed(SCHEDULE_SEED)
    picks = torch.randint(0, len(sizes), (steps,), generator=gen).tolist()
    return [sizes[k] for k in picks]


def build(cfg: WorkloadConfig) -> Workload:
    return classification(SimpleCNN(width=48), cfg, sizes=schedule(cfg.image, cfg.total_steps))
