"""Machine kinds as a reader sees them: the section "Price per machine kind" (each setting's
price on each kind, side by side, where the records hold several kinds) and, within one
kind that ran on several GPUs (or hosts), the table "spread between N GPUs of <kind>". Every
figure is a `Price` of the analysis (`derive/kinds.py`); nothing is priced here."""

from __future__ import annotations

from detcost.derive.analysis import Analysis, MachineAnalysis
from detcost.derive.kinds import AcrossKinds
from detcost.derive.prices import Price, Verdict
from detcost.report.fmt import fmt, ratio_text
from detcost.report.keys_text import key_cells

KINDS_TITLE = "Price per machine kind"
MISSING = "—"  # a kind that did not run the setting


def kind_cell(p: Price | None, setting: str) -> str:
    """`1.05 [1.02, 1.08] real`, `1.00 (fastest)`, `—` where the kind did not run it."""
    if p is None:
        return MISSING
    text = "1.00 (fastest)" if p.verdict == Verdict.FASTEST else f"{ratio_text(p.price)} {p.verdict}"
    return text + (f" (as one with {p.label})" if p.pooled and setting != p.label else "")


def _unit_cell(p: Price) -> str:
    return "1.00 (fastest)" if p.verdict == Verdict.FASTEST else ratio_text(p.price)


def kinds_table(ak: AcrossKinds) -> tuple[list[str], list[list[str]]]:
    header = ["workload", *ak.fields, "setting", *ak.kinds]
    rows = [[*key_cells(r.key, ak.fields), r.setting, *(kind_cell(p, r.setting) for p in r.prices)] for r in ak.rows]
    return header, rows


def kinds_intro(ak: AcrossKinds) -> str:
    return (
        f"Each setting's price on each of the {len(ak.kinds)} machine kinds these records ran on (a kind: on CUDA the "
        "GPU model, driver, torch and cuDNN; on the CPU the CPU model, its cores and torch): step time over the "
        "fastest setting's on that kind, with its interval across that kind's rounds, and the verdict. Rounds pool "
        f"across the GPUs and hosts of one kind, never across kinds; {MISSING}: the kind did not run the setting."
    )


def kinds_section(analysis: Analysis) -> dict | None:
    """The section's context for the HTML and the Markdown; None with one kind."""
    ak = analysis.across_kinds
    if ak is None:
        return None
    header, rows = kinds_table(ak)
    return {"title": KINDS_TITLE, "intro": kinds_intro(ak), "header": header, "rows": rows}


def _unit_word(m: MachineAnalysis) -> str:
    return "hosts" if m.cpu else "GPUs"


def units_priced(m: MachineAnalysis) -> list[str]:
    """The units that priced something, in the kind's order."""
    seen = {u.unit for s in m.unit_spreads for u in s.units}
    return [u for u in m.units if u in seen]


def unit_spread_table(m: MachineAnalysis) -> tuple[list[str], list[list[str]]]:
    units = units_priced(m)
    header = ["workload", *m.fields, "setting", "pooled", *units, "max/min"]
    rows = []
    for s in m.unit_spreads:
        own = {u.unit: u.price for u in s.units}
        cells = [_unit_cell(own[u]) if u in own else MISSING for u in units]
        rows.append([*key_cells(s.pooled.key, m.fields), s.pooled.label, _unit_cell(s.pooled), *cells,
                     fmt(s.ratio)])  # fmt: skip
    return header, rows


def unit_spread_title(m: MachineAnalysis) -> str:
    return f"Spread between {len(units_priced(m))} {_unit_word(m)} of {m.machine}"


def unit_spread_section(m: MachineAnalysis) -> dict | None:
    """The table's context for the HTML and the Markdown; None where the kind ran on one unit."""
    if not m.unit_spreads:
        return None
    header, rows = unit_spread_table(m)
    word = _unit_word(m)
    intro = (
        f"Each price as the pooled rounds of every {word[:-1]} of this kind give it, and as each {word[:-1]}'s own "
        "rounds give it (each against its own fastest setting, with its interval); max/min: the largest of those "
        f"prices over the smallest (1.00: the {word} agree)."
    )
    return {"title": unit_spread_title(m), "intro": intro, "header": header, "rows": rows}


def _frame_text(section: dict) -> list[str]:
    import pandas as pd

    frame = pd.DataFrame(section["rows"], columns=section["header"])
    return ["", f"{section['title']}:", frame.to_string(index=False), section["intro"]]


def kinds_text(analysis: Analysis) -> list[str]:
    """The side-by-side table for a terminal; [] with one kind."""
    section = kinds_section(analysis)
    return _frame_text(section) if section else []


def unit_spread_text(m: MachineAnalysis) -> list[str]:
    section = unit_spread_section(m)
    return _frame_text(section) if section else []


def kinds_json(analysis: Analysis) -> list[dict]:
    return analysis.across_kinds.frame_rows() if analysis.across_kinds else []


def unit_spread_json(m: MachineAnalysis) -> list[dict]:
    return [row for s in m.unit_spreads for row in s.rows(m.fields)]
