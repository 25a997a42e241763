"""The report as a page a team reads to choose its flags: a pooled group marked once, the
CPU note written once, a worst price that is the decided one and says so, an explanation
of what a reader can act on, and a page that ends (measured in Chromium, folds closed)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from detcost import results
from detcost.derive.analysis import analyse
from detcost.derive.decide import decided
from detcost.derive.keys import AA_LABEL, GroupKey
from detcost.derive.policy import Policy
from detcost.derive.prices import Price, Verdict, prices
from detcost.derive.recommend import candidates
from detcost.record import TrialRecord
from detcost.report.build import _worst_cell, build_report, machine_section, worst_caption
from detcost.report.explain_text import explain_groups
from detcost.stats import PairedRatio
from tests.conftest import make_spec
from tests.test_report import _golden_with, _opened, needs_chromium

GOLDEN = Path(__file__).parent / "data" / "golden.jsonl"
# The tallest a report may be with its folds closed, in CSS px at a 1280 px wide window:
# about seven screens, so the page ends (a default CPU run's report was 14,000-16,000 px).
MAX_PAGE_PX = 6000
CPU_NOTE = "On the CPU the cuDNN flags do nothing"


@pytest.fixture(scope="module")
def golden():
    return analyse(results.load_records(GOLDEN)).only


@pytest.fixture(scope="module")
def golden_html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden-page")
    return build_report(analyse(results.load_records(GOLDEN)), out, [GOLDEN.name]).html


def test_the_price_table_marks_a_pooled_group_once(golden, golden_html):
    """On the CPU default prices the cuDNN-only settings as one: its cell holds the price,
    theirs say `= default`, and one legend line says what that means."""
    section = machine_section(golden)
    header, rows = section["matrix_header"], section["matrix_rows"]
    cells = {r["head"][0].split(" ")[0]: dict(zip(header[1:], [c for c, _ in r["cells"]])) for r in rows}
    simple = cells["simple_cnn"]
    assert simple["default"] == "1.00 (fastest)"
    assert [simple[s] for s in ("benchmark", "deterministic", "benchmark_deterministic", "no_cudnn")] == [
        "= default"] * 4  # fmt: skip
    assert cells["diag_price"]["benchmark"].startswith("1.35 [0.98, 1.86] within noise")  # reacts: its own price
    legend = [n for n in section["matrix_notes"] if n.startswith("= default:")]
    assert len(legend) == 1
    html = golden_html.read_text()
    assert "priced as one" not in "".join(c for r in rows for c, _ in r["cells"])
    assert html.count("settings priced as one") == 0 and html.count(CPU_NOTE) == 1


def test_a_verdicts_reason_is_a_numbered_note_written_once(golden):
    section = machine_section(golden)
    texts = [c for r in section["matrix_rows"] for c, _ in r["cells"]]
    assert any(t.startswith("1.18 [1.11, 1.26] unconfirmed [1]") for t in texts)
    assert "[1] 3 rounds, fewer than the 5 a verdict rests on: a narrow interval may be luck" in section[
        "matrix_notes"]  # fmt: skip
    assert not any("fewer than the 5" in t for t in texts)


def _row(workload: str, label: str, ratio: float, lo: float, hi: float, members=None, fastest="default") -> Price:
    """A price row of 6 rounds against `fastest`, with a 1% noise floor."""
    nan = math.nan
    verdict = Verdict.NOISE_FLOOR if label == AA_LABEL else Verdict.WITHIN_NOISE
    return Price(GroupKey(workload, ()), label, members or (label,), 5, 100.0, nan, 0.01,
                 PairedRatio(ratio, lo, hi, 6), fastest, None, nan, nan, nan, 0.0, 0, 0, detectable=0.01,
                 verdict=verdict)  # fmt: skip


def test_a_settings_worst_price_is_the_one_decided_over_the_budget_not_a_higher_undecided_point():
    """strict costs 1.30 [0.80, 2.10] on one workload (straddles the budget: cannot decide)
    and 1.15 [1.12, 1.18] on another (over it): its worst price is the one over the budget,
    the one the recommendation reads, and the table says which workload and what decision."""
    rows = [
        _row("a", "default", 1.0, 1.0, 1.0), _row("a", "strict", 1.30, 0.80, 2.10), _row("a", AA_LABEL, 1.0, .99, 1.01),
        _row("b", "default", 1.0, 1.0, 1.0), _row("b", "strict", 1.15, 1.12, 1.18), _row("b", AA_LABEL, 1.0, .99, 1.01),
    ]  # fmt: skip
    rows = decided(rows, Policy(max_slowdown=0.10))
    records = [TrialRecord(make_spec(setting=s, workload=w)) for s in ("default", "strict") for w in "ab"]
    cands = {c.setting: c for c in candidates(records, rows, [])}
    strict = cands["strict"]
    assert strict.worst.key.workload == "b" and strict.over_budget
    assert _worst_cell(strict, cands, []) == "1.15 [1.12, 1.18] on b, over budget"
    caption = worst_caption(0.10)
    assert "10% budget" in caption and "decided over the budget" in caption and "= default" in caption


def test_a_setting_priced_as_one_with_default_shows_its_worst_price_once():
    pooled = ("default", "benchmark")
    rows = [_row("a", "default", 1.25, 1.15, 1.35, pooled, "strict"), _row("a", "strict", 1, 1, 1, None, "strict")]
    rows = decided(rows, Policy(max_slowdown=0.10))
    records = [TrialRecord(make_spec(setting=s, workload="a")) for s in ("default", "benchmark", "strict")]
    cands = {c.setting: c for c in candidates(records, rows, [])}
    assert _worst_cell(cands["default"], cands, []) == "1.25 [1.15, 1.35] on a, over budget"
    assert _worst_cell(cands["benchmark"], cands, []) == "= default"


def test_the_explanation_shows_op_tables_only_where_a_price_stands_apart_beyond_noise(golden, golden_html):
    """The golden run: benchmark_deterministic on diag_price (1.18 [1.11, 1.26], further from
    1.00 than its 7% noise floor) gets a table; the settings the CPU prices as one with
    default get one line, not a table; every other profiled pair is folded."""
    section = explain_groups(golden)
    shown = [(s["setting"], g["workload"]) for s in section["shown"] for g in s["workloads"]]
    assert shown == [("benchmark_deterministic", "diag_price")]
    table = section["shown"][0]["workloads"][0]
    assert table["price"] == "1.18 [1.11, 1.26] x strict's step, unconfirmed" and 1 <= len(table["ops"]) <= 3
    assert section["same_kernels"].startswith(
        "benchmark, benchmark_deterministic on simple_cnn; deterministic, "
        "no_cudnn on every workload: their flags change no kernel on the CPU"
    )
    titles = [g["title"] for g in section["folded"]]
    assert len(titles) == 5 and not any(t.startswith(("deterministic ", "no_cudnn ")) for t in titles)
    html = golden_html.read_text()
    explanation = html[html.index('id="explanation"') : html.index('id="failures"')]
    assert explanation.count("<h3") == 1 and explanation.count('<details class="folded">') == 1
    assert "cuDNN execution plans: skipped" in explanation and "<h3>cuDNN execution plans</h3>" not in explanation


def test_a_price_stands_apart_beyond_noise_only_when_further_from_one_than_the_noise_floor():
    """beyond_noise is set with the verdict: strict 20% slower in each of 3 rounds (too few
    for a verdict, unconfirmed) stands apart; 6% under an A/A control that strays by 30%
    does not; a price whose interval takes in 1.00 never does."""

    def step(slower: float, aa: float):
        def of(r):
            if r["kind"] == "aa":
                return 0.010 * (aa if r["repeat"] == 1 else 1.0)
            return 0.010 * (slower if r["setting"] == "strict" else 1.0) * (1 + 0.001 * r["repeat"])

        return of

    def strict(slower, aa):
        rows = prices(_golden_with(step(slower, aa)), cpu=True)
        return next(p for p in rows if p.key.workload == "simple_cnn" and p.label == "strict")

    far = strict(1.2, 1.0)
    assert far.verdict == Verdict.UNCONFIRMED and far.beyond_noise
    near = strict(1.06, 1.3)
    assert near.verdict == Verdict.UNCONFIRMED and not near.beyond_noise
    assert not any(p.beyond_noise for p in prices(_golden_with(step(1.0, 1.0)), cpu=True) if
                   p.verdict in (Verdict.WITHIN_NOISE, Verdict.FASTEST, Verdict.NOISE_FLOOR))  # fmt: skip


# ---- a page that ends, measured in Chromium ------------------------------------------------


def _page_height(html: Path) -> int:
    """The page's full height in CSS px at a 1280 px wide window, every fold closed."""
    with _opened(html) as (page, errors):
        page.set_viewport_size({"width": 1280, "height": 900})
        page.eval_on_selector_all("details", "ds => ds.forEach(d => d.open = false)")
        height = page.evaluate("document.documentElement.scrollHeight")
    assert errors == []
    return height


@needs_chromium
def test_the_golden_report_ends_within_six_thousand_px_with_its_folds_closed(golden_html):
    assert _page_height(golden_html) <= MAX_PAGE_PX


@needs_chromium
def test_a_two_workload_quick_runs_report_ends_within_six_thousand_px_with_its_folds_closed(small_sweep):
    html = small_sweep.parent / "report" / "index.html"
    assert _page_height(html) <= MAX_PAGE_PX


def test_the_pooled_mark_and_the_cpu_note_appear_once_in_the_markdown_too(tmp_path):
    md = build_report(analyse(results.load_records(GOLDEN)), tmp_path, [GOLDEN.name]).markdown.read_text()
    assert md.count(CPU_NOTE) == 1 and len(re.findall(r"^= default: ", md, flags=re.M)) == 1
