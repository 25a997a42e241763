"""A team's own net, priced by detcost without writing a workload:

    detcost run --quick --model examples/tiny_net.py:build --input 3x32x32

`build` returns a plain nn.Module; detcost adds its seeded synthetic data, SGD and
cross-entropy, as for its built-in nets. The class count comes from the output width.
"""

from torch import nn


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
