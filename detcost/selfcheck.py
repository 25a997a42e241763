"""Is detcost's own timing sound, and does its CUDA path work on this machine?

Four measurements of the measuring instrument, on any device:

- harness overhead: detcost's per-step time against a bare hand-written loop of the same
  workload in the same process (targets: <= 1.01 on GPU, <= 1.05 on CPU);
- agreement with `torch.utils.benchmark.Timer.blocked_autorange` on the same step (3%);
- repeatability: coefficient of variation of samples/s over trials in fresh processes;
- sweep efficiency: the share of a sweep's wall time spent in timed steps, and where the
  rest goes (process start, build, warm-up, after the timed region).

On CUDA an acceptance suite of the CUDA path follows (`Acceptance`): events against a
synchronised perf_counter, no CUDA context in the parent or at a trial's start,
CUBLAS_WORKSPACE_CONFIG under strict, strict's failures on unet, an out-of-memory trial
the sweep survives, `cuda:N` validation, the cuDNN plan log, benchmark's algorithm
choice and host-bound trials. A GPU user pastes its lines into a bug report.

This process never touches the device: whatever builds a workload or times a step runs
in a child process started as the sweep starts its trials (`in_child`). A parent that
held a CUDA context while it started CUDA trial processes would break them (a GPU in
exclusive-process mode admits one context; a process that has used CUDA cannot fork
usable children). A child's exception, crash or timeout comes back as a failed check.

`detcost selfcheck` prints the checks; the asv suite tracks them (benchmarks/measurement.py).
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from detcost.env import gpu_count
from detcost.profile import PROFILE_STEPS
from detcost.record import Kind, TrialRecord, TrialSpec, one_line
from detcost.settings import get_setting
from detcost.timing import StepTimer, is_cuda, synchronize
from detcost.train import TrainStep, run_steps, spec_at_preset
from detcost.trial import CUDA_AT_START
from detcost.workloads import BUILTIN, get_workload

OVERHEAD_TARGET = {"cuda": 1.01, "cpu": 1.05}
AGREEMENT_TARGET = 0.03
EVENTS_TARGET = 0.02  # CUDA events against perf_counter between two synchronisations
LONG_STEP_S = 0.2  # a region this long makes launch and synchronisation latency negligible
EVENTS_TARGET_TEXT = f"within ±{EVENTS_TARGET:.0%}"
CHILD_TIMEOUT_S = 600.0
TRIAL_TIMEOUT_S = 300.0

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
# What a trial process says when CUDA was in use before it started.
_CUDA_AT_START = (CUDA_AT_START.lower(), "re-initialize cuda")  # detcost's own check; torch's bad-fork error

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


# ---- running a check in a child process ------------------------------------------------


@dataclass(frozen=True)
class ChildResult:
    value: object = None
    error: str | None = None  # why the child gave no value: its exception, crash or timeout


def _child_main(fn: Callable, args: tuple, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.setpgid(0, 0)  # a process group of its own, as a trial's: killed with what it starts
    try:
        sent = ChildResult(value=fn(*args))
    except Exception as exc:
        sent = ChildResult(error=one_line(exc))
    conn.send(sent)
    conn.close()


def in_child(fn: Callable, *args, device: str, timeout: float = CHILD_TIMEOUT_S) -> ChildResult:
    """`fn(*args)` in a fresh process started as trials on `device` are, and its result;
    an exception, a crash or a timeout there is the result's `error`, never raised here.
    `fn` and its arguments and result must be picklable (`fn` at module level)."""
    from detcost.isolation import exit_reason, process_context, receive, start_method

    ctx = process_context(start_method("auto", device))
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(fn, args, sender), name=f"detcost-selfcheck {fn.__name__}")
    proc.start()
    sender.close()  # the child holds the only writer: EOF means it is gone
    sent, timed_out = receive(receiver, proc, timeout)
    if timed_out:
        return ChildResult(error=f"no result after {timeout:g} s; its process was killed")
    return sent if sent is not None else ChildResult(error=exit_reason(proc.exitcode))


def isolated(name: str, fn: Callable[..., Check], *args, device: str, target: str = "runs") -> Check:
    """A check whose measuring builds a workload, run in a child process: its Check, or a
    failed one with the child's error."""
    result = in_child(fn, *args, device=device)
    return result.value if result.error is None else failed(name, result.error, target)


# ---- the four timing checks (any device) -------------------------------------------------


def _bare_loop(wl, batches, device: str) -> float:
    """Mean step time of the loop a user would write: no per-step marks, one sync at the end."""
    synchronize(device)
    t0 = time.perf_counter()
    run_steps(wl, batches)
    synchronize(device)
    return (time.perf_counter() - t0) / len(batches)


def _detcost_loop(wl, batches, device: str) -> list[float]:
    """detcost's timed region as a trial runs it, loss kept on the device after each step."""
    losses = torch.zeros(len(batches), device=device)

    def keep(j, loss):
        losses[j] = loss.detach()

    synchronize(device)
    timer = StepTimer(device, len(batches))
    run_steps(wl, batches, timer=timer, after_step=keep)
    return timer.times()


def overhead_target(device: str) -> float:
    return OVERHEAD_TARGET["cuda" if is_cuda(device) else "cpu"]


def harness_overhead(spec: TrialSpec, rounds: int = 7) -> Check:
    """detcost's mean timed step / the bare loop's, alternated on one workload (median of
    rounds). Builds the workload in this process: run it through `isolated`."""
    ratios = []
    with TrainStep(spec) as step:
        for _ in range(rounds):
            bare = _bare_loop(step.wl, step.batches, spec.device)
            ratios.append(float(np.mean(_detcost_loop(step.wl, step.batches, spec.device))) / bare)
    ratio = statistics.median(ratios)
    target = overhead_target(spec.device)
    return Check(
        OVERHEAD,
        ratio,
        f"<= {target}",
        ratio <= target,
        f"detcost step time / bare loop, median of {rounds} alternating rounds "
        f"of {spec.steps} steps (min {min(ratios):.3f}, max {max(ratios):.3f})",
        figure=f"{ratio:.3f}",
    )


def timer_agreement(spec: TrialSpec, rounds: int = 5, min_run_time: float = 0.5) -> Check:
    """detcost's median step time against torch.utils.benchmark's on the same step,
    alternated on one workload (median of per-round ratios). Run it through `isolated`."""
    from torch.utils.benchmark import Timer

    with TrainStep(spec) as step:
        # Timer defaults to one thread: give it the trial's thread count.
        timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
        ratios, ours, theirs = [], [], []
        for _ in range(rounds):
            ours.append(float(np.median(_detcost_loop(step.wl, step.batches, spec.device))))
            theirs.append(timer.blocked_autorange(min_run_time=min_run_time).median)
            ratios.append(ours[-1] / theirs[-1])
    diff = statistics.median(ratios) - 1
    return Check(
        AGREEMENT,
        diff,
        f"within ±{AGREEMENT_TARGET:.0%}",
        abs(diff) <= AGREEMENT_TARGET,
        f"median of {rounds} alternating rounds; detcost {statistics.median(ours) * 1e3:.2f} ms, "
        f"Timer.blocked_autorange {statistics.median(theirs) * 1e3:.2f} ms per step",
        figure=f"{diff:+.1%}",
    )


def repeatability(spec: TrialSpec, trials: int = 5) -> Check:
    """CV of samples/s over trials of one setting, each in a fresh process."""
    from detcost.isolation import run_isolated, start_method

    method = start_method("auto", spec.device)
    return judge_repeatability([run_isolated(replace(spec, repeat=r), method=method) for r in range(trials)])


def judge_repeatability(records: list[TrialRecord]) -> Check:
    """The CV of samples/s over the trials that ran; a failed check if fewer than two did."""
    sps = [r.timing.samples_per_s for r in records if r.ok and r.timing]
    if len(sps) < 2:
        errors = "; ".join(f"{r.trial_id}: {r.status}: {r.error}" for r in records if not r.ok)
        return failed(REPEATABILITY, f"{len(sps)} of {len(records)} trials gave a step time; {errors}", "reported")
    cv = float(np.std(sps, ddof=1) / np.mean(sps))
    return Check(
        REPEATABILITY,
        cv,
        "reported: the noise floor",
        None,
        f"{len(sps)} fresh-process trials: " + ", ".join(f"{v:,.0f}" for v in sps) + " samples/s",
        figure=f"{cv:.1%}",
    )


def _where_time_went(records, wall: float) -> dict[str, float]:
    """A sweep's wall time split into timed steps and everything around them."""
    timings = [(r, r.timing) for r in records if r.ok and r.timing]
    diagnostic = [r for r in records if r.spec.kind in (Kind.AUDIT, Kind.PROFILED)]
    parts = {
        "timed steps": sum(t.region_s or 0 for _, t in timings),
        "warm-up": sum(t.cold_start_s or 0 for _, t in timings),
        "build": sum(t.build_s or 0 for _, t in timings),
        "after the timed region": sum(
            (r.wall_s or 0) - (t.build_s or 0) - (t.cold_start_s or 0) - (t.region_s or 0) for r, t in timings
        ),
        "audit and profiled trials": sum(r.wall_s or 0 for r in diagnostic),
        "process start and hand-over": sum((r.process_wall_s or 0) - (r.wall_s or 0) for r in records),
    }
    parts["sweep bookkeeping"] = wall - sum(parts.values())
    return parts


def sweep_efficiency(workloads: list[str], device: str, size_preset: str, threads: int) -> tuple[Check, dict]:
    """Share of a sweep's wall time in timed steps, and where the rest goes. The sweep is
    a default one in miniature: two settings, two repeats, A/A, audit and profiling."""
    from detcost.plan import SweepOptions
    from detcost.sweep import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        opts = SweepOptions(
            workloads=workloads,
            settings=["default", "strict"],
            repeats=2,
            seed=0,
            device=device,
            axes={"threads": [threads]},
            size_preset=size_preset,
            results=Path(tmp) / "e.jsonl",
            run_id="efficiency",
            seeds=0,
            allow_busy=True,  # the guard's look at the machine is not the harness's cost per trial
        )
        t0 = time.perf_counter()
        records = run_sweep(opts, progress=False).records
        wall = time.perf_counter() - t0
    parts = _where_time_went(records, wall)
    share = parts["timed steps"] / wall
    detail = ", ".join(f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in parts.items())
    check = Check(EFFICIENCY, share, "reported", None, f"{len(records)} trials in {wall:.1f} s: {detail}")
    return replace(check, figure=f"{share:.1%}"), parts


# ---- the steps of a selfcheck ---------------------------------------------------------------


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


def timing_steps(spec: TrialSpec, size_preset: str, threads: int) -> list[Step]:
    """The four timing checks; the two that build a workload run in a child process."""
    device = spec.device
    overhead_target_text = f"<= {overhead_target(device)}"
    return [
        Step(
            "harness overhead",
            (OVERHEAD,),
            lambda: [isolated(OVERHEAD, harness_overhead, spec, device=device, target=overhead_target_text)],
        ),
        Step(
            "timer agreement",
            (AGREEMENT,),
            lambda: [
                isolated(AGREEMENT, timer_agreement, spec, device=device, target=f"within ±{AGREEMENT_TARGET:.0%}")
            ],
        ),
        Step("repeatability in fresh processes", (REPEATABILITY,), lambda: [repeatability(spec)]),
        Step(
            "sweep efficiency (a small sweep)",
            (EFFICIENCY,),
            lambda: [sweep_efficiency([spec.workload], device, size_preset, threads)[0]],
        ),
    ]


def run_all(
    device: str = "cpu",
    workload: str = "simple_cnn",
    size_preset: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> list[Check]:
    """The four timing checks and, on CUDA, the acceptance suite, one after another, with a
    progress bar naming the one running. Every check gives a line, failed or not."""
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
                checks += guarded(step)
                bar.update(1)
    return checks


# ---- the acceptance suite of the CUDA path -----------------------------------------------


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
            oom_check(outcome.records, len(outcome.planned)),
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


# ---- judging what came back (plain inputs, so tests can feed them) ---------------------


def events_agreement(event_s: list[float], wall_s: list[float], steps: int = 1) -> Check:
    """Event time over perf_counter time per region; the median's distance from 1."""
    ratios = [e / w for e, w in zip(event_s, wall_s) if w > 0]
    if not ratios:
        return failed(EVENTS, "no region was timed", EVENTS_TARGET_TEXT)
    diff = statistics.median(ratios) - 1
    return Check(
        EVENTS,
        diff,
        EVENTS_TARGET_TEXT,
        abs(diff) <= EVENTS_TARGET,
        f"median of {len(ratios)} regions of {steps} steps: events {statistics.median(event_s) * 1e3:.1f} ms, "
        f"perf_counter {statistics.median(wall_s) * 1e3:.1f} ms",
        figure=f"{diff:+.2%}",
    )


def _outcome(record: TrialRecord | None) -> str:
    if record is None:
        return "no record"
    return str(record.status) + (f" ({record.error})" if record.error else "")


def context_check(parent_initialized: bool, probe: ChildResult, method: str, records: list[TrialRecord]) -> Check:
    """No CUDA context in this process, none at the start of a trial process, and CUDA
    usable in one (a process forked from one that used CUDA cannot initialise it)."""
    problems = ["this process initialised CUDA (torch.cuda.is_initialized())"] if parent_initialized else []
    if probe.error:
        problems.append(f"the probe process failed: {probe.error}")
    else:
        at_start, init_error = probe.value
        problems += [f"a {method} process had CUDA initialised at its start"] if at_start else []
        problems += [f"CUDA did not initialise in a {method} process: {init_error}"] if init_error else []
    tainted = [r for r in records if r.error and any(m in r.error.lower() for m in _CUDA_AT_START)]
    problems += [f"{len(tainted)} trials found CUDA in use at their start: {_outcome(tainted[0])}"] if tainted else []
    detail = "; ".join(problems) or (
        f"this process: not initialised; a {method} process and {len(records)} trials started without CUDA and used it"
    )
    figure = "none" if not problems else f"{len(problems)} found"
    return Check(CONTEXTS, float(len(problems)), "none", not problems, detail, figure=figure)


def cublas_check(record: TrialRecord | None) -> Check:
    """simple_cnn's matmuls under strict ran, with the workspace config read back in the trial."""
    expected = dict(get_setting("strict").env).get("CUBLAS_WORKSPACE_CONFIG")
    target = f"{expected} read back, the trial's matmuls run"
    if record is None:
        return failed(CUBLAS, "the strict simple_cnn trial has no record", target)
    seen = (record.flags or {}).get("cublas_workspace_config")
    ok = record.ok and seen == expected
    detail = f"simple_cnn under strict: {_outcome(record)}; read back in the trial: CUBLAS_WORKSPACE_CONFIG={seen}"
    return Check(CUBLAS, float(ok), target, ok, detail, figure=str(seen))


def strict_check(unet: TrialRecord | None, lossfix: TrialRecord | None) -> Check:
    """unet's per-pixel cross-entropy has no deterministic CUDA kernel; the workaround runs."""
    got = {"unet": unet.status if unet else None, "unet_lossfix": lossfix.status if lossfix else None}
    want = {"unet": "unsupported", "unet_lossfix": "ok"}
    met = sum(str(got[w]) == want[w] for w in want)
    detail = "; ".join(f"{w}: {_outcome(r)}" for w, r in (("unet", unet), ("unet_lossfix", lossfix)))
    figure = ", ".join(f"{w} {got[w] or 'no record'}" for w in want)
    return Check(STRICT, float(met), "unet unsupported, unet_lossfix ok", met == len(want), detail, figure=figure)


def oom_check(records: list[TrialRecord], planned: int) -> Check:
    """diag_oom recorded as oom, and every trial planned after it has a record."""
    oom = next((r for r in records if r.spec.workload == OOM_WORKLOAD), None)
    later = len(records) - (oom is not None)
    ok = oom is not None and str(oom.status) == "oom" and len(records) == planned
    batch = oom.spec.batch_size if oom else get_workload(OOM_WORKLOAD).size(ACCEPTANCE_PRESET).batch
    detail = f"{OOM_WORKLOAD} (a batch of {batch:,}): {_outcome(oom)}; {later} of {planned - 1} later trials ran"
    figure = f"{oom.status if oom else 'no record'}, {later} later trials ran"
    return Check(OOM, float(later), "oom, and the sweep goes on", ok, detail, figure=figure)


def device_index_judge(device: str, exit_code: int, stderr: str) -> Check:
    """A device index past the count is refused with exit code 2 and one `detcost: error` line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("detcost: error")]
    ok = exit_code == 2 and len(errors) == 1
    others = f" (and {len(lines) - len(errors)} other lines on stderr)" if len(lines) > len(errors) else ""
    said = errors[0] if errors else (lines[-1] if lines else "nothing on stderr")
    detail = f"detcost env --device {device}: exit {exit_code}: {said}{others}"
    return Check(DEVICE_INDEX, float(exit_code), "exit 2 with one line", ok, detail, figure=f"exit {exit_code}")


@dataclass(frozen=True)
class Plans:
    """What a profiled trial's cuDNN log says about the plans (engine + knobs) or algorithms."""

    named: frozenset[str]  # every one the log names, candidates included
    chosen: frozenset[str]  # the ones it says ran (empty where the log does not say)


def plans_of(record: TrialRecord) -> tuple[Plans | None, str]:
    """The cuDNN plans a profiled record names (its `cudnn_plans` field), or why none."""
    if not record.ok:
        return None, f"the trial failed: {_outcome(record)}"
    info = record.cudnn_plans
    if info is None:
        return None, "the record has no cudnn_plans field"
    if not info.ok:
        return None, str(info.reason or f"status {info.status}")
    if not info.named:
        return None, "the log was read but names no plan"
    return Plans(info.named, info.ran), ""


def plans_differ(a: Plans, b: Plans) -> bool | None:
    """Whether two trials ran different plans; None where their logs cannot tell."""
    if a.chosen and b.chosen:
        return a.chosen != b.chosen
    if a.chosen or b.chosen:
        known, other = (a, b) if a.chosen else (b, a)
        # a plan one trial ran that the other's log never names: they differ for certain
        return True if known.chosen - other.named else None
    # neither log says which plan ran: the plans they name (autotuning names many more
    # candidates than the heuristics do) are no evidence either way
    return None


def plan_log_check(records: list[TrialRecord]) -> Check:
    """How many profiled trials' cuDNN logs were parsed, and why the others were not."""
    seen = [plans_of(r) for r in records]
    parsed = sum(found is not None for found, _ in seen)
    reasons = Counter(reason for found, reason in seen if found is None)
    why = "; ".join(f"{reason} ({n} trials)" for reason, n in reasons.most_common())
    detail = f"{parsed} of {len(records)} profiled trials name their cuDNN plans" + (
        f"; not parsed: {why}" if why else ""
    )
    fraction = parsed / len(records) if records else math.nan
    return Check(PLAN_LOG, fraction, "parsed, or the reason", parsed > 0, detail, figure=f"{parsed} of {len(records)}")


def _compare_plans(plans: dict) -> tuple[list[str], list[str], list[str]]:
    """Per workload profiled under `benchmark`: (plans differ, same plans, cannot tell)."""
    differ, agree, unknown = [], [], []
    for w in sorted({w for w, s in plans if s == "benchmark"}):
        (a, why_a), (b, why_b) = plans.get((w, "default"), (None, "no default trial")), plans[(w, "benchmark")]
        verdict = plans_differ(a, b) if a is not None and b is not None else None
        if verdict is None:
            why = why_a or why_b or "one log names candidates only, and the other's choices are among them"
            unknown.append(f"{w}: {why}")
        elif verdict:
            ran = (a.chosen or a.named, b.chosen or b.named)
            differ.append(f"{w} (default {', '.join(sorted(ran[0])[:3])}; benchmark {', '.join(sorted(ran[1])[:3])})")
        else:
            agree.append(w)
    return differ, agree, unknown


def algorithms_check(records: list[TrialRecord]) -> Check:
    """Whether `benchmark` chose other cuDNN plans than `default` on some workload; the
    logs agreeing on every workload is an answer too. Unparsed logs leave it open."""
    differ, agree, unknown = _compare_plans({(r.spec.workload, r.spec.setting): plans_of(r) for r in records})
    ok = bool(differ) or (bool(agree) and not unknown)
    figure = f"differ on {len(differ)}" if differ else ("the logs agree" if ok else "cannot tell")
    parts = []
    if differ:
        parts.append(f"differ: {', '.join(differ)}")
    if agree:
        parts.append(f"same plans: {', '.join(agree)}")
    if unknown:
        parts.append(f"cannot tell: {'; '.join(unknown)}")
    detail = "; ".join(parts) or "no workload was profiled under benchmark"
    target = "differ on a workload, or the log says they agree"
    return Check(ALGORITHMS, float(len(differ)), target, ok, detail, figure=figure)


def host_bound_of(record: TrialRecord, step_s: float | None = None) -> tuple[bool | None, float | None]:
    """(host-bound?, kernels' busy share of the step) of a profiled record, by the one
    rule (`record.HostBound.judge`: against `step_s`, a timed trial's median step, where
    given). None for what the record does not say."""
    hb = record.profile.host_bound if record.profile else None
    return hb.judge(step_s) if hb is not None else (None, None)


def _median_steps(timed: list[TrialRecord]) -> dict[str, float]:
    return {r.spec.workload: r.timing.step_time_median_s for r in timed if r.ok and r.timing is not None}


def host_bound_check(records: list[TrialRecord], timed: list[TrialRecord] = ()) -> Check:
    """Which profiled trials at the default sizes were host-bound, judged against the
    timed trials' median step where there is one ("not measured" where the records carry
    no `host_bound`)."""
    target = "none host-bound"
    steps = _median_steps(list(timed))
    broken = [f"{r.spec.workload}: {_outcome(r)}" for r in [*records, *timed] if not r.ok]
    seen = [(r.spec.workload, *host_bound_of(r, steps.get(r.spec.workload))) for r in records if r.ok]
    measured = [(w, flag, share) for w, flag, share in seen if flag is not None]
    failures = f"; failed: {'; '.join(broken)}" if broken else ""
    if not measured:
        detail = f"not measured: no profiled record carries host_bound{failures}"
        return Check(HOST_BOUND, math.nan, target, False if broken else None, detail, figure="not measured")
    bound = [(w, share) for w, flag, share in measured if flag]
    named = ", ".join(w + (f" (kernels busy {s:.0%} of the step)" if s is not None else "") for w, s in bound)
    unmeasured = len(seen) - len(measured)
    detail = (f"host-bound: {named}" if bound else f"{len(measured)} workloads kernel-bound") + (
        f"; {unmeasured} not measured" if unmeasured else ""
    )
    unjudged = [w for w, *_ in measured if w not in steps]
    if unjudged:  # the profiler slows the host side of the steps it watches
        detail += f"; from the profiled steps alone, which err towards host-bound: {', '.join(unjudged)}"
    ok = not bound and not broken
    figure = f"{len(bound)} of {len(measured)}"
    return Check(HOST_BOUND, float(len(bound)), target, ok, detail + failures, figure=figure)
