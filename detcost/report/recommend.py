"""The recommendation: the most reproducible setting whose slowdown stays within a budget
on every workload, and the lines of Python that apply it.

Ties (contract): most reproducible first, then lowest price, then fewest changes from
`default`. Prices whose intervals overlap, or that are closer than the machine's noise
floor (the A/A control), count as equal; on a CPU the settings that run the same kernels
are priced as one, so noise does not pick among them. A setting is over the budget when
the whole interval of its worst price across workloads lies above it. When the run cannot
judge prices against the budget (busy trials, or a noise floor wider than the budget),
the pick rests on reproducibility, still leaving out settings shown to be over budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from detcost import axes
from detcost.derive.frame import is_cpu, of_kind, ok_trials, setting_order
from detcost.derive.prices import speed_table
from detcost.derive.variance import same_seed_rows
from detcost.record import Kind, Status
from detcost.report.text import percent_text
from detcost.settings import REFERENCE, SETTINGS, get_setting, snippet

DEFAULT_MAX_SLOWDOWN = 0.10
FALLBACK_NOISE = 0.02  # price tolerance when a sweep has no A/A control


@dataclass
class Recommendation:
    setting: str | None
    reason: str
    snippet: str
    max_slowdown: float
    candidates: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    # Why this run cannot judge speed (None when it can): then the pick rests on
    # reproducibility alone, and the report says so above the recommendation.
    speed_caveat: str | None = None


def changes_from_default(name: str) -> int:
    """How many flags a setting changes relative to `default`."""
    base, other = get_setting(REFERENCE), get_setting(name)
    return sum(
        getattr(base, f.name) != getattr(other, f.name) for f in fields(base) if f.name not in ("name", "summary")
    )


def noise_floor(speed: pd.DataFrame) -> float:
    """The largest price difference this run cannot resolve (its worst workload's
    `detectable`); prices closer than this tie."""
    detectable = detectable_by_workload(speed)
    finite = detectable[np.isfinite(detectable)]
    return float(finite.max()) if len(finite) else FALLBACK_NOISE


def candidates(df: pd.DataFrame, speed: pd.DataFrame, var: pd.DataFrame, price_label=None) -> pd.DataFrame:
    """Per setting: does it run everywhere, its worst price, how reproducible it is.
    `price_label(setting)` names the row of `speed` that prices a setting (on the CPU,
    the pooled cuDNN-only group)."""
    price_label = price_label or (lambda s: s)
    timed = of_kind(df, Kind.TIMED)
    workloads = sorted(set(timed["workload"]))
    same_thread = same_seed_rows(var)
    rows = []
    for s in setting_order(timed["setting"].unique()):
        trials = timed[timed["setting"] == s]
        failed = trials[trials["status"] != str(Status.OK)]
        prices = speed[speed["setting"] == price_label(s)]
        worst = prices.loc[prices["price"].idxmax()] if prices["price"].notna().any() else None
        v = same_thread[same_thread["setting"] == s] if not same_thread.empty else same_thread
        bitwise = int(((v["n_identical"] == v["R"]) & (v["R"] >= 2)).sum()) if not v.empty else 0
        rows.append(
            {
                "setting": s,
                "runs_everywhere": failed.empty and set(trials["workload"]) == set(workloads),
                "failures": "; ".join(sorted({f"{r.workload}: {r.status}" for r in failed.itertuples()})),
                "max_price": float(worst["price"]) if worst is not None else np.nan,
                "max_price_lo": float(worst["price_lo"]) if worst is not None else np.nan,
                "max_price_hi": float(worst["price_hi"]) if worst is not None else np.nan,
                "bitwise_workloads": bitwise,
                "groups": len(v),
                "spread": float(v["rel_l2"].fillna(0).mean()) if not v.empty else np.nan,
                "changes": changes_from_default(s) if s in SETTINGS else 99,
            }
        )
    return pd.DataFrame(rows)


def _cpu_pooled_prices(df: pd.DataFrame) -> tuple[pd.DataFrame, callable, list[str]]:
    """On the CPU the settings that differ only in cuDNN flags run the same kernels: price
    them as one setting (their trials pooled), so noise cannot rank one above another,
    and the luckiest of them does not become "the fastest" that prices everyone else."""
    timed_settings = set(of_kind(df, Kind.TIMED)["setting"])
    group = [s for s in setting_order(timed_settings) if s in SETTINGS and SETTINGS[s].cudnn_only]
    if len(group) < 2:
        return speed_table(df), (lambda s: s), []
    label = group[0]
    in_group = df["setting"].isin(group) & (df["kind"] == str(Kind.TIMED))
    pooled = df.assign(setting=df["setting"].where(~in_group, label))
    return speed_table(pooled), (lambda s: label if s in group else s), group


def recommend(
    df: pd.DataFrame, speed: pd.DataFrame, var: pd.DataFrame, max_slowdown: float = DEFAULT_MAX_SLOWDOWN
) -> Recommendation:
    cpu = is_cpu(df)
    caveat = speed_caveat(speed, max_slowdown)  # on the table the user reads, before any pooling
    pooled: list[str] = []
    if cpu:
        speed, price_label, pooled = _cpu_pooled_prices(df)
        cands = candidates(df, speed, var, price_label)
    else:
        cands = candidates(df, speed, var)
    notes = _notes(df, cands, cpu)
    if caveat:
        return _on_reproducibility_alone(df, cands, notes, max_slowdown, caveat, cpu)
    budget = 1 + max_slowdown
    noise = noise_floor(speed)
    # Over budget: the whole interval of the worst price lies above the budget; a price
    # whose interval reaches into the budget is not shown to exceed it.
    eligible = cands[cands["runs_everywhere"] & (cands["max_price_lo"] <= budget)]
    if eligible.empty:
        reason = f"no setting ran on every workload within a {max_slowdown:.0%} slowdown"
        return Recommendation(None, reason, "", max_slowdown, cands, notes)
    pick, tied = _pick(eligible, noise)
    reason = _reason(pick, tied, budget, noise, pooled)
    code = "\n".join([snippet(get_setting(pick["setting"])), *axis_snippet(df, cpu)])
    return Recommendation(pick["setting"], reason, code, max_slowdown, cands, notes)


def detectable_by_workload(speed: pd.DataFrame) -> pd.Series:
    """The smallest price each workload's run can tell apart from noise (its worst group)."""
    if speed.empty or "detectable" not in speed:
        return pd.Series(dtype=float)
    return speed.groupby("workload")["detectable"].max()


def speed_caveat(speed: pd.DataFrame, max_slowdown: float) -> str | None:
    """Why this run cannot judge a price against the budget, or None when it can: prices
    that rest on trials run while the machine was busy, or a noise floor wider than the
    budget (a 10% budget cannot be checked where only 25% differences are detectable)."""
    reasons = []
    busy = int(speed["busy_trials_priced"].sum()) if "busy_trials_priced" in speed else 0
    if busy:
        reasons.append(f"{busy} priced trial(s) ran while the machine was busy with other processes")
    detectable = detectable_by_workload(speed)
    wide = detectable[~(detectable <= max_slowdown)]
    if len(wide):
        finite = wide[np.isfinite(wide)]
        worst = finite.idxmax() if len(finite) else wide.index[0]
        shown = percent_text(wide[worst]) if np.isfinite(wide[worst]) else "no interval (one round)"
        reasons.append(
            f"the smallest price this run can detect is larger than the {max_slowdown:.0%} budget on "
            f"{len(wide)} of {len(detectable)} workload(s) ({worst}: {shown}); more rounds narrow it "
            "(e.g. rerun with --precision 5%), as does a quieter machine"
        )
    return "; ".join(reasons) or None


def _on_reproducibility_alone(df, cands, notes, max_slowdown, caveat, cpu) -> Recommendation:
    """The recommendation when speed cannot be judged: the most reproducible setting that
    ran everywhere, ties to the fewest changes from `default`; no price enters."""
    over = cands["max_price_lo"] > 1 + max_slowdown  # shown to be over budget even by this run
    eligible = cands[cands["runs_everywhere"] & ~over]
    if eligible.empty:
        reason = f"no setting ran on every workload without being shown over the {max_slowdown:.0%} budget"
        return Recommendation(None, reason, "", max_slowdown, cands, notes, caveat)
    best = eligible["bitwise_workloads"].max()
    tied = eligible[eligible["bitwise_workloads"] == best]
    if (tied["spread"] > 0).any():
        tied = tied[tied["spread"] <= tied["spread"].min() * 1.0001]
    pick = tied.sort_values("changes").iloc[0]
    repro = f"bitwise reproducible on {best} of {int(pick['groups'])} workload groups" if best else "smallest spread"
    reason = f"{repro}; chosen on reproducibility alone, because this run cannot judge speed"
    code = "\n".join([snippet(get_setting(pick["setting"])), *axis_snippet(df, cpu)])
    return Recommendation(pick["setting"], reason, code, max_slowdown, cands, notes, caveat)


def _pick(eligible: pd.DataFrame, noise: float) -> tuple[pd.Series, pd.DataFrame]:
    """The most reproducible eligible setting; among ties in price (overlapping intervals
    or within the noise floor) the one that changes fewest flags. Returns it and the ties."""
    best_bitwise = eligible["bitwise_workloads"].max()
    tied = eligible[eligible["bitwise_workloads"] == best_bitwise]
    if (tied["spread"] > 0).any():  # not all bitwise: the smaller spread is more reproducible
        tied = tied[tied["spread"] <= tied["spread"].min() * 1.0001]
    cheapest = tied.loc[tied["max_price"].idxmin()]
    tied = tied[
        (tied["max_price_lo"] <= cheapest["max_price_hi"]) | (tied["max_price"] <= cheapest["max_price"] + noise)
    ]
    return tied.sort_values(["changes", "max_price"]).iloc[0], tied


def _reason(pick: pd.Series, tied: pd.DataFrame, budget: float, noise: float, pooled: list[str]) -> str:
    best_bitwise, groups = int(pick["bitwise_workloads"]), int(pick["groups"])
    repro = (
        f"bitwise reproducible on {best_bitwise} of {groups} workload groups"
        if best_bitwise
        else "not bitwise reproducible on any workload; the smallest spread between repeats"
    )
    where = (
        f"within the {budget:.2f}x budget"
        if pick["max_price"] <= budget
        else f"its interval reaches into the {budget:.2f}x budget"
    )
    reason = (
        f"{repro}; worst price {pick['max_price']:.2f}x the fastest setting "
        f"[{pick['max_price_lo']:.2f}, {pick['max_price_hi']:.2f}], {where} "
        f"(this run detects prices above {noise:.0%})"
    )
    if pick["setting"] in pooled:
        reason += f" (on the CPU {', '.join(pooled)} run the same kernels and are priced as one)"
    if len(tied) > 1:
        others = ", ".join(t for t in tied["setting"] if t != pick["setting"])
        change = "changes no flag" if pick["changes"] == 0 else f"changes {pick['changes']} flag(s) from default"
        reason += f"; {others} tie with it within the noise floor, and {pick['setting']} {change}"
    return reason


def axis_snippet(df: pd.DataFrame, cpu: bool) -> list[str]:
    """Each axis's lines for the values this run used (on the CPU: fix the thread count)."""
    timed = ok_trials(df)
    lines = []
    for axis, _ in axes.each({}):
        if axis.snippet and axis.name in timed:
            lines += axis.snippet(sorted(set(timed[axis.name].dropna())), cpu)
    return lines


def _notes(df: pd.DataFrame, cands: pd.DataFrame, cpu: bool) -> list[str]:
    notes = []
    if cpu:
        notes.append(
            "On the CPU the cuDNN flags do nothing, so default, benchmark, deterministic, "
            "benchmark_deterministic and no_cudnn are one A/A group; the CPU's reproducibility axis is the "
            "thread count (the same seed at another thread count gives other numbers). strict's CPU price is the "
            "NaN fill of uninitialised memory (strict_nofill turns it off)."
        )
    whole = cands[cands["runs_everywhere"] & (cands["bitwise_workloads"] == cands["groups"]) & (cands["groups"] > 0)]
    if not cands.empty and whole.empty:
        notes.append(
            "No setting was bitwise reproducible on every workload on this machine (among settings that ran "
            "on all of them)." + _blockers(df)
        )
    for r in cands[cands["failures"] != ""].itertuples():
        notes.append(f"{r.setting} did not finish everywhere ({r.failures}): see Failures.")
    return notes


def _blockers(df: pd.DataFrame) -> str:
    audits = of_kind(df, Kind.AUDIT) if "audit.alerts" in df else pd.DataFrame()
    ops = sorted(
        {
            f"{a['op']} in {', '.join(a['modules'])}"
            for alerts in audits.get("audit.alerts", [])
            if isinstance(alerts, list)
            for a in alerts
        }
    )
    return (" The audit found ops with no deterministic implementation: " + "; ".join(ops) + ".") if ops else ""
