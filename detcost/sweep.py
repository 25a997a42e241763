"""A sweep: plan every trial, run each in a fresh process, append each record as it ends.

Fresh processes are the point: cuDNN picks algorithms once per process and shape, so
repeats inside one process would hide the variance detcost measures. On the CPU the
trials are forked from a forkserver that has imported torch (and `torch._dynamo`) but
run no op and never touched CUDA: a trial then starts in ~10 ms instead of ~2 s, with
the same results as a spawned interpreter (tested). On CUDA, trials are spawned.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from detcost import axes
from detcost import env as envmod
from detcost.errors import UsageError
from detcost.profile import PROFILE_STEPS
from detcost.record import Kind, Status, TrialRecord, TrialSpec, flops_key
from detcost.results import ResultsWriter, open_for_sweep
from detcost.settings import REFERENCE
from detcost.timing import is_cuda
from detcost.trial import child_main, failure_record, trial_environ
from detcost.workloads import get_workload

# Imported once by the forkserver; each trial forks from it. None of these may call
# torch.cuda at import time (a process that has used CUDA cannot fork usable children).
FORKSERVER_PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch.utils.flop_counter",
    "torch.profiler",
    "numpy",
    "detcost.trial",
]
JOIN_GRACE_S = 10.0  # how long a trial process may take to exit after sending its record
# Rough seconds per trial for --dry-run: measured on a 2-core CPU (default sweep: 243
# trials in 211 s; --quick: 79 s), guessed for a GPU.
ESTIMATED_TRIAL_S = {"cpu": 0.9, "quick": 0.35, "gpu": 15.0}


@dataclass
class SweepOptions:
    workloads: list[str]
    settings: list[str]
    repeats: int
    seed: int
    device: str
    profile: str
    results: Path
    run_id: str
    # Values of each axis; an axis left out runs at its sweep default (threads: torch's count).
    axes: dict[str, list] = field(default_factory=dict)
    steps: int | None = None
    warmup: int | None = None
    timeout: float = 600.0
    seeds: int = 3
    aa: bool = True
    audit: bool = True
    explain: bool = True
    keep_params: bool = False
    start_method: str = "auto"
    max_time: float | None = None

    def __post_init__(self) -> None:
        given = dict(self.axes)
        self.axes = {a.name: list(given.pop(a.name, None) or a.defaults_for(self.device)) for a, _ in axes.each({})}
        if given:
            raise UsageError(f"unknown axes {', '.join(given)}; registered: {', '.join(axes.names())}")
        # The A/A control is `default` run under a second label, and the seed yardstick
        # runs under `default` (contract): both need `default` in the sweep.
        if (self.aa or self.seeds) and REFERENCE not in self.settings:
            self.settings = [REFERENCE, *self.settings]
            self.added_default = True

    added_default: bool = field(default=False, init=False)

    def first_axes(self) -> dict:
        """Each axis at its first value: where the audit, profiled and seed trials run."""
        return {name: values[0] for name, values in self.axes.items()}

    def axis_combinations(self) -> list[dict]:
        """Every combination of the axes' values: each timed trial runs at each."""
        names = list(self.axes)
        return [dict(zip(names, values)) for values in itertools.product(*self.axes.values())]


@dataclass
class SweepOutcome:
    planned: list[TrialSpec]
    records: list[TrialRecord]  # latest record of every planned trial in the file
    ran: int
    skipped: int
    stopped_early: bool
    results: Path


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _spec(opts: SweepOptions, kind: Kind, workload: str, setting: str, repeat: int, seed: int, axes: dict) -> TrialSpec:
    size = get_workload(workload).size(opts.profile)
    spec = TrialSpec(
        run_id=opts.run_id,
        kind=kind,
        workload=workload,
        setting=setting,
        repeat=repeat,
        seed=seed,
        device=opts.device,
        steps=PROFILE_STEPS if kind == Kind.PROFILED else (opts.steps or size.steps),
        warmup=size.warmup if opts.warmup is None else opts.warmup,
        batch_size=size.batch,
        image_size=size.image,
        axes=axes,
        keep_params=opts.keep_params,
    )
    if kind == Kind.AUDIT:
        return spec
    safe = spec.trial_id.replace("/", "__").replace(":", "-")
    return replace(spec, sidecar=f"{opts.results.stem}/{safe}.{'json' if kind == Kind.PROFILED else 'npz'}")


def plan(opts: SweepOptions) -> list[TrialSpec]:
    """Every trial of the sweep, in the order they run.

    Repeat-major; within repeat r the settings (and the A/A label) are rotated by
    r * n / R places, so each setting's position moves by a fair share of the order
    between repeats (half of it with two repeats) and slow drift of the machine spreads
    evenly over settings.
    """
    first = opts.first_axes()
    specs = [_spec(opts, Kind.AUDIT, w, "strict", 0, opts.seed, first) for w in opts.workloads] if opts.audit else []
    labels = [(Kind.TIMED, s) for s in opts.settings] + ([(Kind.AA, REFERENCE)] if opts.aa else [])
    for r in range(opts.repeats):
        shift = (r * len(labels)) // opts.repeats
        rotated = labels[shift:] + labels[:shift]
        for w in opts.workloads:
            for combo in opts.axis_combinations():
                specs += [_spec(opts, kind, w, s, r, opts.seed, combo) for kind, s in rotated]
    if opts.explain:  # after the timed trials, so profiling never disturbs them
        specs += [_spec(opts, Kind.PROFILED, w, s, 0, opts.seed, first) for w in opts.workloads for s in opts.settings]
    for k in range(opts.seeds):
        specs += [_spec(opts, Kind.SEED, w, REFERENCE, 0, opts.seed + 1 + k, first) for w in opts.workloads]
    return specs


def estimate_seconds(specs: list[TrialSpec], profile: str) -> float:
    return len(specs) * ESTIMATED_TRIAL_S[profile]


def start_method(method: str, device: str) -> str:
    if method == "auto":
        method = "spawn" if is_cuda(device) else "forkserver"
    if method not in mp.get_all_start_methods():
        method = "spawn"
    return method


def _context(method: str):
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "the trial process did not exit"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (often the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"the trial process was killed by {name}{hint} before reporting"
    return f"the trial process exited with code {exitcode} before reporting"


def run_isolated(
    spec: TrialSpec,
    *,
    method: str = "forkserver",
    timeout: float = 600.0,
    results_dir: Path | None = None,
    machine: dict | None = None,
) -> TrialRecord:
    """Run one trial in a fresh process and return its record, whatever happens to it.

    A trial that hangs past `timeout` is killed and recorded as `timeout`; one whose
    process dies without sending a record is recorded as `crash`. `machine` is the
    sweep's fingerprint, taken once in the parent and handed to the child.
    """
    ctx = _context(method)
    receiver, sender = ctx.Pipe(duplex=False)
    args = (spec.to_dict(), trial_environ(spec, results_dir), str(results_dir) if results_dir else None, machine)
    proc = ctx.Process(target=child_main, args=(*args, sender), name=f"detcost-trial {spec.trial_id}", daemon=True)
    started = time.perf_counter()
    proc.start()
    sender.close()  # the child holds the only writer: EOF now means the child is gone
    sent, timed_out = _receive(receiver, proc, timeout)
    if sent is not None:
        record = TrialRecord.from_json(sent)
    elif timed_out:
        record = failure_record(
            spec, Status.TIMEOUT, f"no result after {timeout:g} s; the trial process was killed", machine
        )
    else:
        record = failure_record(spec, Status.CRASH, _exit_reason(proc.exitcode), machine)
    # seen from the parent: process start, the trial, sending the record and exiting
    record.process_wall_s = time.perf_counter() - started
    return record


def _receive(receiver, proc, timeout: float) -> tuple[dict | None, bool]:
    """The record the child sent (None if it sent none) and whether it was killed for
    running past `timeout`; the child process is reaped either way."""
    sent, timed_out = None, False
    try:
        if receiver.poll(timeout):
            with contextlib.suppress(EOFError):  # EOF: the process died before sending
                sent = receiver.recv()
        else:
            timed_out = True
            proc.kill()
    finally:
        receiver.close()
        _reap(proc)
    return sent, timed_out


def _reap(proc) -> None:
    proc.join(JOIN_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _check_same_options(existing: list[TrialRecord], planned: list[TrialSpec], path: Path) -> None:
    """--resume continues the same sweep: a trial already in the file must have been run
    with the device and sizes planned now, or the table would mix two configurations."""
    by_id = {s.trial_id: s for s in planned}
    for r in existing:
        spec = by_id.get(r.trial_id)
        if spec is None or spec.sizes() == r.spec.sizes():
            continue
        then, now = r.spec.sizes(), spec.sizes()
        changed = ", ".join(f"{k} {then[k]} -> {now[k]}" for k in now if then[k] != now[k])
        raise UsageError(
            f"{path} was made with other options ({r.trial_id}: {changed}); resume with the same options "
            "(--quick, --steps, --warmup, --device) or choose another --results"
        )


def latest_by_trial(records: list[TrialRecord]) -> dict[str, TrialRecord]:
    """The newest record of each trial: a rerun supersedes a failed attempt."""
    return {r.trial_id: r for r in records}


def run_sweep(
    opts: SweepOptions,
    *,
    resume: bool = False,
    progress: bool = True,
    on_record: Callable[[TrialRecord], None] | None = None,
) -> SweepOutcome:
    """Run the planned trials not already `ok` in the results file; append each record."""
    existing = [TrialRecord.from_json(r) for r in open_for_sweep(opts.results, resume)]
    if existing:
        opts = replace(opts, run_id=existing[0].spec.run_id)
    done = {tid for tid, r in latest_by_trial(existing).items() if r.ok}
    planned = plan(opts)
    _check_same_options(existing, planned, opts.results)
    todo = [s for s in planned if s.trial_id not in done]
    machine = envmod.fingerprint(opts.device)  # once per sweep; each trial adds its own part
    new, stopped = _run_todo(opts, todo, existing, machine, on_record, progress)
    latest = latest_by_trial(existing + new)
    return SweepOutcome(
        planned=planned,
        records=[latest[s.trial_id] for s in planned if s.trial_id in latest],
        ran=len(new),
        skipped=len(planned) - len(todo),
        stopped_early=stopped,
        results=opts.results,
    )


def _run_todo(opts, todo, existing, machine, on_record, progress) -> tuple[list[TrialRecord], bool]:
    """Run the trials in order, each record appended as soon as it arrives; stop before a
    trial that would start past --max-time. Returns the new records and whether it stopped."""
    flops = {flops_key(r.spec): r.timing.flops_per_step for r in existing if r.timing and r.timing.flops_per_step}
    new, t0 = [], time.monotonic()
    bar = _progress(len(todo), progress and bool(todo))
    try:
        with ResultsWriter(opts.results) as writer:
            for spec in todo:
                if opts.max_time is not None and time.monotonic() - t0 > opts.max_time:
                    return new, True
                bar.set_postfix_str(spec.trial_id, refresh=True)
                record = _run_one(opts, replace(spec, known_flops=flops.get(flops_key(spec))), machine)
                if record.timing and record.timing.flops_per_step:
                    flops[flops_key(spec)] = record.timing.flops_per_step
                writer.write(record.to_json())
                new.append(record)
                if on_record:
                    on_record(record)
                bar.update(1)
    finally:
        bar.close()
    return new, False


def _run_one(opts: SweepOptions, spec: TrialSpec, machine: dict) -> TrialRecord:
    method = start_method(opts.start_method, opts.device)
    return run_isolated(spec, method=method, timeout=opts.timeout, results_dir=opts.results.parent, machine=machine)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc="detcost", disable=not enabled, dynamic_ncols=True)
