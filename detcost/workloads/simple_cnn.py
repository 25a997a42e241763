"""simple_cnn: the classic conv-bn-relu-pool classifier."""

from __future__ import annotations

from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, CLASSES, classification, conv_bn_relu

DESCRIPTION = (
    "conv-bn-relu-pool classifier, 3 conv layers. gpu size: 123 GFLOP a step, under 1 TFLOP: at "
    "~20 kFLOP an input value, 1 TFLOP would take ~4000 images of 64 px a batch, 800M values for the "
    "16 staged batches drawn on the host in every trial (~5 s), out of scale for a 3-layer net; at "
    "this size a step is still ~4 ms of kernels against well under 1 ms to launch its ~50"
)
SIZES = {
    "gpu": Size(batch=512, image=64, steps=16, warmup=4),
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
