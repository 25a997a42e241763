"""Variance: what a setting buys. Compares repeats (same seed, fresh processes) and the
seed yardstick (different seeds) from what each trial stored; never re-runs training.

Distances use the fixed sample of parameter coordinates every trial keeps at checkpoints
1, 2, 4, ... (the same coordinates in every repeat), or the full final parameters when
the sweep ran with --keep-params.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from detcost import axes as axes_mod
from detcost.derive.frame import ok_trials, setting_order, varying_axes
from detcost.record import SIZE_FIELDS, Kind
from detcost.results import sidecar_path

SEED_LABEL = "seed yardstick"
# Ratios to the seed yardstick are only shown when the yardstick itself moved.
MIN_SEED_SPREAD = 1e-12


def load_sidecar(record: pd.Series | dict) -> dict[str, np.ndarray] | None:
    """The arrays a trial stored beside the results file, or None if it stored none."""
    path = sidecar_path(record)
    if path is None or not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _final_params(side: dict) -> np.ndarray:
    return side["params"] if "params" in side else side["param_samples"][-1]


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a.astype(np.float64)))
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)) / denom) if denom else 0.0


def _first_difference(a: dict, b: dict) -> int | None:
    """The first checkpoint step at which two trials' parameters differ, bitwise."""
    for k, step in enumerate(a["checkpoints"]):
        if not (
            np.array_equal(a["param_samples"][k], b["param_samples"][k])
            and np.array_equal(a["param_norms"][k], b["param_norms"][k])
        ):
            return int(step)
    return None


def _range(group: pd.DataFrame, column: str) -> float:
    values = group[column].dropna().astype(float) if column in group else pd.Series(dtype=float)
    return float(values.max() - values.min()) if len(values) > 1 else np.nan


def _class_accuracy_range(group: pd.DataFrame) -> float:
    """The largest spread of one class's accuracy across the group (max - min, over the
    classes every trial evaluated): implementation noise shows here long before it
    moves the top-line accuracy."""
    lists = [v for v in group.get("class_accuracy", pd.Series(dtype=object)) if isinstance(v, list | tuple)]
    if len(lists) < 2:
        return np.nan
    per_class = np.array([[np.nan if a is None else a for a in v] for v in lists], dtype=float)
    per_class = per_class[:, np.isfinite(per_class).all(axis=0)]  # the classes every trial evaluated
    return float((per_class.max(axis=0) - per_class.min(axis=0)).max()) if per_class.size else np.nan


def _same_data_order(group: pd.DataFrame) -> bool | None:
    """Whether every trial of the group read its data in the same order (None: staged
    batches, whose order is fixed by the data seed, or one trial)."""
    orders = group["data_order_sha256"].dropna() if "data_order_sha256" in group else pd.Series(dtype=object)
    return bool(orders.nunique() == 1) if len(orders) > 1 else None


def compare(group: pd.DataFrame) -> dict:
    """Spread across the trials of one group (repeats, or seeds): the variance metrics."""
    r = len(group)
    hashes = group["params_sha256"].value_counts()
    losses = group["final_loss"].astype(float)
    row = {
        "R": r,
        # repeats that share their final parameters with another (none, when all differ)
        "n_identical": int(hashes.iloc[0]) if r and (hashes.iloc[0] > 1 or r == 1) else 0,
        "bitwise_identical": bool(r > 1 and len(hashes) == 1),
        "loss_std": float(losses.std(ddof=1)) if r > 1 else np.nan,
        "loss_range": float(losses.max() - losses.min()) if r else np.nan,
        "accuracy_std": float(group["eval_accuracy"].std(ddof=1)) if r > 1 and "eval_accuracy" in group else np.nan,
        "accuracy_range": _range(group, "eval_accuracy"),
        "class_accuracy_range": _class_accuracy_range(group),
        "same_data_order": _same_data_order(group),
    }
    sides = [load_sidecar(rec) for _, rec in group.iterrows()]
    pairs = [(a, b) for a, b in combinations(sides, 2) if a is not None and b is not None]
    if not pairs:
        return {
            **row,
            "max_abs_dtheta": np.nan,
            "rel_l2": np.nan,
            "disagreement": np.nan,
            "max_abs_dlogits": np.nan,
            "first_diff_step": None,
        }
    firsts = [s for s in (_first_difference(a, b) for a, b in pairs) if s is not None]
    return {
        **row,
        "max_abs_dtheta": max(float(np.max(np.abs(_final_params(a) - _final_params(b)))) for a, b in pairs),
        "rel_l2": float(np.mean([_rel_l2(_final_params(a), _final_params(b)) for a, b in pairs])),
        "disagreement": float(np.mean([np.mean(a["eval_preds"] != b["eval_preds"]) for a, b in pairs])),
        "max_abs_dlogits": max(float(np.max(np.abs(a["eval_logits"] - b["eval_logits"]))) for a, b in pairs),
        "first_diff_step": min(firsts) if firsts else None,
    }


def variance_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per workload x setting (x axes): spread across repeats, the seed yardstick as its
    own row, the same seed across the values of an axis that changes numerics (threads:
    column `across` names the axis, `across_values` the values), and each row's spread as
    a fraction of the seed yardstick's."""
    timed, seeds = ok_trials(df, (Kind.TIMED,)), ok_trials(df, (Kind.SEED,))
    if timed.empty and seeds.empty:
        return pd.DataFrame()
    axes = varying_axes(df)
    sizes = [a for a in axes if a in SIZE_FIELDS]
    rows = []
    for key, group in timed.groupby(["workload", "setting", *axes], sort=False):
        rows.append({**dict(zip(["workload", "setting", *axes], key)), **compare(group)})
    for key, group in seeds.groupby(["workload", *sizes], sort=False):
        fixed = {a: group[a].iloc[0] for a in axes if a not in sizes}
        rows.append({**dict(zip(["workload", *sizes], key)), "setting": SEED_LABEL, **fixed, **compare(group)})
    for axis in filter(axes_mod.compares_across, axes):
        rows += _across(timed, axis, [a for a in axes if a != axis])
    table = _relative_to_seeds(pd.DataFrame(rows), sizes)
    order = {s: i for i, s in enumerate([*setting_order(table["setting"].unique()), SEED_LABEL])}
    table["_o"] = table["setting"].map(lambda s: order.get(s, len(order)))
    if "across" not in table:
        table["across"] = None
    sort = ["workload", "_o", *[a for a in axes if not axes_mod.compares_across(a)]]
    return table.sort_values(sort, kind="stable").drop(columns="_o").reset_index(drop=True)


def _across(timed: pd.DataFrame, axis: str, others: list[str]) -> list[dict]:
    """The same seed at different values of `axis`: one trial per value (repeat 0)."""
    rows = []
    for key, group in timed.groupby(["workload", "setting", *others], sort=False):
        if group[axis].nunique() < 2:
            continue
        first = group.sort_values("repeat").groupby(axis, sort=True).head(1)
        values = " vs ".join(str(v) for v in sorted(first[axis]))
        keys = dict(zip(["workload", "setting", *others], key))
        rows.append({**keys, **compare(first), "across": axis, "across_values": values})
    return rows


def same_seed_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Repeats of one configuration: what a setting guarantees (not the seed yardstick,
    not the rows across an axis's values)."""
    if table.empty:
        return table
    rows = table[table["setting"] != SEED_LABEL]
    return rows[rows["across"].isna()] if "across" in rows else rows


def _relative_to_seeds(table: pd.DataFrame, sizes: list[str]) -> pd.DataFrame:
    """Each row's spread as a fraction of the seed yardstick's (same workload and sizes)."""
    keys = ["workload", *sizes]
    seeds = table[table["setting"] == SEED_LABEL]
    metrics = ("rel_l2", "loss_std", "disagreement")
    ref = table[keys].merge(seeds[keys + list(metrics)], on=keys, how="left")
    for metric in metrics:
        scale = ref[metric].where(ref[metric] > MIN_SEED_SPREAD).to_numpy()
        table[f"{metric}_vs_seeds"] = table[metric].to_numpy() / scale
    return table


def divergence_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Distance between repeats at each checkpoint (mean over pairs): data for a log-log
    plot of how one rounding difference grows. One row per group x checkpoint."""
    timed = ok_trials(df, (Kind.TIMED,))
    axes = varying_axes(df)
    rows = []
    for key, group in timed.groupby(["workload", "setting", *axes], sort=False):
        sides = [s for s in (load_sidecar(rec) for _, rec in group.iterrows()) if s is not None]
        pairs = list(combinations(sides, 2))
        if not pairs:
            continue
        for k, step in enumerate(sides[0]["checkpoints"]):
            rel = [_rel_l2(a["param_samples"][k], b["param_samples"][k]) for a, b in pairs]
            mx = [float(np.max(np.abs(a["param_samples"][k] - b["param_samples"][k]))) for a, b in pairs]
            rows.append(
                {
                    **dict(zip(["workload", "setting", *axes], key)),
                    "step": int(step),
                    "rel_l2": float(np.mean(rel)),
                    "max_abs_dtheta": max(mx),
                }
            )
    return pd.DataFrame(rows)
