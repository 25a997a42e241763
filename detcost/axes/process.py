"""The axes that set the trial process's state, restored when the trial ends (`apply`
returns what restores it): torch's CPU thread count, and TF32 for convolutions and matmul.
"""

from __future__ import annotations

from detcost import compat
from detcost.axes.registry import Axis, int_at_least


def _positive_int(text: str) -> int:
    return int_at_least(text, 1)


class Threads(Axis):
    """torch's CPU thread count, set for the trial's process."""

    def apply(self, value, spec):
        import torch

        from detcost.timing import is_cuda, usable_cpus

        if not value:
            return None
        if is_cuda(spec.device):
            # a CUDA trial drives the GPU from one host thread; its CPU ops get no more
            # threads than the cores it may run on (a --ray round is pinned to its GPU's
            # share of the node, while the planned count is the parent's whole box)
            value = min(value, len(usable_cpus()))
        before = torch.get_num_threads()
        torch.set_num_threads(value)
        return lambda: torch.set_num_threads(before)

    def read_back(self, workload) -> int:
        import torch

        return torch.get_num_threads()

    def id_part(self, value) -> str:
        return f"t{value}"

    def snippet(self, values, cpu):
        if not cpu:
            return []
        n = values[0] if len(values) == 1 else "N"
        return [f"torch.set_num_threads({n})  # on the CPU, results depend on the thread count: fix it"]

    def host_threads(self, value, device):
        from detcost.timing import trial_threads

        return trial_threads(device, [value])

    def defaults_for(self, device):
        import torch

        return [torch.get_num_threads()]


THREADS = Threads(
    name="threads",
    default=None,
    help="CPU thread counts, comma list; each trial runs at each (default: torch's default)",
    parse=_positive_int,
    compare_across=True,
)

# TF32 for convolutions and matmul together, through the fp32_precision API of torch 2.9+
# and the legacy allow_tf32 booleans before it (detcost.compat: never the two mixed).
# "torch" leaves torch's defaults (TF32 for cuDNN convolutions, IEEE for matmul).
TF32_MODES = ("torch", "on", "off")
_FP32_PRECISION = {"on": "tf32", "off": "ieee"}


class Tf32(Axis):
    """TF32 for convolutions and matmul, set for the trial's process."""

    def apply(self, value, spec):
        if value not in _FP32_PRECISION:
            return None
        before = compat.get_tf32()
        compat.set_tf32(_FP32_PRECISION[value], _FP32_PRECISION[value])
        return lambda: compat.set_tf32(*before)

    def read_back(self, workload) -> str:
        conv, matmul = compat.get_tf32()
        return f"conv={conv},matmul={matmul}"

    def id_part(self, value):
        return None if value == "torch" else f"tf32-{value}"

    def snippet(self, values, cpu):
        if values not in (["on"], ["off"]):
            return []
        conv, matmul = compat.tf32_snippet(_FP32_PRECISION[values[0]])
        note = "  # TF32 changes nothing on the CPU" if cpu else ""
        return [conv + note, matmul]


TF32 = Tf32(
    name="tf32",
    default="torch",
    values=TF32_MODES,
    help="comma list of torch (its defaults: TF32 convolutions, IEEE matmul), on, off: TF32 for "
    "convolutions and matmul together; each trial runs at each (default: torch)",
)
