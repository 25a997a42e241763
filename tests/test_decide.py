"""`detcost run --decide`: rounds only for the prices the budget does not decide yet, looks at
few round counts, and intervals that stay honest under that stopping. The sweep logic runs
for real; the trial processes are synthetic (known prices, chosen noise), so no test
depends on the machine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detcost import executors, guard
from detcost.cli import main
from detcost.derive.decide import FAIL, PASS, UNDECIDED, against, decide
from detcost.derive.policy import Policy
from detcost.derive.prices import prices
from detcost.errors import UsageError
from detcost.payloads import BusyReport
from detcost.record import Kind, Outcome, Status, StepTiming, TrialParts, TrialRecord
from detcost.stats import LEVEL, decide_looks, level_over_looks, paired_ratio
from detcost.sweep import run_sweep
from tests.test_trust import options

# strict is clearly over a 10% budget, strict_nofill sits on its line: no number of rounds
# decides it, and default is the fastest.
STEP_S = {"default": 0.010, "strict": 0.0125, "strict_nofill": 0.011}


class Trials:
    """The trial processes: step times at a known price with lognormal noise per trial."""

    def __init__(self, step_s: dict, noise: float):
        self.rng, self.step_s, self.noise, self.ran = np.random.default_rng(0), step_s, noise, []

    def __call__(self, opts, spec, machine, layout=None) -> TrialRecord:
        self.ran.append(spec)
        t = self.step_s.get(spec.setting, 0.010) * math.exp(self.rng.normal(0, self.noise))
        timing = StepTiming(step_times_s=[t] * 4, batch_size=spec.batch_size)
        same = Outcome(final_loss=1.0, eval_accuracy=0.5, params_sha256="p", logits_sha256="l")
        return TrialRecord(spec, Status.OK, parts=TrialParts(timing=timing, outcome=same))

    def rounds_of(self, setting: str, kind: str = Kind.TIMED) -> int:
        return len({s.repeat for s in self.ran if s.setting == setting and s.kind == kind})


@pytest.fixture
def quiet_machine(monkeypatch):
    monkeypatch.setattr(guard, "sample", lambda device, threads: BusyReport(0.0, 0.25))


def _decide(tmp_path, monkeypatch, step_s=STEP_S, noise=0.01, **kw):
    trials = Trials(step_s, noise)
    monkeypatch.setattr(executors, "_run_one", trials)
    opts = options(tmp_path, settings=list(step_s), decide=0.10, max_repeats=12, **kw)
    return run_sweep(opts, progress=False), trials


# ---- the looks and their level ------------------------------------------------------


def test_the_looks_start_at_three_rounds_double_and_end_at_the_most_allowed():
    assert decide_looks(2, 20) == [3, 6, 12, 20]
    assert decide_looks(5, 20) == [5, 10, 20]
    assert decide_looks(2, 2) == [2] and decide_looks(20, 20) == [20]


def test_alpha_is_spread_evenly_over_the_looks():
    assert level_over_looks(1) == LEVEL
    assert level_over_looks(4) == pytest.approx(1 - 0.05 / 4)


def _stopped_interval_covers(truth: float, line: float, level: float, rng, looks, sigma=0.05) -> bool:
    """One synthetic sweep: per-round log ratios around `truth`, looked at as --decide
    does, stopped at the first look whose interval clears `line`."""
    x = rng.normal(math.log(truth), sigma, looks[-1])
    for n in looks:
        r = paired_ratio({i: math.exp(v) for i, v in enumerate(x[:n])}, dict.fromkeys(range(n), 1.0), level=level)
        if against(r, line) != UNDECIDED:
            break
    return r.lo <= truth <= r.hi


def test_stopping_at_the_first_look_that_decides_keeps_coverage_only_with_alpha_spread_over_the_looks():
    """A price on the budget's line is the worst case: every early stop is a miss. With 95%
    at each of four looks the interval it stops on covers the truth in about 85% of
    sweeps; with the 95% spread over the looks, in at least 95% of them."""
    looks = decide_looks(2, 20)
    for level, lo, hi in ((LEVEL, 0.78, 0.90), (level_over_looks(len(looks)), 0.94, 1.0)):
        rng = np.random.default_rng(7)
        covered = np.mean([_stopped_interval_covers(1.10, 1.10, level, rng, looks) for _ in range(1500)])
        assert lo <= covered <= hi, (level, covered)


# ---- the sweep ----------------------------------------------------------------------


def test_decide_adds_rounds_only_to_the_prices_the_budget_does_not_decide(tmp_path, monkeypatch, quiet_machine):
    out, trials = _decide(tmp_path, monkeypatch)
    assert trials.rounds_of("strict") == 5  # over the budget at the first look (the least rounds judged): no more
    assert trials.rounds_of("strict_nofill") == 12  # on the line: to the last look
    assert trials.rounds_of("default") == 12 and trials.rounds_of("default", Kind.AA) == 12  # beside it
    d = out.decide
    assert d.looks == (5, 10, 12) and d.rounds == 12 and d.undecided == 1
    assert d.stopped_by == "the last look (--max-repeats 12)"
    assert d.level == pytest.approx(1 - 0.05 / 3)
    assert {r.spec.interval_level for r in out.records} == {d.level}
    rows = {p.label: p for p in prices(out.records, cpu=True) if not p.is_aa}
    policy = Policy(max_slowdown=0.10)
    assert decide(rows["strict"], "strict", policy).status == FAIL
    assert decide(rows["strict_nofill"], "strict_nofill", policy).status == UNDECIDED
    assert decide(rows["default"], "default", policy).status == PASS
    assert rows["strict"].price.rounds == 5 and rows["strict_nofill"].price.rounds == 12


def test_decide_stops_at_the_look_where_every_price_is_decided(tmp_path, monkeypatch, quiet_machine):
    out, trials = _decide(tmp_path, monkeypatch, {"default": 0.010, "strict": 0.0125, "strict_nofill": 0.0101},
                          noise=0.005)  # fmt: skip
    assert out.decide.rounds == 5 and out.decide.stopped_by is None and out.decide.undecided == 0
    assert {trials.rounds_of(s) for s in ("default", "strict", "strict_nofill")} == {5}


def test_decide_and_precision_together_are_bad_input(tmp_path):
    with pytest.raises(UsageError, match="--decide and --precision"):
        options(tmp_path, decide=0.1, precision=0.02)


def test_the_records_interval_level_round_trips_and_older_records_read_as_95(tmp_path):
    opts = options(tmp_path, decide=0.1, max_repeats=20)
    from detcost.plan import plan

    spec = next(s for s in plan(opts) if s.kind == Kind.TIMED)
    stored = TrialRecord(spec, Status.OK).to_json()
    assert opts.looks == (5, 10, 20)  # from the least rounds a price is judged on
    assert stored["interval_level"] == pytest.approx(level_over_looks(3))
    assert TrialRecord.from_json(stored).spec.interval_level == pytest.approx(level_over_looks(3))
    older = {k: v for k, v in stored.items() if k != "interval_level"}
    assert TrialRecord.from_json(older).spec.interval_level == LEVEL


def test_run_decide_prints_a_decision_for_every_price(tmp_path, monkeypatch, quiet_machine, capsys):
    monkeypatch.setattr(executors, "_run_one", Trials(STEP_S, 0.01))
    monkeypatch.chdir(tmp_path)
    args = ["run", "--device", "cpu", "--quick", "--workloads", "simple_cnn", "--settings", ",".join(STEP_S),
            "--threads", "1", "--decide", "--max-repeats", "6", "--seeds", "0", "--no-audit", "--no-explain",
            "--no-report", "-q", "--results", str(tmp_path / "r.jsonl")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--decide against the 10% budget" in out and "97.5%" in out
    assert "over budget: strict on simple_cnn" in out and "cannot decide: strict_nofill on simple_cnn" in out
    assert "within budget: default on simple_cnn" in out and "stopped by the last look" in out
    assert main([*args[:-2], "--results", str(tmp_path / "j.jsonl"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {x["setting"]: x["status"] for x in d["decisions"]} == {"default": PASS, "strict": FAIL,
                                                                 "strict_nofill": UNDECIDED}  # fmt: skip


def test_decide_with_a_cap_below_the_least_rounds_of_a_verdict_is_refused_in_one_line(tmp_path, capsys):
    """--decide's first look is at the least rounds a price is judged on (5): a --max-repeats
    below it ran those rounds anyway, past the cap, and said it stopped by the cap."""
    argv = ["run", "--device", "cpu", "--quick", "--workloads", "simple_cnn", "--decide", "--max-repeats", "2"]
    results = tmp_path / "r.jsonl"
    assert main([*argv, "--dry-run", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--max-repeats 2 stops before: give --max-repeats 5 or more" in err
    assert main([*argv[:-1], "5", "--dry-run", "--allow-busy", "--results", str(results)]) == 0
    assert not results.exists()
