"""Build the report from results files: `index.html` (self-contained: figures embedded as
PNG data, no scripts, fonts or CDNs) and `summary.md`. Never re-runs training."""

from __future__ import annotations

import base64
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from detcost import results
from detcost.derive import attribution, variance
from detcost.derive.frame import AA_LABEL, busy_count, failures, group_fields, is_cpu, ok_trials
from detcost.derive.prices import speed_table
from detcost.ops import workaround
from detcost.record import Kind
from detcost.report import figures, text
from detcost.report.recommend import DEFAULT_MAX_SLOWDOWN, Recommendation, recommend
from detcost.settings import REFERENCE, SETTINGS

ENV_FIELDS = (
    "torch",
    "cuda",
    "cudnn",
    "gpu",
    "driver",
    "cpu",
    "cpu_count",
    "threads",
    "python",
    "platform",
    "hostname",
    "detcost",
)


@dataclass
class ReportPaths:
    html: Path
    markdown: Path


def machine_name(row: pd.Series) -> str:
    gpu = row.get("env.gpu")
    hw = gpu if isinstance(gpu, str) and gpu else row.get("env.cpu", "?")
    return f"{row.get('env.hostname', '?')} ({hw})"


def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return none
    return format(v, spec)


def _si(v, unit: str) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


def _price_cell(r, cpu: bool) -> str:
    bound = f" ({text.HOST_BOUND_NOTE})" if text.is_host_bound(getattr(r, "host_bound", None)) else ""
    if r.setting != AA_LABEL and r.price == 1.0 and r.price_lo == r.price_hi:
        return f"1.00 (fastest){bound}"
    interval = text.interval_text(r.price, r.price_lo, r.price_hi)
    if r.setting == AA_LABEL:
        return f"{interval} (the noise floor)"
    if cpu and r.setting != REFERENCE and r.setting in SETTINGS and SETTINGS[r.setting].cudnn_only:
        return f"{interval} noise: the same kernels as default on the CPU"
    return f"{interval} {'within noise' if r.within_noise else 'real'}{bound}"


def _price_rows(speed: pd.DataFrame, cpu: bool) -> tuple[list[str], list[dict], int]:
    keys = [c for c in ("workload", *group_fields()) if c in speed]
    header = [
        *keys,
        "setting",
        "samples/s",
        "CV across repeats",
        "price vs fastest [95% CI]",
        "time vs default [95% CI]",
        "cold start",
        "peak memory",
        "achieved FLOP/s",
    ]
    rows = []
    for r in speed.itertuples():
        busy = f" (busy machine: {r.busy_trials} trial(s))" if r.busy_trials else ""
        rows.append(
            {
                "cls": "aa" if r.setting == AA_LABEL else "",
                "cells": [
                    *(str(getattr(r, k)) for k in keys),
                    r.setting,
                    f"{r.samples_per_s:,.1f}{busy}",
                    _fmt(r.samples_per_s_cv, ".1%"),
                    _price_cell(r, cpu),
                    text.interval_text(r.vs_default, r.vs_default_lo, r.vs_default_hi),
                    _fmt(r.cold_start_s, ".3f") + " s",
                    _si(r.peak_memory_bytes, "B"),
                    _si(r.achieved_flops, "FLOP/s"),
                ],
            }
        )
    return header, rows, len(keys) + 1


def _candidates(rec: Recommendation) -> list[dict]:
    return [
        {
            "setting": c.setting,
            "color": mcolors.to_hex(figures.color(c.setting)),
            "runs": "yes" if c.runs_everywhere else f"no ({c.failures})",
            "price": _fmt(c.max_price) + "x",
            "bitwise": f"{c.bitwise_workloads}/{c.groups}",
            "spread": "0" if c.spread == 0 else _fmt(c.spread, ".2e"),
            "changes": str(c.changes),
        }
        for c in rec.candidates.itertuples()
    ]


def _pareto(points: pd.DataFrame) -> pd.Series:
    def dominated(p) -> bool:
        others = points.drop(p.name)
        better = (others["price"] <= p["price"]) & (others["rel_l2"] <= p["rel_l2"])
        strictly = (others["price"] < p["price"]) | (others["rel_l2"] < p["rel_l2"])
        return bool((better & strictly).any())

    return points.apply(lambda p: not dominated(p), axis=1)


def _tradeoff_points(speed: pd.DataFrame, var: pd.DataFrame) -> pd.DataFrame:
    timed = speed[speed["setting"] != AA_LABEL]
    price = timed.groupby("setting")["price"].mean()
    rows = variance.same_seed_rows(var)
    spread = rows.groupby("setting")["rel_l2"].mean() if not rows.empty else pd.Series(dtype=float)
    points = pd.DataFrame({"price": price, "rel_l2": spread.reindex(price.index).fillna(0)}).reset_index()
    points = points.rename(columns={"index": "setting"})
    points["pareto"] = _pareto(points.set_index("setting")).values if len(points) else []
    return points


def _figures(speed: pd.DataFrame, var: pd.DataFrame, curves: pd.DataFrame) -> list[dict]:
    figs = [
        (
            "price",
            figures.price_bars(speed),
            "Price per setting for each workload, with 95% intervals; "
            "the hatched bar is the A/A control (the noise floor).",
        ),
        (
            "tradeoff",
            figures.variance_vs_price(_tradeoff_points(speed, var)),
            "Variance against price: one point per setting; points on the dotted Pareto front are not beaten on both.",
        ),
        (
            "divergence",
            figures.divergence(
                curves if not curves.empty else pd.DataFrame(columns=["workload", "setting", "step", "rel_l2"])
            ),
            "How far repeats drift apart as training goes on (log-log); identical settings have no line.",
        ),
        ("cold start", figures.cold_start(speed), "Wall time of the warm-up steps, where cuDNN autotunes."),
    ]
    return [{"alt": alt, "png": base64.b64encode(png).decode(), "caption": caption} for alt, png, caption in figs]


def _explain_section(df: pd.DataFrame, speed: pd.DataFrame, cpu: bool) -> dict | None:
    """Ranked op changes per workload x setting, a bar chart, and the cuDNN plans."""
    attr = attribution.attribution(df, speed)
    if attr.empty:
        return None
    groups = []
    for _, rows in attr.groupby(["workload", "setting"], sort=False):
        shown = rows.dropna(subset=["op"])
        groups.append(
            {
                "headline": text.headline(rows, cuda=not cpu),
                "rows": [
                    [
                        r.op,
                        r.kind,
                        f"{r.delta_calls:+.1f}",
                        f"{r.delta_self_cpu_ms:+.3f}",
                        f"{r.delta_self_device_ms:+.3f}",
                        _si(r.delta_cpu_memory_bytes, "B"),
                    ]
                    for r in shown.itertuples()
                ],
            }
        )
    png = figures.explain_bars(attr, cuda=not cpu) if attr["op"].notna().any() else None
    return {
        "note": text.CPU_RANKING_NOTE if cpu else "Ops and kernels ranked by the change in self device time.",
        "groups": groups,
        "figure": base64.b64encode(png).decode() if png else None,
        "plans": _cudnn_rows(df),
    }


def _cudnn_rows(df: pd.DataFrame) -> list[list[str]]:
    """Per workload x setting: what the profiled trial's cuDNN log says was chosen (or the
    engines it names) and which log said it; one line when every trial skipped the log for
    the same reason (the CPU)."""
    trials = ok_trials(df, (Kind.PROFILED,))
    if trials.empty or "cudnn_plans.status" not in trials:
        return []
    if (trials["cudnn_plans.status"] == "skipped").all() and trials["cudnn_plans.reason"].nunique() == 1:
        return [["all", "all", f"skipped: {trials['cudnn_plans.reason'].iloc[0]}"]]
    return [[r["workload"], r["setting"], _plans_text(r)] for r in trials.to_dict(orient="records")]


def _plans_text(r: dict) -> str:
    if r.get("cudnn_plans.status") != "ok":
        return f"{r.get('cudnn_plans.status')}: {r.get('cudnn_plans.reason')}"
    source = r.get("cudnn_plans.source")
    source = f"{source} log" if isinstance(source, str) else "log"
    chosen, engines = r.get("cudnn_plans.chosen"), r.get("cudnn_plans.engines")
    if isinstance(chosen, dict) and chosen:
        return f"chosen ({source}): " + ", ".join(f"{k} x{v}" for k, v in chosen.items())
    named = ", ".join(f"{k} x{v}" for k, v in engines.items()) if isinstance(engines, dict) else ""
    return f"named ({source}): {named or 'no engine'}"


def _audit_rows(df: pd.DataFrame) -> list[dict]:
    out = []
    for r in ok_trials(df, (Kind.AUDIT,)).to_dict(orient="records"):
        audit = {k.split(".", 1)[1]: v for k, v in r.items() if k.startswith("audit.")}
        alerts, strict = text.audit_cells({**audit, "alerts": audit.get("alerts") or []})
        out.append({"workload": r["workload"], "alerts": alerts, "strict": strict})
    return out


def _env_rows(df: pd.DataFrame) -> list[tuple[str, str]]:
    # a `default` trial's view: other settings add their own variables (CUBLAS_WORKSPACE_CONFIG)
    plain = df[(df["setting"] == REFERENCE) & df["env.torch"].notna()] if "env.torch" in df else df
    first = (plain if len(plain) else df).iloc[0]
    rows = [(k, str(first.get(f"env.{k}"))) for k in ENV_FIELDS if f"env.{k}" in df]
    env_vars = first.get("env.env")
    if isinstance(env_vars, dict) and env_vars:
        rows.append(("env vars", ", ".join(f"{k}={v}" for k, v in env_vars.items())))
    return rows


def machine_section(df: pd.DataFrame, name: str, max_slowdown: float) -> dict:
    speed = speed_table(df)
    var = variance.variance_table(df)
    curves = variance.divergence_curves(df)
    rec = (
        recommend(df, speed, var, max_slowdown)
        if not speed.empty
        else Recommendation(None, "no timed trial finished", "", max_slowdown, pd.DataFrame())
    )
    cpu = is_cpu(df)
    header, rows, nkeys = _price_rows(speed, cpu) if not speed.empty else ([], [], 0)
    shown = text.variance_display(var) if not var.empty else pd.DataFrame()
    failed = failures(df)
    if not failed.empty:
        failed = failed.assign(workaround=[workaround(e) or "" for e in failed["error"]])
    busy = busy_count(df)
    return {
        "name": name,
        "cpu": cpu,
        "rec": rec,
        "candidates": _candidates(rec) if not rec.candidates.empty else [],
        "speed": speed,
        "variance": var,
        "curves": curves,
        "price_header": header,
        "price_rows": rows,
        "price_keys": nkeys,
        "variance_header": list(shown.columns),
        "variance_rows": shown.astype(str).values.tolist(),
        "figures": _figures(speed, var, curves) if not speed.empty else [],
        "failure_header": list(failed.columns),
        "failures": failed.astype(str).values.tolist(),
        "audit": _audit_rows(df),
        "explain": _explain_section(df, speed, cpu),
        "busy": f"{busy} trial(s) ran while other processes used the CPU; their times are suspect." if busy else "",
        "detectable": text.detectable_text(speed),
        "host_bound": " ".join(text.host_bound_lines(speed)),
        "env": _env_rows(df),
    }


def build_report(
    paths: list[Path], out_dir: Path | None = None, max_slowdown: float = DEFAULT_MAX_SLOWDOWN
) -> ReportPaths:
    df = results.load(paths)
    run_ids = list(dict.fromkeys(df["run_id"].astype(str)))
    out_dir = Path(out_dir) if out_dir else Path("reports") / run_ids[0]
    df = df.assign(machine=df.apply(machine_name, axis=1))
    machines = [machine_section(g, name, max_slowdown) for name, g in df.groupby("machine", sort=False)]
    context = {
        "title": ", ".join(run_ids),
        "n_records": len(df),
        "sources": [str(p) for p in paths],
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machines": machines,
        "cpu_note": text.cpu_note(text.priced_settings(df)),
        "layout": text.layout_text(df),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / "index.html"
    html.write_text(_template().render(**context), encoding="utf-8")
    md = out_dir / "summary.md"
    md.write_text(markdown_summary(context), encoding="utf-8")
    return ReportPaths(html, md)


def template_env() -> Environment:
    # autoescape: every string from results (workload names, errors, a user model's name) is escaped
    return Environment(loader=PackageLoader("detcost.report", "templates"), autoescape=select_autoescape(["j2"]))


def _template():
    return template_env().get_template("report.html.j2")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def markdown_summary(context: dict) -> str:
    parts = [f"# detcost summary: {context['title']}", ""]
    for m in context["machines"]:
        if len(context["machines"]) > 1:
            parts += [f"## Machine: {m['name']}", ""]
        rec = m["rec"]
        if rec.speed_caveat:
            parts += [
                f"**This run cannot judge speed:** {rec.speed_caveat}. The recommendation rests on "
                "reproducibility alone.",
                "",
            ]
        if m["busy"]:
            parts += [f"**Warning:** {m['busy']}", ""]
        if m["detectable"]:
            parts += [m["detectable"], ""]
        parts += ["## Recommendation", ""]
        if rec.setting:
            parts += [f"**Use `{rec.setting}`**: {rec.reason}.", "", "```python", rec.snippet, "```", ""]
        else:
            parts += [f"No recommendation: {rec.reason}.", ""]
        parts += [f"> {n}" for n in rec.notes] + [""]
        if m["price_rows"]:
            parts += ["## Price", "", _md_table(m["price_header"], [r["cells"] for r in m["price_rows"]]), ""]
            parts += [m["host_bound"], ""] if m["host_bound"] else []
        if m["variance_rows"]:
            parts += ["## Variance", "", _md_table(m["variance_header"], m["variance_rows"]), ""]
        if m["failures"]:
            parts += ["## Failures", "", _md_table(m["failure_header"], m["failures"]), ""]
        parts += ["## Environment", "", _md_table(["", ""], [list(r) for r in m["env"]]), ""]
    return "\n".join(parts)
