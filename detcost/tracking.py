"""Figures for trackers (asv): one sweep's numbers per workload x setting, and a single
training step a timer can call. Keeps the asv files in benchmarks/ declarative."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from detcost import results, variance
from detcost.report.tables import speed_table
from detcost.sweep import SweepOptions, run_sweep
from detcost.trial import TrainStep, TrialSpec


def sweep_figures(workloads, settings, repeats: int, profile: str, device: str, steps: int | None = None) -> dict:
    """Run a sweep (fresh process per trial) and return {(workload, setting): figures}."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = SweepOptions(
            workloads=list(workloads),
            settings=list(settings),
            repeats=repeats,
            seed=0,
            device=device,
            threads=[torch.get_num_threads()],
            profile=profile,
            results=Path(tmp) / "asv.jsonl",
            run_id="asv",
            steps=steps,
            seeds=0,
            aa=False,
            audit=False,
            explain=False,
        )
        run_sweep(opts, progress=False)
        df = results.load(opts.results)
        speed = speed_table(df, bootstrap=200)
        var = variance.variance_table(df)
    figures = {}
    for w in workloads:
        default = speed[(speed["workload"] == w) & (speed["setting"] == "default")]["samples_per_s"]
        for s in settings:
            trials = df[(df["workload"] == w) & (df["setting"] == s)]
            row = speed[(speed["workload"] == w) & (speed["setting"] == s)]
            v = var[(var["workload"] == w) & (var["setting"] == s)] if not var.empty else var
            if row.empty:
                failed = trials[trials["status"] != "ok"]["status"]
                figures[(w, s)] = {"status": failed.iloc[0] if len(failed) else "missing"}
                continue
            r = row.iloc[0]
            figures[(w, s)] = {
                "status": "ok",
                "samples_per_s": float(r["samples_per_s"]),
                "step_time_s": float(trials["step_time_median_s"].median()),
                "cold_start_s": float(r["cold_start_s"]),
                "peak_memory_bytes": float(r["peak_memory_bytes"]),
                "achieved_flops": float(r["achieved_flops"]),
                "slowdown_vs_default": float(default.iloc[0] / r["samples_per_s"]) if len(default) else np.nan,
                "divergence": float(v["rel_l2"].iloc[0]) if len(v) else np.nan,
                "identical_fraction": float(v["n_identical"].iloc[0] / v["R"].iloc[0]) if len(v) else np.nan,
            }
    return figures


def train_step(workload: str, setting: str, device: str, profile: str) -> TrainStep:
    """One training step of a workload under a setting, at a profile's sizes, for asv's timer."""
    return TrainStep(TrialSpec.at_profile(workload, setting, device, profile, run_id="step"))
