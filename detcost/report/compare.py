"""Two runs side by side, as the terminal and an HTML page show them (the comparison
itself is `detcost.derive.compare`)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from detcost import results
from detcost.derive.compare import compare_runs
from detcost.report.text import axis_values_text

HEADER = ["workload", "setting", "axes", "A samples/s", "B samples/s", "B time / A [95% CI]", "A price", "B price"]


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            r["workload"],
            r["setting"],
            axis_values_text(r),
            f"{r['a_samples_per_s']:,.1f}",
            f"{r['b_samples_per_s']:,.1f}",
            f"{r['b_vs_a']:.2f}x [{r['b_vs_a_lo']:.2f}, {r['b_vs_a_hi']:.2f}]"
            + (" within noise" if r["within_noise"] else ""),
            f"{r['a_price']:.2f}",
            f"{r['b_price']:.2f}",
        ]
        for r in table.to_dict(orient="records")
    ]
    return HEADER, rows


def missing_text(missing: list[dict]) -> list[str]:
    """The groups found in one run only, one phrase each."""
    return [
        f"{m['workload']}/{m['setting']} at {axis_values_text(m)}, batch {m['batch_size']}, image {m['image_size']} "
        f"(only in {m['only_in']})"
        for m in missing
    ]


def compare_text(table: pd.DataFrame, missing: list[dict]) -> str:
    header, rows = display_rows(table)
    if rows:
        lines = [pd.DataFrame(rows, columns=header).to_string(index=False)]
    else:
        lines = ["no workload x setting ran in both runs at the same axes and sizes (batch, image): nothing to compare"]
    if missing:
        lines.append("only in one run:\n  " + "\n  ".join(missing_text(missing)))
    lines.append("B time / A: B's step time over A's; above 1.00x B is slower (the direction of every price)")
    return "\n".join(lines)


def write_html(a_path: Path, b_path: Path, out: Path) -> tuple[pd.DataFrame, list[dict], Path]:
    """Compare two runs and write the comparison as a self-contained HTML page."""
    from detcost.report.build import machine_name, template_env

    table, missing = compare_runs(a_path, b_path)
    header, rows = display_rows(table)
    machines = [machine_name(results.load(p).iloc[0]) for p in (a_path, b_path)]
    html = (
        template_env()
        .get_template("compare.html.j2")
        .render(
            a_name=str(a_path),
            b_name=str(b_path),
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
    return table, missing, out
