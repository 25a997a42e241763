"""One judgement: the policy (budget, team setting, least rounds) resolved once, and one
decision per price, read by `run`, `report`, `gate` and the asv tracks alike; no verdict on
fewer rounds than the least; `detcost.apply()` doing what the printed snippet does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detcost import results, tracking
from detcost.cli import main
from detcost.derive.analysis import analyse
from detcost.derive.policy import MIN_ROUNDS, Policy, resolve
from detcost.derive.verdict import FAIL, PASS, UNDECIDED
from detcost.report import text
from tests.conftest import QUICK
from tests.test_gate import GOLDEN, _run

TRACKED = {1.0: PASS, 0.0: FAIL}


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A team config in a fresh folder: the team uses strict, within a 50% budget."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "detcost.toml").write_text('setting = "strict"\nmax_slowdown = 0.5\n')
    return tmp_path


def _json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def _tracked(path: Path, settings: list[str]) -> dict:
    records = results.load_records(path)
    workloads = sorted({r.spec.workload for r in records})
    figures = tracking.figures(records, workloads, settings)
    return {(w, s): TRACKED.get(f["within_budget"], UNDECIDED) for (w, s), f in figures.items()}


def _agree(path: Path, capsys, tmp_path: Path, run_json: dict | None = None) -> dict:
    """report --json, gate --json (on strict) and the asv tracks on one file: the same
    budget and the same decision on every price of strict; returns report's decisions."""
    _, report = _json(capsys, ["report", str(path), "--out", str(tmp_path / "report"), "--json"])
    code, gate = _json(capsys, ["gate", str(path), "--json"])
    assert gate["setting"] == "strict" and "team config" in gate["setting_from"]
    assert report["policy"]["max_slowdown"] == gate["max_slowdown"] == 0.5
    decided = {(x["workload"], x["setting"]): x["status"] for x in report["decisions"]}
    gated = {f["workload"]: f["status"] for f in gate["findings"] if f["rule"] == "price within budget"}
    assert gated == {w: st for (w, s), st in decided.items() if s == "strict"}
    tracked = _tracked(path, ["strict"])
    assert tracked == {k: st for k, st in decided.items() if k[1] == "strict"}
    if run_json is not None:
        assert run_json["policy"] == report["policy"]
        assert {(x["workload"], x["setting"]): x["status"] for x in run_json["decisions"]} == decided
    return decided


def test_report_gate_and_the_asv_tracks_judge_the_golden_file_by_the_team_budget(team, capsys):
    """strict at 1.3x default in 5 rounds: over the built-in 10%, within the team's 50%."""
    decided = _agree(_run(team / "r.jsonl", 1.3), capsys, team)
    assert {st for (w, s), st in decided.items() if s == "strict"} == {PASS}


def test_run_report_gate_and_the_asv_tracks_give_one_decision_for_a_real_sweep(team, capsys):
    path = team / "r.jsonl"
    argv = ["run", *QUICK, "--workloads", "simple_cnn", "--settings", "default,strict", "--threads", "1",
            "--repeats", str(MIN_ROUNDS), "--seeds", "0", "--no-audit", "--no-explain", "--no-report",
            "--json"]  # fmt: skip
    code, run_json = _json(capsys, [*argv, "--results", str(path)])
    assert code == 0 and run_json["policy"]["max_slowdown"] == 0.5
    assert run_json["policy"]["budget_from"] == "the team config (detcost.toml)"
    _agree(path, capsys, team, run_json)


def test_two_rounds_that_agree_are_no_verdict(tmp_path, capsys, monkeypatch):
    """Two rounds whose ratios agree to 0.1% give a narrow interval by luck: the gate
    exits 3 and the recommendation says the run cannot judge speed, with what would."""
    monkeypatch.chdir(tmp_path)
    five = _run(tmp_path / "five.jsonl", 1.02, spread=0.001)
    two = tmp_path / "two.jsonl"
    lines = [json.loads(x) for x in five.read_text().splitlines()]
    two.write_text("".join(json.dumps(r) + "\n" for r in lines if r["kind"] not in ("timed", "aa") or r["repeat"] < 2))
    assert main(["gate", str(two), "--setting", "strict"]) == 3
    out = capsys.readouterr().out
    assert "rests on 2 round(s): detcost judges a price on 5 or more" in out
    m = analyse(results.load_records(two), resolve(team=None)).only
    rec = m.recommendation
    assert rec.speed_caveat and "rest on 2 round(s)" in rec.speed_caveat and rec.rounds_to_judge == MIN_ROUNDS
    assert all(p.decision.status == UNDECIDED for p in m.prices if not p.is_aa)
    banner = text.run_summary(analyse(results.load_records(two)), _outcome(two), 0.0).splitlines()[0]
    assert banner.startswith("THIS RUN CANNOT JUDGE SPEED: its prices rest on 2 round(s)")
    assert "about 5 rounds in all would judge it" in banner
    assert main(["gate", str(five), "--setting", "strict"]) == 0  # the same prices on 5 rounds: a verdict


def _outcome(path: Path):
    from types import SimpleNamespace

    return SimpleNamespace(events=[], precision=None, decide=None, stopped_early=False, results=path, planned=[],
                           ran=0, skipped=0, reruns=0)  # fmt: skip


def test_the_banner_advises_lifting_the_cap_that_stopped_decide():
    from detcost.derive.recommend import Recommendation
    from detcost.report.banner import banner
    from detcost.sweep import DecideReport, PrecisionReport

    rec = Recommendation("default", "", "", 0.1, [], speed_caveat="too noisy", rounds_to_judge=38)
    stopped = {"decide": DecideReport(0.1, (5, 10, 20), 0.98, 20, 1, "the last look (--max-repeats 20)")}
    said = banner(rec, stopped)
    assert "--decide stopped at 20 rounds" in said and "--max-repeats 38" in said and "--precision" not in said
    capped = {"precision": PrecisionReport(0.01, 20, False, 0.02, {"simple_cnn: strict": 0.02}, "--max-repeats 20")}
    assert "--precision stopped at 20 rounds (--max-repeats 20)" in banner(rec, capped)
    assert "--max-repeats 38" in banner(rec, capped)


def test_a_policy_below_two_rounds_is_refused():
    with pytest.raises(ValueError):
        Policy(min_rounds=1)


# ---- detcost.apply() does what the printed snippet does ---------------------------------

TRAIN = """
import hashlib
import torch

model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
for _ in range(5):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
print(loss.item().hex(), hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def _trained(head: str) -> str:
    """A small conv net trained in a fresh process started with OMP_NUM_THREADS=1, after `head`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", head + "\n" + TRAIN], capture_output=True, text=True, env=env,
                         timeout=300, cwd=Path(__file__).parent)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_apply_and_the_printed_snippet_train_the_same_bits_at_the_runs_thread_count():
    """The golden CPU run fixed 2 threads: the snippet sets them, and so must the
    `detcost.apply(...)` call printed beside it, whatever OMP_NUM_THREADS says (on the CPU
    the thread count changes the numbers)."""
    rec = analyse(results.load_records(GOLDEN)).only.recommendation
    assert "torch.set_num_threads(2)" in rec.snippet
    call = rec.snippets["apply"]
    assert "threads=2" in call
    assert _trained(call) == _trained(rec.snippet)
