"""Two runs side by side: the same price table for each, and B's speed relative to A."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from detcost import results
from detcost.report.tables import kept_trials, ok_trials, speed_table
from detcost.timing import bootstrap_ratio

# What must match for two runs' trials to be compared (steps may differ; sizes may not).
MATCH = ("workload", "setting", "threads", "memory_format", "vary", "batch_size", "image_size")


def compare_runs(a_path: Path, b_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Per workload x setting (x axes) in both runs: samples/s of each, and B's speed
    relative to A (A's step time / B's) with a 95% bootstrap interval."""
    a_df, b_df = results.load(a_path), results.load(b_path)
    a_speed, b_speed = speed_table(a_df), speed_table(b_df)
    a_groups = dict(list(ok_trials(a_df).groupby(list(MATCH), sort=True)))
    b_groups = dict(list(ok_trials(b_df).groupby(list(MATCH), sort=True)))
    rows, missing = [], []
    for key in sorted(set(a_groups) | set(b_groups), key=str):
        if key not in a_groups or key not in b_groups:
            k = dict(zip(MATCH, key))
            side = "A" if key in a_groups else "B"
            missing.append(
                f"{k['workload']}/{k['setting']} at {k['threads']} threads, batch {k['batch_size']}, "
                f"image {k['image_size']} (only in {side})"
            )
            continue
        a, b = a_groups[key], b_groups[key]
        (a_steps, strata), (b_steps, _) = kept_trials(a), kept_trials(b)
        ratio, lo, hi = bootstrap_ratio(a_steps, b_steps, strata=strata)
        rows.append(
            {
                **dict(zip(MATCH, key)),
                "a_samples_per_s": float(a["samples_per_s"].median()),
                "b_samples_per_s": float(b["samples_per_s"].median()),
                "b_vs_a": ratio,
                "b_vs_a_lo": lo,
                "b_vs_a_hi": hi,
                "within_noise": bool(lo <= 1 <= hi),
                "a_price": _price(a_speed, key),
                "b_price": _price(b_speed, key),
            }
        )
    return pd.DataFrame(rows), missing


def _price(speed: pd.DataFrame, key: tuple) -> float:
    """The price of this key's setting within its own run's speed table."""
    if speed.empty:
        return float("nan")
    mask = pd.Series(True, index=speed.index)
    for col, value in zip(MATCH, key):
        if col in speed:
            mask &= speed[col] == value
    row = speed[mask]
    return float(row["price"].iloc[0]) if len(row) else float("nan")


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["workload", "setting", "threads", "A samples/s", "B samples/s", "B vs A [95% CI]", "A price", "B price"]
    rows = [
        [
            r.workload,
            r.setting,
            str(r.threads),
            f"{r.a_samples_per_s:,.1f}",
            f"{r.b_samples_per_s:,.1f}",
            f"{r.b_vs_a:.2f}x [{r.b_vs_a_lo:.2f}, {r.b_vs_a_hi:.2f}]" + (" within noise" if r.within_noise else ""),
            f"{r.a_price:.2f}",
            f"{r.b_price:.2f}",
        ]
        for r in table.itertuples()
    ]
    return header, rows


def write_html(table: pd.DataFrame, missing: list[str], a_path: Path, b_path: Path, out: Path) -> Path:
    from detcost.report.build import machine_name, template_env

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
            missing=missing,
            generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
