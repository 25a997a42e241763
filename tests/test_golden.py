"""One committed results file rendered by the one analysis: the terminal summary, its JSON
and summary.md are fixtures, so any change to what a reader sees shows as a diff.
`tests/data/golden-outputs/before/` holds what detcost printed before the analysis was
rebuilt on records (kept for the record: the differences are listed in its README).
Regenerate `after/` with DETCOST_UPDATE_GOLDEN=1 when a change to the output is meant."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from detcost import results
from detcost.derive.analysis import analyse
from detcost.report import text
from detcost.report.build import build_report

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden.jsonl"
AFTER = DATA / "golden-outputs" / "after"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    records = results.load_records(GOLDEN)
    analysis = analyse(records, 0.10)
    outcome = SimpleNamespace(events=[], precision=None, decide=None, stopped_early=False, results="RESULTS",
                              planned=records, ran=len(records), skipped=0, reruns=0)  # fmt: skip
    paths = build_report(analysis, tmp_path_factory.mktemp("golden"), [GOLDEN.name])
    summary_json = text.run_summary_json(analysis, outcome, 0.0, None)
    return {
        "summary.txt": text.run_summary(analysis, outcome, 0.0, None) + "\n",
        "summary.json": json.dumps(summary_json, indent=1, default=str) + "\n",
        "summary.md": paths.markdown.read_text(),
    }


@pytest.mark.parametrize("name", ["summary.txt", "summary.json", "summary.md"])
def test_the_committed_sweep_renders_as_its_fixture(rendered, name):
    if os.environ.get("DETCOST_UPDATE_GOLDEN"):
        AFTER.mkdir(parents=True, exist_ok=True)
        (AFTER / name).write_text(rendered[name])
    assert rendered[name] == (AFTER / name).read_text()


def test_every_verdict_in_the_fixture_agrees_with_its_interval(rendered):
    """No renderer may call an interval that excludes 1.00 'within noise', or one that
    includes it 'real'."""
    for row in json.loads(rendered["summary.json"])["speed"]:
        lo, hi, verdict = row["price_lo"], row["price_hi"], row["verdict"]
        if verdict == "within noise":
            assert lo <= 1.0 <= hi, row
        if verdict == "real":
            assert not lo <= 1.0 <= hi, row


def test_a_cpu_cudnn_setting_the_data_says_is_not_free_is_shown_as_measured(rendered):
    """diag_price injects a real price under benchmark: on the CPU it is not pooled away."""
    rows = {(r["workload"], r["setting"]): r for r in json.loads(rendered["summary.json"])["speed"]}
    bench = rows["diag_price", "benchmark"]
    assert bench["flag_reacts"] and bench["priced_as_one"] is None
    assert bench["vs_default_lo"] > 1.0
    assert "reacts to the flag" in rendered["summary.txt"] and "reacts to the flag" in rendered["summary.md"]
    assert ("simple_cnn", "benchmark") not in rows  # there it is priced as one with default
    assert "benchmark" in rows["simple_cnn", "default"]["priced_as_one"]


def test_the_summary_of_a_run_without_decide_gives_every_price_its_decision_once(rendered):
    """Every price the terminal shows carries its decision against the budget, read from
    the analysis (the JSON's decisions), or the rounds that would reach one."""
    decisions = json.loads(rendered["summary.json"])["decisions"]
    block = rendered["summary.txt"].split("against the 10% budget", 1)[1].split("\n\n", 1)[0]
    within = next((line for line in block.splitlines() if line.startswith("  within budget: ")), "")
    for d in decisions:
        if d["status"] == "pass":
            assert f"{d['workload']}: " in within and d["setting"] in within, d
        else:
            assert block.count(d["reason"]) == 1 and d["status"] in block, d
            if d["rounds"] < 5:
                assert "round" in d["reason"], d
