"""The price of each setting: step time relative to the fastest setting of the same
workload group, with an interval; the ratio to `default`; the A/A control's noise floor."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detcost.derive.frame import AA_LABEL, busy_count, is_busy, ok_trials, setting_order, varying_axes
from detcost.record import Kind, StepTiming
from detcost.settings import REFERENCE
from detcost.stats import bootstrap_ratio, pooled_typical


def kept_trials(g: pd.DataFrame) -> tuple[list[list[float]], list[int] | None]:
    """Each trial's step times without its snapshot steps, and the shared strata."""
    kept = [_timing(row).kept for row in g.to_dict(orient="records")]
    return [t for t, _ in kept], kept[0][1]


def _timing(row: dict) -> StepTiming:
    """A table row's timing part (a missing list is NaN in a table)."""
    strata = row.get("step_strata")
    strata = _list(strata) if isinstance(strata, (list, tuple, np.ndarray)) else None
    return StepTiming.from_json({**row, "excluded_steps": _list(row.get("excluded_steps")), "step_strata": strata})


def _list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else []


def _without_busy(g: pd.DataFrame) -> pd.DataFrame:
    """Trials run while other processes took the CPU are left out of prices (they stay in
    the results and are counted), unless no other trial of the label is left."""
    quiet = g[~is_busy(g)]
    return quiet if len(quiet) else g


def _median(g: pd.DataFrame, col: str) -> float:
    return float(g[col].median()) if col in g and g[col].notna().any() else np.nan


def _label_rows(keys: list[str], key: tuple, per_label: dict, busy: dict, bootstrap: int) -> list[dict]:
    """The price rows of one workload group, one per label (setting or the A/A control)."""
    timed = {k: v for k, v in per_label.items() if k != AA_LABEL}
    steps = {label: kept_trials(g) for label, g in per_label.items()}
    strata = steps[next(iter(steps))][1]
    # the fastest by the same statistic the price uses, so the best price is 1.00
    fastest = min(timed, key=lambda s: pooled_typical(steps[s][0], strata))
    rows = []
    for label, g in per_label.items():
        ref_label = REFERENCE if label == AA_LABEL and REFERENCE in timed else fastest
        if label == fastest:
            price, lo, hi = 1.0, 1.0, 1.0
        else:
            price, lo, hi = bootstrap_ratio(steps[label][0], steps[ref_label][0], strata=strata, n=bootstrap)
        sps = g["samples_per_s"]
        rows.append(
            {
                **dict(zip(keys, key)),
                "setting": label,
                "n": len(g),
                "samples_per_s": float(sps.median()),
                "samples_per_s_cv": float(sps.std(ddof=1) / sps.mean()) if len(g) > 1 else np.nan,
                "price": price,
                "price_lo": lo,
                "price_hi": hi,
                "price_vs": ref_label,
                "within_noise": bool(lo <= 1.0 <= hi),
                "cold_start_s": _median(g, "cold_start_s"),
                "peak_memory_bytes": _median(g, "peak_memory_bytes"),
                "achieved_flops": _median(g, "achieved_flops"),
                "busy_trials": busy[label],
                "busy_trials_priced": busy_count(g),
            }
        )
    return rows


def speed_table(df: pd.DataFrame, *, bootstrap: int = 2000) -> pd.DataFrame:
    """One row per workload x setting (x axes): samples/s, price vs the fastest with a
    bootstrap interval, ratio to `default`, cold start, memory, FLOP/s.

    The A/A control (`kind == "aa"`) appears as its own label: its price against
    `default` is the noise floor of the machine.
    """
    trials = ok_trials(df, (Kind.TIMED, Kind.AA)).copy()
    if trials.empty:
        return pd.DataFrame()
    trials["label"] = np.where(trials["kind"] == str(Kind.AA), AA_LABEL, trials["setting"])
    keys = ["workload", *varying_axes(trials)]
    rows = []
    for key, group in trials.groupby(keys, sort=False):
        per_label = {label: g for label, g in group.groupby("label", sort=False)}
        busy = {label: busy_count(g) for label, g in per_label.items()}
        per_label = {label: _without_busy(g) for label, g in per_label.items()}
        if any(label != AA_LABEL for label in per_label):
            rows += _label_rows(keys, key if isinstance(key, tuple) else (key,), per_label, busy, bootstrap)
    table = pd.DataFrame(rows)
    table["vs_default"] = table.apply(lambda r: _vs_default(table, r, keys), axis=1)
    table["within_noise"] = _within_aa_noise(table, keys)
    order = {s: i for i, s in enumerate(setting_order(table["setting"]) + [AA_LABEL])}
    table["_o"] = table["setting"].map(lambda s: order.get(s, len(order)))
    return table.sort_values(keys + ["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _same_group(table: pd.DataFrame, row: pd.Series, keys: list[str]) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for k in keys:
        mask &= table[k] == row[k]
    return mask


def _within_aa_noise(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A price is within noise when its interval includes 1.00, or when it is no further
    from 1.00 than the A/A control of the same group strayed (default against itself:
    with few repeats the interval understates the spread between processes)."""
    band = pd.Series(0.0, index=table.index)
    for _, r in table[table["setting"] == AA_LABEL].iterrows():
        band[_same_group(table, r, keys)] = max(abs(r["price"] - 1), r["price_hi"] - 1, 1 - r["price_lo"])
    inside = (table["price_lo"] <= 1.0) & (table["price_hi"] >= 1.0)
    return inside | ((table["price"] - 1).abs() <= band)


def _vs_default(table: pd.DataFrame, row: pd.Series, keys: list[str]) -> float:
    """samples/s relative to `default` in the same group (>1 means faster than default)."""
    ref = table.loc[_same_group(table, row, keys) & (table["setting"] == REFERENCE), "samples_per_s"]
    return float(row["samples_per_s"] / ref.iloc[0]) if len(ref) else np.nan


def noise_floors(table: pd.DataFrame) -> pd.DataFrame:
    """The A/A control's rows, with the CV of `default`'s samples/s in the same group."""
    if table.empty:
        return table
    aa = table[table["setting"] == AA_LABEL].copy()
    ref = table[table["setting"] == REFERENCE].set_index("workload")["samples_per_s_cv"]
    aa["default_cv"] = aa["workload"].map(ref[~ref.index.duplicated()])
    aa["steady"] = (aa["price_lo"] <= 1.0) & (aa["price_hi"] >= 1.0)
    return aa
