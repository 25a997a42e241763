"""Is detcost's own timing sound, and does its CUDA path work on this machine?

Four measurements of the measuring instrument, on any device (`timing_checks`): harness
overhead against a bare loop, agreement with `torch.utils.benchmark`, repeatability over
fresh processes, and sweep efficiency. On CUDA the acceptance suite of the CUDA path
follows (`cuda.Acceptance`), judged by plain functions of what comes back (`judge`).

This process never touches the device: whatever builds a workload or times a step runs
in a child process started as the sweep starts its trials (`child.in_child`, through
`detcost.isolation`). A child's exception, crash or timeout comes back as a failed check
(`checks.Check`), as does a step that raises.

`detcost selfcheck` prints each check as it is decided (`run_all`'s `on_check`), so a
selfcheck stopped part-way (a first GPU run's share of its time) keeps the lines it got;
the asv suite tracks them (benchmarks/measurement.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from detcost.selfcheck.checks import (
    AGREEMENT,
    ALGORITHMS,
    CONTEXTS,
    CUBLAS,
    DEVICE_INDEX,
    EFFICIENCY,
    EVENTS,
    HOST_BOUND,
    OOM,
    OVERHEAD,
    PLAN_LOG,
    REPEATABILITY,
    STRICT,
    Check,
    Step,
    failed,
    guarded,
)
from detcost.selfcheck.child import ChildResult, isolated
from detcost.selfcheck.cuda import Acceptance
from detcost.selfcheck.judge import (
    algorithms_check,
    context_check,
    cublas_check,
    device_index_judge,
    events_agreement,
    host_bound_check,
    host_bound_of,
    oom_check,
    plan_log_check,
    plans_differ,
    plans_of,
    strict_check,
)
from detcost.selfcheck.timing_checks import (
    harness_overhead,
    judge_overhead,
    judge_repeatability,
    overhead_target,
    timer_agreement,
    timing_steps,
)
from detcost.timing import is_cuda
from detcost.train import spec_at_preset

__all__ = [
    "AGREEMENT",
    "ALGORITHMS",
    "CONTEXTS",
    "CUBLAS",
    "DEVICE_INDEX",
    "EFFICIENCY",
    "EVENTS",
    "HOST_BOUND",
    "OOM",
    "OVERHEAD",
    "PLAN_LOG",
    "REPEATABILITY",
    "STRICT",
    "Acceptance",
    "Check",
    "ChildResult",
    "Step",
    "algorithms_check",
    "context_check",
    "cublas_check",
    "device_index_judge",
    "events_agreement",
    "failed",
    "guarded",
    "harness_overhead",
    "host_bound_check",
    "host_bound_of",
    "isolated",
    "judge_overhead",
    "judge_repeatability",
    "oom_check",
    "overhead_target",
    "plan_log_check",
    "plans_differ",
    "plans_of",
    "run_all",
    "strict_check",
    "timer_agreement",
]


def run_all(
    device: str = "cpu",
    workload: str = "simple_cnn",
    size_preset: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """The four timing checks and, on CUDA, the acceptance suite, one after another, with a
    progress bar naming the one running. Every check gives a line, failed or not; each is
    handed to `on_check` as soon as it is decided (the bar cleared while it prints)."""
    from tqdm import tqdm

    size_preset = size_preset or ("gpu" if is_cuda(device) else "cpu")
    threads = threads or torch.get_num_threads()
    spec = spec_at_preset(workload, "default", device, size_preset, run_id="selfcheck", axes={"threads": threads})
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="detcost-selfcheck-") as tmp:
        steps = timing_steps(spec, size_preset, threads)
        if is_cuda(device):
            steps += Acceptance(spec, Path(tmp)).steps()
        with tqdm(total=len(steps), unit="check", disable=not progress, dynamic_ncols=True) as bar:
            for step in steps:
                bar.set_description_str(f"selfcheck: {step.label}")
                decided = guarded(step)
                if on_check:
                    with tqdm.external_write_mode():
                        for check in decided:
                            on_check(check)
                checks += decided
                bar.update(1)
    return checks
