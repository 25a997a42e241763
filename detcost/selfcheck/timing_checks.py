"""The four timing checks, on any device: is detcost's own timing sound?

- harness overhead: detcost's per-step time against a bare hand-written loop of the same
  workload in the same process (targets: OVERHEAD_TARGET);
- agreement with `torch.utils.benchmark.Timer.blocked_autorange` on the same step;
- repeatability: coefficient of variation of samples/s over trials in fresh processes;
- sweep efficiency: the share of a sweep's wall time spent in timed steps, and where the
  rest goes (process start, build, warm-up, after the timed region).

What builds a workload runs in a child process (`child.isolated`); each measurement is
judged by a function of plain figures (`judge_*`), which tests feed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from detcost.record import Kind, TrialRecord, TrialSpec
from detcost.selfcheck.checks import AGREEMENT, EFFICIENCY, OVERHEAD, REPEATABILITY, Check, Step, failed
from detcost.selfcheck.child import isolated
from detcost.timing import StepTimer, is_cuda, synchronize
from detcost.train import TrainStep, run_steps

OVERHEAD_TARGET = {"cuda": 1.01, "cpu": 1.05}
AGREEMENT_TARGET = 0.03
AGREEMENT_TARGET_TEXT = f"within ±{AGREEMENT_TARGET:.0%}"


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
    return judge_overhead(ratios, spec.device, spec.steps)


def judge_overhead(ratios: list[float], device: str, steps: int) -> Check:
    """The median of per-round ratios (detcost's step / the bare loop's) against the
    device's target; a failed check where that median is not a finite figure."""
    target = overhead_target(device)
    ratio = statistics.median(ratios) if ratios else math.nan
    if not math.isfinite(ratio):
        return failed(OVERHEAD, f"no finite ratio from {len(ratios)} rounds: {ratios}", f"<= {target}")
    return Check(
        OVERHEAD,
        ratio,
        f"<= {target}",
        ratio <= target,
        f"detcost step time / bare loop, median of {len(ratios)} alternating rounds "
        f"of {steps} steps (min {min(ratios):.3f}, max {max(ratios):.3f})",
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
        AGREEMENT_TARGET_TEXT,
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
            lambda: [isolated(AGREEMENT, timer_agreement, spec, device=device, target=AGREEMENT_TARGET_TEXT)],
        ),
        Step("repeatability in fresh processes", (REPEATABILITY,), lambda: [repeatability(spec)]),
        Step(
            "sweep efficiency (a small sweep)",
            (EFFICIENCY,),
            lambda: [sweep_efficiency([spec.workload], device, size_preset, threads)[0]],
        ),
    ]
