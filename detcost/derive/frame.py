"""The results table's vocabulary: which rows count, how settings are ordered, which
columns split a workload into groups. Every derived table reads the table through these."""

from __future__ import annotations

import pandas as pd

from detcost import axes
from detcost.record import MEASURED, SIZE_FIELDS, Kind, Status
from detcost.settings import SETTINGS

AA_LABEL = "A/A control"  # the A/A control's row in a price table: `default` under a second label


def setting_order(names) -> list[str]:
    """Settings in the matrix's order (then any others), the same order everywhere."""
    known = [s for s in SETTINGS if s in set(names)]
    return known + sorted(set(names) - set(known))


def ok_trials(df: pd.DataFrame, kinds=(Kind.TIMED,)) -> pd.DataFrame:
    if df.empty:
        return df
    return df[df["kind"].isin([str(k) for k in kinds]) & (df["status"] == str(Status.OK))]


def of_kind(df: pd.DataFrame, kind: Kind) -> pd.DataFrame:
    return df[df["kind"] == str(kind)] if not df.empty else df


def is_cpu(df: pd.DataFrame) -> bool:
    return not df.empty and df["device"].astype(str).str.startswith("cpu").all()


def group_fields() -> tuple[str, ...]:
    """Columns that split a workload into separate groups when they vary within the
    results: every registered axis, and the sizes (runs at other sizes do not compare)."""
    return (*axes.names(), *SIZE_FIELDS)


def varying_axes(df: pd.DataFrame) -> list[str]:
    """The group fields that vary within a workload in these results (constant ones would
    only clutter a table; sizes differ between workloads by design). Audit and profiled
    trials run other step counts by design, so only measured trials count."""
    if "kind" in df:
        df = df[df["kind"].isin([str(k) for k in MEASURED])]
    if df.empty:
        return []
    return [a for a in group_fields() if a in df and df.groupby("workload")[a].nunique().max() > 1]


def is_busy(df: pd.DataFrame) -> pd.Series:
    """Which trials the busy-machine guard flagged."""
    if "busy.busy" not in df:
        return pd.Series(False, index=df.index)
    return df["busy.busy"].fillna(False).astype(bool)


def busy_count(df: pd.DataFrame) -> int:
    return int(is_busy(df).sum())


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Every trial that did not finish, with its reason (strict-mode errors are findings)."""
    if df.empty:
        return df
    failed = df[df["status"] != str(Status.OK)]
    split = [a for a in varying_axes(df) if a in axes.names()]
    keys = ("kind", "workload", "setting", "repeat", "seed", *split, "status", "error")
    return failed[[c for c in keys if c in failed]].reset_index(drop=True)
