"""dilated: an ASPP block (dilations 1, 6, 12, 18) on a small backbone.

Dilated convolutions are the historical worst case of `cudnn.deterministic`
(10-80x slower reported, pytorch#28777).
"""

from __future__ import annotations

import torch
from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, CLASSES, classification, conv_bn_relu

DESCRIPTION = (
    "ASPP block (dilated convs, rates 1/6/12/18) on a small backbone. gpu size: 290 GFLOP a step, "
    "under 1 TFLOP: cudnn.deterministic on dilated convs was 10-80x slower in pytorch#28777, so at 1 "
    "TFLOP each of the dozen deterministic trials of a sweep could take minutes; at this size a step "
    "is ~10 ms of kernels against ~1 ms of launches"
)
RATES = (1, 6, 12, 18)
SIZES = {
    "gpu": Size(batch=64, image=128, steps=16, warmup=4),
    "cpu": Size(batch=8, image=32, steps=50, warmup=3),
    "quick": Size(batch=2, image=32, steps=6, warmup=2),
}


class ASPP(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=r, dilation=r, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )
            for r in RATES
        )
        self.project = conv_bn_relu(c_out * len(RATES), c_out, kernel=1)

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DilatedNet(nn.Module):
    def __init__(self, classes: int = CLASSES, width: int = 32):
        super().__init__()
        self.backbone = nn.Sequential(conv_bn_relu(CHANNELS, width), conv_bn_relu(width, 2 * width, stride=2))
        self.aspp = ASPP(2 * width, 2 * width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x):
        return self.head(self.aspp(self.backbone(x)))


def build(cfg: WorkloadConfig) -> Workload:
    return classification(DilatedNet(), cfg)
