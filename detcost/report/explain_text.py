"""The attribution and the audit as a reader sees them: one headline per workload x
setting with its op table, the audit's findings a few lines per workload."""

from __future__ import annotations

import pandas as pd

from detcost.derive.analysis import AuditFinding
from detcost.derive.attribution import MIN_CALL_CHANGE

CPU_RANKING_NOTE = (
    "On the CPU, self times of single ops are unreliable (first-touch page faults move between ops): ops are "
    "ranked by the change in call count, and 'whole step' is the change in the timed trials' median step; an op "
    "whose calls did not change is listed only when its self time moved by more than 3% of the step, as a hint."
)


def headline(rows: pd.DataFrame, cuda: bool) -> str:
    """One sentence per workload x setting: '+309 aten::fill_ calls/step (+1.2 ms self CPU)'."""
    first = rows.iloc[0]
    step = f"; whole step {first.delta_step_ms:+.2f} ms" if pd.notna(first.delta_step_ms) else ""
    lead = f"{first.setting} vs {first.reference} on {first.workload}: "
    if first.op is None or pd.isna(first.op):
        return lead + f"no op's {'time' if cuda else 'call count'} changed" + step
    parts = []
    for r in rows.head(3).itertuples():
        ms = r.delta_ms
        where = ("device" if r.kind == "kernel" else "host") if cuda else "CPU"
        if abs(r.delta_calls) >= MIN_CALL_CHANGE:
            parts.append(f"{r.delta_calls:+.0f} {r.op} calls/step ({ms:+.2f} ms self {where})")
        else:
            parts.append(f"{r.op} {ms:+.2f} ms self {where}" + ("" if cuda else " (same calls; indicative)"))
    return lead + ", ".join(parts) + step


def explain_text(table: pd.DataFrame, cpu: bool) -> str:
    """The attribution, one headline and its op table per workload x setting."""
    blocks = ["note: " + CPU_RANKING_NOTE + "\n"] if cpu else []
    for _, rows in table.groupby(["workload", "setting"], sort=False):
        block = [headline(rows, cuda=not cpu)]
        cols = ["op", "kind", "delta_calls", "delta_self_cpu_ms"] + ([] if cpu else ["delta_self_device_ms"])
        shown = rows.dropna(subset=["op"])[cols].copy()
        if len(shown):
            shown["delta_calls"] = shown["delta_calls"].map(lambda v: f"{v:+.0f}" if v == round(v) else f"{v:+.2f}")
            block.append(shown.to_string(index=False, float_format="{:+.3f}".format))
        blocks.append("\n".join(block) + "\n")
    return "\n".join(blocks)


def audit_cells(audit: AuditFinding) -> tuple[str, str]:
    """An audit's findings as (alerts, strict's verdict), the way the report and CLI say it."""
    alerts = "; ".join(f"{a.op} x{a.count} in {', '.join(a.modules)}" for a in audit.alerts)
    strict = f"fails: {audit.strict_error}" if audit.strict_fails else "runs"
    return alerts or "none found", strict


def audit_text(findings: list[AuditFinding]) -> str:
    """The audit trials' findings, a few lines per workload."""
    lines = []
    for a in findings:
        if not a.ok:
            lines.append(f"{a.workload}: the audit itself failed: {a.error}")
            continue
        n = len(a.alerts)
        found = f"{n} op(s) without a deterministic implementation" if n else "no alerts"
        lines.append(f"{a.workload} on {a.device}: {found} in {a.steps} training steps")
        alerts, strict = audit_cells(a)
        lines += [f"  alerts: {alerts}", f"  strict {strict}"]
        if not n and a.device == "cpu":
            lines.append("  (on the CPU torch raises few such alerts; the CUDA kernels are where most live)")
    return "\n".join(lines)
