"""A check: one line of `detcost selfcheck`'s output, its names, and the steps that yield them.

A check that could not be judged (its child process or its trials failed, or its step
raised) is a failed line with the error, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from detcost.record import one_line

OVERHEAD = "harness overhead"
AGREEMENT = "agreement with torch.utils.benchmark"
REPEATABILITY = "repeatability (CV of samples/s)"
EFFICIENCY = "sweep efficiency (share of wall time in timed steps)"
EVENTS = "CUDA events agree with a synchronised perf_counter"
CONTEXTS = "no CUDA context in the parent or at a trial's start"
CUBLAS = "CUBLAS_WORKSPACE_CONFIG in force in a strict trial"
STRICT = "strict raises unsupported on unet, not on unet_lossfix"
OOM = "an oversized batch is recorded as oom and the sweep goes on"
DEVICE_INDEX = "cuda:N past the device count is refused"
PLAN_LOG = "cuDNN plan log parsed"
ALGORITHMS = "benchmark and default algorithms compared"
HOST_BOUND = "trials are not host-bound at the default sizes"

VERDICT = {True: "pass", False: "FAIL", None: "note"}


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    target: str
    ok: bool | None  # None: a figure reported, with no target to pass
    detail: str
    command: str = "detcost selfcheck"
    figure: str = ""  # the value as a reader reads it ("1.004", "+0.4%", "unet unsupported")

    def line(self) -> str:
        """The check as one line of `detcost selfcheck`'s output."""
        figure = self.figure or f"{self.value:.3g}"
        return f"{VERDICT[self.ok]}  {self.name}: {figure} (target: {self.target}); {self.detail}"


def failed(name: str, error: str, target: str = "runs") -> Check:
    """A check that could not be judged: its child or its trials failed with `error`."""
    return Check(name, math.nan, target, False, f"failed: {error}", figure="failed")


@dataclass(frozen=True)
class Step:
    label: str  # what the progress bar shows while it runs
    names: tuple[str, ...]  # the checks it yields: failed ones if it raises
    run: Callable[[], list[Check]]


def guarded(step: Step) -> list[Check]:
    """The step's checks; if it raises, each of its checks as a failed line with the error."""
    try:
        return step.run()
    except Exception as exc:  # a check that cannot run is a finding, not a traceback
        return [failed(name, one_line(exc)) for name in step.names]
