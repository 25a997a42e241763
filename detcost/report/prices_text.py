"""Prices as a reader sees them: the price matrix (workloads down, settings across, each
cell the price with its interval and its verdict), the detailed price table, the noise
floor and the sentences around them. Every word here is read off an analysis's `Price`
rows: a verdict is the row's own, never recomputed."""

from __future__ import annotations

import math

from detcost.derive.analysis import MachineAnalysis
from detcost.derive.decide import level_text
from detcost.derive.keys import AA_LABEL, label_order
from detcost.derive.prices import Price, Verdict, detectable_by_workload
from detcost.report.fmt import fmt, interval_text, percent_text, ratio_text, si
from detcost.report.keys_text import axis_values_text, key_cells
from detcost.settings import REFERENCE
from detcost.stats import LEVEL

HOST_BOUND_NOTE = "host-bound: the price is understated"
TEAM_MARK = " (team)"  # beside the team config's setting in every table


def team_name(setting: str, team: str | None) -> str:
    """A setting's name as a table shows it: the team's own marked `strict_nofill (team)`."""
    return setting + TEAM_MARK if team and setting == team else setting


def price_cell(p: Price, setting: str | None = None, pooled: bool = True) -> str:
    """One cell: `1.05 [1.02, 1.08] real`, `1.00 (fastest)`, and what else the row says
    (`pooled`: which settings it prices as one, where no other column says so)."""
    setting = setting or p.label
    if p.verdict == Verdict.FASTEST:
        text = "1.00 (fastest)"
    else:
        interval = ratio_text(p.price)
        text = f"{interval} {p.verdict}" + (f" ({p.why})" if p.why and p.why not in interval else "")
    if p.pooled and pooled:
        text += f"; {len(p.members)} settings priced as one" if setting == p.label else f"; as one with {p.label}"
    if p.flag_reacts:
        text += "; the CPU reacts to this cuDNN flag"
    if p.host_bound and not p.is_aa:
        text += f" ({HOST_BOUND_NOTE})"
    return text


# A verdict as one mark, for a terminal's matrix (the legend says each).
VERDICT_MARKS = {
    Verdict.REAL: "real", Verdict.WITHIN_NOISE: "~", Verdict.UNCONFIRMED: "?", Verdict.NOISE_FLOOR: "A/A",
    Verdict.FASTEST: "",
}  # fmt: skip


def compact_cell(p: Price, setting: str | None = None) -> str:
    """A terminal's cell: `1.05 [1.02,1.08] real`, `1.00 fastest`, `= default` for a
    setting priced as one with another; `!` where the CPU reacts to a cuDNN flag and
    `(host-bound)` where the price is understated."""
    setting = setting or p.label
    if p.pooled and setting != p.label:
        return f"= {p.label}"
    if p.verdict == Verdict.FASTEST:
        text = "1.00 fastest"
    else:
        r = p.price
        text = f"{interval_text(r.ratio, r.lo, r.hi, compact=True)} {VERDICT_MARKS[p.verdict]}".rstrip()
    if p.flag_reacts:
        text += " !"
    if p.host_bound and not p.is_aa:
        text += " (host-bound)"
    return text


def matrix_cell(p: Price, setting: str, notes: list[str]) -> str:
    """The report's matrix cell: the price, its interval and verdict in the cell of the row's
    label; `= default` in the cells of the settings it prices as one with it (the legend
    says what that means, once); the verdict's reason a numbered note under the table, each
    reason written once (`notes`, appended to here); `!` where the CPU reacts to a cuDNN flag."""
    if p.pooled and setting != p.label:
        return f"= {p.label}"
    if p.verdict == Verdict.FASTEST:
        text = "1.00 (fastest)"
    else:
        interval = ratio_text(p.price)
        text = f"{interval} {p.verdict}"
        if p.why and p.why not in interval:
            if p.why not in notes:
                notes.append(p.why)
            text += f" [{notes.index(p.why) + 1}]"
    if p.flag_reacts:
        text += " !"
    if p.host_bound and not p.is_aa:
        text += " (host-bound)"
    return text


def report_matrix(m: MachineAnalysis, team: str | None = None) -> tuple[list[str], list[dict], list[str]]:
    """The report's price matrix (`price_matrix` with `matrix_cell`s) and what is written
    once under it: the marks' legend, then the verdicts' reasons, numbered."""
    notes: list[str] = []
    header, rows = price_matrix(m, team, cell=lambda p, s: matrix_cell(p, s, notes))
    return header, rows, matrix_marks(m.prices) + [f"[{i}] {why}" for i, why in enumerate(notes, 1)]


def matrix_marks(prices: list[Price]) -> list[str]:
    """What the matrix's marks mean, each said once: `= default`, `!`."""
    marks = [
        f"= {head}: priced as one with {head}, in {head}'s cell (on the CPU these settings' cuDNN flags change no "
        "kernel: the note under the recommendation)"
        for head in dict.fromkeys(p.label for p in prices if p.pooled)
    ]
    if any(p.flag_reacts for p in prices):
        marks.append("!: a cuDNN-only setting the CPU reacts to, priced on its own as measured (the note under the "
                     "recommendation gives its ratio to default)")  # fmt: skip
    return marks


def matrix_columns(prices: list[Price]) -> list[str]:
    """The settings a matrix shows (every setting some row prices), then the A/A control."""
    return label_order({m for p in prices if not p.is_aa for m in p.members} | {p.label for p in prices if p.is_aa})


def price_matrix(m: MachineAnalysis, team: str | None = None, cell=price_cell) -> tuple[list[str], list[dict]]:
    """Workloads (and the fields that vary) down, settings across, the `team`'s setting
    marked, each cell written by `cell(price, setting)`. Returns the key columns' names and
    one row per group: {"head": [...], "cells": [(text, verdict)]}."""
    columns = matrix_columns(m.prices)
    groups: dict = {}
    for p in m.prices:
        groups.setdefault(p.key, []).append(p)
    rows = []
    for key, group in groups.items():
        cells = []
        for s in columns:
            p = next((q for q in group if (q.is_aa if s == AA_LABEL else (q.prices(s) and not q.is_aa))), None)
            cells.append(("-", "") if p is None else (cell(p, s), str(p.verdict)))
        rows.append({"head": key_cells(key, m.fields), "cells": cells})
    return ["workload", *m.fields, *(team_name(c, team) for c in columns)], rows


def detail_header(level: str = "95%") -> list[str]:
    """The full price table's columns; `level` is its intervals' (95%, or --decide's)."""
    return ["setting", "samples/s", "CV of samples/s across the row's trials", f"price vs fastest [{level} CI]",
            f"time vs default's own trials [{level} CI]", "cold start", "peak memory", "achieved FLOP/s"]  # fmt: skip


# What the full price table's two ratios and its CV measure: the same estimator (within-
# round ratios of typical step times), against different trials, so where the fastest is a
# pooled label they differ.
DETAIL_CAPTION = (
    "price vs fastest: step time over the group's fastest label's, within rounds (on the CPU that label may be "
    "default priced as one with the cuDNN-only settings, which run its kernels); time vs default's own trials: "
    "the same ratio against default's trials alone, so the two agree where the fastest is default by itself; "
    "CV: the spread of samples/s across the row's trials (a pooled row's mixes its settings; the noise floor line "
    "gives default's own)."
)


def levels_text(prices: list[Price]) -> str:
    """The level of a table's intervals: 95%, or under --decide the lower per-look level."""
    return level_text(min((p.level for p in prices), default=LEVEL))


def price_details(m: MachineAnalysis, team: str | None = None) -> tuple[list[str], list[dict], int]:
    """The full price table: one row per group x label, every figure measured, the
    `team`'s setting marked."""
    header = ["workload", *m.fields, *detail_header(levels_text(m.prices))]
    rows = []
    for p in m.prices:
        busy = ""
        if p.busy_trials:
            kept = "all kept: no quiet trial was left" if p.busy_trials_priced else "left out of this figure"
            busy = f" ({p.busy_trials} trial(s) on a busy machine, {kept})"
        others = ", ".join(team_name(x, team) for x in p.members if x != p.label)
        label = team_name(p.label, team) + (f" (+ {others})" if p.pooled else "")
        cells = [
            *key_cells(p.key, m.fields), label, f"{p.samples_per_s:,.1f}{busy}", fmt(p.samples_per_s_cv, ".1%"),
            price_cell(p, pooled=False), _vs_default_cell(p), fmt(p.cold_start_s, ".3f") + " s",
            si(p.peak_memory_bytes, "B"), si(p.achieved_flops, "FLOP/s"),
        ]  # fmt: skip
        rows.append({"cls": "aa" if p.is_aa else "", "cells": cells, "verdict": str(p.verdict)})
    return header, rows, len(m.fields) + 2


def _vs_default_cell(p: Price) -> str:
    """`default` against itself is 1 by definition, not a measured interval of zero width."""
    return "1.00 (default itself)" if p.label == REFERENCE else ratio_text(p.vs_default)


def detectable_text(prices: list[Price]) -> str:
    """One sentence: the smallest price each workload's run can tell apart from noise."""
    per = detectable_by_workload(prices)
    if not per:
        return ""
    parts = [f"{w} {percent_text(d)}" for w, d in per.items()]
    return (
        "Smallest price this run can detect (how far its A/A control may stray from 1.00; a price closer to 1.00 "
        "than this is not told apart from noise, however narrow its own interval): " + ", ".join(parts) + "."
    )


def host_bound_lines(prices: list[Price]) -> list[str]:
    """One sentence naming the host-bound prices and how busy their kernels kept the GPU."""
    per: dict[str, list[str]] = {}
    for p in prices:
        if p.host_bound and not p.is_aa:
            per.setdefault(p.key.workload, []).append(f"{p.label} {p.kernel_busy_fraction:.0%}")
    if not per:
        return []
    return [
        f"{HOST_BOUND_NOTE} where the GPU waited on the host: kernels kept it busy for only this share of a "
        "step, so kernel launches, not cuDNN's algorithms, set the pace (a larger batch or image shows the "
        "price): " + "; ".join(f"{w} " + ", ".join(v) for w, v in per.items()) + "."
    ]


def noise_lines(m: MachineAnalysis) -> list[str]:
    """One line per A/A control: the noise floor, and a warning where it left its interval."""
    lines = []
    for aa in m.aa:
        shown = axis_values_text(aa.key.shown(m.fields))
        where = aa.key.workload if shown == "-" else f"{aa.key.workload}, {shown}"
        cv = f"; CV of default's samples/s across repeats {aa.default_cv:.1%}" if math.isfinite(aa.default_cv) else ""
        lines.append(
            f"noise floor ({where}): default vs itself {ratio_text(aa.price)}{cv} - differences inside this are noise"
        )
        if aa.strayed:
            lines.append(
                f"  warning: on {where} default differed from itself beyond its 95% interval (by chance on 1 "
                "workload in 20; more often, the machine was not steady): prices there that exclude 1.00 are "
                "marked unconfirmed"
            )
        if aa.label_bias > 0:
            lines.append(
                f"  it strayed further than its rounds allow: every price's interval on {where} also takes in a "
                f"fixed effect of its label of {math.expm1(aa.label_bias):.1%} (one standard deviation, added to "
                "the rounds' own spread), which this run's prices may carry too"
            )
    return lines


def layout_text(varied: bool) -> str:
    """How the run varied its trials' memory layout, in one sentence."""
    if varied:
        return (
            "Each round's trials forked from a server process of their own, and every trial first took a random "
            "amount of heap and environment, so the memory layout changed from round to round and its effect on "
            "a label's speed shows in the intervals instead of biasing them (docs/layout-bias.md)."
        )
    return (
        "The trials did not vary their memory layout (--layout fixed, or a detcost before it did): a label may "
        "carry a bias of its layout for the whole run that no interval from rounds can see (docs/layout-bias.md)."
    )
