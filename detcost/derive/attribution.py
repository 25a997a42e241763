"""Attribution: which ops (and, on CUDA, kernels) changed between a setting and the
reference, from the op tables the profiled trials stored. Never re-runs training.

CPU: ops whose call count changed, by that change; self times of single ops are
unreliable there (first-touch page faults move between ops), so an op whose calls did not
change is kept only when its self time moved by more than a share of the step.
CUDA: kernels by their device time, ops by their host time, each change counted once.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from detcost.derive.keys import ok_of, sidecar_path
from detcost.derive.prices import Price, Verdict
from detcost.record import Kind, TrialRecord
from detcost.settings import REFERENCE

TOP_OPS = 8


def load_profiles(records: list[TrialRecord]) -> pd.DataFrame:
    """The op tables of all profiled trials: one row per workload x setting x op."""
    frames = []
    for rec in ok_of(records, (Kind.PROFILED,)):
        path = sidecar_path(rec)
        if path is None or not path.is_file():
            continue
        ops = pd.DataFrame(json.loads(path.read_text()))
        frames.append(ops.assign(workload=rec.spec.workload, setting=rec.spec.setting))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reference_setting(workload: str, prices: list[Price], cpu: bool) -> str:
    """`default` on the CPU (where the fastest cuDNN-only setting is picked by noise);
    the fastest timed setting elsewhere."""
    if cpu:
        return REFERENCE
    fastest = [p.label for p in prices if p.key.workload == workload and p.verdict == Verdict.FASTEST]
    return fastest[0] if fastest else REFERENCE


def _step_ms(records: list[TrialRecord], workload: str, setting: str) -> float:
    steps = [r.timing.step_time_median_s for r in ok_of(records) if r.timing and r.spec.workload == workload
             and r.spec.setting == setting]  # fmt: skip
    return float(np.median(steps) * 1e3) if steps else float("nan")


MIN_CALL_CHANGE = 0.5  # calls per step; smaller changes are the profiler's edges
# On the CPU an op whose call count did not change is shown only if its self time moved
# by at least this share of the reference step (or 0.1 ms): below that it is noise.
CPU_TIME_SHARE = 0.03


# On CUDA a change is shown only if it moves the step by at least this share of the
# reference step: below that it is the profiler's noise.
CUDA_TIME_SHARE = 0.01


def rank_changes(diff: pd.DataFrame, cuda: bool, ref_step_ms: float) -> pd.DataFrame:
    """The changes worth showing, most telling first, each with `ms`: the time it moved.

    CUDA: kernels by their device time, ops by their host (self CPU) time. An op row's
    self device time already holds the kernels it launched, which have rows of their own,
    so ranking both by device time would count each change twice. Changes below
    CUDA_TIME_SHARE of the step are dropped (an op whose call count changed is kept).
    CPU: ops whose call count changed, by that change; then ops whose self time moved by
    more than the noise allows, by that (indicative only: see the module docstring)."""
    calls = diff["calls"].abs()
    finite = ref_step_ms == ref_step_ms
    if cuda:
        kernel = diff.index.get_level_values("kind") == "kernel"
        ms = diff["self_device_ms"].where(kernel, diff["self_cpu_ms"])
        floor = CUDA_TIME_SHARE * ref_step_ms if finite else 0.0
        keep = ((ms.abs() >= floor) & (ms != 0)) | (~kernel & (calls >= MIN_CALL_CHANGE))
        return diff.assign(ms=ms)[keep].sort_values("ms", key=abs, ascending=False)
    floor = max(0.1, CPU_TIME_SHARE * ref_step_ms) if finite else 0.1
    keep = (calls >= MIN_CALL_CHANGE) | (diff["self_cpu_ms"].abs() >= floor)
    order = diff.assign(ms=diff["self_cpu_ms"], _c=(calls >= MIN_CALL_CHANGE), _n=calls, _t=diff["self_cpu_ms"].abs())
    return order[keep].sort_values(["_c", "_n", "_t"], ascending=False).drop(columns=["_c", "_n", "_t"])


_DIFF_COLUMNS = ("calls", "self_cpu_ms", "self_device_ms", "cpu_memory_bytes")


def _diff(ops: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Per op and kind: the setting's per-step figures minus the reference's."""
    cols = list(_DIFF_COLUMNS)
    both = ops.set_index(["name", "kind"])[cols].join(base[cols].add_suffix("_ref"), how="outer").fillna(0)
    return pd.DataFrame({c: both[c] - both[f"{c}_ref"] for c in cols})


def _rows(common: dict, diff: pd.DataFrame) -> list[dict]:
    """One row per op that changed; one row with no op when nothing did (said, not dropped)."""
    if diff.empty:
        return [{**common, "op": None, "kind": None, "delta_ms": 0.0, **{f"delta_{c}": 0.0 for c in _DIFF_COLUMNS}}]
    return [
        {**common, "op": name, "kind": kind, "delta_ms": d["ms"], **{f"delta_{c}": d[c] for c in _DIFF_COLUMNS}}
        for (name, kind), d in diff.iterrows()
    ]


def attribution(records: list[TrialRecord], prices: list[Price], cpu: bool, top: int | None = None) -> pd.DataFrame:
    """Per workload x setting: the ops whose per-step calls or self time changed most
    against the reference setting (the `top` of them; all by default, ranked), with the
    change in the whole step's median time."""
    profiles = load_profiles(records)
    if profiles.empty:
        return pd.DataFrame()
    rows = []
    for workload, ops in profiles.groupby("workload", sort=False):
        ref = reference_setting(workload, prices, cpu)
        base = ops[ops["setting"] == ref].set_index(["name", "kind"])
        if base.empty:
            continue
        ref_ms = _step_ms(records, workload, ref)
        for setting, other in ops[ops["setting"] != ref].groupby("setting", sort=False):
            diff = rank_changes(_diff(other, base), not cpu, ref_ms)
            diff = diff.head(top) if top else diff
            common = {"workload": workload, "setting": setting, "reference": ref}
            rows += _rows({**common, "delta_step_ms": _step_ms(records, workload, setting) - ref_ms}, diff)
    return pd.DataFrame(rows)
