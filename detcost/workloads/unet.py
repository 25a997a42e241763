"""unet: encoder-decoder with bilinear upsampling and a per-pixel cross-entropy.

Under `strict` on CUDA these ops take slower deterministic paths or raise (bilinear
upsampling backward is decomposed; `cross_entropy` on (N, C, H, W) with mean reduction
runs `nll_loss2d`, which has no deterministic CUDA implementation): a finding in itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detcost.workloads import data
from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import CHANNELS, EVAL_SIZE, conv_bn_relu, sgd

DESCRIPTION = "encoder-decoder, bilinear upsampling, per-pixel cross-entropy"
SEG_CLASSES = 4
SIZES = {
    "gpu": Size(batch=64, image=128, steps=16, warmup=4),
    "cpu": Size(batch=4, image=32, steps=32, warmup=3),
    "quick": Size(batch=2, image=32, steps=6, warmup=2),
}


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out))


class UNet(nn.Module):
    def __init__(self, classes: int = SEG_CLASSES, width: int = 32):
        super().__init__()
        w = width
        self.enc = nn.ModuleList([double_conv(CHANNELS, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w)])
        self.bottleneck = double_conv(4 * w, 8 * w)
        self.dec = nn.ModuleList([double_conv(12 * w, 4 * w), double_conv(6 * w, 2 * w), double_conv(3 * w, w)])
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for dec, skip in zip(self.dec, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)


def mean_of_none(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy with reduction='none', then a mean: no atomic reduction in
    the loss kernel, so strict accepts it on CUDA where the mean-reduced loss raises."""
    return F.cross_entropy(logits, target, reduction="none").mean()


def segmentation(model: nn.Module, cfg: WorkloadConfig, loss_fn) -> Workload:
    """A per-pixel classification workload on the teacher's segmentation labels."""
    model = model.to(cfg.device)
    batches = data.staged_batches(
        n=cfg.batch,
        channels=CHANNELS,
        sizes=[cfg.image] * cfg.total_steps,
        classes=SEG_CLASSES,
        data_seed=cfg.data_seed,
        device=cfg.device,
        task="segment",
    )
    return Workload(
        model=model,
        optimizer=sgd(model),
        loss_fn=loss_fn,
        batches=batches,
        eval_batch=data.eval_batch(EVAL_SIZE // 4, CHANNELS, cfg.image, SEG_CLASSES, cfg.device, "segment"),
    )


def build(cfg: WorkloadConfig) -> Workload:
    return segmentation(UNet(), cfg, F.cross_entropy)


def build_lossfix(cfg: WorkloadConfig) -> Workload:
    """unet with cross_entropy(reduction='none').mean(): the strict-mode workaround."""
    return segmentation(UNet(), cfg, mean_of_none)
