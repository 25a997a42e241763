"""scatter: a conv stem, then message passing over power-law "nodes" with `index_add_`
and `scatter_add_` (graph or point-cloud style). On CUDA these accumulate with atomics;
under `strict` they take sort-based deterministic paths."""

from __future__ import annotations

import torch
from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, CLASSES, classification, conv_bn_relu

DESCRIPTION = (
    "conv stem + index_add_/scatter_add_ aggregation over power-law node indices. gpu size: 91 GFLOP "
    "a step, under 1 TFLOP: its cost is the aggregation over 1M pixels a step, memory traffic and "
    "atomics that FLOPs do not count, and at ~29 kFLOP an input value 1 TFLOP would draw 560M values "
    "on the host in every trial (~3 s); at this size its convs alone are ~3 ms of kernels a step"
)
NODES = 64  # nodes per sample
POWER = 3.0  # u**POWER for uniform u: a few hot nodes collect most pixels (many collisions)
INDEX_SEED = 99  # fixed: the same graph in every trial
SIZES = {
    "gpu": Size(batch=256, image=64, steps=16, warmup=4),
    "cpu": Size(batch=16, image=32, steps=45, warmup=3),
    "quick": Size(batch=4, image=16, steps=6, warmup=2),
}


def node_index(pixels: int) -> torch.Tensor:
    """Which node each pixel belongs to: power-law distributed, fixed by INDEX_SEED."""
    u = torch.rand(pixels, generator=torch.Generator().manual_seed(INDEX_SEED))
    return (u.pow(POWER) * NODES).long().clamp(max=NODES - 1)


class ScatterAggregate(nn.Module):
    """Mean of each node's pixel features (index_add_ + scatter_add_ counts), sent back
    to its pixels and mixed in."""

    def __init__(self):
        super().__init__()
        # The index of each input shape, built once (in warm-up) and kept on the device:
        # building it per step would copy host to device, a sync inside the timed loop.
        self._index: dict[tuple, torch.Tensor] = {}

    def index(self, n: int, pixels: int, device: torch.device) -> torch.Tensor:
        key = (n, pixels, str(device))
        if key not in self._index:
            local = node_index(pixels).repeat(n)
            self._index[key] = (torch.arange(n).repeat_interleave(pixels) * NODES + local).to(device)
        return self._index[key]

    def forward(self, x):
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        index = self.index(n, h * w, x.device)
        sums = torch.zeros(n * NODES, c, device=x.device, dtype=x.dtype).index_add_(0, index, pixels)
        counts = torch.zeros(n * NODES, device=x.device, dtype=x.dtype).scatter_add_(
            0, index, torch.ones_like(index, dtype=x.dtype)
        )
        means = sums / counts.clamp(min=1).unsqueeze(1)
        mixed = pixels + means[index]
        return mixed.reshape(n, h, w, c).permute(0, 3, 1, 2)


class ScatterNet(nn.Module):
    def __init__(self, classes: int = CLASSES, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(CHANNELS, width), conv_bn_relu(width, width))
        self.aggregate = ScatterAggregate()
        self.head = nn.Sequential(
            conv_bn_relu(width, 2 * width, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, classes),
        )

    def forward(self, x):
        return self.head(self.aggregate(self.stem(x)))


def build(cfg: WorkloadConfig) -> Workload:
    return classification(ScatterNet(), cfg)
