"""Variance as a reader sees it: the spread table (identical n/R, compact numbers, the
values of an axis compared across) and the divergence over checkpoints."""

from __future__ import annotations

import pandas as pd

from detcost.derive.analysis import MachineAnalysis
from detcost.derive.keys import SEED_LABEL
from detcost.report.fmt import compact, share
from detcost.report.keys_text import key_cells

VARIANCE_COLUMNS = {
    "identical": "identical",
    "max_abs_dtheta": "max|dθ|",
    "rel_l2": "rel L2",
    "loss_std": "loss std",
    "disagreement": "pred. disagree",
    "max_abs_dlogits": "max|dlogits|",
    "first_diff_step": "first diff step",
    "rel_l2_vs_seeds": "rel L2 / seeds",
    "accuracy_range": "acc. range",
    "class_accuracy_range": "class acc. range",
    "same_data_order": "data order",
    "ranks_agree": "DDP ranks",
}
VARIANCE_LEGEND = (
    "identical: repeats whose final parameters are bitwise equal; rel L2: ||dθ|| / ||θ|| on the "
    "parameter sample; rel L2 / seeds: that spread as a fraction of the seed yardstick's; "
    "'1 vs 2' under an axis: the same seed at each of those values; acc. range: max - min of "
    "evaluation accuracy; class acc. range: the largest such spread of one class's accuracy; data "
    "order: whether a DataLoader gave every repeat the same sample order; DDP ranks: whether every rank "
    "of a DDP trial (--nproc) ended with the same parameters (they should: a disagreement is a finding)."
)


def _order_word(v) -> str:
    return "-" if v is None or (isinstance(v, float) and pd.isna(v)) else ("same" if v else "differs")


def _ranks_word(v) -> str:
    return "-" if v is None or (isinstance(v, float) and pd.isna(v)) else ("agree" if v else "DISAGREE")


def variance_display(m: MachineAnalysis) -> pd.DataFrame:
    """The variance table as a person reads it: `identical` as n/R, numbers compact, and
    a row across an axis's values shows them ('1 vs 2') in that axis's column."""
    table = m.spread_frame()
    if table.empty:
        return table
    out = table.copy()
    cells = [key_cells(v.key, m.fields) for v in m.spreads]
    out["workload"] = [c[0] for c in cells]
    for k, field in enumerate(f for f in m.fields if f != "workload"):  # as the key holds them: 2, not 2.0
        if field in out:
            out[field] = [c[k + 1] if len(c) > k + 1 else None for c in cells]
    out["identical"] = [
        f"{r.R} seeds" if r.setting == SEED_LABEL else f"{r.n_identical}/{r.R}" for r in out.itertuples()
    ]
    for axis in out["across"].dropna().unique():
        if axis not in out:
            out[axis] = None
        rows = out["across"] == axis
        out[axis] = out[axis].astype(object)
        out.loc[rows, axis] = out.loc[rows, "across_values"]
    keys = (
        ["workload", "setting"]
        + [f for f in m.fields if f in out]
        + [a for a in out["across"].dropna().unique() if a not in m.fields]
    )
    out = out[keys + list(VARIANCE_COLUMNS)].rename(columns=VARIANCE_COLUMNS)
    for col in ("max|dθ|", "rel L2", "loss std", "max|dlogits|", "rel L2 / seeds"):
        out[col] = out[col].map(compact)
    for col in ("pred. disagree", "acc. range", "class acc. range"):
        out[col] = out[col].map(share)
    out["data order"] = out["data order"].map(_order_word)
    if (out["data order"] == "-").all():  # staged batches only: their order is fixed by the data seed
        out = out.drop(columns="data order")
    out["DDP ranks"] = out["DDP ranks"].map(_ranks_word)
    if (out["DDP ranks"] == "-").all():  # no DDP trial of two ranks or more
        out = out.drop(columns="DDP ranks")
    out["first diff step"] = [
        "-" if r < 2 else ("never" if v is None or pd.isna(v) else str(int(v)))
        for v, r in zip(table["first_diff_step"], table["R"])
    ]
    return out


def divergence_text(m: MachineAnalysis) -> str:
    """Distance between repeats at each checkpoint step, one block per workload."""
    curves = m.curve_frame()
    if curves.empty:
        return ""
    keys = [c for c in curves.columns if c not in ("step", "rel_l2", "max_abs_dtheta", "workload")]
    keys = [c for c in keys if c == "setting" or curves[c].nunique() > 1]
    blocks = []
    for workload, rows in curves.groupby("workload", sort=False):  # each has its own checkpoints
        table = rows.pivot_table(index=keys, columns="step", values="rel_l2")
        blocks.append(f"{workload}:\n" + table.to_string(float_format="{:.1e}".format))
    return "\n".join(blocks)
