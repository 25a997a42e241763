"""Micro-benchmarks of single layers under one setting per process (pytest-benchmark).

Skipped in the normal test run; run them with:

    for s in default benchmark deterministic benchmark_deterministic strict no_cudnn; do
        python -m pytest --benchmark-only --setting $s --benchmark-json=bench-$s.json
    done

and load the JSON files with `detcost.results.load_benchmark_json`. One setting per
process because switching `cudnn.benchmark` inside a process does not re-tune shapes it
has already seen.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detcost.settings import read_flags
from detcost.timing import synchronize

pytestmark = pytest.mark.microbench

# The GPU where there is one (what the micro-benchmarks are for); DETCOST_MICROBENCH_DEVICE
# pins it, as the CPU test suite's run of them does.
DEVICE = os.environ.get("DETCOST_MICROBENCH_DEVICE") or ("cuda:0" if torch.cuda.is_available() else "cpu")
BATCH = 64 if DEVICE != "cpu" else 8
# name: (module, input shape without batch); GPU shapes are larger
SHAPES = {
    "conv3x3_64": (lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 32, 32)),
    "conv3x3_128_stride2": (lambda: nn.Conv2d(128, 128, 3, stride=2, padding=1), (128, 16, 16)),
    "conv1x1_256": (lambda: nn.Conv2d(256, 256, 1), (256, 8, 8)),
    "dilated3x3_64_d6": (lambda: nn.Conv2d(64, 64, 3, padding=6, dilation=6), (64, 32, 32)),
    "depthwise3x3_128": (lambda: nn.Conv2d(128, 128, 3, padding=1, groups=128), (128, 16, 16)),
}


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


SHAPES["bilinear_upsample_x2"] = (Upsample, (64, 16, 16))


@pytest.mark.parametrize("layer", list(SHAPES))
def test_layer_forward_backward(benchmark, layer, detcost_setting):
    make, shape = SHAPES[layer]
    torch.manual_seed(0)
    module = make().to(DEVICE)
    x = torch.randn(BATCH, *shape, device=DEVICE, requires_grad=True)

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()
        synchronize(DEVICE)  # the timer must see the kernels finish

    for _ in range(3):  # warm-up: cuDNN autotunes here under `benchmark`
        step()
    benchmark.extra_info.update(
        {
            "setting": detcost_setting,
            "layer": layer,
            "device": DEVICE,
            "batch": BATCH,
            "shape": list(shape),
            "flags": read_flags(),
            "threads": torch.get_num_threads(),
        }
    )
    benchmark(step)
