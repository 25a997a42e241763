"""Derived tables of a sweep: the price of each setting, the noise floor, the failures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detcost.settings import SETTINGS
from detcost.timing import bootstrap_ratio, kept_steps, pooled_typical

AA_LABEL = "A/A control"
CPU_NOTE = (
    "On the CPU the cuDNN flags do nothing: default, benchmark, deterministic, "
    "benchmark_deterministic and no_cudnn run the same kernels, so differences between "
    "them are noise (an A/A group). strict differs for real: use_deterministic_algorithms "
    "NaN-fills every uninitialised allocation."
)


def setting_order(names) -> list[str]:
    """Settings in the matrix's order (then any others), the same order everywhere."""
    known = [s for s in SETTINGS if s in set(names)]
    return known + sorted(set(names) - set(known))


def ok_trials(df: pd.DataFrame, kinds=("timed",)) -> pd.DataFrame:
    if df.empty:
        return df
    return df[df["kind"].isin(kinds) & (df["status"] == "ok")]


def is_cpu(df: pd.DataFrame) -> bool:
    return not df.empty and df["device"].astype(str).str.startswith("cpu").all()


# Columns that split a workload into separate groups when they vary within the results:
# the orthogonal axes, and sizes (two runs of one workload at different sizes do not compare).
AXES = ("threads", "memory_format", "vary", "batch_size", "image_size", "steps")
SIZE_AXES = ("batch_size", "image_size", "steps")
MEASURED_KINDS = ("timed", "aa", "seed")


def axes(df: pd.DataFrame) -> list[str]:
    """The axes that vary within a workload in these results (constant ones would only
    clutter a table; sizes differ between workloads by design)."""
    if "kind" in df:  # audit and profiled trials run other step counts by design
        df = df[df["kind"].isin(MEASURED_KINDS)]
    if df.empty:
        return []
    return [a for a in AXES if a in df and df.groupby("workload")[a].nunique().max() > 1]


def _group_keys(df: pd.DataFrame) -> list[str]:
    return ["workload", *axes(df)]


def speed_table(df: pd.DataFrame, *, bootstrap: int = 2000) -> pd.DataFrame:
    """One row per workload x setting (x axes): samples/s, price vs the fastest with a
    bootstrap interval, ratio to `default`, cold start, memory, FLOP/s.

    The A/A control (`kind == "aa"`) appears as its own label: its price against
    `default` is the noise floor of the machine.
    """
    trials = ok_trials(df, ("timed", "aa")).copy()
    if trials.empty:
        return pd.DataFrame()
    trials["label"] = np.where(trials["kind"] == "aa", AA_LABEL, trials["setting"])
    keys = _group_keys(trials)
    rows = []
    for key, group in trials.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        per_label = {label: g for label, g in group.groupby("label", sort=False)}
        busy = {label: busy_count(g) for label, g in per_label.items()}
        per_label = {label: _without_busy(g) for label, g in per_label.items()}
        timed = {k: v for k, v in per_label.items() if k != AA_LABEL}
        if not timed:
            continue
        steps = {label: kept_trials(g) for label, g in per_label.items()}
        strata = steps[next(iter(steps))][1]
        # the fastest by the same statistic the price uses, so the best price is 1.00
        fastest = min(timed, key=lambda s: pooled_typical(steps[s][0], strata))
        for label, g in per_label.items():
            ref_label = "default" if label == AA_LABEL and "default" in timed else fastest
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
    table = pd.DataFrame(rows)
    table["vs_default"] = table.apply(lambda r: _vs_default(table, r, keys), axis=1)
    table["within_noise"] = _within_aa_noise(table, keys)
    order = {s: i for i, s in enumerate(setting_order(table["setting"]) + [AA_LABEL])}
    table["_o"] = table["setting"].map(lambda s: order.get(s, len(order)))
    return table.sort_values(keys + ["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def busy_count(g: pd.DataFrame) -> int:
    """How many trials the busy-machine guard flagged."""
    return int(g["busy.busy"].fillna(False).astype(bool).sum()) if "busy.busy" in g else 0


def _without_busy(g: pd.DataFrame) -> pd.DataFrame:
    """Trials run while other processes took the CPU are left out of prices (they stay in
    the results and are counted), unless no other trial of the label is left."""
    if "busy.busy" not in g:
        return g
    quiet = g[~g["busy.busy"].fillna(False).astype(bool)]
    return quiet if len(quiet) else g


def _within_aa_noise(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A price is within noise when its interval includes 1.00, or when it is no further
    from 1.00 than the A/A control of the same group strayed (default against itself:
    with few repeats the interval understates the spread between processes)."""
    aa = table[table["setting"] == AA_LABEL]
    band = pd.Series(0.0, index=table.index)
    for _, r in aa.iterrows():
        same = pd.Series(True, index=table.index)
        for k in keys:
            same &= table[k] == r[k]
        band[same] = max(abs(r["price"] - 1), r["price_hi"] - 1, 1 - r["price_lo"])
    inside = (table["price_lo"] <= 1.0) & (table["price_hi"] >= 1.0)
    return inside | ((table["price"] - 1).abs() <= band)


def kept_trials(g: pd.DataFrame) -> tuple[list[list[float]], list[int] | None]:
    """Each trial's step times without its snapshot steps, and the shared strata."""
    kept = [kept_steps(row) for row in g.to_dict(orient="records")]
    return [t for t, _ in kept], kept[0][1]


def _median(g: pd.DataFrame, col: str) -> float:
    return float(g[col].median()) if col in g and g[col].notna().any() else np.nan


def _vs_default(table: pd.DataFrame, row: pd.Series, keys: list[str]) -> float:
    """samples/s relative to `default` in the same group (>1 means faster than default)."""
    mask = table["setting"] == "default"
    for k in keys:
        mask &= table[k] == row[k]
    ref = table.loc[mask, "samples_per_s"]
    return float(row["samples_per_s"] / ref.iloc[0]) if len(ref) else np.nan


def speed_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """Workloads down, settings across: 'samples/s (ratio to default)'."""
    if table.empty:
        return table
    keys = [c for c in ("workload", *AXES) if c in table]
    cells = table.assign(
        cell=table.apply(
            lambda r: (
                f"{r.samples_per_s:,.1f} ({r.vs_default:.2f}x)"
                if np.isfinite(r.vs_default)
                else f"{r.samples_per_s:,.1f}"
            ),
            axis=1,
        )
    )
    pivot = cells.pivot_table(index=keys, columns="setting", values="cell", aggfunc="first")
    cols = setting_order([c for c in pivot.columns if c != AA_LABEL]) + ([AA_LABEL] if AA_LABEL in pivot else [])
    return pivot[cols].fillna("-")


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Every trial that did not finish, with its reason (strict-mode errors are findings)."""
    if df.empty:
        return df
    failed = df[df["status"] != "ok"]
    cols = [c for c in ("kind", "workload", "setting", "repeat", "seed", "threads", "status", "error") if c in failed]
    return failed[cols].reset_index(drop=True)
