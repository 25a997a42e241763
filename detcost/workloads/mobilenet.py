"""mobilenet: MobileNet-v1-style depthwise-separable classifier (CIFAR-sized)."""

from __future__ import annotations

from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, CLASSES, classification, conv_bn_relu

DESCRIPTION = "depthwise-separable convs (MobileNet-v1 style)"
SIZES = {
    "gpu": Size(batch=128, image=128, steps=16, warmup=4),
    "cpu": Size(batch=16, image=32, steps=28, warmup=3),
    "quick": Size(batch=8, image=16, steps=6, warmup=2),
}

# (out channels, stride) of each depthwise-separable block
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (1024, 2))


def separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        conv_bn_relu(c_in, c_in, stride=stride, groups=c_in),  # depthwise 3x3
        conv_bn_relu(c_in, c_out, kernel=1),  # pointwise 1x1
    )


class MobileNet(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        layers, c_in = [conv_bn_relu(CHANNELS, 32)], 32
        for c_out, stride in BLOCKS:
            layers.append(separable(c_in, c_out, stride))
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build(cfg: WorkloadConfig) -> Workload:
    return classification(MobileNet(), cfg)
