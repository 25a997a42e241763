"""The profiled trial kind: a few steps after warm-up under `torch.profiler`, in its own
fresh process, never mixed with the timed trials. Its per-step op table goes beside the
results, where `detcost.derive.attribution` diffs it against the reference setting.

On CUDA the same trial runs with cuDNN frontend logging on (set by the parent before CUDA
starts) and records which execution plans were chosen.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from detcost.record import Kind, TrialParts, TrialSpec
from detcost.timing import is_cuda, synchronize
from detcost.train import build, read_back, run_steps

PROFILE_STEPS = 3
CUDNN_LOG_ENV = "CUDNN_FRONTEND_LOG_FILE"


def cudnn_log_environ(spec: TrialSpec, results_dir: Path | None) -> dict:
    """Environment for the profiled trial's cuDNN frontend log (CUDA only), set by the
    parent before the trial process starts CUDA."""
    if spec.kind != Kind.PROFILED or not is_cuda(spec.device) or results_dir is None or not spec.sidecar:
        return {}
    log = (results_dir / spec.sidecar).with_suffix(".cudnn.log")
    log.parent.mkdir(parents=True, exist_ok=True)  # cuDNN opens the file; it does not make folders
    return {"CUDNN_FRONTEND_LOG_INFO": "1", CUDNN_LOG_ENV: str(log)}


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


def _save_ops(spec: TrialSpec, results_dir: Path | None, rows: list[dict]) -> str | None:
    if not spec.sidecar or results_dir is None:
        return None
    path = results_dir / spec.sidecar
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return spec.sidecar


def run(spec: TrialSpec, results_dir: Path | None) -> TrialParts:
    """A few steps after warm-up under torch.profiler; the op table goes to the sidecar."""
    from torch.profiler import ProfilerActivity, profile

    wl = build(spec)
    run_steps(wl, wl.batches[: spec.warmup])
    synchronize(spec.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda(spec.device) else [])
    batches = wl.batches[spec.warmup : spec.total_steps]
    t0 = time.perf_counter()
    with _quiet_profiler_stderr(), profile(activities=activities, profile_memory=True) as prof:
        run_steps(wl, batches)
        synchronize(spec.device)
    wall = (time.perf_counter() - t0) / len(batches)
    rows = _op_rows(prof, len(batches))
    top = sorted(rows, key=lambda r: -(r["self_device_ms"] or r["self_cpu_ms"]))[:5]
    payload = {
        "profiled_steps": len(batches),
        "profiled_step_s": wall,
        "cudnn_plans": cudnn_plans(spec),
        "top_ops": [r["name"] for r in top],
    }
    return TrialParts(payload=payload, sidecar=_save_ops(spec, results_dir, rows), read_back=read_back(wl))


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


def cudnn_plans(spec: TrialSpec) -> dict:
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
