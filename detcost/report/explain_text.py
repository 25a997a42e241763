"""The attribution and the audit as a reader sees them: one headline per workload x
setting with its op table, the audit's findings a few lines per workload."""

from __future__ import annotations

import pandas as pd

from detcost.derive.analysis import AuditFinding, MachineAnalysis
from detcost.derive.attribution import MIN_CALL_CHANGE, TOP_OPS
from detcost.derive.prices import Price
from detcost.report.fmt import ratio_text, si

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


def audit_line(findings: list[AuditFinding]) -> str:
    """One sentence where every audit found nothing and strict ran everywhere (the CPU's
    usual finding), instead of a table of "none found, runs"; "" where there is a finding."""
    ok = [a for a in findings if a.ok]
    if not ok or any(a.alerts or a.strict_fails for a in ok):
        return ""
    cpu = all(a.device.startswith("cpu") for a in ok)
    where = " (on the CPU torch raises few such alerts; most live in CUDA kernels)" if cpu else ""
    return (f"The audit found no op without a deterministic implementation on any of its {len(ok)} workload(s), "
            f"and strict ran on each{where}.")  # fmt: skip


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


# ---- the report's explanation: what a reader can act on ------------------------------

SHOWN_OPS = 3  # ops shown for each workload where a setting's price stands apart; the rest fold
ONE_TRIAL = (
    "An op's change comes from one profiled trial and has no interval of its own; the price and interval beside "
    "it are the timed trials'."
)


def price_words(price: Price | None) -> str:
    """`1.11 [1.04, 1.18] x strict_nofill's step, unconfirmed`: a price as its row says it."""
    if price is None:
        return "not priced"
    return f"{ratio_text(price.price)} x {price.price_vs}'s step, {price.verdict}"


def _step(first) -> str:
    step = f"{first.delta_step_ms:+.2f} ms" if pd.notna(first.delta_step_ms) else "-"
    return f"{step} vs {first.reference}"


def op_header(cuda: bool) -> list[str]:
    """An op table's columns; the CPU's have no device time and every row is an op."""
    device = ["kind", "Δ calls/step", "Δ self CPU ms/step", "Δ self device ms/step"] if cuda else [
        "Δ calls/step", "Δ self CPU ms/step"]  # fmt: skip
    return ["op / kernel" if cuda else "op", *device, "Δ CPU memory/step"]


def op_cells(rows: pd.DataFrame, cuda: bool) -> list[list[str]]:
    device = (lambda r: [r.kind, f"{r.delta_calls:+.1f}", f"{r.delta_self_cpu_ms:+.3f}",
                         f"{r.delta_self_device_ms:+.3f}"]) if cuda else (
        lambda r: [f"{r.delta_calls:+.1f}", f"{r.delta_self_cpu_ms:+.3f}"])  # fmt: skip
    return [[r.op, *device(r), si(r.delta_cpu_memory_bytes, "B")] for r in rows.itertuples()]


def same_kernels_line(same: dict[str, list[str]], workloads: list[str], device: str) -> str:
    """One sentence for the settings whose flags change no kernel on this device (priced as
    one with another setting on the workloads named), instead of an op table each."""
    by_workloads: dict[tuple, list[str]] = {}
    for setting, where in same.items():
        by_workloads.setdefault(tuple(where), []).append(setting)
    parts = [
        ", ".join(settings) + (" on every workload" if list(where) == workloads else " on " + ", ".join(where))
        for where, settings in by_workloads.items()
    ]
    return (f"{'; '.join(parts)}: their flags change no kernel {device}, so each is priced as one with "
            "default and has no op table (what its profile differs by is the profiler's noise).")  # fmt: skip


def explain_groups(m: MachineAnalysis) -> dict | None:
    """The explanation, read off the analysis's rows. For each setting whose price stands
    apart from the fastest beyond noise on some workload (`Price.beyond_noise`): those
    workloads, each with its price and first SHOWN_OPS ops. One line for the settings that
    change no kernel on this device (priced as one with another). Folded: every other
    profiled workload x setting, and the shown ones' further ops. None without profiles."""
    attr = m.attribution
    if attr.empty:
        return None
    attr = attr.groupby(["workload", "setting"], sort=False).head(TOP_OPS)
    cuda = not m.cpu
    unchanged = f"no op's {'time' if cuda else 'call count'} changed"
    shown: dict[str, list[dict]] = {}
    folded, same = [], {}
    for (workload, setting), rows in attr.groupby(["workload", "setting"], sort=False):
        price = m.price_of(workload, setting)
        if price is not None and price.pooled and price.label != setting:
            same.setdefault(setting, []).append(workload)
            continue
        ops, first = rows.dropna(subset=["op"]), rows.iloc[0]
        title = f"{setting} on {workload}: {price_words(price)}; whole step {_step(first)}"
        if price is not None and price.beyond_noise:
            cells = op_cells(ops.head(SHOWN_OPS), cuda)
            shown.setdefault(setting, []).append({"workload": workload, "price": price_words(price),
                                                  "step": _step(first), "ops": cells or [[unchanged]],
                                                  "pair": (workload, setting)})  # fmt: skip
            if len(ops) > SHOWN_OPS:
                folded.append({"title": f"{title}: its ops after the first {SHOWN_OPS}",
                               "rows": op_cells(ops.iloc[SHOWN_OPS:], cuda), "none": "", "further": True})  # fmt: skip
        else:
            folded.append({"title": title, "rows": op_cells(ops, cuda), "none": "" if len(ops) else unchanged,
                           "further": False})  # fmt: skip
    workloads = list(dict.fromkeys(attr["workload"]))
    return {
        "header": op_header(cuda),
        "shown": [{"setting": s, "workloads": groups} for s, groups in shown.items()],
        "folded": folded,
        "folded_summary": _folded_summary(folded),
        "same_kernels": same_kernels_line(same, workloads, "on the CPU" if m.cpu else "on this device") if same else "",
    }


def _folded_summary(folded: list[dict]) -> str:
    """What the explanation's fold holds: the other pairs, and the shown tables' further ops."""
    others = sum(not g["further"] for g in folded)
    parts = [f"the other {others} profiled workload × setting pair(s), whose prices do not stand apart from the "
             "fastest beyond noise"] if others else []  # fmt: skip
    parts += ["the further ops of the tables above"] if others < len(folded) else []
    return "Op changes of " + " and ".join(parts)
