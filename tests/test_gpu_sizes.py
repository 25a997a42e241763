"""The gpu size preset of every built-in workload: a step of about 1 TFLOP or more, so that an
H100 is kept busy by kernels rather than by the host launching them, or a stated reason
why the workload's realistic batch is smaller. Counted on the meta device, as a trial
counts its FLOPs: no real tensor is made at a gpu size."""

from __future__ import annotations

import math
import re

import pytest
import torch

from detcost import cuda_figures, measure
from detcost.workloads import BUILTIN, WorkloadConfig, data, get_workload

ABOUT_A_TFLOP = 0.95e12
# How a workload under about 1 TFLOP a step says so, in its DESCRIPTION: the figure it
# states (checked against the count) and the reason after the colon.
UNDER = re.compile(r"gpu size: (\d+) GFLOP a step[^,]*, under 1 TFLOP: (\S.{40,})")
POOL_LIMIT_BYTES = 2 * 2**30  # the staged inputs of a trial, next to an 80 GiB GPU


def _meta_batch(n: int, channels: int, size: int, classes: int, seed: int, task: str):
    x = torch.zeros(n, channels, size, size, device="meta")
    y = torch.zeros((n,) if task == "classify" else (n, size, size), dtype=torch.long, device="meta")
    return x, y


@pytest.fixture
def meta_data(monkeypatch):
    """Every staged batch as meta tensors of its real shape: nothing is drawn on the host."""
    monkeypatch.setattr(data, "make_batch", _meta_batch)


def gpu_workload(name: str):
    size = get_workload(name).size("gpu")
    config = WorkloadConfig("meta", 0, 0, size.batch, size.image, size.warmup + size.steps)
    return get_workload(name).factory(config), size


@pytest.mark.parametrize("name", BUILTIN)
def test_each_gpu_preset_counts_about_a_tflop_a_step_or_says_why_not(name, meta_data):
    wl, size = gpu_workload(name)
    flops = measure.flops_per_step(wl.model, wl.loss_fn, wl.batches[: size.warmup + size.steps])
    note = UNDER.search(get_workload(name).description)
    if flops >= ABOUT_A_TFLOP:
        assert note is None, f"{name} counts {flops / 1e12:.2f} TFLOP a step but its description says under 1"
        return
    assert note, f"{name}: {flops / 1e9:.0f} GFLOP a step at its gpu size, and its description gives no reason"
    assert float(note[1]) == pytest.approx(flops / 1e9, rel=0.1), "the figure the description states is stale"


@pytest.mark.parametrize("name", BUILTIN)
def test_a_gpu_trial_stages_inputs_that_fit_beside_its_activations(name, meta_data):
    wl, _ = gpu_workload(name)
    shapes = {tuple(x.shape) for x, _ in wl.batches}
    staged = data.POOL_BATCHES * sum(math.prod(s) for s in shapes) * 4  # float32 inputs
    assert staged <= POOL_LIMIT_BYTES, f"{name}: {staged / 2**30:.1f} GiB of staged inputs"


@pytest.mark.parametrize("name", BUILTIN)
def test_the_dry_run_counts_the_flops_a_gpu_trial_counts(name, meta_data):
    """The estimate counts FLOPs at batch 1 and scales them by the batch (convolutions and
    matmuls are linear in it): the same figure as a trial's count at the full batch."""
    wl, size = gpu_workload(name)
    flops = measure.flops_per_step(wl.model, wl.loss_fn, wl.batches[: size.warmup + size.steps])
    per_sample = cuda_figures.work_of(name, size.image, size.warmup + size.steps).flops_per_sample
    assert per_sample * size.batch == pytest.approx(flops, rel=1e-6)
