"""digits: a small conv net on real data: scikit-learn's bundled 8x8 handwritten digits.

The dataset ships inside scikit-learn (1,797 images, 10 classes; no download), so the
variance measures see accuracy on held-out real images, not only loss: the spread of
test accuracy across repeats and seeds, and of each class's accuracy, which
implementation noise moves far more than the top-line figure. scikit-learn is an
optional extra (`pip install 'detcost[digits]'`).

The split is fixed (the same test images in every trial); the data seed draws the
order of the training images, epoch after epoch.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import conv_bn_relu, sgd

REQUIRES = "sklearn"  # the import it needs, and the extra that installs it
EXTRA = "digits"
DESCRIPTION = "small conv net on scikit-learn's bundled 8x8 digits: real data, test and per-class accuracy"
IMAGE, CLASSES, TEST_FRACTION, SPLIT_SEED = 8, 10, 0.2, 0
# A real dataset of 8x8 images: a step is far below a TFLOP at any batch that trains
# well, so on a GPU this workload is launch-bound by nature; it is here for what
# determinism buys in accuracy, not for a kernel-bound price.
SIZES = {
    "gpu": Size(batch=128, image=IMAGE, steps=200, warmup=10),
    "cpu": Size(batch=64, image=IMAGE, steps=80, warmup=3),
    "quick": Size(batch=32, image=IMAGE, steps=40, warmup=2),
}


class DigitsNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width),
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, CLASSES))

    def forward(self, x):
        return self.classifier(self.features(x))


@functools.cache
def split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, test x, test y): the bundled digits, scaled to zero mean and
    unit spread, split once with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    x = (x - x.mean()) / x.std()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_batches(batch: int, steps: int, data_seed: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch per step: the training images in an order drawn from the data seed,
    a new permutation each epoch (the last partial batch of an epoch is dropped)."""
    x, y, _, _ = split()
    gen = torch.Generator().manual_seed(data_seed)
    per_epoch = len(x) // batch
    picks = []
    while len(picks) < steps:
        order = torch.randperm(len(x), generator=gen)
        picks += [order[k * batch : (k + 1) * batch] for k in range(per_epoch)]
    return [(x[i].to(device), y[i].to(device)) for i in picks[:steps]]


def build(cfg: WorkloadConfig) -> Workload:
    if cfg.image != IMAGE:
        raise ValueError(f"digits images are {IMAGE}x{IMAGE}; this trial asked for {cfg.image}")
    model = DigitsNet().to(cfg.device)
    _, _, test_x, test_y = split()
    return Workload(
        model=model,
        optimizer=sgd(model),
        loss_fn=F.cross_entropy,
        batches=train_batches(cfg.batch, cfg.total_steps, cfg.data_seed, cfg.device),
        eval_batch=(test_x.to(cfg.device), test_y.to(cfg.device)),
        notes={"eval": f"{len(test_y)} held-out real images"},
    )
