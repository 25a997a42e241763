"""The price of each setting: step time relative to the fastest setting of the same
workload group, with an interval; the ratio to `default`; the A/A control's noise floor."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from detcost.derive.frame import AA_LABEL, busy_count, group_fields, is_busy, ok_trials, setting_order, varying_axes
from detcost.record import ROUND_KINDS, Kind, StepTiming
from detcost.results import frame
from detcost.settings import REFERENCE
from detcost.stats import PairedRatio, busy_share, fastest, label_bias_var, paired_ratio, per_round, unpaired_ratio


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


def without_busy(g: pd.DataFrame) -> pd.DataFrame:
    """Trials run while other processes took the CPU are left out of prices (they stay in
    the results and are counted), unless no other trial of the label is left."""
    quiet = g[~is_busy(g)]
    return quiet if len(quiet) else g


def _median(g: pd.DataFrame, col: str) -> float:
    return float(g[col].median()) if col in g and g[col].notna().any() else np.nan


def rounds_of(g: pd.DataFrame) -> dict:
    """{round: typical step time} of one label's trials; a round is a repeat of one run."""
    steps, strata = kept_trials(g)
    rounds = list(zip(g.get("run_id", pd.Series(None, index=g.index)), g["repeat"]))
    return per_round(list(zip(rounds, steps)), strata)


def _ratio(a: dict, b: dict, bias_var: float = 0.0) -> PairedRatio:
    """Paired within rounds, the labels' fixed effect `bias_var` included; where busy
    trials left the two labels no round in common, unpaired (drift then does not cancel,
    and the interval is wider for it)."""
    paired = paired_ratio(a, b, bias_var=bias_var)
    return paired if paired.rounds else unpaired_ratio(a, b)


def _label_rows(keys: list[str], key: tuple, per_label: dict, busy: dict) -> list[dict]:
    """The price rows of one workload group, one per label (setting or the A/A control):
    each label against the fastest and against `default`, paired within rounds."""
    rounds = {label: rounds_of(g) for label, g in per_label.items()}
    timed = {k: v for k, v in rounds.items() if k != AA_LABEL}
    best = fastest(timed)
    # what the A/A control strayed beyond its rounds: a fixed effect of the label that
    # every price between two labels may carry too (the A/A's own interval is the test of it)
    bias = label_bias_var(rounds[AA_LABEL], rounds[REFERENCE]) if AA_LABEL in rounds and REFERENCE in timed else 0.0
    rows = []
    for label, g in per_label.items():
        is_aa = label == AA_LABEL
        ref_label = REFERENCE if is_aa and REFERENCE in timed else best
        extra = 0.0 if is_aa else bias
        price = (
            PairedRatio.identity(len(rounds[label]))
            if label == best
            else _ratio(rounds[label], rounds[ref_label], extra)
        )
        vs_default = (
            _ratio(rounds[label], rounds[REFERENCE], 0.0 if label == REFERENCE else extra)
            if REFERENCE in timed
            else None
        )
        sps = g["samples_per_s"]
        rows.append(
            {
                **dict(zip(keys, key)),
                "setting": label,
                "n": len(g),
                "rounds": price.rounds,
                "samples_per_s": float(sps.median()),
                "samples_per_s_cv": float(sps.std(ddof=1) / sps.mean()) if len(g) > 1 else np.nan,
                "step_time_s": _median(g, "step_time_median_s"),
                "price": price.ratio,
                "price_lo": price.lo,
                "price_hi": price.hi,
                "price_vs": ref_label,
                "vs_default": vs_default.ratio if vs_default else np.nan,
                "vs_default_lo": vs_default.lo if vs_default else np.nan,
                "vs_default_hi": vs_default.hi if vs_default else np.nan,
                "cold_start_s": _median(g, "cold_start_s"),
                "peak_memory_bytes": _median(g, "peak_memory_bytes"),
                "achieved_flops": _median(g, "achieved_flops"),
                "label_bias": math.sqrt(bias),  # the log-ratio sd added to this group's prices
                "busy_trials": busy[label],
                "busy_trials_priced": busy_count(g),
            }
        )
    return rows


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per workload x setting (x axes): samples/s; the price (step time over the
    fastest setting's, above 1 is slower) and the same time ratio against `default`, both
    from within-round ratios with a t-interval across rounds; cold start, memory, FLOP/s;
    on CUDA, whether the steps were host-bound (`host_bound`: the price is understated).

    The A/A control (`kind == "aa"`) appears as its own label: its price against
    `default` is the noise floor of the machine, and `detectable` (per group) the smallest
    price this run can tell apart from noise.
    """
    trials = ok_trials(df, ROUND_KINDS).copy()
    if trials.empty:
        return pd.DataFrame()
    trials["label"] = np.where(trials["kind"] == str(Kind.AA), AA_LABEL, trials["setting"])
    keys = ["workload", *varying_axes(trials)]
    rows = []
    for key, group in trials.groupby(keys, sort=False):
        per_label = {label: g for label, g in group.groupby("label", sort=False)}
        busy = {label: busy_count(g) for label, g in per_label.items()}
        per_label = {label: without_busy(g) for label, g in per_label.items()}
        if any(label != AA_LABEL for label in per_label):
            rows += _label_rows(keys, key if isinstance(key, tuple) else (key,), per_label, busy)
    if not rows:  # only A/A trials finished: nothing to price
        return pd.DataFrame()
    table = _host_bound(pd.DataFrame(rows), df, keys)
    table["detectable"] = _detectable(table, keys)
    table["within_noise"] = _within_noise(table)
    order = {s: i for i, s in enumerate(setting_order(table["setting"]) + [AA_LABEL])}
    table["_o"] = table["setting"].map(lambda s: order.get(s, len(order)))
    return table.sort_values(keys + ["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _host_bound(table: pd.DataFrame, df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each row's `kernel_busy_fraction` and `host_bound` (True, False, or None where no
    profiled trial measured it: the CPU, or no --explain): the profiled trial's kernel time
    per step over this label's median timed step, below the threshold the trial recorded.
    The profiled trial's own step is slowed by the profiler, so its fraction stands in only
    where the timed step is missing. The A/A control runs `default`, and takes its row."""
    out = table.assign(kernel_busy_fraction=np.nan, host_bound=None)
    prof = ok_trials(df, (Kind.PROFILED,))
    busy = "host_bound.kernel_busy_s"
    if prof.empty or busy not in prof or prof[busy].isna().all():
        return out
    # a profiled trial runs its own step count, so steps never separate it from its group
    on = [k for k in keys if k != "steps" and k in prof] + ["setting"]
    cols = [busy, "host_bound.kernel_busy_fraction", "host_bound.threshold"]
    found = prof.dropna(subset=[busy]).drop_duplicates(on, keep="last")[on + cols]
    lookup = table[[k for k in on if k != "setting"]].assign(setting=table["setting"].replace({AA_LABEL: REFERENCE}))
    got = lookup.merge(found, on=on, how="left")  # a left merge keeps the table's row order
    timed = pd.Series(busy_share(got[busy], table["step_time_s"]), index=got.index)
    fraction = timed.fillna(got["host_bound.kernel_busy_fraction"]).clip(upper=1.0)
    bound = (fraction < got["host_bound.threshold"]).astype(object).where(fraction.notna(), None)
    return out.assign(kernel_busy_fraction=fraction.to_numpy(dtype=float), host_bound=bound.to_numpy())


def _detectable(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per group, the smallest price this run can tell apart from noise: how far the A/A
    control (default against itself) may stray, its point or its interval's far edge;
    without an A/A control, the median half-width of the group's price intervals."""
    out = pd.Series(np.nan, index=table.index)
    for _, group in table.groupby(keys, sort=False):
        aa = group[group["setting"] == AA_LABEL]
        if len(aa):
            r = aa.iloc[0]
            out[group.index] = max(abs(r["price"] - 1), r["price_hi"] - 1, 1 - r["price_lo"])
        else:
            half = _half_width(group[group["price_lo"] < group["price_hi"]])
            out[group.index] = float(half.median()) if len(half) else np.nan
    return out


def _half_width(rows: pd.DataFrame) -> pd.Series:
    """Each price interval's larger distance from its point, relative to it (as
    `stats.PairedRatio.half_width`)."""
    return np.maximum(rows["price_hi"] / rows["price"] - 1, 1 - rows["price_lo"] / rows["price"])


def _within_noise(table: pd.DataFrame) -> pd.Series:
    """A price is within noise when its interval includes 1.00, or when it is no further
    from 1.00 than the A/A control of its group may stray (`detectable`)."""
    inside = (table["price_lo"] <= 1.0) & (table["price_hi"] >= 1.0)
    return inside | ((table["price"] - 1).abs() <= table["detectable"].fillna(0))


def half_widths(records) -> dict[str, float]:
    """Each price's interval half-width (0.03: ±3%), keyed `workload/setting` (with the
    axes that vary): what --precision drives down. The fastest setting of each group
    (price 1.00 by definition) has none."""
    speed = speed_table(frame([r.to_json() for r in records]))
    if speed.empty:
        return {}
    keys = [c for c in speed.columns if c in ("workload", *varying_axes(speed))]
    priced = speed[~((speed["price_lo"] == 1.0) & (speed["price_hi"] == 1.0))]
    half = _half_width(priced)
    names = priced[keys].astype(str).agg("/".join, axis=1) + ": " + priced["setting"]
    return dict(zip(names, half.fillna(np.inf)))


def noise_floors(table: pd.DataFrame) -> pd.DataFrame:
    """The A/A control's rows, with the CV of `default`'s samples/s in the same group."""
    if table.empty:
        return table
    keys = [c for c in ("workload", *group_fields()) if c in table]
    aa = table[table["setting"] == AA_LABEL]
    ref = table[table["setting"] == REFERENCE][[*keys, "samples_per_s_cv"]].rename(
        columns={"samples_per_s_cv": "default_cv"}
    )
    aa = aa.merge(ref, on=keys, how="left")  # each group's own default, not the workload's first
    aa["steady"] = (aa["price_lo"] <= 1.0) & (aa["price_hi"] >= 1.0)
    return aa
