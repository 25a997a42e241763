"""Render an analysis as the report: `index.html` (self-contained: figures embedded as
PNG data, no scripts, fonts or CDNs) and `summary.md`. Computes nothing: every figure,
verdict and word comes from the `Analysis` it is given."""

from __future__ import annotations

import base64
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import matplotlib.colors as mcolors
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from detcost.derive.analysis import Analysis, MachineAnalysis
from detcost.derive.decide import FAIL, PASS, UNDECIDED, budget_text
from detcost.derive.prices import Verdict
from detcost.derive.recommend import Candidate
from detcost.derive.verdict import RUN_CAUSES
from detcost.record import CudnnPlans
from detcost.report import figures
from detcost.report.banner import banner
from detcost.report.explain_text import (
    CPU_RANKING_NOTE,
    ONE_TRIAL,
    SHOWN_OPS,
    audit_cells,
    audit_line,
    explain_groups,
)
from detcost.report.fmt import compact, fmt, ratio_text
from detcost.report.frameworks_text import frameworks_section, snippet_forms
from detcost.report.keys_text import axis_values_text, models_rows, workload_text
from detcost.report.kinds_text import kinds_section, unit_spread_section
from detcost.report.prices_text import (
    DETAIL_CAPTION,
    detectable_text,
    host_bound_lines,
    layout_text,
    levels_text,
    price_details,
    report_matrix,
)
from detcost.report.scaling_text import scaling_section
from detcost.report.variance_text import variance_display


@dataclass
class ReportPaths:
    html: Path
    markdown: Path


# A budget decision (`derive.decide`) in the words of the recommendation's table.
DECISION_WORDS = {PASS: "within budget", FAIL: "over budget", UNDECIDED: "cannot decide"}


def worst_caption(budget: float) -> str:
    """What the recommendation's "worst price" column is, said once under it."""
    return (
        "Worst price: of a setting's prices across the workloads (each its step time over that workload's fastest "
        "setting's, as in the Price table), the one decided over the budget if there is one, else the highest; "
        f"the workload it is on; and its decision against the {budget_text(budget)} budget (within budget, over "
        "budget, cannot decide), the one the recommendation, the trade-off figure and detcost gate read. Two "
        "worst prices whose intervals overlap do not rank their settings. = default: the very price of "
        "default's row, which prices this setting as one with default."
    )


def _worst_cell(c: Candidate, heads: dict[str, Candidate], fields: list[str]) -> str:
    """`1.16 [0.91, 1.48] on scatter, cannot decide`; `= default` where the worst price is
    the very row default's cell shows (the settings the CPU prices as one with it)."""
    p = c.worst
    if p is None:
        return "-"
    head = heads.get(p.label)
    if p.pooled and c.setting != p.label and head is not None and head.worst is p:
        return f"= {p.label}"
    price = "1.00 (fastest)" if p.verdict == Verdict.FASTEST else ratio_text(p.price)
    axes = axis_values_text(p.key.shown(fields))
    where = workload_text(p.key.workload) + ("" if axes == "-" else f" ({axes})")
    d = p.decision_for(c.setting)
    cause = f" ({d.cause})" if d.cause and d.cause not in RUN_CAUSES else ""
    pooled = f", as one with {p.label}" if p.pooled and c.setting != p.label else ""
    return f"{price} on {where}{pooled}, {DECISION_WORDS[d.status]}{cause}"


def _candidates(m: MachineAnalysis) -> list[dict]:
    heads = {c.setting: c for c in m.recommendation.candidates}
    return [
        {
            "setting": c.setting,
            "color": mcolors.to_hex(figures.color(c.setting)),
            "runs": "yes" if c.runs_everywhere else f"no ({c.failures})",
            "price": _worst_cell(c, heads, m.fields),
            "bitwise": f"{c.bitwise_workloads}/{c.groups}",
            "spread": "0" if c.spread == 0 else compact(c.spread),
            "changes": str(c.changes),
        }
        for c in m.recommendation.candidates
    ]


def tradeoff_points(m: MachineAnalysis) -> pd.DataFrame:
    """One point per setting: its worst price (the recommendation's figure) against its
    mean spread between repeats, marked as the recommendation reads the decisions: the
    recommended setting, a setting decided over the budget, a price not decided."""
    rec = m.recommendation
    rows = [
        {"setting": c.setting, "price": c.max_price, "rel_l2": c.spread, "recommended": c.setting == rec.setting,
         "over_budget": c.over_budget,
         "unconfirmed": bool(rec.speed_caveat) or not c.worst.decision_for(c.setting).decided}
        for c in rec.candidates
        if c.worst is not None
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["setting", "price", "rel_l2", "recommended", "over_budget", "unconfirmed"])


ALL_IDENTICAL = (
    "Every setting's repeats ended bitwise identical on every workload: there is no spread to set against the "
    "price, so the price figure is the whole trade-off."
)
NONE_DIVERGE = "No setting's repeats drifted apart at any checkpoint, on any workload: no divergence to draw."


def _png(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data else None


def _figures(m: MachineAnalysis) -> list[dict]:
    """The figures, each with its caption; where a figure would show nothing (every repeat
    bitwise identical), its caption alone says so in one sentence (`png` None)."""
    speed, points, curves = m.price_frame(), tradeoff_points(m), m.curve_frame()
    caveat = " This run cannot judge speed: every point is hollow." if m.recommendation.speed_caveat else ""
    spread = bool(points["rel_l2"].fillna(0).gt(0).any())
    drifted = bool(not curves.empty and (curves["rel_l2"] > 0).any())
    figs = [
        ("price", figures.price_bars(speed), "Price per setting for each workload, with 95% intervals; the hatched "
         "bar is the A/A control (the noise floor)."),
        ("tradeoff", figures.variance_vs_price(points) if spread else None, "Variance against worst price: one point "
         "per setting; ringed: the recommendation; crossed: a price decided over the budget; hollow: a price not "
         "decided (the same decisions the recommendation and the gate read)." + caveat if spread else ALL_IDENTICAL),
        ("divergence", figures.divergence(curves) if drifted else None, "How far repeats drift apart as training "
         "goes on (log-log); identical settings have no line." if drifted else NONE_DIVERGE),
        ("cold start", figures.cold_start(speed), "Wall time of the warm-up steps, where cuDNN autotunes."),
    ]  # fmt: skip
    return [{"alt": alt, "png": _png(png), "caption": caption} for alt, png, caption in figs]


def _explain_section(m: MachineAnalysis) -> dict | None:
    """The explanation (`explain_groups`), a bar chart of the ops it shows where it shows
    more than one workload x setting, and the cuDNN plans: one line where every trial
    skipped the log for one reason."""
    section = explain_groups(m)
    if section is None:
        return None
    pairs = {g["pair"] for s in section["shown"] for g in s["workloads"]}
    attr = m.attribution.groupby(["workload", "setting"], sort=False).head(SHOWN_OPS)
    shown = attr[[(w, s) in pairs for w, s in zip(attr["workload"], attr["setting"])]].dropna(subset=["op"])
    metric = "delta_calls" if m.cpu else "delta_ms"
    # one pair's chart would only redraw its table; a chart of nothing (no call changed) says nothing
    png = figures.explain_bars(shown, cuda=not m.cpu) if len(pairs) > 1 and shown[metric].any() else None
    plans = cudnn_rows(m.cudnn_plans)
    skipped = len(plans) == 1 and plans[0][:2] == ["all", "all"]
    return {
        **section,
        "note": CPU_RANKING_NOTE if m.cpu else "Ops and kernels ranked by the change in self device time.",
        "one_trial": ONE_TRIAL,
        "figure": _png(png),
        "plans": [] if skipped else plans,
        "plans_line": f"cuDNN execution plans: {plans[0][2]}." if skipped else "",
    }


def cudnn_rows(plans: list[tuple[str, str, CudnnPlans]]) -> list[list[str]]:
    """Per workload x setting: what the profiled trial's cuDNN log says was chosen (or the
    engines it names) and which log said it; one line when every trial skipped the log for
    the same reason (the CPU)."""
    if not plans:
        return []
    reasons = {p.reason for _, _, p in plans}
    if all(p.status == "skipped" for _, _, p in plans) and len(reasons) == 1:
        return [["all", "all", f"skipped: {reasons.pop()}"]]
    return [[w, s, _plans_text(p)] for w, s, p in plans]


def _plans_text(p: CudnnPlans) -> str:
    if not p.ok:
        return f"{p.status}: {p.reason}"
    source = f"{p.source} log" if p.source else "log"
    if p.chosen:
        return f"chosen ({source}): " + ", ".join(f"{k} x{v}" for k, v in p.chosen.items())
    named = ", ".join(f"{k} x{v}" for k, v in p.engines.items())
    return f"named ({source}): {named or 'no engine'}"


def machine_section(m: MachineAnalysis, team: str | None = None, ran: dict | None = None) -> dict:
    header, rows, nkeys = price_details(m, team)
    matrix_header, matrix_rows, matrix_notes = report_matrix(m, team)
    shown = variance_display(m)
    failed = m.failure_frame()
    if not failed.empty:
        failed = failed.assign(workaround=[f.workaround or "" for f in m.failures])
    busy = m.busy_trials
    return {
        "name": m.machine,
        "cpu": m.cpu,
        "rec": m.recommendation,
        "banner": banner(m.recommendation, ran),
        "candidates": _candidates(m),
        "worst_caption": worst_caption(m.recommendation.max_slowdown),
        "matrix_header": matrix_header,
        "matrix_keys": len(matrix_header) - (len(matrix_rows[0]["cells"]) if matrix_rows else 0),
        "matrix_rows": matrix_rows,
        "matrix_notes": matrix_notes,
        "price_header": header,
        "price_caption": DETAIL_CAPTION,
        "price_rows": rows,
        "price_keys": nkeys,
        "variance_header": list(shown.columns),
        "variance_rows": shown.astype(str).values.tolist(),
        "figures": _figures(m) if m.prices else [],
        "failure_header": list(failed.columns),
        "failures": failed.astype(str).values.tolist(),
        "audit": [dict(zip(("alerts", "strict"), audit_cells(a)), workload=a.workload) for a in m.audits if a.ok],
        "audit_line": audit_line(m.audits),
        "explain": _explain_section(m),
        "busy_note": f"{busy} trial(s) ran while other processes used {m.busy_used}; their times are suspect."
        if busy
        else "",
        "detectable": detectable_text(m.prices),
        "level": levels_text(m.prices),
        "host_bound_note": " ".join(host_bound_lines(m.prices)),
        "environment": m.environment + models_rows(p.key.workload for p in m.prices),
        "layout": layout_text(m.layout_varied),
        "frameworks": frameworks_section(m),
        "scaling": scaling_section(m),
        "unit_spread": unit_spread_section(m),
        "snippet_forms": [f for f in snippet_forms(m.recommendation.snippets) if f["key"] != "pytorch"],
    }


def build_report(
    analysis: Analysis, out_dir: Path | None, sources: list, team: str | None = None, ran: dict | None = None
) -> ReportPaths:
    """Write the report of `analysis` to `out_dir` (default: reports/<first run id>), the
    `team` config's setting marked in its tables; `ran`: how the sweep that made it added
    rounds (--decide's or --precision's report), for the banner's advice."""
    out_dir = Path(out_dir) if out_dir else Path("reports") / analysis.run_ids[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    context = {
        "title": ", ".join(analysis.run_ids),
        "n_records": len(analysis.records),
        "sources": [str(p) for p in sources],
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machines": [machine_section(m, team, ran) for m in analysis.machines],
        "kinds": _kinds(analysis, out_dir),
    }
    html = out_dir / "index.html"
    html.write_text(_template().render(**context), encoding="utf-8")
    md = out_dir / "summary.md"
    md.write_text(markdown_summary(context), encoding="utf-8")
    return ReportPaths(html, md)


KINDS_FIGURE = "price-per-kind.png"  # beside summary.md, which links it (the HTML embeds it)


def _kinds(analysis: Analysis, out_dir: Path) -> dict | None:
    """The section "Price per machine kind" with its figure, written beside the Markdown."""
    section = kinds_section(analysis)
    if section is None:
        return None
    png = figures.kind_bars(pd.DataFrame(analysis.across_kinds.frame_rows()), list(analysis.across_kinds.kinds))
    (out_dir / KINDS_FIGURE).write_bytes(png)
    caption = ("Price per setting on each machine kind: a bar per kind, whiskers its interval across that kind's "
               "rounds; a gap where a kind did not run the setting.")  # fmt: skip
    return {**section, "figure": {"alt": "price per machine kind", "png": _png(png), "caption": caption,
                                  "file": KINDS_FIGURE}}  # fmt: skip


def template_env() -> Environment:
    # autoescape: every string from results (workload names, errors, a user model's name) is escaped
    env = Environment(loader=PackageLoader("detcost.report", "templates"), autoescape=select_autoescape(["j2"]))
    # a setting's name in a narrow column breaks after an underscore, not inside a word
    env.filters["wbr"] = lambda text: Markup(str(escape(text)).replace("_", "_<wbr>"))
    return env


def _template():
    return template_env().get_template("report.html.j2")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def _md_recommendation(m: dict) -> list[str]:
    rec = m["rec"]
    parts = []
    if m["banner"]:
        head, rest = m["banner"].split(": ", 1)
        parts += [f"**{head}:** {rest}", ""]
    if m["busy_note"]:
        parts += [f"**Warning:** {m['busy_note']}", ""]
    parts += ["## Recommendation", ""]
    if rec.setting:
        parts += [f"**Use `{rec.setting}`**: {rec.reason}.", "", "```python", rec.snippet, "```", ""]
        for form in m["snippet_forms"]:
            parts += [f"The same, {form['title']}:", "", "```python", form["code"], "```", ""]
    else:
        parts += [f"No recommendation: {rec.reason}.", ""]
    return parts + [f"> {n}" for n in rec.notes] + [""]


def markdown_summary(context: dict) -> str:
    parts = [f"# detcost summary: {context['title']}", ""]
    if context.get("kinds"):
        k = context["kinds"]
        parts += [f"## {k['title']}", "", k["intro"], "", _md_table(k["header"], k["rows"]), ""]
        parts += [f"![{k['figure']['alt']}]({k['figure']['file']})", "", k["figure"]["caption"], ""]
    for m in context["machines"]:
        if len(context["machines"]) > 1:
            parts += [f"## Machine: {m['name']}", ""]
        parts += _md_recommendation(m)
        if m["matrix_rows"]:
            cells = [r["head"] + [c for c, _ in r["cells"]] for r in m["matrix_rows"]]
            parts += ["## Price", "", f"Step time over the fastest setting's, {m['level']} interval across rounds, "
                      "verdict.", ""]  # fmt: skip
            parts += [_md_table(m["matrix_header"], cells), ""]
            parts += [line for note in m["matrix_notes"] for line in (note, "")]
            parts += [m["detectable"], ""] if m["detectable"] else []
            parts += [m["host_bound_note"], ""] if m["host_bound_note"] else []
            parts += ["### Every price", "", _md_table(m["price_header"], [r["cells"] for r in m["price_rows"]]), "",
                      DETAIL_CAPTION, ""]  # fmt: skip
        if m["unit_spread"]:
            us = m["unit_spread"]
            parts += [f"### {us['title']}", "", us["intro"], "", _md_table(us["header"], us["rows"]), ""]
        if m["frameworks"]:
            fw = m["frameworks"]
            parts += [f"## {fw['title']}", "", fw["intro"], "", _md_table(fw["header"], fw["rows"]), ""]
        if m["scaling"]:
            sc = m["scaling"]
            parts += [f"## {sc['title']}", "", sc["intro"], "", _md_table(sc["header"], sc["rows"]), ""]
        if m["variance_rows"]:
            parts += ["## Variance", "", _md_table(m["variance_header"], m["variance_rows"]), ""]
        if m["failures"]:
            parts += ["## Failures", "", _md_table(m["failure_header"], m["failures"]), ""]
        parts += ["## Environment", "", _md_table(["", ""], [list(r) for r in m["environment"]]), ""]
    return "\n".join(parts)


__all__ = ["ReportPaths", "build_report", "fmt", "machine_section", "markdown_summary", "template_env"]
