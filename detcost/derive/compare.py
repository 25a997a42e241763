"""Two runs side by side: the same price table for each, and B's speed relative to A."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from detcost import axes, results
from detcost.derive.frame import ok_trials
from detcost.derive.prices import kept_trials, speed_table
from detcost.stats import bootstrap_ratio


def match_fields() -> tuple[str, ...]:
    """What must match for two runs' trials to be compared: the workload, the setting,
    every axis and the sizes (steps may differ)."""
    return ("workload", "setting", *axes.names(), "batch_size", "image_size")


def compare_runs(a_path: Path, b_path: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Per workload x setting (x axes) in both runs: samples/s of each, and B's speed
    relative to A (A's step time / B's) with a 95% bootstrap interval. Also the groups
    found in one run only."""
    a_df, b_df = results.load(a_path), results.load(b_path)
    a_speed, b_speed = speed_table(a_df), speed_table(b_df)
    match = list(match_fields())
    a_groups = dict(list(ok_trials(a_df).groupby(match, sort=True)))
    b_groups = dict(list(ok_trials(b_df).groupby(match, sort=True)))
    rows, missing = [], []
    for key in sorted(set(a_groups) | set(b_groups), key=str):
        if key not in a_groups or key not in b_groups:
            missing.append({**dict(zip(match, key)), "only_in": "A" if key in a_groups else "B"})
            continue
        a, b = a_groups[key], b_groups[key]
        (a_steps, strata), (b_steps, _) = kept_trials(a), kept_trials(b)
        ratio, lo, hi = bootstrap_ratio(a_steps, b_steps, strata=strata)
        rows.append(
            {
                **dict(zip(match, key)),
                "a_samples_per_s": float(a["samples_per_s"].median()),
                "b_samples_per_s": float(b["samples_per_s"].median()),
                "b_vs_a": ratio,
                "b_vs_a_lo": lo,
                "b_vs_a_hi": hi,
                "within_noise": bool(lo <= 1 <= hi),
                "a_price": _price(a_speed, match, key),
                "b_price": _price(b_speed, match, key),
            }
        )
    return pd.DataFrame(rows), missing


def _price(speed: pd.DataFrame, match: list[str], key: tuple) -> float:
    """The price of this key's setting within its own run's speed table."""
    if speed.empty:
        return float("nan")
    mask = pd.Series(True, index=speed.index)
    for col, value in zip(match, key):
        if col in speed:
            mask &= speed[col] == value
    row = speed[mask]
    return float(row["price"].iloc[0]) if len(row) else float("nan")
