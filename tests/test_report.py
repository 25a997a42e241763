"""The report: what a team lead opens. Built from a real small sweep's results file."""

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from markupsafe import escape

from detcost.cli import main
from detcost.derive.decide import decided
from detcost.derive.keys import AA_LABEL, SEED_LABEL, GroupKey
from detcost.derive.policy import Policy
from detcost.derive.prices import Price, Verdict, prices
from detcost.derive.recommend import recommend
from detcost.derive.variance import Spread
from detcost.record import Status, TrialRecord
from detcost.report.build import ALL_IDENTICAL, NONE_DIVERGE
from detcost.report.explain_text import explain_groups
from detcost.stats import PairedRatio
from tests.conftest import V1_SAMPLE, analysis_of, make_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(small_sweep):
    """The report `detcost run` wrote at the end of the small sweep."""
    folder = small_sweep.parent / "report"
    return folder / "index.html", folder / "summary.md"


def test_run_writes_the_html_report_and_markdown_summary(report):
    html, md = report
    text = html.read_text()
    for section in (
        'id="recommendation"',
        'id="price"',
        'id="variance"',
        'id="figures"',
        'id="failures"',
        'id="environment"',
        'id="method"',
    ):
        assert section in text
    for figure in ("price", "cold start"):
        assert f'alt="{figure}"' in text, figure
    # a CPU run's repeats are bitwise identical: the spread's two figures give way to a sentence each
    assert str(escape(ALL_IDENTICAL)) in text and str(escape(NONE_DIVERGE)) in text
    assert 'alt="tradeoff"' not in text and 'alt="divergence"' not in text
    # the explanation's chart only where it shows more than one workload x setting (else its table says it)
    chart = explained_pairs(report[0].parent.parent / "r.jsonl") > 1
    assert ('alt="what changed"' in text) == chart
    assert text.count('<img src="data:image/png;base64,') == 2 + chart
    assert "cuDNN flags do nothing" in text  # a CPU run says so
    assert AA_LABEL in text and SEED_LABEL in text
    summary = md.read_text()  # what is recommended depends on this sweep's noisy timings; that it is said does not
    assert "## Recommendation" in summary and ("torch.set_num_threads(" in summary or "No recommendation" in summary)


def explained_pairs(path) -> int:
    """How many workload x setting pairs the report's explanation shows an op table for."""
    section = explain_groups(analysis_of(path))
    return sum(len(s["workloads"]) for s in section["shown"]) if section else 0


def test_the_report_is_self_contained(report):
    text = report[0].read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    assert "https://" not in text and "@import" not in text and "<link" not in text


def test_the_cpu_recommendation_is_default_with_a_fixed_thread_count(tmp_path, small_sweep):
    """With every setting bitwise reproducible and no speed difference, the recommendation
    is the setting that changes nothing. The small sweep's 4-step timings are noise, so
    its records get identical step times here; everything else is as measured."""
    records = [json.loads(x) for x in small_sweep.read_text().splitlines()]
    for r in records:
        if r.get("step_times_s"):
            r["step_times_s"] = [0.010 + 0.001 * (j % 3) for j in range(len(r["step_times_s"]))]
            r["samples_per_s"] = r["batch_size"] / 0.011
    flat = tmp_path / "flat.jsonl"
    flat.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["report", str(flat), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "**Use `default`**" in md
    assert "bitwise reproducible on 2 of 2 workload groups" in md
    assert "torch.set_num_threads(2)" in md


def test_report_command_rebuilds_from_a_results_file(tmp_path, small_sweep, capsys):
    assert main(["report", str(small_sweep), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "summary.md").is_file()
    assert "index.html" in capsys.readouterr().out


def test_every_string_from_results_is_html_escaped(tmp_path, small_sweep):
    lines = small_sweep.read_text().splitlines()
    evil = json.loads(next(x for x in lines if '"kind": "timed"' in x))
    evil.update(
        trial_id="timed/evil",
        workload="<script>alert(1)</script>",
        status="error",
        error='RuntimeError: <img src=x onerror="alert(2)">',
    )
    path = tmp_path / "evil.jsonl"
    path.write_text("\n".join([*lines, json.dumps(evil)]) + "\n")
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x onerror" not in html


def _other_box(tmp_path, small_sweep, **env) -> Path:
    other = tmp_path / "other.jsonl"
    records = [json.loads(x) for x in small_sweep.read_text().splitlines()]
    for r in records:
        r["run_id"] = "other-run"
        if r.get("env"):
            r["env"].update(env)
    other.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return other


def test_results_from_two_hosts_of_one_kind_pool_with_the_spread_between_them(tmp_path, small_sweep):
    other = _other_box(tmp_path, small_sweep, hostname="cpu-box-2")
    assert main(["report", str(small_sweep), str(other), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert html.count("Machine: ") == 0 and 'id="kinds"' not in html  # one kind: one set of sections
    assert "Spread between 2 hosts of " in html and "cpu-box-2" in html


def test_results_from_two_machine_kinds_are_grouped_by_kind(tmp_path, small_sweep):
    other = _other_box(tmp_path, small_sweep, hostname="cpu-box-2", cpu="Another CPU", cpu_count=64)
    assert main(["report", str(small_sweep), str(other), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert html.count("Machine: ") == 2 and "Another CPU x64 cores" in html and 'id="kinds"' in html


def _synthetic_run(path: Path, run_id: str, step_s: float, spread: float) -> Path:
    """The committed v1 sample's records with synthetic step times: `step_s` per step,
    each round off by `spread` x its repeat index (so rounds differ, but predictably)."""
    records = [json.loads(x) for x in V1_SAMPLE.read_text().splitlines()]
    for r in records:
        r["run_id"] = run_id
        if r.get("step_times_s"):
            t = step_s * (1 + spread * r["repeat"])
            r["step_times_s"] = [t] * len(r["step_times_s"])
            r["samples_per_s"] = r["batch_size"] / t
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_compare_prints_and_writes_the_tables_side_by_side(tmp_path, capsys):
    """On synthetic timings, so the verdict cannot depend on how busy the machine is."""
    a = _synthetic_run(tmp_path / "a.jsonl", "a", 0.010, 0.01)
    faster = _synthetic_run(tmp_path / "b.jsonl", "b", 0.005, 0.01)  # run B: every step twice as fast
    out = tmp_path / "cmp.html"
    assert main(["compare", str(a), str(faster), "--out", str(out), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["comparison"]
    assert table and all(r["b_vs_a"] == pytest.approx(0.5) and not r["within_noise"] for r in table)
    assert main(["compare", str(a), str(a)]) == 0
    printed = capsys.readouterr().out
    assert "B time / A" in printed and "1.00" in printed and "within noise" in printed
    assert "<table>" in (tmp_path / "cmp.html").read_text()


def test_compare_leaves_out_busy_trials_as_the_report_does(tmp_path, capsys):
    a = _synthetic_run(tmp_path / "a.jsonl", "a", 0.010, 0.01)
    b = _synthetic_run(tmp_path / "b.jsonl", "b", 0.010, 0.01)
    records = [json.loads(x) for x in b.read_text().splitlines()]
    for r in records:  # one round of B ran beside a competitor: 20x slower, flagged busy
        if r.get("step_times_s") and r["repeat"] == 1:
            r["step_times_s"] = [t * 20 for t in r["step_times_s"]]
            r["busy"] = {**(r.get("busy") or {}), "busy": True, "cpu_busy": True}
    b.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["compare", str(a), str(b), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["comparison"]
    assert table and all(r["b_vs_a"] == pytest.approx(0.995, rel=0.01) for r in table)


# ---- recommendation logic on hand-made tables -----------------------------------------


def _price(label: str, p: float) -> Price:
    nan = math.nan
    verdict = Verdict.NOISE_FLOOR if label == AA_LABEL else Verdict.WITHIN_NOISE
    return Price(GroupKey("w", ()), label, (label,), 5, 100.0, nan, 0.01, PairedRatio(p, p - 0.01, p + 0.01, 5),
                 "default", None, nan, nan, nan, 0.0, 0, 0, detectable=0.01, verdict=verdict)  # fmt: skip


def _recommend(records, prices, spreads, budget: float = 0.10):
    """The recommendation on prices decided against `budget`, as the analysis decides them."""
    policy = Policy(max_slowdown=budget)
    return recommend(records, decided(prices, policy), spreads, policy)


def _spread(setting: str, identical: bool, rel_l2: float) -> Spread:
    nan = math.nan
    return Spread(GroupKey("w", ()), setting, 3, 3 if identical else 1, identical, nan, nan, nan, nan, nan, None,
                  rel_l2=0.0 if identical else rel_l2)  # fmt: skip


def _tables(prices: dict, identical: dict, rel_l2: dict | None = None, statuses: dict | None = None):
    """Records, prices and spreads made by hand: the recommendation's logic alone."""
    records = [
        TrialRecord(make_spec(setting=s, device="cuda:0"), Status((statuses or {}).get(s, "ok"))) for s in prices
    ]
    rows = [_price(s, p) for s, p in prices.items()] + [_price(AA_LABEL, 1.0)]
    spreads = [_spread(s, identical[s], (rel_l2 or {}).get(s, 1e-6)) for s in prices]
    return records, rows, spreads


def test_the_most_reproducible_setting_within_budget_wins():
    df, speed, var = _tables(
        {"default": 1.0, "benchmark": 1.0, "deterministic": 1.05, "strict": 1.3},
        {"default": False, "benchmark": False, "deterministic": True, "strict": True},
    )
    rec = _recommend(df, speed, var, 0.10)
    assert rec.setting == "deterministic"  # strict is as reproducible but over budget
    assert "torch.backends.cudnn.deterministic = True" in rec.snippet
    assert _recommend(df, speed, var, 0.5).setting == "deterministic"  # cheaper than strict


def test_ties_within_noise_go_to_the_fewest_changes_from_default():
    df, speed, var = _tables({"default": 1.005, "benchmark": 1.0}, {"default": True, "benchmark": True})
    assert _recommend(df, speed, var).setting == "default"


def test_a_setting_that_fails_on_a_workload_is_not_recommended():
    df, speed, var = _tables(
        {"default": 1.0, "strict": 1.0}, {"default": False, "strict": True}, statuses={"strict": "unsupported"}
    )
    rec = _recommend(df, speed, var)
    assert rec.setting == "default"
    assert any("strict did not finish everywhere" in n for n in rec.notes)
    assert any("No setting was bitwise reproducible on every workload" in n for n in rec.notes)


# ---- in a real browser -------------------------------------------------------------------


needs_chromium = pytest.mark.skipif(
    not CHROMIUM and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (apt-get install chromium); CI installs it",
)


def _playwright():
    sync_api = (
        pytest.importorskip("playwright.sync_api")
        if os.environ.get("CI") != "true"
        else __import__("playwright.sync_api", fromlist=["sync_playwright"])
    )
    assert CHROMIUM, "CI=true but Chromium is missing: .ci/run installs Debian's chromium"
    return sync_api


@contextlib.contextmanager
def _opened(html: Path):
    """The page `html` in headless Chromium, loaded, and the console and page errors it gave."""
    sync_api = _playwright()
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        try:
            yield page, errors
        finally:
            browser.close()


@needs_chromium
def test_the_report_opens_in_headless_chromium_without_errors(report):
    with _opened(report[0]) as (page, errors):
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        heading = page.inner_text("#recommendation")
        recommendation = page.inner_text(".rec")
    assert errors == []
    # price, cold start (the CPU repeats are identical), and the explanation's chart where it compares
    assert len(images) == 2 + (explained_pairs(report[0].parent.parent / "r.jsonl") > 1) and all(images)
    assert heading == "Recommendation" and recommendation.startswith(("Use ", "No recommendation"))


@needs_chromium
def test_the_report_of_two_machine_kinds_shows_a_column_per_kind_and_the_figure_in_chromium(tmp_path):
    """The committed pair (tests/data/kinds: a real CPU sweep and the same records under a
    rewritten fingerprint) in one report."""
    kinds = Path(__file__).parent / "data" / "kinds"
    out = tmp_path / "rep"
    assert main(["report", str(kinds / "box-a.jsonl"), str(kinds / "box-b.jsonl"), "--out", str(out)]) == 0
    with _opened(out / "index.html") as (page, errors):
        heading = page.inner_text("#kinds")
        header = page.eval_on_selector_all("table.kinds tr:first-child th", "ths => ths.map(t => t.innerText)")
        cells = page.eval_on_selector_all("table.kinds tr", "trs => trs.slice(1).map(t => t.children.length)")
        figure = page.eval_on_selector(
            'img[alt="price per machine kind"]', "i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0"
        )
    assert errors == []
    assert heading == "Price per machine kind"
    assert header == ["workload", "setting", "AMD EPYC x2 cores, torch 2.13.0+cpu",
                      "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz x16 cores, torch 2.13.0+cpu"]  # fmt: skip
    assert cells == [4, 4, 4] and figure


def test_a_run_computes_each_table_once_and_reads_no_file_back(tmp_path, monkeypatch):
    """The sweep's records go straight into one analysis, which the summary and the
    report both render."""
    from detcost import results
    from detcost.derive import analysis
    from tests.conftest import run_cli

    calls: dict[str, int] = {}

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)

        return wrapper

    for name in ("prices", "spreads", "divergence_curves", "attribution", "recommend", "load_sidecars"):
        monkeypatch.setattr(analysis, name, counted(name, getattr(analysis, name)))
    monkeypatch.setattr(results, "read_records", counted("read_records", results.read_records))
    code = run_cli(
        "--workloads", "simple_cnn", "--settings", "default,strict", "--repeats", "2", "--seeds", "0",
        "--no-audit", "--results", str(tmp_path / "r.jsonl"), "--report", str(tmp_path / "rep"),
    )  # fmt: skip
    assert code == 0 and (tmp_path / "rep" / "summary.md").is_file()
    assert calls == dict.fromkeys(
        ("prices", "spreads", "divergence_curves", "attribution", "recommend", "load_sidecars"), 1
    )


def test_a_cpu_group_whose_default_trials_were_all_busy_is_still_priced(tmp_path):
    """Every `default` trial flagged busy, the cuDNN-only settings it pools with quiet: the
    A/A control is then priced against the fastest label, never against nothing."""
    path = _synthetic_run(tmp_path / "a.jsonl", "a", 0.010, 0.01)
    records = [json.loads(x) for x in path.read_text().splitlines()]
    for r in records:
        if r.get("step_times_s") and r["kind"] == "timed" and r["setting"] == "default":
            r["busy"] = {**(r.get("busy") or {}), "busy": True, "cpu_busy": True}
    rows = prices([TrialRecord.from_json(r) for r in records], cpu=True)
    aa = [p for p in rows if p.is_aa]
    assert aa and all(math.isfinite(p.price.ratio) for p in aa)


def test_the_busy_warning_names_what_other_processes_used_the_cpu_or_the_gpu(tmp_path):
    """A trial flagged for another process on its GPU is not one whose CPUs were taken."""
    from detcost.derive.analysis import analyse
    from detcost.report.build import machine_section
    from detcost.report.sweep_text import _machine_lines

    path = _synthetic_run(tmp_path / "a.jsonl", "a", 0.010, 0.01)
    gpu = {"busy": True, "cpu_busy": False, "gpu_others": "process 4242 uses 900 MB"}

    def machine(flagged):
        raw = [json.loads(x) for x in path.read_text().splitlines()]
        timed = [r for r in raw if r.get("step_times_s") and r["kind"] == "timed"]
        for r, busy in zip(timed, flagged):
            r["busy"] = {**(r.get("busy") or {}), **busy}
        (m,) = analyse([TrialRecord.from_json(r) for r in raw]).machines
        return machine_section(m)["busy_note"], "\n".join(_machine_lines(m, several=False))

    note, text = machine([gpu])
    assert note.startswith("1 trial(s) ran while other processes used the GPU;"), note
    assert "1 trial(s) ran while other processes used the GPU;" in text
    note, _ = machine([{"busy": True, "cpu_busy": True}, {"busy": True, "cpu_busy": True}, gpu])
    assert note.startswith("3 trial(s) ran while other processes used the CPU (2) and the GPU (1);"), note


def _golden_with(step_of) -> list[TrialRecord]:
    """The committed golden sweep with synthetic step times: `step_of(record) -> seconds`."""
    golden = Path(__file__).parent / "data" / "golden.jsonl"
    out = []
    for r in (json.loads(x) for x in golden.read_text().splitlines()):
        if r.get("step_times_s"):
            r["step_times_s"] = [step_of(r)] * len(r["step_times_s"])
        out.append(TrialRecord.from_json(r))
    return out


def test_a_narrow_price_closer_to_one_than_the_noise_floor_is_neither_real_nor_a_reacting_flag():
    """benchmark 6% faster than default in every round (an interval that excludes 1 by
    chance-narrowness), while the A/A control strays by 30%: on the CPU benchmark stays
    pooled with default, and strict's 6% is unconfirmed, not real."""

    def step(r):
        if r["kind"] == "aa":
            return 0.010 * (1.3 if r["repeat"] == 1 else 1.0)
        return 0.010 * (0.94 if r["setting"] in ("benchmark", "strict") else 1.0) * (1 + 0.001 * r["repeat"])

    rows = [p for p in prices(_golden_with(step), cpu=True) if p.key.workload == "simple_cnn"]
    by = {p.label: p for p in rows}
    assert "benchmark" not in by and by["default"].prices("benchmark") and not by["default"].flag_reacts
    strict = by["strict"]
    assert not strict.price.includes_one or not strict.vs_default.includes_one
    assert strict.verdict != Verdict.REAL and by["strict"].detectable > 0.06
