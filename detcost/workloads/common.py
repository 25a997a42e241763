"""Building blocks shared by the built-in workloads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detcost.workloads import data
from detcost.workloads.base import Workload, WorkloadConfig

CLASSES = 10
CHANNELS = 3
EVAL_SIZE = 64  # samples in the fixed evaluation batch
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def classification(
    model: nn.Module,
    cfg: WorkloadConfig,
    sizes: list[int] | None = None,
    channels: int = CHANNELS,
    classes: int = CLASSES,
) -> Workload:
    """A classification workload: `model` trained with SGD + cross-entropy on teacher
    labels, `channels` x image x image inputs and `classes` classes."""
    sizes = sizes or [cfg.image] * cfg.total_steps
    model = model.to(cfg.device)
    batches = data.staged_batches(
        n=cfg.batch,
        channels=channels,
        sizes=sizes,
        classes=classes,
        data_seed=cfg.data_seed,
        device=cfg.device,
    )
    return Workload(
        model=model,
        optimizer=sgd(model),
        loss_fn=F.cross_entropy,
        batches=batches,
        eval_batch=data.eval_batch(EVAL_SIZE, channels, cfg.image, classes, cfg.device),
    )
