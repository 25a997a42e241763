"""Explain the price: which ops (and, on CUDA, kernels and cuDNN plans) changed between a
setting and the reference.

A sweep runs one short **profiled trial** per workload x setting, in its own fresh
process, never mixed with the timed trials: a few steps after warm-up under
`torch.profiler`, stored as a per-step op table beside the results. On CUDA the same
trial runs with cuDNN frontend logging on (set by the parent before CUDA starts) and
records which execution plans were chosen. `attribution()` diffs the tables; it never
re-runs training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from detcost.report.tables import is_cpu
from detcost.timing import is_cuda, synchronize

PROFILE_STEPS = 3
TOP_OPS = 8
CUDNN_LOG_ENV = "CUDNN_FRONTEND_LOG_FILE"
CPU_RANKING_NOTE = (
    "On the CPU, self times of single ops are unreliable (first-touch page faults move between ops): ops are "
    "ranked by the change in call count, and 'whole step' is the change in the timed trials' median step; an op "
    "whose calls did not change is listed only when its self time moved by more than 3% of the step, as a hint."
)

# ---- the profiled trial (runs in the trial process) ----------------------------------


def cudnn_log_environ(spec, results_dir: Path | None) -> dict:
    """Environment for the profiled trial's cuDNN frontend log (CUDA only), set by the
    parent before the trial process starts CUDA."""
    if spec.kind != "profiled" or not is_cuda(spec.device) or results_dir is None or not spec.sidecar:
        return {}
    return {"CUDNN_FRONTEND_LOG_INFO": "1", CUDNN_LOG_ENV: str((results_dir / spec.sidecar).with_suffix(".cudnn.log"))}


def _op_rows(prof, steps: int) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        device_kernel = getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        rows.append(
            {
                "name": e.key,
                "kind": "kernel" if device_kernel else "op",
                "calls": e.count / steps,
                "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps,
                "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3 / steps,
                "cpu_memory_bytes": getattr(e, "self_cpu_memory_usage", 0) / steps,
                "device_memory_bytes": getattr(e, "self_device_memory_usage", 0) / steps,
            }
        )
    return rows


# Lines the profiler's C++ side prints on every start and stop: not news to a user.
_PROFILER_CHATTER = ("profiler_start", "profiler_stop", "allocated before the profiling started")


@contextlib.contextmanager
def _quiet_profiler_stderr():
    """Hold back the profiler's start/stop chatter on fd 2; pass anything else through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines():
                if line.strip() and not any(c in line for c in _PROFILER_CHATTER):
                    print(line, file=sys.stderr)


def run_profiled(spec, results_dir: Path | None) -> dict:
    """A few steps after warm-up under torch.profiler; the op table goes to the sidecar."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from detcost.trial import _build, _train_step

    wl = _build(spec)
    wl.model.train()
    for x, y in wl.batches[: spec.warmup]:
        _train_step(wl, x, y)
    synchronize(spec.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda(spec.device) else [])
    batches = wl.batches[spec.warmup : spec.total_steps]
    t0 = time.perf_counter()
    with _quiet_profiler_stderr(), profile(activities=activities, profile_memory=True) as prof:
        for x, y in batches:
            _train_step(wl, x, y)
        synchronize(spec.device)
    wall = (time.perf_counter() - t0) / len(batches)
    rows = _op_rows(prof, len(batches))
    out = {"profiled_steps": len(batches), "profiled_step_s": wall, "cudnn_plans": cudnn_plans(spec)}
    if spec.sidecar and results_dir is not None:
        path = results_dir / spec.sidecar
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows))
        out["sidecar"] = spec.sidecar
    top = sorted(rows, key=lambda r: -(r["self_device_ms"] or r["self_cpu_ms"]))[:5]
    out["top_ops"] = [r["name"] for r in top]
    return out


# ---- cuDNN execution plans (CUDA only) ------------------------------------------------

_PLAN_TAG = re.compile(r"\beng\d+(?:_k\d+=\d+)*")
_NOTE = re.compile(r"CUDNN_(?:NUMERICAL|BEHAVIOR)_NOTE_\w+")
_TIMING = re.compile(r"(eng\d+(?:_k\d+=\d+)*)\D{0,80}?([0-9]+\.?[0-9]*)\s*ms", re.IGNORECASE)
_WORKSPACE = re.compile(r"workspace\D{0,20}(\d+)", re.IGNORECASE)


def parse_cudnn_log(text: str) -> dict:
    """Best-effort summary of a cuDNN frontend log: plan tags (engine + knobs) and how
    often each appears, numeric/behaviour notes, workspace sizes, candidate timings."""
    plans = Counter(_PLAN_TAG.findall(text))
    return {
        "lines": text.count("\n"),
        "plans": dict(plans.most_common(20)),
        "engines": dict(Counter(p.split("_", 1)[0] for p in _PLAN_TAG.findall(text)).most_common(20)),
        "notes": dict(Counter(_NOTE.findall(text)).most_common(10)),
        "max_workspace_bytes": max((int(w) for w in _WORKSPACE.findall(text)), default=None),
        "timings_ms": [(plan, float(ms)) for plan, ms in _TIMING.findall(text)][:50],
    }


def cudnn_plans(spec) -> dict:
    """What the cuDNN frontend log of this trial says, or why there is none."""
    if not is_cuda(spec.device):
        return {"status": "skipped", "reason": "CUDA only: cuDNN does not run on the CPU"}
    path = os.environ.get(CUDNN_LOG_ENV)
    if not path:
        return {"status": "skipped", "reason": f"{CUDNN_LOG_ENV} was not set for this trial"}
    log = Path(path)
    text = log.read_text(errors="replace") if log.is_file() else ""
    if not text.strip():
        return {
            "status": "empty",
            "reason": "cuDNN frontend logging produced nothing in this torch build",
            "log": log.name,
        }
    return {"status": "ok", "log": log.name, **parse_cudnn_log(text)}


# ---- attribution (from stored results only) -------------------------------------------


def load_profiles(df: pd.DataFrame) -> pd.DataFrame:
    """The op tables of all profiled trials: one row per workload x setting x op."""
    from detcost.results import sidecar_path

    trials = df[(df["kind"] == "profiled") & (df["status"] == "ok")] if not df.empty else df
    frames = []
    for rec in trials.to_dict(orient="records"):
        path = sidecar_path(rec)
        if path is None or not path.is_file():
            continue
        ops = pd.DataFrame(json.loads(path.read_text()))
        frames.append(ops.assign(workload=rec["workload"], setting=rec["setting"], device=rec["device"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reference_setting(df: pd.DataFrame, workload: str, speed: pd.DataFrame | None) -> str:
    """`default` on the CPU (where the fastest cuDNN-only setting is picked by noise);
    the fastest timed setting elsewhere."""
    if is_cpu(df) or speed is None or speed.empty:
        return "default"
    rows = speed[(speed["workload"] == workload) & (speed["price"] == 1.0)]
    return str(rows["setting"].iloc[0]) if len(rows) else "default"


def _step_ms(df: pd.DataFrame, workload: str, setting: str) -> float:
    timed = df[
        (df["kind"] == "timed") & (df["status"] == "ok") & (df["workload"] == workload) & (df["setting"] == setting)
    ]
    return float(timed["step_time_median_s"].median() * 1e3) if len(timed) else float("nan")


MIN_CALL_CHANGE = 0.5  # calls per step; smaller changes are the profiler's edges
# On the CPU an op whose call count did not change is shown only if its self time moved
# by at least this share of the reference step (or 0.1 ms): below that it is noise.
CPU_TIME_SHARE = 0.03


def _ranked(diff: pd.DataFrame, cuda: bool, ref_step_ms: float) -> pd.DataFrame:
    """The ops worth showing, most telling first. CUDA: by the change in self device time.
    CPU: ops whose call count changed, by that change; then ops whose self time moved by
    more than the noise allows, by that (indicative only, see CPU_RANKING_NOTE)."""
    calls = diff["calls"].abs()
    if cuda:
        keep = (diff["self_device_ms"].abs() > 0) | (calls >= MIN_CALL_CHANGE)
        return diff[keep].assign(_k=diff["self_device_ms"].abs()).sort_values("_k", ascending=False).drop(columns="_k")
    floor = max(0.1, CPU_TIME_SHARE * ref_step_ms) if ref_step_ms == ref_step_ms else 0.1
    keep = (calls >= MIN_CALL_CHANGE) | (diff["self_cpu_ms"].abs() >= floor)
    order = diff.assign(_c=(calls >= MIN_CALL_CHANGE), _n=calls, _t=diff["self_cpu_ms"].abs())[keep]
    return order.sort_values(["_c", "_n", "_t"], ascending=False).drop(columns=["_c", "_n", "_t"])


def attribution(df: pd.DataFrame, speed: pd.DataFrame | None = None, top: int = TOP_OPS) -> pd.DataFrame:
    """Per workload x setting: the ops whose per-step calls or self time changed most
    against the reference setting, with the change in the whole step's median time."""
    profiles = load_profiles(df)
    if profiles.empty:
        return pd.DataFrame()
    cuda = not is_cpu(df)
    rows = []
    for workload, ops in profiles.groupby("workload", sort=False):
        ref = reference_setting(df, workload, speed)
        base = ops[ops["setting"] == ref].set_index(["name", "kind"])
        if base.empty:
            continue
        for setting, other in ops[ops["setting"] != ref].groupby("setting", sort=False):
            other = other.set_index(["name", "kind"])
            cols = ["calls", "self_cpu_ms", "self_device_ms", "cpu_memory_bytes"]
            both = other[cols].join(base[cols].add_suffix("_ref"), how="outer").fillna(0)
            diff = pd.DataFrame({c: both[c] - both[f"{c}_ref"] for c in cols})
            diff = _ranked(diff, cuda, _step_ms(df, workload, ref)).head(top)
            common = {
                "workload": workload,
                "setting": setting,
                "reference": ref,
                "delta_step_ms": _step_ms(df, workload, setting) - _step_ms(df, workload, ref),
            }
            if diff.empty:  # nothing changed: say so rather than drop the setting
                rows.append(
                    {
                        **common,
                        "op": None,
                        "kind": None,
                        "delta_calls": 0.0,
                        "delta_self_cpu_ms": 0.0,
                        "delta_self_device_ms": 0.0,
                        "delta_cpu_memory_bytes": 0.0,
                    }
                )
            for (name, kind), d in diff.iterrows():
                rows.append(
                    {
                        **common,
                        "op": name,
                        "kind": kind,
                        "delta_calls": d["calls"],
                        "delta_self_cpu_ms": d["self_cpu_ms"],
                        "delta_self_device_ms": d["self_device_ms"],
                        "delta_cpu_memory_bytes": d["cpu_memory_bytes"],
                    }
                )
    return pd.DataFrame(rows)


def headline(rows: pd.DataFrame, cuda: bool) -> str:
    """One sentence per workload x setting: '+309 aten::fill_ calls/step (+1.2 ms self CPU)'."""
    first = rows.iloc[0]
    step = f"; whole step {first.delta_step_ms:+.2f} ms" if pd.notna(first.delta_step_ms) else ""
    lead = f"{first.setting} vs {first.reference} on {first.workload}: "
    if first.op is None or pd.isna(first.op):
        return lead + f"no op's {'time' if cuda else 'call count'} changed" + step
    parts = []
    for r in rows.head(3).itertuples():
        ms = r.delta_self_device_ms if cuda else r.delta_self_cpu_ms
        where = "device" if cuda else "CPU"
        if abs(r.delta_calls) >= MIN_CALL_CHANGE:
            parts.append(f"{r.delta_calls:+.0f} {r.op} calls/step ({ms:+.2f} ms self {where})")
        else:
            parts.append(f"{r.op} {ms:+.2f} ms self {where}" + ("" if cuda else " (same calls; indicative)"))
    return lead + ", ".join(parts) + step
