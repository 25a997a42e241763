"""transposed: an encoder and a decoder of `ConvTranspose2d` layers (a known slow
deterministic path), trained per pixel with the strict-safe loss (reduction='none')."""

from __future__ import annotations

from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, conv_bn_relu
from detcost.workloads.unet import SEG_CLASSES, mean_of_none, segmentation

DESCRIPTION = (
    "conv encoder + ConvTranspose2d decoder, per-pixel classes. gpu size: 166 GFLOP a step, under 1 "
    "TFLOP: the deterministic ConvTranspose2d path is the slow case this workload exists to show "
    "(like dilated convs in pytorch#28777), and at ~50 kFLOP an input value 1 TFLOP would stage 300M "
    "values with per-pixel labels on the host in every trial (~3 s); at this size a step is ~6 ms "
    "of kernels against ~1 ms of launches"
)
SIZES = {
    "gpu": Size(batch=64, image=128, steps=16, warmup=4),
    "cpu": Size(batch=8, image=32, steps=60, warmup=3),
    "quick": Size(batch=2, image=32, steps=6, warmup=2),
}


def up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TransposedNet(nn.Module):
    def __init__(self, classes: int = SEG_CLASSES, width: int = 32):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            conv_bn_relu(CHANNELS, w), conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 4 * w, stride=2)
        )
        self.decoder = nn.Sequential(up(4 * w, 2 * w), up(2 * w, w))
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        return self.head(self.decoder(self.encoder(x)))


def build(cfg: WorkloadConfig) -> Workload:
    return segmentation(TransposedNet(), cfg, mean_of_none)
