"""The gate's decision as a reader sees it: one paragraph (what was judged, the verdict,
each rule's sentence) and its JSON. Every word is read off the `GateDecision`."""

from __future__ import annotations

from detcost.derive.decide import budget_text
from detcost.derive.gate import GateDecision

VERDICT_WORDS = {"pass": "PASS", "fail": "FAIL", "cannot decide": "CANNOT DECIDE"}


def gate_text(d: GateDecision, source: str = "", baseline: str | None = None) -> str:
    """One paragraph: `detcost gate: FAIL for strict (the team config's), ...: <sentences>.`"""
    what = f"{d.setting}" + (f" ({source})" if source else "") if d.setting else "no setting"
    against = f" against the baseline {baseline}" if baseline else " (no baseline)"
    head = (f"detcost gate: {VERDICT_WORDS[d.status]} for {what}, budget {budget_text(d.max_slowdown)}{against}"
            + ("; reproducible results required" if d.require_reproducible else "") + ".")  # fmt: skip
    sentences = [f"[{f.status}] {f.rule}: {f.reason}" + (f" ({f.group})" if f.group else "") + "." for f in
                 d.findings]  # fmt: skip
    return " ".join([head, *sentences])


def gate_json(d: GateDecision, source: str = "", baseline: str | None = None) -> dict:
    return {
        "status": d.status,
        "setting": d.setting,
        "setting_from": source or None,
        "max_slowdown": d.max_slowdown,
        "require_reproducible": d.require_reproducible,
        "baseline": baseline,
        "findings": [f.to_json() for f in d.findings],
        "reason": gate_text(d, source, baseline),
    }
