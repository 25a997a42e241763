"""Trust on a shared machine: --precision, the quiet-machine guard acting on a sweep, and a
recommendation that says when it cannot judge speed. The sweep logic runs for real; the
trial processes and the machine's load are synthetic, so no test depends on the machine."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from detcost import executors, guard, results
from detcost.derive.analysis import analyse
from detcost.derive.prices import prices
from detcost.payloads import BusyReport
from detcost.plan import SweepOptions
from detcost.record import Outcome, Status, StepTiming, TrialParts, TrialRecord
from detcost.sweep import run_sweep
from detcost.trial import run_trial
from detcost.workloads.diagnostic import INJECTED_PRICE
from tests.conftest import V1_SAMPLE, make_spec

STEP_S = {"default": 0.010, "strict": 0.012}  # strict's true price: 1.20


class SyntheticTrials:
    """Stands in for the trial processes: step times with a known price and a chosen noise;
    `busy(spec, attempt)` says which trials come back flagged busy."""

    def __init__(self, noise: float, busy=lambda spec, attempt: False):
        self.rng, self.noise, self.busy = np.random.default_rng(0), noise, busy
        self.attempts: dict[str, int] = {}

    def __call__(self, opts, spec, machine, layout=None) -> TrialRecord:
        attempt = self.attempts[spec.trial_id] = self.attempts.get(spec.trial_id, 0) + 1
        t = STEP_S.get(spec.setting, 0.010) * math.exp(self.rng.normal(0, self.noise))
        busy = self.busy(spec, attempt)
        timing = StepTiming(
            step_times_s=[t * (20 if busy else 1)] * 4, batch_size=spec.batch_size, busy=BusyReport(cpu_busy=busy)
        )
        same = Outcome(final_loss=1.0, eval_accuracy=0.5, params_sha256="p", logits_sha256="l")  # bitwise repeats
        return TrialRecord(spec, Status.OK, parts=TrialParts(timing=timing, outcome=same))


@pytest.fixture
def quiet_machine(monkeypatch):
    looks = []
    monkeypatch.setattr(guard, "sample", lambda device, threads: looks.append(1) or BusyReport(0.0, 0.25))
    return looks


def options(tmp_path, **kw) -> SweepOptions:
    base = dict(
        workloads=["simple_cnn"], settings=["default", "strict"], repeats=2, seed=0, device="cpu",
        size_preset="quick", results=tmp_path / "r.jsonl", run_id="t", axes={"threads": [1]},
        seeds=0, audit=False, explain=False,
    )  # fmt: skip
    return SweepOptions(**{**base, **kw})


def test_precision_adds_rounds_until_every_price_is_that_precise(tmp_path, monkeypatch, quiet_machine):
    monkeypatch.setattr(executors, "_run_one", SyntheticTrials(noise=0.003))
    out = run_sweep(options(tmp_path, precision=0.02, max_repeats=20), progress=False)
    assert out.precision.reached and not out.precision.unmet
    assert 3 <= out.precision.rounds < 20  # more than the 2 asked for, far fewer than allowed
    strict = next(p for p in prices(out.records, cpu=False) if p.label == "strict").price
    assert strict.ratio == pytest.approx(1.2, rel=0.01) and strict.half_width <= 0.02


def test_added_rounds_keep_moving_each_settings_place_in_the_round(tmp_path, monkeypatch, quiet_machine):
    monkeypatch.setattr(executors, "_run_one", SyntheticTrials(noise=0.3))
    out = run_sweep(options(tmp_path, precision=0.001, max_repeats=8), progress=False)
    firsts = [[s for s in out.planned if s.repeat == r and s.kind in ("timed", "aa")][0] for r in range(8)]
    assert len({(s.kind, s.setting) for s in firsts}) == 3  # every label opens some round


def test_precision_not_reached_says_which_prices_and_what_they_reached(tmp_path, monkeypatch, quiet_machine):
    monkeypatch.setattr(executors, "_run_one", SyntheticTrials(noise=0.3))
    out = run_sweep(options(tmp_path, precision=0.01, max_repeats=4), progress=False)
    p = out.precision
    assert not p.reached and p.rounds == 4 and p.stopped_by == "--max-repeats 4"
    assert "simple_cnn: strict" in p.unmet and all(w > 0.01 for w in p.unmet.values())


def test_a_busy_trial_is_run_again_once_the_machine_is_quiet(tmp_path, monkeypatch):
    trials = SyntheticTrials(noise=0.01, busy=lambda spec, attempt: spec.setting == "strict" and attempt == 1)
    monkeypatch.setattr(executors, "_run_one", trials)
    loads = iter([BusyReport(0.0, 0.25)] + [BusyReport(1.5, 0.25, cpu_busy=True), BusyReport(0.0, 0.25)] * 10)
    monkeypatch.setattr(guard, "sample", lambda device, threads: next(loads))
    out = run_sweep(options(tmp_path), progress=False)
    assert all(trials.attempts[s.trial_id] == (2 if s.setting == "strict" else 1) for s in out.planned)
    df = results.load(out.results)  # the re-run supersedes the busy record
    assert not df["busy.busy"].any() and len(df) == len(out.planned)
    assert any("ran while the machine was busy" in e for e in out.events)


def test_trials_left_busy_when_the_guard_gave_up_run_again_at_the_end_once_it_is_quiet(tmp_path, monkeypatch):
    """The machine stays busy through both rounds (the guard gives up waiting), then its
    neighbour leaves: the busy trials run once more before the sweep ends."""
    trials = SyntheticTrials(noise=0.01, busy=lambda spec, attempt: spec.setting == "strict" and attempt == 1)
    monkeypatch.setattr(executors, "_run_one", trials)
    quiet, busy = BusyReport(0.0, 0.25), BusyReport(1.5, 0.25, cpu_busy=True)
    loads = iter([quiet, busy, busy] + [quiet] * 10)  # before the sweep, after each busy trial, at the end
    monkeypatch.setattr(guard, "sample", lambda device, threads: next(loads))
    out = run_sweep(options(tmp_path, wait_quiet=0.0), progress=False)
    strict = [s for s in out.planned if s.setting == "strict"]
    assert len(strict) == 2 and all(trials.attempts[s.trial_id] == 2 for s in strict)
    assert not any(r.timing.is_busy for r in out.records) and out.reruns == 2
    assert any("ran 2 busy trial(s) again at the end" in e for e in out.events)


def test_allow_busy_neither_waits_nor_runs_again(tmp_path, monkeypatch):
    trials = SyntheticTrials(noise=0.01, busy=lambda spec, attempt: True)
    monkeypatch.setattr(executors, "_run_one", trials)
    monkeypatch.setattr(guard, "sample", lambda *a: pytest.fail("the guard looked at the machine"))
    out = run_sweep(options(tmp_path, allow_busy=True), progress=False)
    assert set(trials.attempts.values()) == {1} and not out.events


def test_a_sweep_on_a_busy_machine_waits_then_says_it_went_on(tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "_run_one", SyntheticTrials(noise=0.01))
    monkeypatch.setattr(guard, "sample", lambda device, threads: BusyReport(1.8, 0.25, cpu_busy=True))
    out = run_sweep(options(tmp_path, wait_quiet=0.0), progress=False)
    assert out.events and "still busy" in out.events[0] and "before the sweep" in out.events[0]


# ---- a recommendation that knows its limits -------------------------------------------


def _records(tmp_path, noise: float, repeats: int, busy=lambda spec, attempt: False):
    """A synthetic sweep (--allow-busy, so busy trials stay in the results as they came),
    judged as a GPU run: no CPU pooling of settings."""
    sweep_run = SyntheticTrials(noise=noise, busy=busy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(executors, "_run_one", sweep_run)
        out = run_sweep(options(tmp_path, repeats=repeats, allow_busy=True), progress=False)
    records = results.load_records(out.results)
    for r in records:
        r.spec = replace(r.spec, device="cuda:0")
    return records


def _recommendation(records):
    return analyse(records, 0.10).only.recommendation


def test_quiet_narrow_prices_get_a_speed_judgement(tmp_path):
    rec = _recommendation(_records(tmp_path, noise=0.005, repeats=8))
    assert rec.speed_caveat is None and "within the" in rec.reason or "reaches into" in rec.reason


def test_noise_wider_than_the_budget_refuses_a_speed_judgement(tmp_path):
    rec = _recommendation(_records(tmp_path, noise=0.3, repeats=5))
    assert rec.speed_caveat and "larger than the 10% budget" in rec.speed_caveat
    assert "reproducibility alone" in rec.reason and "budget" not in rec.reason


def test_prices_resting_on_busy_trials_refuse_a_speed_judgement(tmp_path):
    rec = _recommendation(_records(tmp_path, noise=0.005, repeats=8, busy=lambda spec, attempt: True))
    assert rec.speed_caveat and "busy" in rec.speed_caveat


def test_the_report_opens_with_the_caveat(tmp_path):
    from detcost.report.build import build_report

    paths = build_report(analyse(_records(tmp_path, noise=0.3, repeats=3)), tmp_path / "report", [])
    html, md = paths.html.read_text(), paths.markdown.read_text()
    assert "cannot judge speed" in html[: html.index('id="recommendation"')]
    assert md.index("cannot judge speed") < md.index("## Recommendation")


# ---- the known price ------------------------------------------------------------------


def test_the_known_price_workload_reads_its_true_price_back():
    priced = run_trial(make_spec(workload="diag_price", setting="benchmark", steps=6)).to_json()
    plain = run_trial(make_spec(workload="diag_price", setting="default", steps=6)).to_json()
    # the realised price: at least the injected one (a busy machine can only stretch a spin)
    assert priced["workload_notes"]["injected_price"] >= INJECTED_PRICE - 1e-3
    assert 1.0 <= plain["workload_notes"]["injected_price"] < INJECTED_PRICE
    assert priced["workload_notes"]["price_applies_to"] == "cudnn.benchmark"


def test_a_run_where_only_the_aa_control_finished_prices_nothing_and_does_not_crash():
    only_aa = [r for r in results.load_records(V1_SAMPLE) if not (r.spec.kind == "timed" and r.ok)]
    m = analyse(only_aa).only
    assert m.prices == [] and m.recommendation.setting is None
