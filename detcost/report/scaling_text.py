"""The section "DDP against one process": each setting's global samples/s at N ranks over
one process's, from `derive/scaling.py` (every figure is a `Scaling` of the analysis)."""

from __future__ import annotations

from detcost.derive.analysis import MachineAnalysis
from detcost.derive.decide import level_text
from detcost.derive.scaling import Scaling
from detcost.report.fmt import ratio_text
from detcost.report.keys_text import key_cells

TITLE = "DDP against one process"
HEADER = ["setting", "ranks", "speed-up over one process", "efficiency", "repeats", "rank agreement"]


def _yes(v: bool | None, yes: str, no: str) -> str:
    return "-" if v is None else yes if v else no


def _row(s: Scaling, fields: list[str]) -> list[str]:
    return [
        *key_cells(s.key, [f for f in fields if f != "nproc"]), s.setting, str(s.nproc), ratio_text(s.speedup),
        f"{s.efficiency:.2f}", _yes(s.reproducible, "bitwise identical", "differ"), _yes(s.ranks_agree, "agree",
        "DISAGREE"),
    ]  # fmt: skip


def scaling_table(m: MachineAnalysis) -> tuple[list[str], list[list[str]]]:
    fields = [f for f in m.fields if f != "nproc"]
    return ["workload", *fields, *HEADER], [_row(s, m.fields) for s in m.scaling]


def scaling_intro(m: MachineAnalysis) -> str:
    level = level_text(min(s.level for s in m.scaling))
    text = (f"How many times one process's samples/s the N ranks of a DDP job give together (global samples/s), "
            f"paired within rounds, {level} interval over the rounds; efficiency: the speed-up over N (1.00 is perfect "
            "scaling); repeats: whether the job's repeats ended bitwise identical; rank agreement: whether every rank "
            "ended with the same parameters.")  # fmt: skip
    if m.cpu:
        text += (" On the CPU the ranks share this machine's cores, so the speed-up says what the cores held, not "
                 "what N GPUs would give.")  # fmt: skip
    return text


def scaling_section(m: MachineAnalysis) -> dict | None:
    """The section's context for the HTML and the Markdown; None without DDP at two ranks or more."""
    if not m.scaling:
        return None
    header, rows = scaling_table(m)
    return {"title": TITLE, "intro": scaling_intro(m), "header": header, "rows": rows}


def scaling_text(m: MachineAnalysis) -> list[str]:
    """The section for a terminal: its title and legend, then the table."""
    section = scaling_section(m)
    if section is None:
        return []
    import pandas as pd

    frame = pd.DataFrame(section["rows"], columns=section["header"])
    return ["", f"{section['title']}:", frame.to_string(index=False), section["intro"]]


def scaling_json(m: MachineAnalysis) -> list[dict]:
    return [
        {**s.key.shown(m.fields), "setting": s.setting, "nproc": s.nproc, "speedup": s.speedup.ratio,
         "speedup_lo": s.speedup.lo, "speedup_hi": s.speedup.hi, "rounds": s.speedup.rounds,
         "efficiency": s.efficiency, "level": s.level, "reproducible": s.reproducible, "ranks_agree": s.ranks_agree}
        for s in m.scaling
    ]  # fmt: skip
