"""Figures for trackers (asv): one sweep's numbers per workload x setting, and a single
training step a timer can call. Keeps the asv files in benchmarks/ declarative."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from detcost.derive.analysis import MachineAnalysis, analyse
from detcost.derive.policy import Policy, resolve
from detcost.derive.verdict import FAIL, PASS, UNDECIDED
from detcost.plan import SweepOptions
from detcost.record import Status
from detcost.sweep import run_sweep
from detcost.train import TrainStep, spec_at_preset

# The decision on a price as a number asv can track: 1 within the budget, 0 over it, NaN
# where the run cannot decide (`Price.decision_for`, the decision the gate and the report read).
DECISION_TRACKED = {PASS: 1.0, FAIL: 0.0, UNDECIDED: math.nan}


def _figures(m: MachineAnalysis, workload: str, setting: str) -> dict:
    """The tracked figures of one workload x setting, or its failure status: each the
    analysis's own (the price row's step time and statistics, the spread's counts)."""
    price, spread = m.price_of(workload, setting), m.spread_of(workload, setting)
    if price is None:
        trials = [r for r in m.records if r.spec.workload == workload and r.spec.setting == setting]
        failed = [str(r.status) for r in trials if r.status != Status.OK]
        return {"status": failed[0] if failed else "missing"}
    return {
        "status": str(Status.OK),
        "samples_per_s": price.samples_per_s,
        "step_time_s": price.step_time_s,
        "within_budget": DECISION_TRACKED[price.decision_for(setting).status],
        "cold_start_s": price.cold_start_s,
        "peak_memory_bytes": price.peak_memory_bytes,
        "achieved_flops": price.achieved_flops,
        # the report's statistic: step time over default's, paired within rounds
        "slowdown_vs_default": price.vs_default.ratio if price.vs_default else math.nan,
        "divergence": spread.rel_l2 if spread else math.nan,
        "identical_fraction": spread.n_identical / spread.R if spread else math.nan,
    }


def sweep_figures(
    workloads, settings, repeats: int, size_preset: str, device: str, steps: int | None = None, allow_busy: bool = False
) -> dict:
    """Run a sweep (fresh process per trial) and return {(workload, setting): figures},
    its prices decided by the team's policy (`derive.policy.resolve`), as `detcost run`'s.
    The quiet-machine guard waits for a busy machine unless `allow_busy` (asv's smoke run)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = SweepOptions(
            workloads=list(workloads),
            settings=list(settings),
            repeats=repeats,
            seed=0,
            device=device,
            size_preset=size_preset,
            results=Path(tmp) / "asv.jsonl",
            run_id="asv",
            steps=steps,
            seeds=0,
            aa=False,
            audit=False,
            explain=False,
            allow_busy=allow_busy,
        )
        outcome = run_sweep(opts, progress=False)
    return figures(outcome.records, workloads, settings)


def figures(records, workloads, settings, policy: Policy | None = None) -> dict:
    """{(workload, setting): figures} of these records, their prices decided by `policy`
    (default: the team's, `derive.policy.resolve`, as every command takes it)."""
    m = analyse(records, policy or resolve()).only
    if m is None:
        return {(w, s): {"status": "missing"} for w in workloads for s in settings}
    return {(w, s): _figures(m, w, s) for w in workloads for s in settings}


def train_step(workload: str, setting: str, device: str, size_preset: str) -> TrainStep:
    """One training step of a workload under a setting, at a size preset's sizes, for asv's timer."""
    return TrainStep(spec_at_preset(workload, setting, device, size_preset, run_id="step"))
