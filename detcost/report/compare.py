"""Two runs side by side, as the terminal and an HTML page show them (the comparison
itself is `detcost.derive.compare`)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from detcost.derive.compare import RunDelta
from detcost.report.fmt import fmt, ratio_text
from detcost.report.keys_text import axis_values_text

HEADER = ["workload", "setting", "axes", "A samples/s", "B samples/s", "B time / A [95% CI]", "A price", "B price"]


def display_rows(deltas: list[RunDelta]) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            d.match["workload"],
            d.match["setting"],
            axis_values_text(d.match),
            f"{d.a_samples_per_s:,.1f}",
            f"{d.b_samples_per_s:,.1f}",
            ratio_text(d.b_vs_a) + (" within noise" if d.within_noise else " real"),
            fmt(d.a_price),
            fmt(d.b_price),
        ]
        for d in deltas
    ]
    return HEADER, rows


def missing_text(missing: list[dict]) -> list[str]:
    """The groups found in one run only, one phrase each."""
    return [
        f"{m['workload']}/{m['setting']} at {axis_values_text(m)}, batch {m['batch_size']}, image {m['image_size']} "
        f"(only in {m['only_in']})"
        for m in missing
    ]


def compare_text(deltas: list[RunDelta], missing: list[dict]) -> str:
    header, rows = display_rows(deltas)
    if rows:
        lines = [pd.DataFrame(rows, columns=header).to_string(index=False)]
    else:
        lines = ["no workload x setting ran in both runs at the same axes and sizes (batch, image): nothing to compare"]
    if missing:
        lines.append("only in one run:\n  " + "\n  ".join(missing_text(missing)))
    lines.append(
        "B time / A: B's step time over A's; above 1.00x B is slower (the direction of every price); within noise: "
        "the interval includes 1.00 (the runs share no rounds, so drift between them is in it)"
    )
    return "\n".join(lines)


def write_html(deltas: list[RunDelta], missing: list[dict], names: tuple, machines: tuple, out: Path) -> Path:
    """The comparison as a self-contained HTML page."""
    from detcost.report.build import template_env

    header, rows = display_rows(deltas)
    html = (
        template_env()
        .get_template("compare.html.j2")
        .render(
            a_name=str(names[0]),
            b_name=str(names[1]),
            a_machine=machines[0],
            b_machine=machines[1],
            header=header,
            rows=rows,
            missing=missing_text(missing),
            generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
