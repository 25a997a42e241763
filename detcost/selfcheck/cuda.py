"""The acceptance suite of the CUDA path, run by `detcost selfcheck` on CUDA (`Acceptance`):
events against a synchronised perf_counter, no CUDA context in the parent or at a trial's
start, CUBLAS_WORKSPACE_CONFIG under strict, strict's failures on unet, an out-of-memory
trial the sweep survives, `cuda:N` validation, the cuDNN plan log, benchmark's algorithm
choice and host-bound trials. A GPU user pastes its lines into a bug report.

This process only starts processes (trials through the normal trial machinery, at small
step counts, and the children of `child.in_child`) and judges what they report (`judge`).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from detcost.env import gpu_count
from detcost.profile import PROFILE_STEPS
from detcost.record import Kind, TrialRecord, TrialSpec, one_line
from detcost.selfcheck.checks import (
    ALGORITHMS,
    CONTEXTS,
    CUBLAS,
    DEVICE_INDEX,
    EVENTS,
    HOST_BOUND,
    OOM,
    PLAN_LOG,
    STRICT,
    Check,
    Step,
)
from detcost.selfcheck.child import ChildResult, in_child, isolated
from detcost.selfcheck.judge import (
    EVENTS_TARGET_TEXT,
    algorithms_check,
    context_check,
    cublas_check,
    device_index_judge,
    events_agreement,
    host_bound_check,
    oom_check,
    plan_log_check,
    strict_check,
)
from detcost.timing import StepTimer, synchronize
from detcost.train import TrainStep, run_steps, spec_at_preset
from detcost.workloads import BUILTIN

LONG_STEP_S = 0.2  # a region this long makes launch and synchronisation latency negligible
TRIAL_TIMEOUT_S = 300.0

# The acceptance trials run at the workloads' gpu sizes (where host-bound and out-of-memory
# mean something); diag_oom first, so the trials after it show the sweep went on.
ACCEPTANCE_PRESET = "gpu"
OOM_WORKLOAD = "diag_oom"
SWEPT_WORKLOADS = (OOM_WORKLOAD, "unet", "unet_lossfix", "simple_cnn")
ACCEPTANCE_STEPS, ACCEPTANCE_WARMUP = 3, 1
TIMED_STEPS = 10  # the timed trials whose median step a profiled kernel busy time is judged against
# Profiled under `default` at the gpu sizes: every default workload (host-bound), and
# these under `benchmark` as well (which algorithms cuDNN chose).
ALGORITHM_WORKLOADS = ("resnet18", "dilated")


class Acceptance:
    """The CUDA path, checked through the normal trial machinery at small step counts;
    this process only starts processes and judges what they report."""

    def __init__(self, spec: TrialSpec, tmp: Path):
        from detcost.isolation import start_method

        self.spec, self.device, self.tmp = spec, spec.device, tmp
        self.method = start_method("auto", self.device)
        self.records: list[TrialRecord] = []
        self.probe = ChildResult(error="the probe did not run")

    def steps(self) -> list[Step]:
        return [
            Step("CUDA events vs perf_counter", (EVENTS,), self.events),
            Step("a trial process's CUDA state", (), self.probe_child),
            Step("strict, unet and out-of-memory trials", (CUBLAS, STRICT, OOM), self.trial_sweep),
            Step("cuda:N validation", (DEVICE_INDEX,), lambda: [device_index_check(gpu_count())]),
            Step("profiled trials", (PLAN_LOG, ALGORITHMS, HOST_BOUND), self.profiled),
            Step("CUDA contexts", (CONTEXTS,), self.contexts),  # last: after every other process
        ]

    def events(self) -> list[Check]:
        return [isolated(EVENTS, events_vs_perf_counter, self.spec, device=self.device, target=EVENTS_TARGET_TEXT)]

    def probe_child(self) -> list[Check]:
        self.probe = in_child(cuda_probe, device=self.device)
        return []

    def trial_sweep(self) -> list[Check]:
        """diag_oom, unet, unet_lossfix and simple_cnn under strict, as one sweep."""
        from detcost.plan import SweepOptions
        from detcost.sweep import run_sweep

        opts = SweepOptions(
            workloads=list(SWEPT_WORKLOADS),
            settings=["strict"],
            repeats=1,
            seed=0,
            device=self.device,
            size_preset=ACCEPTANCE_PRESET,
            results=self.tmp / "acceptance.jsonl",
            run_id="selfcheck",
            steps=ACCEPTANCE_STEPS,
            warmup=ACCEPTANCE_WARMUP,
            timeout=TRIAL_TIMEOUT_S,
            seeds=0,
            aa=False,
            audit=False,
            explain=False,
            allow_busy=True,  # the checks judge the CUDA path, not the machine's quiet
        )
        outcome = run_sweep(opts, progress=False)
        self.records += outcome.records
        by = {r.spec.workload: r for r in outcome.records}
        return [
            cublas_check(by.get("simple_cnn")),
            strict_check(by.get("unet"), by.get("unet_lossfix")),
            oom_check(outcome.records, len(outcome.planned), OOM_WORKLOAD, ACCEPTANCE_PRESET),
        ]

    def profiled(self) -> list[Check]:
        runs = [(w, "default") for w in BUILTIN] + [(w, "benchmark") for w in ALGORITHM_WORKLOADS]
        records = [self._trial(w, s, Kind.PROFILED) for w, s in runs]
        # the step time a host-bound share is judged against: a timed trial's, not the
        # profiled one's (the profiler and cuDNN's logging slow the host in those steps)
        timed = [self._trial(w, "default", Kind.TIMED) for w in BUILTIN]
        self.records += records + timed
        default = [r for r in records if r.spec.setting == "default"]
        return [plan_log_check(records), algorithms_check(records), host_bound_check(default, timed)]

    def _trial(self, workload: str, setting: str, kind: Kind) -> TrialRecord:
        """One trial at the acceptance sizes; a profiled one with its cuDNN log beside it."""
        from detcost.isolation import run_isolated

        profiled = kind == Kind.PROFILED
        spec = spec_at_preset(
            workload,
            setting,
            self.device,
            ACCEPTANCE_PRESET,
            run_id="selfcheck",
            kind=kind,
            steps=PROFILE_STEPS if profiled else TIMED_STEPS,
            sidecar=f"selfcheck/{workload}-{setting}.json" if profiled else None,
        )
        return run_isolated(spec, method=self.method, timeout=TRIAL_TIMEOUT_S, results_dir=self.tmp)

    def contexts(self) -> list[Check]:
        return [context_check(torch.cuda.is_initialized(), self.probe, self.method, self.records)]


# ---- what the acceptance children run ---------------------------------------------------


def events_vs_perf_counter(spec: TrialSpec, rounds: int = 5, long_step_s: float = LONG_STEP_S) -> Check:
    """A long region of training steps timed by a CUDA event pair and by perf_counter
    between two synchronisations, `rounds` times. Run it through `isolated`."""
    with TrainStep(spec) as step:
        t0 = time.perf_counter()
        step()  # synchronises: one step's wall time
        n = max(1, math.ceil(long_step_s / max(time.perf_counter() - t0, 1e-6)))
        pairs = [_long_step(step, n) for _ in range(rounds)]
    return events_agreement([e for e, _ in pairs], [w for _, w in pairs], n)


def _long_step(step: TrainStep, n: int) -> tuple[float, float]:
    """(event seconds, perf_counter seconds) of n unsynchronised steps as one region."""
    device = step.spec.device
    batches = [step.batches[i % len(step.batches)] for i in range(n)]
    timer = StepTimer(device, 1)
    synchronize(device)
    t0 = time.perf_counter()
    timer.start(0)
    run_steps(step.wl, batches)
    timer.stop(0)
    synchronize(device)
    wall = time.perf_counter() - t0
    return timer.times()[0], wall


def cuda_probe() -> tuple[bool, str | None]:
    """What a process started as trials are sees of CUDA: whether it was initialised at
    the start (it must not be), and the error if CUDA then fails to initialise (as it does
    in a child forked from a process that had used CUDA)."""
    at_start = torch.cuda.is_initialized()
    try:
        torch.cuda.init()
    except Exception as exc:
        return at_start, one_line(exc)
    return at_start, None


def device_index_check(device_count: int) -> Check:
    """`detcost env --device cuda:<count>` in a fresh interpreter: one line, exit 2."""
    device = f"cuda:{device_count}"
    command = [sys.executable, "-m", "detcost.cli", "env", "--device", device]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S, check=False)
    return device_index_judge(device, proc.returncode, proc.stderr)
