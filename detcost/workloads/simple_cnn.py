"""simple_cnn: the classic conv-bn-relu-pool classifier."""

from __future__ import annotations

from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, CLASSES, classification, conv_bn_relu

DESCRIPTION = "conv-bn-relu-pool classifier, 3 conv layers"
SIZES = {
    "gpu": Size(batch=256, image=32, steps=100, warmup=10),
    "cpu": Size(batch=32, image=32, steps=40, warmup=3),
    "quick": Size(batch=16, image=32, steps=10, warmup=2),
}


class SimpleCNN(nn.Module):
    def __init__(self, classes: int = CLASSES, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(CHANNELS, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build(cfg: WorkloadConfig) -> Workload:
    return classification(SimpleCNN(), cfg)
