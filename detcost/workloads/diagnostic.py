"""Diagnostic workloads: known faults, so users (and detcost's tests) can see the harness catch them.

Each is `simple_cnn` with one thing wrong. None is in the default sweep; name them in
`--workloads` to check that a machine's sweep records failures and detects noise.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import classification
from detcost.workloads.simple_cnn import SIZES as SIMPLE_CNN_SIZES
from detcost.workloads.simple_cnn import SimpleCNN

SIZES = {
    "gpu": Size(batch=64, image=32, steps=20, warmup=3),
    "cpu": Size(batch=8, image=16, steps=8, warmup=2),
    "quick": Size(batch=8, image=16, steps=6, warmup=2),
}
FAIL_AT_STEP = 3


class _FaultAt(nn.Module):
    """Wraps a net and calls `fault()` on the forward pass number FAIL_AT_STEP."""

    def __init__(self, net: nn.Module, fault):
        super().__init__()
        self.net, self.fault, self.calls = net, fault, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return self.fault(out) if self.calls == FAIL_AT_STEP and self.training else out


def _raise(out):
    raise RuntimeError("diag_raise: injected failure in the forward pass")


def _exit(out):
    os._exit(3)  # the process vanishes without a word, as a segfault would


def _hang(out):
    time.sleep(10**6)


def _nan(out):
    return out * float("nan")


class _Noise(nn.Module):
    """Adds a tiny perturbation drawn from an unseeded source: run-to-run noise by design."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))

    def forward(self, x):
        out = self.net(x)
        noise = torch.randn(out.shape, generator=self.gen) * 1e-4
        return out + noise.to(out.device)


class _Alert(nn.Module):
    """Calls `put_` (accumulate=False), an op torch flags as nondeterministic even on the CPU."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        mask = torch.zeros(out.numel(), device=out.device)
        mask.put_(
            torch.arange(0, out.numel(), 7, device=out.device),
            torch.ones((), device=out.device).expand((out.numel() + 6) // 7),
            accumulate=False,
        )
        return out + mask.view_as(out) * 0.0


INJECTED_PRICE = 1.20  # diag_price: step time under cudnn.benchmark, relative to without it
# diag_price_cnn: simple_cnn itself at its own sizes, where a quiet 2-core CPU prices to
# a few percent: a known price of the size users read, not one far outside the noise.
INJECTED_PRICE_CNN = 1.10


def _priced(cfg: WorkloadConfig, width: int = 8, price: float = INJECTED_PRICE) -> Workload:
    """simple_cnn whose steps take `price` times as long while cudnn.benchmark is on
    (the `benchmark` settings): after each optimizer step it spins for (price - 1) times
    the step's own compute. On the CPU cudnn.benchmark changes nothing else, so the true
    price of `benchmark` against `default` is known exactly; the price realised in each
    trial is read back into the record (`workload_notes.injected_price`)."""
    wl = classification(SimpleCNN(width=width), cfg)
    extra = price - 1 if torch.backends.cudnn.benchmark else 0.0
    state = {"t0": 0.0, "compute_s": 0.0, "spun_s": 0.0}

    def start(module, args):
        state["t0"] = time.perf_counter()

    def spin(optimizer, args, kwargs):
        now = time.perf_counter()
        compute = now - state["t0"]
        until = now + extra * compute
        while time.perf_counter() < until:
            pass
        state["compute_s"] += compute
        state["spun_s"] += time.perf_counter() - now
        wl.notes["injected_price"] = 1 + state["spun_s"] / state["compute_s"]

    wl.model.register_forward_pre_hook(start)
    wl.optimizer.register_step_post_hook(spin)
    wl.notes.update(injected_price=1.0, price_applies_to="cudnn.benchmark")
    return wl


# diag_oom: at its gpu size one batch is 2**30 images of 3x32x32, 12 TiB in float32 before
# the first layer, far more than any GPU has. Only STAGED_BATCH images are made on the host;
# the forward pass repeats them on the device, so the allocation that fails is the device's.
OOM_BATCH = 1 << 30
STAGED_BATCH = 64
OOM_SIZES = {**SIZES, "gpu": Size(batch=OOM_BATCH, image=32, steps=3, warmup=1)}
# On the CPU the kernel may grant such a request (overcommit) and kill the process when the
# memory is touched; past this size diag_oom raises MemoryError there instead.
CPU_REFUSED_BYTES = 1 << 40


class _Oversized(nn.Module):
    """Repeats the staged batch `factor` times on its device before the net."""

    def __init__(self, net: nn.Module, factor: int):
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x):
        if self.factor > 1:
            need = x.numel() * x.element_size() * self.factor
            if x.device.type == "cpu" and need > CPU_REFUSED_BYTES:
                raise MemoryError(f"diag_oom: a batch of {len(x) * self.factor:,} needs {need / 2**40:.0f} TiB")
            x = x.repeat(self.factor, 1, 1, 1)
        return self.net(x)


def _repeated_cross_entropy(logits: torch.Tensor, y: torch.Tensor, factor: int) -> torch.Tensor:
    return F.cross_entropy(logits, y.repeat(factor))


def _oversized(cfg: WorkloadConfig) -> Workload:
    """simple_cnn whose batch is made on the device from a small staged one: at the cpu and
    quick sizes it trains as usual; at its gpu size it runs out of device memory."""
    factor = max(1, cfg.batch // STAGED_BATCH)
    wl = classification(_Oversized(SimpleCNN(width=8), factor), replace(cfg, batch=cfg.batch // factor))
    wl.loss_fn = functools.partial(_repeated_cross_entropy, factor=factor)
    if factor > 1:
        wl.notes.update(staged_batch=cfg.batch // factor, batch_factor=factor)
    return wl


def _fault(fault):
    def build(cfg: WorkloadConfig) -> Workload:
        return classification(_FaultAt(SimpleCNN(width=8), fault), cfg)

    return build


def _wrapped(wrapper):
    def build(cfg: WorkloadConfig) -> Workload:
        return classification(wrapper(SimpleCNN(width=8)), cfg)

    return build


DIAGNOSTICS = {
    "diag_raise": (_fault(_raise), "raises RuntimeError at step 3"),
    "diag_exit": (_fault(_exit), "the process exits abruptly at step 3"),
    "diag_hang": (_fault(_hang), "hangs at step 3 (hits the trial timeout)"),
    "diag_nan": (_fault(_nan), "loss becomes NaN at step 3"),
    "diag_noise": (_wrapped(_Noise), "adds unseeded noise to the logits: never reproducible"),
    "diag_alert": (_wrapped(_Alert), "uses put_, which strict mode rejects even on the CPU"),
    "diag_price": (_priced, f"steps take {INJECTED_PRICE:g}x as long under cudnn.benchmark: a known price (CPU)"),
    "diag_price_cnn": (
        functools.partial(_priced, width=32, price=INJECTED_PRICE_CNN),
        f"simple_cnn at its own sizes, {INJECTED_PRICE_CNN:g}x as long under cudnn.benchmark: a known price of "
        "the size users read (CPU)",
    ),
    "diag_oom": (_oversized, "at its gpu size a batch needs 12 TiB on the device: recorded as oom"),
}
# Sizes of the diagnostics whose faults live in their sizes; the others use SIZES.
OWN_SIZES = {"diag_oom": OOM_SIZES, "diag_price_cnn": SIMPLE_CNN_SIZES}
