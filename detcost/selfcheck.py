"""Is detcost's own timing sound? Four measurements of the measuring instrument:

- harness overhead: detcost's per-step time against a bare hand-written loop of the same
  workload in the same process (targets: <= 1.02 on GPU, <= 1.05 on CPU);
- agreement with `torch.utils.benchmark.Timer.blocked_autorange` on the same step (3%);
- repeatability: coefficient of variation of samples/s over trials in fresh processes;
- sweep efficiency: the share of a sweep's wall time spent in timed steps, and where the
  rest goes (process start, build, warm-up, after the timed region).

`detcost selfcheck` prints them; the asv suite tracks them (benchmarks/measurement.py).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from detcost.record import Kind, TrialSpec
from detcost.timing import StepTimer, is_cuda, synchronize
from detcost.train import TrainStep, run_steps, spec_at_profile

OVERHEAD_TARGET = {"cuda": 1.02, "cpu": 1.05}
AGREEMENT_TARGET = 0.03


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    target: str
    ok: bool | None
    detail: str
    command: str = "detcost selfcheck"


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


def harness_overhead(spec: TrialSpec, rounds: int = 7) -> Check:
    """detcost's mean timed step / the bare loop's, alternated on one workload (median of rounds)."""
    ratios = []
    with TrainStep(spec) as step:
        for _ in range(rounds):
            bare = _bare_loop(step.wl, step.batches, spec.device)
            ratios.append(float(np.mean(_detcost_loop(step.wl, step.batches, spec.device))) / bare)
    ratio = statistics.median(ratios)
    target = OVERHEAD_TARGET["cuda" if is_cuda(spec.device) else "cpu"]
    return Check(
        "harness overhead",
        ratio,
        f"<= {target}",
        ratio <= target,
        f"detcost step time / bare loop, median of {rounds} alternating rounds "
        f"of {spec.steps} steps (min {min(ratios):.3f}, max {max(ratios):.3f})",
    )


def timer_agreement(spec: TrialSpec, rounds: int = 5, min_run_time: float = 0.5) -> Check:
    """detcost's median step time against torch.utils.benchmark's on the same step,
    alternated on one workload (median of per-round ratios)."""
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
        "agreement with torch.utils.benchmark",
        diff,
        f"within ±{AGREEMENT_TARGET:.0%}",
        abs(diff) <= AGREEMENT_TARGET,
        f"median of {rounds} alternating rounds; detcost {statistics.median(ours) * 1e3:.2f} ms, "
        f"Timer.blocked_autorange {statistics.median(theirs) * 1e3:.2f} ms per step",
    )


def repeatability(spec: TrialSpec, trials: int = 5) -> Check:
    """CV of samples/s over trials of one setting, each in a fresh process."""
    from detcost.sweep import run_isolated, start_method

    method = start_method("auto", spec.device)
    records = [run_isolated(replace(spec, repeat=r), method=method) for r in range(trials)]
    sps = [r.timing.samples_per_s for r in records if r.timing]
    cv = float(np.std(sps, ddof=1) / np.mean(sps))
    return Check(
        "repeatability (CV of samples/s)",
        cv,
        "reported: the noise floor",
        None,
        f"{trials} fresh-process trials: " + ", ".join(f"{v:,.0f}" for v in sps) + " samples/s",
    )


def _where_time_went(records, wall: float) -> dict[str, float]:
    """A sweep's wall time split into timed steps and everything around them."""
    timings = [(r, r.timing) for r in records if r.ok and r.timing]
    diagnostic = [r for r in records if r.spec.kind in (Kind.AUDIT, Kind.PROFILED)]
    parts = {
        "timed steps": sum(t.region_s for _, t in timings),
        "warm-up": sum(t.cold_start_s or 0 for _, t in timings),
        "build": sum(t.build_s for _, t in timings),
        "after the timed region": sum(r.wall_s - t.build_s - (t.cold_start_s or 0) - t.region_s for r, t in timings),
        "audit and profiled trials": sum(r.wall_s or 0 for r in diagnostic),
        "process start and hand-over": sum(r.process_wall_s - (r.wall_s or 0) for r in records),
    }
    parts["sweep bookkeeping"] = wall - sum(parts.values())
    return parts


def sweep_efficiency(workloads: list[str], device: str, profile: str, threads: int) -> tuple[Check, dict]:
    """Share of a sweep's wall time in timed steps, and where the rest goes. The sweep is
    a default one in miniature: two settings, two repeats, A/A, audit and profiling."""
    from detcost.sweep import SweepOptions, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        opts = SweepOptions(
            workloads=workloads,
            settings=["default", "strict"],
            repeats=2,
            seed=0,
            device=device,
            axes={"threads": [threads]},
            profile=profile,
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
    return Check(
        "sweep efficiency (share of wall time in timed steps)",
        share,
        "reported",
        None,
        f"{len(records)} trials in {wall:.1f} s: {detail}",
    ), parts


def run_all(
    device: str = "cpu",
    workload: str = "simple_cnn",
    profile: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> list[Check]:
    """The four checks, one after another, with a progress bar naming the one running."""
    from tqdm import tqdm

    profile = profile or ("gpu" if is_cuda(device) else "cpu")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    spec = spec_at_profile(workload, "default", device, profile, run_id="selfcheck", axes={"threads": threads})
    steps = [
        ("harness overhead", lambda: harness_overhead(spec)),
        ("timer agreement", lambda: timer_agreement(spec)),
        ("repeatability in fresh processes", lambda: repeatability(spec)),
        ("sweep efficiency (a small sweep)", lambda: sweep_efficiency([workload], device, profile, threads)[0]),
    ]
    checks = []
    with tqdm(total=len(steps), unit="check", disable=not progress, dynamic_ncols=True) as bar:
        for name, check in steps:
            bar.set_description_str(f"selfcheck: {name}")
            checks.append(check())
            bar.update(1)
    return checks
