"""The default run: what `detcost run` sweeps with no flags, on the CPU and on a GPU box,
and that on the CPU it can judge speed at the noise measured on this project's machines.

The judgement is tested on synthetic timings (never on this machine's own, which another
job can slow 10-30x): trials drawn with the per-trial noise the default CPU workloads were
measured to have go through the real plan, sweep, pricing and decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detcost import env, executors, sweep
from detcost.cli.args import build_parser
from detcost.cli.run import sweep_options
from detcost.derive.analysis import analyse
from detcost.derive.policy import DEFAULT_MAX_SLOWDOWN, MIN_ROUNDS
from detcost.derive.verdict import FAIL, PASS, RUN_CAUSES
from detcost.payloads import BusyReport
from detcost.plan import DEFAULT_ROUNDS, SweepOptions
from detcost.record import Kind, Outcome, Status, StepTiming, TrialParts, TrialRecord
from detcost.settings import DEFAULT_SETTINGS
from detcost.workloads import BUILTIN, DEFAULT_WORKLOADS

# The per-trial noise of a default CPU workload's step time (the sd of its log across fresh
# processes, the A/A control's and default's trials of each round), as measured on a quiet
# 2-core machine of this project's kind with scripts/allocation.py: docs/statistics.md, "The
# default run". The synthetic trials below draw theirs from it.
MEASURED_NOISE_SD = 0.045
STEP_S = 0.02
TRUE = {"strict": 1.0, "strict_nofill": 1.30}  # every other setting runs default's kernels on the CPU


def _options(argv: list[str], tmp_path) -> SweepOptions:
    args = build_parser().parse_args(["run", *argv, "--results", str(tmp_path / "r.jsonl")])
    return sweep_options(args)


def test_the_default_cpu_run_sweeps_the_cpu_workloads_at_the_cpu_rounds(tmp_path):
    opts = _options(["--device", "cpu"], tmp_path)
    assert opts.workloads == list(DEFAULT_WORKLOADS) and set(opts.workloads) < set(BUILTIN)
    assert opts.repeats == DEFAULT_ROUNDS["cpu"] >= MIN_ROUNDS
    assert opts.settings == list(DEFAULT_SETTINGS) and opts.aa and opts.audit and opts.explain


def test_the_default_gpu_run_sweeps_the_gpu_workloads_at_the_least_rounds_a_verdict_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(env, "cuda_available", lambda: True)
    monkeypatch.setattr(env, "gpu_count", lambda: 1)
    opts = _options(["--device", "cuda", "--seeds", "0"], tmp_path)
    assert opts.workloads == list(DEFAULT_WORKLOADS) and opts.repeats == MIN_ROUNDS


def test_workloads_all_still_runs_the_nine_and_repeats_still_sets_the_rounds(tmp_path):
    opts = _options(["--device", "cpu", "--workloads", "all", "--repeats", "3"], tmp_path)
    assert opts.workloads == list(BUILTIN) and len(BUILTIN) == 9 and opts.repeats == 3


class MeasuredNoise:
    """Trials whose step time is their setting's true price on the CPU times log-normal
    noise of the measured size, a fresh draw each trial."""

    def __init__(self, rng) -> None:
        self.rng = rng

    def __call__(self, opts, spec, machine, layout=None) -> TrialRecord:
        price = 1.0 if spec.kind == Kind.AA else TRUE.get(spec.setting, 1.0)
        t = STEP_S * price * math.exp(self.rng.normal(0, MEASURED_NOISE_SD))
        timing = StepTiming(step_times_s=[t] * 5, batch_size=spec.batch_size, busy=BusyReport())
        outcome = Outcome(final_loss=1.0, eval_accuracy=0.5, params_sha256="p", logits_sha256="l")
        return TrialRecord(spec, Status.OK, parts=TrialParts(timing=timing, outcome=outcome))


def _judged(tmp_path, monkeypatch, rounds: int, sweeps: int) -> list[dict]:
    """`sweeps` default CPU sweeps at `rounds` on synthetic trials: each's smallest
    detectable price per workload and its decisions."""
    monkeypatch.setattr(executors, "start_method", lambda method, device: "forkserver")
    monkeypatch.setattr(executors, "new_server", lambda rng: True)
    rng, out = np.random.default_rng(0), []
    for k in range(sweeps):
        monkeypatch.setattr(executors, "_run_one", MeasuredNoise(rng))
        opts = SweepOptions(
            workloads=list(DEFAULT_WORKLOADS), settings=list(DEFAULT_SETTINGS), repeats=rounds, seed=k,
            device="cpu", size_preset="cpu", results=tmp_path / f"{rounds}-{k}.jsonl", run_id=f"s{k}",
            seeds=0, audit=False, explain=False, allow_busy=True,
        )  # fmt: skip
        analysis = analyse(sweep.run_sweep(opts, progress=False).records).only
        prices = [p for p in analysis.prices if not p.is_aa]
        out.append({
            "detectable": max(p.detectable for p in prices),
            "decisions": {(p.key.workload, s): d for p in prices for s, d in p.decisions},
        })  # fmt: skip
    return out


def test_at_the_measured_noise_the_default_cpu_rounds_judge_the_budget(tmp_path, monkeypatch):
    runs = _judged(tmp_path, monkeypatch, DEFAULT_ROUNDS["cpu"], sweeps=20)
    able = [r for r in runs if r["detectable"] <= DEFAULT_MAX_SLOWDOWN]
    assert len(able) >= 0.8 * len(runs), [round(r["detectable"], 3) for r in runs]
    for r in able:  # a run that can judge decides its clear prices, and blames no open one on itself
        for (workload, setting), d in r["decisions"].items():
            assert d.cause not in RUN_CAUSES, (workload, setting, d.reason)
            if setting == "strict_nofill":
                assert d.status == FAIL, d.reason
            if setting not in TRUE or TRUE[setting] == 1.0:  # no price: never failed (at most open, on its line)
                assert d.status != FAIL, d.reason
    passed = [d.status == PASS for r in able for (_, s), d in r["decisions"].items() if s == "strict"]
    assert sum(passed) >= 0.8 * len(passed)


@pytest.mark.parametrize("rounds", [2, MIN_ROUNDS - 1])
def test_below_the_least_rounds_no_price_is_judged_at_any_noise(tmp_path, monkeypatch, rounds):
    for r in _judged(tmp_path, monkeypatch, rounds, sweeps=2):
        assert all(not d.decided for d in r["decisions"].values())


def test_decide_starts_at_its_first_look_and_precision_within_its_cap(tmp_path):
    """--decide and --precision add rounds: without --repeats they start at --decide's first
    look (the least a verdict rests on) or within --max-repeats, not past them."""
    assert _options(["--device", "cpu", "--decide"], tmp_path).repeats == MIN_ROUNDS
    assert _options(["--device", "cpu", "--precision", "5%", "--max-repeats", "6"], tmp_path).repeats == 6
    opts = _options(["--device", "cpu", "--decide", "--max-repeats", "6"], tmp_path)
    assert opts.repeats == MIN_ROUNDS and opts.looks[0] == MIN_ROUNDS and opts.looks[-1] == 6
