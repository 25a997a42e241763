"""Two runs side by side: the same price table for each, and B's speed relative to A."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from detcost import axes, results
from detcost.derive.frame import ok_trials
from detcost.derive.prices import rounds_of, speed_table, without_busy
from detcost.stats import unpaired_ratio


def match_fields() -> tuple[str, ...]:
    """What must match for two runs' trials to be compared: the workload, the setting,
    every axis and the sizes (steps may differ)."""
    return ("workload", "setting", *axes.names(), "batch_size", "image_size")


def compare_runs(a_path: Path, b_path: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Per workload x setting (x axes) in both runs: samples/s of each, and B's step time
    over A's (above 1: B is slower, the direction of every price) with a 95% interval
    over each run's rounds. Busy trials are left out and "within noise" follows the
    report's rule (the interval includes 1, or the ratio is inside what either run could
    detect). Also the groups found in one run only."""
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
        a, b = without_busy(a_groups[key]), without_busy(b_groups[key])
        ratio = unpaired_ratio(rounds_of(b), rounds_of(a))
        a_row, b_row = _speed_row(a_speed, match, key), _speed_row(b_speed, match, key)
        detectable = np.nanmax([a_row.get("detectable", np.nan), b_row.get("detectable", np.nan), 0.0])
        rows.append(
            {
                **dict(zip(match, key)),
                "a_samples_per_s": float(a["samples_per_s"].median()),
                "b_samples_per_s": float(b["samples_per_s"].median()),
                "b_vs_a": ratio.ratio,
                "b_vs_a_lo": ratio.lo,
                "b_vs_a_hi": ratio.hi,
                "within_noise": bool(ratio.includes_one or abs(ratio.ratio - 1) <= detectable),
                "a_price": a_row.get("price", np.nan),
                "b_price": b_row.get("price", np.nan),
            }
        )
    return pd.DataFrame(rows), missing


def _speed_row(speed: pd.DataFrame, match: list[str], key: tuple) -> dict:
    """This key's row of its own run's speed table ({} if it has none)."""
    if speed.empty:
        return {}
    mask = pd.Series(True, index=speed.index)
    for col, value in zip(match, key):
        if col in speed:
            mask &= speed[col] == value
    row = speed[mask]
    return row.iloc[0].to_dict() if len(row) else {}
