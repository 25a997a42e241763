"""The report's section "What your framework's switch costs and buys", and the snippet's
forms as a reader sees them. Every figure is a row of the analysis (`derive/frameworks.py`):
a price cell reads as the price matrix's, a verdict is the row's own."""

from __future__ import annotations

from detcost.derive.analysis import MachineAnalysis
from detcost.derive.frameworks import SwitchVerdict
from detcost.report.keys_text import key_cells
from detcost.report.prices_text import price_cell
from detcost.settings import FRAMEWORKS
from detcost.snippets import SNIPPET_FORMS

TITLE = "What your framework's switch costs and buys"
HEADER = ["switch", "replicates", "price", "repeats", "detcost's cheapest as reproducible", "sets what no determinism "
          "needs", "leaves out"]  # fmt: skip


def _repeats(v: SwitchVerdict) -> str:
    return "-" if v.bitwise is None else "bitwise identical" if v.bitwise else "differ"


def _price(v: SwitchVerdict) -> str:
    text = price_cell(v.price, v.switch) if v.price else "-"
    return text + (f" (did not finish: {v.failed})" if v.failed else "")


def _equivalent(v: SwitchVerdict) -> str:
    if v.equivalent is None or v.equivalent_price is None:
        return "none in this run"
    return f"{v.equivalent}: {price_cell(v.equivalent_price, v.equivalent)}"


def frameworks_table(m: MachineAnalysis) -> tuple[list[str], list[list[str]]]:
    """The section's table: one row per switch and group."""
    header = ["workload", *m.fields, *HEADER]
    rows = [
        [*key_cells(v.key, m.fields), v.switch, v.call, _price(v),
         _repeats(v), _equivalent(v), "; ".join(v.needless) or "-", "; ".join(v.missing) or "-"]
        for v in m.frameworks
    ]  # fmt: skip
    return header, rows


def frameworks_intro(m: MachineAnalysis) -> str:
    """What the table shows, and on the CPU which switches run the same kernels as strict."""
    text = (
        "Each framework switch this run priced, with the flags and environment its source sets (the table of "
        "framework switches in detcost's docs/settings.md cites the version read), beside detcost's own setting "
        "that is at least as reproducible (bitwise identical repeats where the switch's were) for the lowest "
        "price; prices whose intervals overlap tie, and fewer changes from default win."
    )
    if m.cpu:
        same = sorted({v.switch for v in m.frameworks if FRAMEWORKS[v.switch].deterministic_algorithms})
        cudnn = sorted({v.switch for v in m.frameworks if FRAMEWORKS[v.switch].cudnn_only})
        text += " On the CPU the cuDNN flags, CUBLAS_WORKSPACE_CONFIG and CUDA_LAUNCH_BLOCKING change nothing"
        text += f": {', '.join(same)} run strict's kernels here" if same else ""
        text += f"; {', '.join(cudnn)} run default's (priced as one with it)" if cudnn else ""
        text += ". What the switches differ in on a GPU needs a GPU run to price."
    return text


def frameworks_section(m: MachineAnalysis) -> dict | None:
    """The section's context for the HTML and the Markdown; None when the run has no switch."""
    if not m.frameworks:
        return None
    header, rows = frameworks_table(m)
    return {"title": TITLE, "intro": frameworks_intro(m), "header": header, "rows": rows}


def snippet_forms(forms: dict[str, str]) -> list[dict]:
    """The recommendation's snippet in each form, titled, in `SNIPPET_FORMS`' order."""
    return [{"key": k, "title": title, "code": forms[k]} for k, title in SNIPPET_FORMS.items() if forms.get(k)]
