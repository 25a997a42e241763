"""Judging what the selfcheck's children and trials report: plain inputs (figures, exit
codes, trial records), so tests can feed them.

The CUDA acceptance suite's verdicts: events against perf_counter, CUDA contexts, the
cuBLAS workspace, strict on unet, out-of-memory, `cuda:N` validation, the cuDNN plan log,
benchmark's algorithm choice, and host-bound trials (by the one rule, `HostBound.judge`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

from detcost.record import TrialRecord
from detcost.selfcheck.checks import (
    ALGORITHMS,
    CONTEXTS,
    CUBLAS,
    DEVICE_INDEX,
    EVENTS,
    HOST_BOUND,
    OOM,
    PLAN_LOG,
    STRICT,
    Check,
    failed,
)
from detcost.selfcheck.child import ChildResult
from detcost.settings import get_setting
from detcost.trial import CUDA_AT_START
from detcost.workloads import get_workload

EVENTS_TARGET = 0.02  # CUDA events against perf_counter between two synchronisations
EVENTS_TARGET_TEXT = f"within ±{EVENTS_TARGET:.0%}"
# What a trial process says when CUDA was in use before it started.
_CUDA_AT_START = (CUDA_AT_START.lower(), "re-initialize cuda")  # detcost's own check; torch's bad-fork error


def events_agreement(event_s: list[float], wall_s: list[float], steps: int = 1) -> Check:
    """Event time over perf_counter time per region; the median's distance from 1."""
    ratios = [e / w for e, w in zip(event_s, wall_s) if w > 0]
    if not ratios:
        return failed(EVENTS, "no region was timed", EVENTS_TARGET_TEXT)
    diff = statistics.median(ratios) - 1
    return Check(
        EVENTS,
        diff,
        EVENTS_TARGET_TEXT,
        abs(diff) <= EVENTS_TARGET,
        f"median of {len(ratios)} regions of {steps} steps: events {statistics.median(event_s) * 1e3:.1f} ms, "
        f"perf_counter {statistics.median(wall_s) * 1e3:.1f} ms",
        figure=f"{diff:+.2%}",
    )


def _outcome(record: TrialRecord | None) -> str:
    if record is None:
        return "no record"
    return str(record.status) + (f" ({record.error})" if record.error else "")


def context_check(parent_initialized: bool, probe: ChildResult, method: str, records: list[TrialRecord]) -> Check:
    """No CUDA context in this process, none at the start of a trial process, and CUDA
    usable in one (a process forked from one that used CUDA cannot initialise it)."""
    problems = ["this process initialised CUDA (torch.cuda.is_initialized())"] if parent_initialized else []
    if probe.error:
        problems.append(f"the probe process failed: {probe.error}")
    else:
        at_start, init_error = probe.value
        problems += [f"a {method} process had CUDA initialised at its start"] if at_start else []
        problems += [f"CUDA did not initialise in a {method} process: {init_error}"] if init_error else []
    tainted = [r for r in records if r.error and any(m in r.error.lower() for m in _CUDA_AT_START)]
    problems += [f"{len(tainted)} trials found CUDA in use at their start: {_outcome(tainted[0])}"] if tainted else []
    detail = "; ".join(problems) or (
        f"this process: not initialised; a {method} process and {len(records)} trials started without CUDA and used it"
    )
    figure = "none" if not problems else f"{len(problems)} found"
    return Check(CONTEXTS, float(len(problems)), "none", not problems, detail, figure=figure)


def cublas_check(record: TrialRecord | None) -> Check:
    """simple_cnn's matmuls under strict ran, with the workspace config read back in the trial."""
    expected = dict(get_setting("strict").env).get("CUBLAS_WORKSPACE_CONFIG")
    target = f"{expected} read back, the trial's matmuls run"
    if record is None:
        return failed(CUBLAS, "the strict simple_cnn trial has no record", target)
    seen = (record.flags or {}).get("cublas_workspace_config")
    ok = record.ok and seen == expected
    detail = f"simple_cnn under strict: {_outcome(record)}; read back in the trial: CUBLAS_WORKSPACE_CONFIG={seen}"
    return Check(CUBLAS, float(ok), target, ok, detail, figure=str(seen))


def strict_check(unet: TrialRecord | None, lossfix: TrialRecord | None) -> Check:
    """unet's per-pixel cross-entropy has no deterministic CUDA kernel; the workaround runs."""
    got = {"unet": unet.status if unet else None, "unet_lossfix": lossfix.status if lossfix else None}
    want = {"unet": "unsupported", "unet_lossfix": "ok"}
    met = sum(str(got[w]) == want[w] for w in want)
    detail = "; ".join(f"{w}: {_outcome(r)}" for w, r in (("unet", unet), ("unet_lossfix", lossfix)))
    figure = ", ".join(f"{w} {got[w] or 'no record'}" for w in want)
    return Check(STRICT, float(met), "unet unsupported, unet_lossfix ok", met == len(want), detail, figure=figure)


def oom_check(records: list[TrialRecord], planned: int, workload: str, preset: str) -> Check:
    """`workload` (its batch oversized at `preset`) recorded as oom, and every trial
    planned after it has a record."""
    oom = next((r for r in records if r.spec.workload == workload), None)
    later = len(records) - (oom is not None)
    ok = oom is not None and str(oom.status) == "oom" and len(records) == planned
    batch = oom.spec.batch_size if oom else get_workload(workload).size(preset).batch
    detail = f"{workload} (a batch of {batch:,}): {_outcome(oom)}; {later} of {planned - 1} later trials ran"
    figure = f"{oom.status if oom else 'no record'}, {later} later trials ran"
    return Check(OOM, float(later), "oom, and the sweep goes on", ok, detail, figure=figure)


def device_index_judge(device: str, exit_code: int, stderr: str) -> Check:
    """A device index past the count is refused with exit code 2 and one `detcost: error` line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("detcost: error")]
    ok = exit_code == 2 and len(errors) == 1
    others = f" (and {len(lines) - len(errors)} other lines on stderr)" if len(lines) > len(errors) else ""
    said = errors[0] if errors else (lines[-1] if lines else "nothing on stderr")
    detail = f"detcost env --device {device}: exit {exit_code}: {said}{others}"
    return Check(DEVICE_INDEX, float(exit_code), "exit 2 with one line", ok, detail, figure=f"exit {exit_code}")


@dataclass(frozen=True)
class Plans:
    """What a profiled trial's cuDNN log says about the plans (engine + knobs) or algorithms."""

    named: frozenset[str]  # every one the log names, candidates included
    chosen: frozenset[str]  # the ones it says ran (empty where the log does not say)


def plans_of(record: TrialRecord) -> tuple[Plans | None, str]:
    """The cuDNN plans a profiled record names (its `cudnn_plans` field), or why none."""
    if not record.ok:
        return None, f"the trial failed: {_outcome(record)}"
    info = record.cudnn_plans
    if info is None:
        return None, "the record has no cudnn_plans field"
    if not info.ok:
        return None, str(info.reason or f"status {info.status}")
    if not info.named:
        return None, "the log was read but names no plan"
    return Plans(info.named, info.ran), ""


def plans_differ(a: Plans, b: Plans) -> bool | None:
    """Whether two trials ran different plans; None where their logs cannot tell."""
    if a.chosen and b.chosen:
        return a.chosen != b.chosen
    if a.chosen or b.chosen:
        known, other = (a, b) if a.chosen else (b, a)
        # a plan one trial ran that the other's log never names: they differ for certain
        return True if known.chosen - other.named else None
    # neither log says which plan ran: the plans they name (autotuning names many more
    # candidates than the heuristics do) are no evidence either way
    return None


_LOG_NAMES = {"frontend": "the cuDNN frontend log", "backend": "cuDNN's API log"}


def plan_log_check(records: list[TrialRecord]) -> Check:
    """How many profiled trials' cuDNN logs were parsed, which log each was read from (the
    frontend's, or cuDNN's API log), and why the others were not."""
    seen = [(r, *plans_of(r)) for r in records]
    parsed = sum(found is not None for _, found, _ in seen)
    sources = Counter(_LOG_NAMES.get(r.cudnn_plans.source, "an unnamed log") for r, found, _ in seen if found)
    reasons = Counter(reason for _, found, reason in seen if found is None)
    why = "; ".join(f"{reason} ({n} trials)" for reason, n in reasons.most_common())
    read = ", ".join(f"{n} from {source}" for source, n in sources.most_common())
    detail = f"{parsed} of {len(records)} profiled trials name their cuDNN plans" + (f" (read {read})" if read else "")
    detail += f"; not parsed: {why}" if why else ""
    fraction = parsed / len(records) if records else math.nan
    return Check(PLAN_LOG, fraction, "parsed, or the reason", parsed > 0, detail, figure=f"{parsed} of {len(records)}")


def _compare_plans(plans: dict) -> tuple[list[str], list[str], list[str]]:
    """Per workload profiled under `benchmark`: (plans differ, same plans, cannot tell)."""
    differ, agree, unknown = [], [], []
    for w in sorted({w for w, s in plans if s == "benchmark"}):
        (a, why_a), (b, why_b) = plans.get((w, "default"), (None, "no default trial")), plans[(w, "benchmark")]
        verdict = plans_differ(a, b) if a is not None and b is not None else None
        if verdict is None:
            why = why_a or why_b or "one log names candidates only, and the other's choices are among them"
            unknown.append(f"{w}: {why}")
        elif verdict:
            ran = (a.chosen or a.named, b.chosen or b.named)
            differ.append(f"{w} (default {', '.join(sorted(ran[0])[:3])}; benchmark {', '.join(sorted(ran[1])[:3])})")
        else:
            agree.append(w)
    return differ, agree, unknown


def algorithms_check(records: list[TrialRecord]) -> Check:
    """Whether `benchmark` chose other cuDNN plans than `default` on some workload; the
    logs agreeing on every workload is an answer too. Unparsed logs leave it open."""
    differ, agree, unknown = _compare_plans({(r.spec.workload, r.spec.setting): plans_of(r) for r in records})
    ok = bool(differ) or (bool(agree) and not unknown)
    figure = f"differ on {len(differ)}" if differ else ("the logs agree" if ok else "cannot tell")
    parts = []
    if differ:
        parts.append(f"differ: {', '.join(differ)}")
    if agree:
        parts.append(f"same plans: {', '.join(agree)}")
    if unknown:
        parts.append(f"cannot tell: {'; '.join(unknown)}")
    detail = "; ".join(parts) or "no workload was profiled under benchmark"
    target = "differ on a workload, or the log says they agree"
    return Check(ALGORITHMS, float(len(differ)), target, ok, detail, figure=figure)


def host_bound_of(record: TrialRecord, step_s: float | None = None) -> tuple[bool | None, float | None]:
    """(host-bound?, kernels' busy share of the step) of a profiled record, by the one
    rule (`record.HostBound.judge`: against `step_s`, a timed trial's median step, where
    given). None for what the record does not say."""
    hb = record.profile.host_bound if record.profile else None
    return hb.judge(step_s) if hb is not None else (None, None)


def _median_steps(timed: list[TrialRecord]) -> dict[str, float]:
    return {r.spec.workload: r.timing.step_time_median_s for r in timed if r.ok and r.timing is not None}


def host_bound_check(records: list[TrialRecord], timed: list[TrialRecord] = ()) -> Check:
    """Which profiled trials at the default sizes were host-bound, judged against the
    timed trials' median step where there is one ("not measured" where the records carry
    no `host_bound`)."""
    target = "none host-bound"
    steps = _median_steps(list(timed))
    broken = [f"{r.spec.workload}: {_outcome(r)}" for r in [*records, *timed] if not r.ok]
    seen = [(r.spec.workload, *host_bound_of(r, steps.get(r.spec.workload))) for r in records if r.ok]
    measured = [(w, flag, share) for w, flag, share in seen if flag is not None]
    failures = f"; failed: {'; '.join(broken)}" if broken else ""
    if not measured:
        detail = f"not measured: no profiled record carries host_bound{failures}"
        return Check(HOST_BOUND, math.nan, target, False if broken else None, detail, figure="not measured")
    bound = [(w, share) for w, flag, share in measured if flag]
    named = ", ".join(w + (f" (kernels busy {s:.0%} of the step)" if s is not None else "") for w, s in bound)
    unmeasured = len(seen) - len(measured)
    detail = (f"host-bound: {named}" if bound else f"{len(measured)} workloads kernel-bound") + (
        f"; {unmeasured} not measured" if unmeasured else ""
    )
    unjudged = [w for w, *_ in measured if w not in steps]
    if unjudged:  # the profiler slows the host side of the steps it watches
        detail += f"; from the profiled steps alone, which err towards host-bound: {', '.join(unjudged)}"
    ok = not bound and not broken
    figure = f"{len(bound)} of {len(measured)}"
    return Check(HOST_BOUND, float(len(bound)), target, ok, detail + failures, figure=figure)
