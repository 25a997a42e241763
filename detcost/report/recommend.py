"""The recommendation: the most reproducible setting whose slowdown stays within a budget
on every workload, and the lines of Python that apply it.

Ties (contract): most reproducible first, then lowest price, then fewest changes from
`default`. Prices whose intervals overlap, or that are closer than the machine's noise
floor (the A/A control), count as equal; on a CPU the five settings that run the same
kernels share one price, so noise does not pick among them. A setting is over budget
only when the whole interval of its worst price lies above the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from detcost.report.tables import AA_LABEL, ok_trials, setting_order
from detcost.settings import SETTINGS, get_setting, snippet
from detcost.variance import SEED_LABEL

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


def changes_from_default(name: str) -> int:
    """How many flags a setting changes relative to `default`."""
    base, other = get_setting("default"), get_setting(name)
    return sum(
        getattr(base, f.name) != getattr(other, f.name) for f in fields(base) if f.name not in ("name", "summary")
    )


def noise_floor(speed: pd.DataFrame) -> float:
    aa = speed[speed["setting"] == AA_LABEL]
    if aa.empty:
        return FALLBACK_NOISE
    return float(np.nanmax((aa["price_hi"] - aa["price_lo"]) / 2))


def _same_thread_rows(var: pd.DataFrame) -> pd.DataFrame:
    """Repeats at one thread count: what a setting guarantees (not the cross-thread rows)."""
    if var.empty:
        return var
    rows = var[var["setting"] != SEED_LABEL]
    return rows[~rows["threads"].astype(str).str.contains(" vs ")] if "threads" in rows else rows


def candidates(df: pd.DataFrame, speed: pd.DataFrame, var: pd.DataFrame) -> pd.DataFrame:
    """Per setting: does it run everywhere, its worst price, how reproducible it is."""
    timed = df[df["kind"] == "timed"]
    workloads = sorted(set(timed["workload"]))
    same_thread = _same_thread_rows(var)
    rows = []
    for s in setting_order(timed["setting"].unique()):
        trials = timed[timed["setting"] == s]
        failed = trials[trials["status"] != "ok"]
        prices = speed[speed["setting"] == s]
        worst = prices.loc[prices["price"].idxmax()] if len(prices) else None
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


def recommend(
    df: pd.DataFrame, speed: pd.DataFrame, var: pd.DataFrame, max_slowdown: float = DEFAULT_MAX_SLOWDOWN
) -> Recommendation:
    cands = candidates(df, speed, var)
    cpu = not df.empty and df["device"].astype(str).str.startswith("cpu").all()
    threads = sorted(set(ok_trials(df)["threads"])) if not df.empty else []
    notes = _notes(df, cands, cpu)
    if cpu:
        cands = _pool_cudnn_only(cands)
    # Over budget means clearly over: the whole interval of the worst price lies above it.
    eligible = cands[cands["runs_everywhere"] & ~(cands["max_price_lo"] > 1 + max_slowdown)]
    if eligible.empty:
        return Recommendation(
            None,
            f"no setting ran on every workload within a {max_slowdown:.0%} slowdown",
            "",
            max_slowdown,
            cands,
            notes,
        )
    best_bitwise = eligible["bitwise_workloads"].max()
    tied = eligible[eligible["bitwise_workloads"] == best_bitwise]
    if (tied["spread"] > 0).any():  # not all bitwise: the smaller spread is more reproducible
        tied = tied[tied["spread"] <= tied["spread"].min() * 1.0001]
    # Prices tie when their intervals overlap or they differ by less than the A/A noise floor.
    cheapest = tied.loc[tied["max_price"].idxmin()]
    tied = tied[
        (tied["max_price_lo"] <= cheapest["max_price_hi"])
        | (tied["max_price"] <= cheapest["max_price"] + noise_floor(speed))
    ]
    pick = tied.sort_values(["changes", "max_price"]).iloc[0]
    groups = int(pick["groups"])
    repro = (
        f"bitwise reproducible on {best_bitwise} of {groups} workload groups"
        if best_bitwise
        else "not bitwise reproducible on any workload; the smallest spread between repeats"
    )
    budget = 1 + max_slowdown
    over = pick["max_price"] > budget
    reason = (
        f"{repro}; worst price {pick['max_price']:.2f}x the fastest setting "
        f"[{pick['max_price_lo']:.2f}, {pick['max_price_hi']:.2f}], "
        + ("not clearly over" if over else "within")
        + f" the {budget:.2f}x budget"
    )
    pooled = [c for c in cands["setting"] if c in SETTINGS and SETTINGS[c].cudnn_only]
    if cpu and pick["setting"] in pooled and len(pooled) > 1:
        reason += f" (on the CPU the cuDNN-only settings {', '.join(pooled)} share one pooled price)"
    if len(tied) > 1:
        others = ", ".join(t for t in tied["setting"] if t != pick["setting"])
        change = "changes no flag" if pick["changes"] == 0 else f"changes {pick['changes']} flag(s) from default"
        reason += f"; {others} tie with it within the noise floor, and {pick['setting']} {change}"
    code = snippet(get_setting(pick["setting"]))
    if cpu:
        n = threads[0] if len(threads) == 1 else "N"
        code += f"\ntorch.set_num_threads({n})  # on the CPU, results depend on the thread count: fix it"
    return Recommendation(pick["setting"], reason, code, max_slowdown, cands, notes)


def _pool_cudnn_only(cands: pd.DataFrame) -> pd.DataFrame:
    """On the CPU the settings that differ only in cuDNN flags run the same kernels: give
    them the group's mean price, so measurement noise cannot rank one above another."""
    group = cands["setting"].map(lambda s: s in SETTINGS and SETTINGS[s].cudnn_only)
    if group.sum() > 1:
        cands = cands.copy()
        pooled = cands.loc[group]
        cands.loc[group, "max_price"] = pooled["max_price"].mean()
        cands.loc[group, "max_price_lo"] = pooled["max_price_lo"].min()
        cands.loc[group, "max_price_hi"] = pooled["max_price_hi"].max()
    return cands


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
    audits = df[df["kind"] == "audit"] if "audit.alerts" in df else pd.DataFrame()
    ops = sorted(
        {
            f"{a['op']} in {', '.join(a['modules'])}"
            for alerts in audits.get("audit.alerts", [])
            if isinstance(alerts, list)
            for a in alerts
        }
    )
    return (" The audit found ops with no deterministic implementation: " + "; ".join(ops) + ".") if ops else ""
