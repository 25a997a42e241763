"""The cuDNN logs of a profiled trial (CUDA only): the environment that asks cuDNN for
them, and the parsers that read which execution plans (engine + knobs) or algorithms they
name and which ran, into a `record.CudnnPlans`. Never an exception, whatever a file holds:
a log that cannot be read becomes a plan record that says why.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import torch

from detcost.record import CudnnPlans, Kind, TrialSpec
from detcost.timing import is_cuda

CUDNN_LOG_ENV = "CUDNN_FRONTEND_LOG_FILE"  # the frontend's log: plan tags, autotuning times
CUDNN_BACKEND_LOG_ENV = "CUDNN_LOGDEST_DBG"  # cuDNN's API log: every call and its arguments
_LOG_VARS = ("CUDNN_FRONTEND_LOG_INFO", CUDNN_LOG_ENV, "CUDNN_LOGLEVEL_DBG", "CUDNN_LOGINFO_DBG", CUDNN_BACKEND_LOG_ENV)


def logs_cudnn(spec: TrialSpec) -> bool:
    """Whether the trial writes cuDNN's logs: a profiled trial on CUDA (whose setting uses
    cuDNN: `trial.trial_environ` asks that)."""
    return spec.kind == Kind.PROFILED and is_cuda(spec.device)


def cudnn_log_environ(spec: TrialSpec, results_dir: Path | None) -> dict:
    """Environment for the profiled trial's cuDNN logs (CUDA only), in the trial process's
    environment from its start (`start_environ`): the frontend's log and, as its fallback,
    cuDNN's own API log, each to its own file beside the results. A trial cannot know its
    cuDNN version before it imports torch, so both versions' switches of the API log are
    set: CUDNN_LOGLEVEL_DBG=3 (cuDNN 9) and CUDNN_LOGINFO_DBG=1 (cuDNN 8; deprecated in 9)."""
    if not logs_cudnn(spec) or results_dir is None or not spec.sidecar:
        return {}
    stem = results_dir / spec.sidecar
    frontend, backend = stem.with_suffix(".cudnn_frontend.log"), stem.with_suffix(".cudnn_api.log")
    frontend.parent.mkdir(parents=True, exist_ok=True)  # cuDNN opens the files; it does not make folders
    return {
        "CUDNN_FRONTEND_LOG_INFO": "1",
        CUDNN_LOG_ENV: str(frontend),
        "CUDNN_LOGLEVEL_DBG": "3",
        "CUDNN_LOGINFO_DBG": "1",
        CUDNN_BACKEND_LOG_ENV: str(backend),
    }


def rank_environ(rank: int, environ=os.environ) -> dict:
    """For rank `rank` of a DDP trial, before its first cuDNN call: the frontend log's file
    with the rank in its name, so that the ranks (forked from one trial process, so
    started with one file name) do not interleave their lines in one file. The frontend
    reads its variables at its first log line, so a rank can still set them; cuDNN's API
    log was opened as libcudnn loaded, before the fork: its ranks share one file, and each
    reads its own calls from it by their process id (`parse_cudnn_api_log`). {} where the
    trial writes no frontend log to a file."""
    path = environ.get(CUDNN_LOG_ENV)
    if not path or path in ("stdout", "stderr"):
        return {}
    log = Path(path)
    stem, dot, rest = log.name.partition(".")
    return {CUDNN_LOG_ENV: str(log.with_name(f"{stem}.rank{rank}{dot}{rest}"))}


def start_environ(environ: dict) -> dict:
    """Of a trial's environment, what its process must have from its exec: cuDNN reads the
    API log's switches when libcudnn loads, at `import torch`, so set in a process that
    has imported torch (a trial forked from the forkserver) they give no log
    (pytorch#58670). Where the trial asks for the API log, the cuDNN logs' variables; else {}."""
    if CUDNN_BACKEND_LOG_ENV not in environ:
        return {}
    return {k: v for k, v in environ.items() if k in _LOG_VARS}


# ---- cuDNN execution plans (CUDA only) ------------------------------------------------
#
# Two logs, in the formats NVIDIA documents. The frontend's (CUDNN_FRONTEND_LOG_INFO): each
# execution plan it builds, "[cudnn_frontend] CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR :
# ConvFwd_eng0_k2=1_k3=0, numeric_notes:[...] behavior_notes:[...] workSpaceSize: 0" (the tag
# is the operation, the engine's global index and each knob's type=choice), and under
# cudnn.benchmark one "Plan <tag> took <ms>" line per candidate. cuDNN's API log
# (CUDNN_LOGLEVEL_DBG / CUDNN_LOGINFO_DBG): one block per call, headed "cuDNN (v90000)
# function cudnnBackendExecute() called:" or "I! CuDNN (v8204) function ..." (then each
# line starts "i! "; cuDNN 9.3 writes "(v90300 75)"), every argument below it:
# "engine_id: type=int; val=0;", "CUDNN_KNOB_TYPE_KERNEL_CFG: type=int; val=27;", or on the
# legacy API "algo: type=cudnnConvolutionFwdAlgo_t; val=CUDNN_CONVOLUTION_FWD_ALGO_GEMM (2);".

# The API log grows by megabytes a step: a longer log is read as its first and last
# halves of this, the candidates named early and the plans each step runs at the end
# (a head alone may stop inside autotuning, where a candidate ran as often as the kept plan).
_LOG_CAP_CHARS = 64 * 2**20
_PLAN_TAG = re.compile(r"(?:(?<![A-Za-z0-9])([A-Z][A-Za-z]*)_)?(?<![A-Za-z0-9])(eng\d+(?:_k\d+=-?\d+)*)")
_TOOK = re.compile(r"\bPlan\s+(\S+)\s+took\s+([0-9]+\.?[0-9]*(?:[eE][-+]?\d+)?)")
_FAILED = re.compile(r"\bPlan\s+(\S+)\s+failed with\s+(\w+)")
_ROUND_END = re.compile(r"Auto-tuning returns|Autotuned \d+ plans")
_NOTE = re.compile(r"CUDNN_(?:NUMERICAL|BEHAVIOR)_NOTE_\w+")
_WORKSPACE = re.compile(r"workspace\D{0,20}(\d+)", re.IGNORECASE)
# "cuDNN (v90000) function f() called:", "I! CuDNN (v8204) function ...", "(v90300 75)"
_API_CALL = re.compile(r"^\s*(?:[IWE]!\s*)?cudnn\s*\(v(\d+)[^)]*\)\s*function\s+(\w+)\(\)", re.IGNORECASE)
_ENGINE_ID = re.compile(r"\bengine_?id: type=\w+; val=(-?\d+)", re.IGNORECASE)
_KNOB = re.compile(r"\bCUDNN_KNOB_TYPE_(\w+): type=\w+; val=(-?\d+)")
_ALGO = re.compile(r"\balgo: type=cudnn\w*Algo_t; val=(CUDNN_\w+)")
# The calls that run a plan or an algorithm: what they name is what cuDNN executed.
_EXECUTES = {
    "cudnnBackendExecute",
    "cudnnConvolutionForward",
    "cudnnConvolutionBackwardData",
    "cudnnConvolutionBackwardFilter",
}


def _plan_name(match: re.Match) -> str:
    op, tag = match.group(1), match.group(2)
    return f"{op}_{tag}" if op else tag


def _fastest_per_round(lines: list[str]) -> Counter:
    """The fastest plan of each autotuning round, the one cudnn.benchmark keeps: a round is
    a run of "Plan <tag> took <ms>" lines, closed by any other line."""
    chosen, round_ = Counter(), {}
    for line in [*lines, ""]:
        took = _TOOK.search(line)
        if took:
            round_[took[1]] = min(float(took[2]), round_.get(took[1], float("inf")))
        elif round_ and not _FAILED.search(line):
            chosen[min(round_, key=round_.get)] += 1
            round_ = {}
    return chosen


def parse_cudnn_log(text: str) -> dict:
    """What a cuDNN frontend log names: plan tags (operation, engine, knobs) and how often,
    engines, numerical/behaviour notes, the largest workspace, autotuning times, and the
    fastest plan of each autotuning round (`chosen`; empty without cudnn.benchmark, where
    the log lists heuristics' candidates, not the plan that ran)."""
    lines = text.splitlines()
    plans = Counter(_plan_name(m) for m in _PLAN_TAG.finditer(text))
    fastest = _fastest_per_round(lines)
    return {
        "source": "frontend",
        "lines": len(lines),
        "plans": dict(plans.most_common(20)),
        "engines": dict(Counter(m.group(2).split("_", 1)[0] for m in _PLAN_TAG.finditer(text)).most_common(20)),
        "chosen": dict(fastest.most_common(20)),
        "chosen_by": "the fastest plan of each autotuning round" if fastest else None,
        "notes": dict(Counter(_NOTE.findall(text)).most_common(10)),
        "max_workspace_bytes": max((int(w) for w in _WORKSPACE.findall(text)), default=None),
        "timings_ms": [(plan, float(ms)) for plan, ms in _TOOK.findall(text)][:50],
        "failed_plans": len(_FAILED.findall(text)),
    }


_PROCESS = re.compile(r"\bProcess=(\d+)")  # "i! Process=391; Thread=391; GPU=0; ..." closes each call


def _api_calls(lines, pid: int | None = None):
    """(cuDNN version, function, the lines of its arguments) per call of an API log; with
    `pid`, only the calls that process made (the ranks of a DDP trial share one log) and
    those whose block names no process."""
    head, body = None, []
    for line in [*lines, None]:
        call = None if line is None else _API_CALL.match(line)
        if call or line is None:
            made_by = next((int(m[1]) for m in map(_PROCESS.search, body) if m), None)
            if head and (pid is None or made_by in (None, pid)):
                yield (*head, body)
            head, body = (call[1], call[2]) if call else None, []
        elif head:
            body.append(line)


def _engine_tags(body: list[str]) -> list[str]:
    """The engines one call's descriptors name ("eng0"), each followed by the knob lines
    listed under it ("eng0_KERNEL_CFG=27"); an unset engine (-1) names none."""
    tags, current = [], None
    for line in body:
        engine = _ENGINE_ID.search(line)
        if engine:
            current = len(tags) if int(engine[1]) >= 0 else None
            if current is not None:
                tags.append(f"eng{engine[1]}")
            continue
        knob = _KNOB.search(line)
        if knob and current is not None:
            tags[current] += f"_{knob[1]}={knob[2]}"
    return tags


# What names the operation an execute call ran, the same for every candidate plan of it:
# its operation descriptors, its tensors' shapes and types (not the engine, knobs, notes,
# pointers, handles or time, which differ between candidates or between steps).
_OPERATION = re.compile(r"CUDNN_BACKEND_OPERATION_\w+_DESCRIPTOR|\b(?:dim|stride)\w*: type=|\bdataType: type=")


def _operation(function: str, body: list[str]) -> tuple[str, ...] | None:
    """The operation one execute call ran, as the lines of its dump that name it (after the
    function's name); None where the dump names none."""
    named = tuple(line.removeprefix("i!").strip() for line in body if _OPERATION.search(line))
    return (function, *named) if named else None


def _kept_after_autotuning(executions) -> tuple[Counter, bool]:
    """From (operation, plan) per execute call: each operation's plan cudnn.benchmark kept,
    with how often it ran, and whether every call named its operation.

    Under cudnn.benchmark cuDNN executes every candidate plan of an operation while it
    autotunes (the first step that meets the shape), each the same number of times, then
    runs the plan it kept once per step for the rest of the trial. So per operation the
    kept plan is the one executed most (a tie: the one executed last). "The plans after
    the last tuning burst" would need the bursts told apart from the steps, and the log
    marks neither; the count needs only the operation. Without benchmark an operation runs
    one plan, which this keeps too. An execute call whose dump names no operation cannot
    be grouped: every plan such calls ran is kept (candidates included)."""
    per_op, ungrouped, last = {}, Counter(), {}
    for i, (operation, plan) in enumerate(executions):
        if operation is None:
            ungrouped[plan] += 1
            continue
        per_op.setdefault(operation, Counter())[plan] += 1
        last[operation, plan] = i
    kept = Counter(ungrouped)
    for operation, plans in per_op.items():
        plan = max(plans, key=lambda p: (plans[p], last[operation, p]))
        kept[plan] += plans[plan]
    return kept, not ungrouped


def parse_cudnn_api_log(lines, pid: int | None = None) -> dict:
    """What a cuDNN API log names: every plan (engine + knobs) and legacy algorithm any call
    names (`plans`: heuristics' and autotuning's candidates too), the one each operation
    ran after autotuning (`chosen`, see `_kept_after_autotuning`), the engines, and the
    notes. With `pid`, of that process's calls alone."""
    calls, version, named, executions, notes = 0, None, Counter(), [], Counter()
    for call_version, function, body in _api_calls(lines, pid):
        calls, version = calls + 1, call_version
        found = _engine_tags(body) + [a[1] for a in map(_ALGO.search, body) if a]
        named.update(found)
        if function in _EXECUTES:
            operation = _operation(function, body)
            executions.extend((operation, plan) for plan in found)
        notes.update(n for line in body for n in _NOTE.findall(line))
    executed, grouped = _kept_after_autotuning(executions)
    chosen_by = None
    if executed:
        chosen_by = "the plan or algorithm each operation executed most (autotuning's candidates run less)"
        if not grouped:
            chosen_by = "the calls that executed a plan or algorithm (some name no operation: candidates included)"
    return {
        "source": "backend",
        "cudnn_version": version,
        "calls": calls,
        "plans": dict(named.most_common(20)),
        "engines": dict(Counter(t.split("_", 1)[0] for t in named.elements() if t.startswith("eng")).most_common(20)),
        "chosen": dict(executed.most_common(20)),
        "chosen_by": chosen_by,
        "notes": dict(notes.most_common(10)),
    }


def read_cudnn_log(source: str, path: str | None) -> CudnnPlans:
    """One log parsed (status "ok", `log` its file name), or why not (status "not
    parsed", `reason`): never an exception, whatever the file holds."""
    name = "cuDNN frontend log" if source == "frontend" else "cuDNN API log"
    if not path:
        return _not_parsed(f"no {name} was asked for")
    if path in ("stdout", "stderr"):
        return _not_parsed(f"the {name} went to {path}, not to a file")
    log = Path(path)
    try:
        text, truncated = _read_ends(log)
    except OSError as exc:
        return _not_parsed(f"{name} {log.name} unreadable: {exc.strerror or exc}")
    if not text.strip():
        return _not_parsed(f"{name} {log.name} is empty: this build wrote nothing to it")
    # a rank of a DDP trial shares the API log with its sibling ranks: its own calls only
    pid = os.getpid() if "RANK" in os.environ else None
    found = parse_cudnn_log(text) if source == "frontend" else parse_cudnn_api_log(text.splitlines(), pid)
    if not found["plans"] and not found["chosen"]:
        what = f"{found['calls']} API calls" if source == "backend" else f"{found['lines']} lines"
        return _not_parsed(f"{name} {log.name} ({what}) names no cuDNN engine or algorithm")
    found["cudnn_version"] = found.get("cudnn_version") and str(found["cudnn_version"])
    return CudnnPlans(status="ok", log=log.name, truncated=truncated, **found)


def _read_ends(log: Path) -> tuple[str, bool]:
    """The log's text, or where it is longer than `_LOG_CAP_CHARS` bytes its first and last
    halves of that, each cut to whole lines, the last from its first cuDNN call on (a
    call's block is its header and the lines under it); and whether it was cut."""
    cap = _LOG_CAP_CHARS
    with open(log, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if size <= cap:
            return f.read().decode("utf-8", errors="replace"), False
        head = f.read(cap // 2).decode("utf-8", errors="replace")
        f.seek(size - cap // 2)
        tail = f.read().decode("utf-8", errors="replace")
    head = head[: head.rfind("\n") + 1]
    lines = tail.splitlines(keepends=True)[1:]  # the first is a part of a line
    start = next((i for i, line in enumerate(lines) if _API_CALL.match(line)), 0)
    return head + "".join(lines[start:]), True


def _not_parsed(reason: str) -> CudnnPlans:
    return CudnnPlans(status="not parsed", reason=reason)


def cudnn_plans(spec: TrialSpec) -> CudnnPlans:
    """What this trial's cuDNN logs say: the frontend's if it names the plans, else cuDNN's
    API log; which log it used (`source`, `log`), or why neither (`status` "not parsed")."""
    if not is_cuda(spec.device):
        return CudnnPlans(status="skipped", reason="CUDA only: cuDNN does not run on the CPU")
    if not torch.backends.cudnn.enabled:
        return CudnnPlans(status="skipped", reason="cuDNN is disabled in this trial: no plan to log")
    frontend, backend = os.environ.get(CUDNN_LOG_ENV), os.environ.get(CUDNN_BACKEND_LOG_ENV)
    if not frontend and not backend:
        return CudnnPlans(status="skipped", reason=f"neither {CUDNN_LOG_ENV} nor {CUDNN_BACKEND_LOG_ENV} was set")
    reasons = []
    for source, path in (("frontend", frontend), ("backend", backend)):
        found = read_cudnn_log(source, path)
        if found.ok:
            return found
        reasons.append(found.reason)
    return _not_parsed("; ".join(reasons))


def drop_api_log() -> None:
    """Once the logs are parsed (their findings are in the record), remove cuDNN's API log:
    at level 3 it grows by megabytes a step, and a sweep profiles every workload x
    setting. In a DDP trial only rank 0 removes it: its ranks share the one file."""
    path = os.environ.get(CUDNN_BACKEND_LOG_ENV)
    if path and path not in ("stdout", "stderr") and os.environ.get("RANK", "0") == "0":
        Path(path).unlink(missing_ok=True)
