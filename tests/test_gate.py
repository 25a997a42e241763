"""`detcost gate` on crafted results files: the committed CPU sweep (tests/data/golden.jsonl)
with synthetic step times, hashes and fingerprints, so every verdict is known in advance
and none depends on how busy the machine is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detcost import results
from detcost.cli import main
from detcost.derive.analysis import analyse
from detcost.derive.decide import FAIL, PASS, UNDECIDED, rounds_to_decide
from detcost.derive.gate import NOTE, judge
from detcost.stats import PairedRatio

GOLDEN = Path(__file__).parent / "data" / "golden.jsonl"
STEP_S = 0.010


def _run(path: Path, factor: float = 1.02, spread: float = 0.01, *, setting: str = "strict", aa: float = 1.0,
         busy: bool = False, differ: bool = False, torch: str | None = None, params: str = "", drop: bool = False,
         run_id: str = "now") -> Path:  # fmt: skip
    """The committed sweep, every round-kind trial at STEP_S a step; `setting`'s trials at
    `factor` x that, its round r off by spread x (r - 1); the A/A control at `aa` x.
    `busy` flags the setting's trials; `differ` gives each repeat its own parameters;
    `params` prefixes the setting's hashes; `torch` rewrites the fingerprint; `drop`
    leaves the setting out."""
    out = []
    for r in _rounds(json.loads(x) for x in GOLDEN.read_text().splitlines()):
        r["run_id"] = run_id
        mine = r["kind"] == "timed" and r["setting"] == setting
        if drop and r["setting"] == setting:
            continue
        if r.get("step_times_s"):
            t = STEP_S * (factor * (1 + spread * (r["repeat"] - 1)) if mine else aa if r["kind"] == "aa" else 1.0)
            r["step_times_s"] = [t] * len(r["step_times_s"])
            r["samples_per_s"] = r["batch_size"] / t
        if mine and busy:
            r["busy"] = {**(r.get("busy") or {}), "busy": True, "cpu_busy": True}
        if mine and (differ or params):
            r["params_sha256"] = params + r["params_sha256"] + (f"-{r['repeat']}" if differ else "")
            r["logits_sha256"] = params + r["logits_sha256"]
        if torch and r.get("env"):
            r["env"] = {**r["env"], "torch": torch}
        r.pop("sidecar", None)
        out.append(r)
    path.write_text("\n".join(json.dumps(r) for r in out) + "\n")
    return path


ROUNDS = 5  # the least a price is judged on (derive.policy.MIN_ROUNDS)


def _rounds(records, rounds: int = ROUNDS):
    """The committed sweep's records with its 3 rounds made `rounds`: the later ones copy
    its first rounds' trials under their own repeat (their step times are set by `_run`)."""
    records = list(records)
    have = 1 + max(r["repeat"] for r in records if r["kind"] in ("timed", "aa"))
    copies = [
        {**r, "repeat": extra, "trial_id": r["trial_id"].replace(f"/r{r['repeat']}/", f"/r{extra}/")}
        for extra in range(have, rounds)
        for r in records
        if r["kind"] in ("timed", "aa") and r["repeat"] == extra - have
    ]
    return records + copies


def _gate(capsys, *args: str) -> tuple[int, dict]:
    code = main(["gate", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _findings(decision: dict, rule: str) -> list[dict]:
    return [f for f in decision["findings"] if f["rule"] == rule]


@pytest.fixture(autouse=True)
def _no_team_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no detcost.toml or pyproject.toml above a fresh tmp folder


# ---- the price against the budget ---------------------------------------------------


def test_a_price_whose_interval_is_within_the_budget_passes(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", 1.02)), "--setting", "strict")
    assert code == 0 and d["status"] == PASS
    prices = _findings(d, "price within budget")
    assert len(prices) == 2 and all(f["status"] == PASS for f in prices)
    assert "within the 10% budget" in prices[0]["reason"] and "default's step time" in prices[0]["reason"]
    assert prices[0]["figures"]["hi"] < 1.1


def test_a_price_whose_interval_is_over_the_budget_fails_and_a_wider_budget_passes(tmp_path, capsys):
    path = str(_run(tmp_path / "r.jsonl", 1.5))
    code, d = _gate(capsys, path, "--setting", "strict", "--max-slowdown", "10%")
    assert code == 1 and d["status"] == FAIL
    assert all("over the 10% budget" in f["reason"] for f in _findings(d, "price within budget"))
    assert main(["gate", path, "--setting", "strict", "--max-slowdown", "60%"]) == 0
    assert capsys.readouterr().out.startswith("detcost gate: PASS for strict (--setting), budget 60%")


def test_a_price_straddling_the_budget_cannot_be_decided_and_says_how_many_rounds_would(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", 1.08, 0.03)), "--setting", "strict")
    assert code == 3 and d["status"] == UNDECIDED
    f = _findings(d, "price within budget")[0]
    assert f["status"] == UNDECIDED and "straddles" in f["reason"] and "about" in f["reason"]
    assert f["figures"]["rounds_to_decide"] > 3


def test_the_budget_is_relative_to_the_fastest_setting_not_to_default(tmp_path, capsys):
    # benchmark runs its steps in 0.85 x default's time: on the CPU a cuDNN flag that the
    # data says is not free is priced on its own, and is the fastest
    path = str(_run(tmp_path / "r.jsonl", 0.85, 0.01, setting="benchmark"))
    code, d = _gate(capsys, path, "--setting", "default")
    assert code == 1
    f = _findings(d, "price within budget")[0]
    assert f["figures"]["price_vs"] == "benchmark" and f["figures"]["ratio"] == pytest.approx(1 / 0.85, rel=0.02)
    assert "benchmark's step time (the fastest)" in f["reason"] and "over the 10% budget" in f["reason"]
    code, d = _gate(capsys, path, "--setting", "benchmark")
    assert code == 0 and "is the fastest setting of the run" in _findings(d, "price within budget")[0]["reason"]


def test_the_gate_draws_intervals_at_the_level_the_records_carry(tmp_path, capsys):
    plain = _run(tmp_path / "r.jsonl", 1.05, 0.02)
    decided = tmp_path / "decided.jsonl"  # the same rounds, as a --decide sweep with four looks records them
    decided.write_text("".join(json.dumps({**json.loads(x), "interval_level": 0.9875}) + "\n"
                               for x in plain.read_text().splitlines()))  # fmt: skip
    _, a = _gate(capsys, str(plain), "--setting", "strict")
    _, b = _gate(capsys, str(decided), "--setting", "strict")
    fa, fb = _findings(a, "price within budget")[0], _findings(b, "price within budget")[0]
    assert fa["figures"]["interval_level"] == 0.95 and fb["figures"]["interval_level"] == 0.9875
    assert fb["figures"]["lo"] < fa["figures"]["lo"] and fb["figures"]["hi"] > fa["figures"]["hi"]
    assert fa["figures"]["ratio"] == pytest.approx(fb["figures"]["ratio"]) and "98.75% interval" in fb["reason"]


def test_rounds_to_decide_follows_the_square_of_the_half_width_over_the_distance():
    r = PairedRatio(1.05, 1.0, 1.1025, 3)  # log half-width = log distance to 1.1 x ~1.05
    assert rounds_to_decide(r, 1.05) is None  # on the line
    need = rounds_to_decide(r, 1.1)
    assert 3 <= need <= 4
    # (log 1.25 / log 1.1)^2 = 5.5 times the 2 degrees of freedom of 3 rounds, plus one
    assert rounds_to_decide(PairedRatio(1.0, 0.8, 1.25, 3), 1.1) == 12


def test_busy_trials_are_cannot_decide_never_a_silent_pass(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", 1.02, busy=True)), "--setting", "strict")
    assert code == 3
    assert all("busy" in f["reason"] for f in _findings(d, "price within budget"))


def test_a_noise_floor_wider_than_the_budget_cannot_decide(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", 1.02, aa=1.3)), "--setting", "strict")
    assert code == 3
    assert all("cannot detect a price the size of the budget" in f["reason"] and "about" in f["reason"]
               and f["figures"]["rounds_to_decide"] > 3 for f in _findings(d, "price within budget"))  # fmt: skip
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", 1.02, aa=1.3)), "--setting", "strict", "--max-slowdown",
                    "0.5%")  # fmt: skip
    assert "budget (0.5%)" in _findings(d, "price within budget")[0]["reason"]


def test_a_noisy_run_still_fails_a_price_it_detects_wholly_over_the_budget(tmp_path, capsys):
    # the A/A control strays 15%, so nothing can pass a 10% budget (and every interval takes
    # that stray in); a price of 3.0 is further from 1.00, and its whole interval is over the line
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", 3.0, aa=1.15)), "--setting", "strict")
    assert code == 1 and all("over the 10% budget" in f["reason"] for f in _findings(d, "price within budget"))
    code, _ = _gate(capsys, str(_run(tmp_path / "near.jsonl", 1.2, aa=1.15)), "--setting", "strict")
    assert code == 3  # over the line, but not beyond what the run can detect


def test_a_cpu_setting_priced_as_one_with_default_passes_unless_the_run_cannot_detect_the_budget(tmp_path, capsys):
    path = str(_run(tmp_path / "r.jsonl"))
    code, d = _gate(capsys, path, "--setting", "deterministic")  # a cuDNN-only setting: no CPU kernel changes
    assert code == 0 and all("priced as one with default" in f["reason"] for f in _findings(d, "price within budget"))
    code, d = _gate(capsys, str(_run(tmp_path / "aa.jsonl", aa=1.3)), "--setting", "deterministic")
    assert code == 3


def test_a_setting_the_run_lacks_cannot_decide(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "r.jsonl", drop=True)), "--setting", "strict")
    assert code == 3
    assert all("no finished timed trial of strict" in f["reason"] for f in _findings(d, "price within budget"))


def test_without_a_setting_or_config_the_gate_judges_the_recommendation(tmp_path, capsys):
    code = main(["gate", str(_run(tmp_path / "r.jsonl"))])
    printed = capsys.readouterr().out
    assert code == 0 and "(the run's recommendation)" in printed and printed.count("\n") == 1


# ---- reproducibility ----------------------------------------------------------------


def test_repeats_that_were_identical_in_the_baseline_and_no_longer_are_fail(tmp_path, capsys):
    base = _run(tmp_path / "base.jsonl", run_id="base")
    now = _run(tmp_path / "now.jsonl", differ=True)
    code, d = _gate(capsys, str(now), "--setting", "strict", "--baseline", str(base))
    assert code == 1
    rep = _findings(d, "reproducible")
    assert rep and all(f["status"] == FAIL and "identical in the baseline" in f["reason"] for f in rep)
    # and they are not also called an environment change: repeats differ within the run
    assert all(f["status"] == NOTE and "run-to-run" in f["reason"] for f in _findings(d, "outcome drift"))


def test_a_required_reproducibility_fails_without_a_baseline_and_passes_when_identical(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "a.jsonl", differ=True)), "--setting", "strict",
                    "--require", "reproducible")  # fmt: skip
    assert code == 1 and "requires reproducible" in _findings(d, "reproducible")[0]["reason"]
    code, d = _gate(capsys, str(_run(tmp_path / "b.jsonl")), "--setting", "strict", "--require", "reproducible")
    assert code == 0 and all(f["status"] == PASS for f in _findings(d, "reproducible"))


def test_reproducibility_unchecked_is_said_not_passed(tmp_path, capsys):
    code, d = _gate(capsys, str(_run(tmp_path / "a.jsonl", differ=True)), "--setting", "strict")
    assert code == 0
    assert [f["status"] for f in _findings(d, "reproducible")] == [NOTE]
    assert "not checked" in d["reason"]


# ---- against the baseline: price drift and outcome drift ----------------------------


def test_a_price_that_grew_beyond_the_tolerance_fails_though_within_the_budget(tmp_path, capsys):
    base = _run(tmp_path / "base.jsonl", 0.8, run_id="base")
    now = _run(tmp_path / "now.jsonl", 1.2)
    code, d = _gate(capsys, str(now), "--setting", "strict", "--baseline", str(base), "--max-slowdown", "30%")
    assert code == 1
    assert all(f["status"] == PASS for f in _findings(d, "price within budget"))
    drift = _findings(d, "price drift")
    assert drift and all(f["status"] == FAIL and "tolerance of 30% (the budget)" in f["reason"] for f in drift)
    assert drift[0]["figures"]["ratio"] == pytest.approx(1.5, rel=0.01) and drift[0]["figures"]["lo"] > 1.3


def test_price_drift_passes_when_unchanged_and_cannot_decide_when_straddling(tmp_path, capsys):
    base = _run(tmp_path / "base.jsonl", run_id="base")
    code, d = _gate(capsys, str(_run(tmp_path / "same.jsonl")), "--setting", "strict", "--baseline", str(base))
    assert code == 0 and all(f["status"] == PASS for f in _findings(d, "price drift"))
    wide = _run(tmp_path / "wide.jsonl", 1.1, 0.05)
    code, d = _gate(capsys, str(wide), "--setting", "strict", "--baseline", str(base))
    drift = _findings(d, "price drift")
    assert code == 3 and drift and all(f["status"] == UNDECIDED and "about" in f["reason"] for f in drift)


def test_other_hashes_under_another_torch_are_an_environment_change_not_nondeterminism(tmp_path, capsys):
    base = _run(tmp_path / "base.jsonl", params="old-", torch="2.12.0", run_id="base")
    now = _run(tmp_path / "now.jsonl")
    code, d = _gate(capsys, str(now), "--setting", "strict", "--baseline", str(base))
    outcome = _findings(d, "outcome drift")
    assert code == 0 and outcome
    for f in outcome:
        assert f["status"] == NOTE
        assert "results changed with the environment (torch 2.12.0 -> 2.13.0+cpu)" in f["reason"]
        assert "not run-to-run nondeterminism" in f["reason"]
    assert all(f["status"] == PASS for f in _findings(d, "reproducible"))
    code, d = _gate(capsys, str(now), "--setting", "strict", "--baseline", str(base), "--require", "reproducible")
    assert code == 1 and all(f["status"] == FAIL for f in _findings(d, "outcome drift"))


def test_other_hashes_from_a_run_of_one_repeat_cannot_be_called_an_environment_change(tmp_path, capsys):
    base = _run(tmp_path / "base.jsonl", params="old-", torch="2.12.0", run_id="base")
    lines = [json.loads(x) for x in _run(tmp_path / "now.jsonl").read_text().splitlines()]
    one = tmp_path / "one.jsonl"  # the setting's second round left out: one repeat a seed
    one.write_text("\n".join(json.dumps(r) for r in lines if not (r["setting"] == "strict" and r["repeat"] > 0)))
    code, d = _gate(capsys, str(one), "--setting", "strict", "--baseline", str(base))
    outcome = _findings(d, "outcome drift")
    assert outcome and all(f["status"] == NOTE and "cannot tell an environment change" in f["reason"] for f in outcome)


def test_judge_reads_one_analysis_of_each_run(tmp_path):
    """The library call the CLI makes: the same decision without the command line."""
    now = analyse(results.load_records(_run(tmp_path / "r.jsonl", 1.5)), 0.1)
    decision = judge(now, "strict", baseline=None)
    assert decision.status == FAIL and not decision.baseline
    assert judge(now, None).status == UNDECIDED


# ---- the team config ----------------------------------------------------------------


def test_the_gate_takes_the_team_configs_setting_budget_and_baseline(tmp_path, capsys):
    _run(tmp_path / "base.jsonl", 0.8, run_id="base")
    now = _run(tmp_path / "now.jsonl", 1.2)
    (tmp_path / "detcost.toml").write_text('setting = "strict"\nmax_slowdown = "30%"\nbaseline = "base.jsonl"\n')
    code, d = _gate(capsys, str(now))
    assert code == 1 and d["setting"] == "strict" and "team config" in d["setting_from"]
    assert d["max_slowdown"] == pytest.approx(0.3) and d["baseline"].endswith("base.jsonl")
    assert main(["gate", str(now), "--max-slowdown", "10%", "--setting", "default"]) == 0  # flags win
    capsys.readouterr()


def test_a_config_naming_a_missing_baseline_is_one_line_and_exit_2(tmp_path, capsys):
    now = _run(tmp_path / "now.jsonl")
    (tmp_path / "detcost.toml").write_text('setting = "strict"\nbaseline = "results/v1.jsonl"\n')
    assert main(["gate", str(now)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "v1.jsonl" in err and "does not exist" in err
