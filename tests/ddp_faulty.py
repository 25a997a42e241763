"""Test-only workloads for DDP trials (`--nproc`): simple_cnn whose rank 1 raises, or
hangs, in its forward pass of step 2. Each rank that builds one writes its pid and its
launcher's to DETCOST_TEST_PIDS (a folder), so a test can check by pid that none is left."""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn

from detcost.workloads.common import classification
from detcost.workloads.simple_cnn import SIZES as SIZES
from detcost.workloads.simple_cnn import SimpleCNN

FAULT_AT_STEP = 2
PIDS_VAR = "DETCOST_TEST_PIDS"


class _FaultOnRank1(nn.Module):
    def __init__(self, fault):
        super().__init__()
        self.net, self.fault, self.calls = SimpleCNN(), fault, 0

    def forward(self, x):
        self.calls += 1
        if self.training and self.calls == FAULT_AT_STEP and os.environ.get("RANK") == "1":
            self.fault()
        return self.net(x)


def _build(cfg, fault):
    folder = os.environ.get(PIDS_VAR)
    if folder:
        Path(folder, f"{os.getpid()}").write_text(f"{os.getppid()}")
    return classification(_FaultOnRank1(fault), cfg)


def _raise():
    raise ValueError("injected on rank 1")


def raising(cfg):
    """simple_cnn whose rank 1 raises at step 2."""
    return _build(cfg, _raise)


def hanging(cfg):
    """simple_cnn whose rank 1 hangs at step 2."""
    return _build(cfg, lambda: time.sleep(10**6))
