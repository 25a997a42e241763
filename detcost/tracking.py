"""Figures for trackers (asv): one sweep's numbers per workload x setting, and a single
training step a timer can call. Keeps the asv files in benchmarks/ declarative."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from detcost import results
from detcost.derive.prices import speed_table
from detcost.derive.variance import same_seed_rows, variance_table
from detcost.plan import SweepOptions
from detcost.record import Status
from detcost.sweep import run_sweep
from detcost.train import TrainStep, spec_at_preset


def _row(table: pd.DataFrame, workload: str, setting: str) -> pd.DataFrame:
    return table[(table["workload"] == workload) & (table["setting"] == setting)] if not table.empty else table


def _figures(df: pd.DataFrame, speed: pd.DataFrame, var: pd.DataFrame, workload: str, setting: str) -> dict:
    """The tracked figures of one workload x setting, or its failure status."""
    row, v = _row(speed, workload, setting), _row(var, workload, setting)
    trials = _row(df, workload, setting)
    if row.empty:
        failed = trials[trials["status"] != str(Status.OK)]["status"]
        return {"status": failed.iloc[0] if len(failed) else "missing"}
    r = row.iloc[0]
    return {
        "status": str(Status.OK),
        "samples_per_s": float(r["samples_per_s"]),
        "step_time_s": float(trials["step_time_median_s"].median()),
        "cold_start_s": float(r["cold_start_s"]),
        "peak_memory_bytes": float(r["peak_memory_bytes"]),
        "achieved_flops": float(r["achieved_flops"]),
        # the report's statistic: step time over default's, paired within rounds
        "slowdown_vs_default": float(r["vs_default"]),
        "divergence": float(v["rel_l2"].iloc[0]) if len(v) else np.nan,
        "identical_fraction": float(v["n_identical"].iloc[0] / v["R"].iloc[0]) if len(v) else np.nan,
    }


def sweep_figures(
    workloads, settings, repeats: int, size_preset: str, device: str, steps: int | None = None, allow_busy: bool = False
) -> dict:
    """Run a sweep (fresh process per trial) and return {(workload, setting): figures}.
    The quiet-machine guard waits for a busy machine unless `allow_busy` (asv's smoke run)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = SweepOptions(
            workloads=list(workloads),
            settings=list(settings),
            repeats=repeats,
            seed=0,
            device=device,
            size_preset=size_preset,
            results=Path(tmp) / "asv.jsonl",
            run_id="asv",
            steps=steps,
            seeds=0,
            aa=False,
            audit=False,
            explain=False,
            allow_busy=allow_busy,
        )
        run_sweep(opts, progress=False)
        df = results.load(opts.results)
        speed = speed_table(df)
        var = same_seed_rows(variance_table(df))
    return {(w, s): _figures(df, speed, var, w, s) for w in workloads for s in settings}


def train_step(workload: str, setting: str, device: str, size_preset: str) -> TrainStep:
    """One training step of a workload under a setting, at a size preset's sizes, for asv's timer."""
    return TrainStep(spec_at_preset(workload, setting, device, size_preset, run_id="step"))
