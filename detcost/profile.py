"""The profiled trial kind: a few steps after warm-up under `torch.profiler`, in its own
fresh process, never mixed with the timed trials. Its per-step op table goes beside the
results, where `detcost.derive.attribution` diffs it against the reference setting.

On CUDA the same trial runs with cuDNN's logs on (in its process's environment from its
start: `isolation.run_isolated` spawns it) and records which execution plans were chosen
(`detcost.cudnn_log`), and measures how busy the kernels kept the GPU in a step: below
`record.HOST_BOUND_BELOW` the host set the pace and a price is understated.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from detcost.cudnn_log import cudnn_plans, drop_api_log
from detcost.record import HostBound, Profile, TrialParts, TrialSpec
from detcost.timing import StepTimer, is_cuda, synchronize
from detcost.train import build, read_back, run_steps, warm_clocks

PROFILE_STEPS = 3


def _on_device(e) -> bool:
    return getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA


def is_kernel(e) -> bool:
    """Whether a profiler event (or a key_averages row) is device work: a kernel, a copy, a
    fill. Not the device-side span of a user annotation (`gpu_user_annotation`:
    Optimizer.step#SGD.step, Optimizer.zero_grad#...), which is on the device too but covers
    every kernel inside its range, gaps included: counted, it would top the kernel ranking
    and count those kernels twice. The one rule for the op table and the busy time."""
    if not _on_device(e):
        return False
    return not (getattr(e, "is_user_annotation", False) or "annotation" in (getattr(e, "activity_type", None) or ""))


def _op_rows(prof, steps: int) -> list[dict]:
    """The op table: ops by their host time, kernels by their device time. A user
    annotation keeps its host-side row (an op); its device-side span is left out."""
    rows = []
    for e in prof.key_averages():
        if _on_device(e) and not is_kernel(e):
            continue
        rows.append(
            {
                "name": e.key,
                "kind": "kernel" if is_kernel(e) else "op",
                "calls": e.count / steps,
                "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps,
                "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3 / steps,
                "cpu_memory_bytes": getattr(e, "self_cpu_memory_usage", 0) / steps,
                "device_memory_bytes": getattr(e, "self_device_memory_usage", 0) / steps,
            }
        )
    return rows


def top_ops(rows: list[dict], n: int = 5) -> tuple[str, ...]:
    """The slowest rows of the op table: by self device time where they have one (kernels
    on CUDA), else by self host time."""
    return tuple(r["name"] for r in sorted(rows, key=lambda r: -(r["self_device_ms"] or r["self_cpu_ms"]))[:n])


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
    """A few steps after warm-up under torch.profiler; the op table goes to the sidecar.
    The warm-up is the timed trials': the step count, each warm-up batch read once (a
    DataLoader's are read once, in order), then on CUDA the clock warm-up
    (`train.warm_clocks`), so the profiled kernels run at the clocks the timed ones do and
    the kernel-busy share is not inflated by idle clocks."""
    wl = build(spec)
    t0 = time.perf_counter()
    run_steps(wl, wl.batches[: spec.warmup])
    synchronize(spec.device)
    warmed = warm_clocks(spec, t0)
    batches = wl.batches[spec.warmup : spec.total_steps]
    prof, step_times, wall = _profile(spec, wl, batches)
    rows = _op_rows(prof, len(batches))
    plans = cudnn_plans(spec)
    drop_api_log()
    found = Profile(
        profiled_steps=len(batches),
        profiled_step_s=wall,
        top_ops=top_ops(rows),
        host_bound=host_bound(_device_intervals(prof), step_times) if is_cuda(spec.device) else None,
        cudnn_plans=plans,
        profiled_clock_warmup_steps=warmed.get("clock_warmup_steps"),
        profiled_clock_warmup_note=warmed.get("clock_warmup_note"),
    )
    return TrialParts(profile=found, sidecar=_save_ops(spec, results_dir, rows), read_back=read_back(wl))


def _profile(spec: TrialSpec, wl, batches) -> tuple:
    """The profiled steps: (the profiler, each step's time as the timed trials take it, the
    wall time per step). The profiler's own start and stop are outside both."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda(spec.device) else [])
    timer = StepTimer(spec.device, len(batches))
    with _quiet_profiler_stderr(), profile(activities=activities, profile_memory=True) as prof:
        t0 = time.perf_counter()
        run_steps(wl, batches, timer=timer)
        step_times = timer.times()  # on CUDA the one synchronisation, after the last step
        wall = (time.perf_counter() - t0) / len(batches)
    return prof, step_times, wall


# ---- host-bound steps (CUDA only) -----------------------------------------------------


def merged_busy_s(intervals) -> float:
    """Time covered by (start, duration) intervals, where they overlap counted once: how
    long the device was busy (kernels on several streams overlap)."""
    busy, covered_to = 0.0, float("-inf")
    for start, duration in sorted(intervals):
        end = start + duration
        if end > covered_to:
            busy += end - max(start, covered_to)
            covered_to = end
    return busy


def host_bound(intervals, step_times: list[float]) -> HostBound:
    """Whether the GPU waited on the host in these steps: device busy time per step
    (`merged_busy_s` of the kernel intervals, over the steps) against the step's event
    time, judged by `HostBound` (below HOST_BOUND_BELOW the step is host-bound).

    The profiler (and cuDNN's logging) slow the host side of these steps, so their own
    fraction errs towards host-bound; the price table judges `kernel_busy_s` against the
    timed trials' step time instead (`HostBound.judge`)."""
    steps = len(step_times)
    busy = merged_busy_s(intervals) / steps if steps else 0.0
    return HostBound.measure(busy, sum(step_times) / steps if steps else 0.0)


def _device_intervals(prof) -> list[tuple[float, float]]:
    """(start, duration) in seconds of each device activity the profiler saw (kernels,
    copies, fills); not the annotation spans, which cover a range of them, gaps included."""
    return [
        (e.time_range.start / 1e6, (e.time_range.end - e.time_range.start) / 1e6) for e in prof.events() if is_kernel(e)
    ]
