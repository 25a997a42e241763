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
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from detcost import env as envmod
from detcost.errors import UsageError
from detcost.explain import PROFILE_STEPS
from detcost.results import ResultsWriter, open_for_sweep
from detcost.timing import is_cuda
from detcost.trial import TrialSpec, child_main, failure_record, trial_environ
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
    "detcost.audit",
    "detcost.explain",
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
    threads: list[int]
    profile: str
    results: Path
    run_id: str
    steps: int | None = None
    warmup: int | None = None
    timeout: float = 600.0
    seeds: int = 3
    aa: bool = True
    audit: bool = True
    explain: bool = True
    vary: list[str] = field(default_factory=lambda: ["impl"])
    keep_params: bool = False
    memory_formats: list[str] = field(default_factory=lambda: ["contiguous"])
    start_method: str = "auto"
    max_time: float | None = None

    def __post_init__(self) -> None:
        # The A/A control is `default` run under a second label, and the seed yardstick
        # runs under `default` (contract): both need `default` in the sweep.
        if (self.aa or self.seeds) and "default" not in self.settings:
            self.settings = ["default", *self.settings]
            self.added_default = True

    added_default: bool = field(default=False, init=False)


@dataclass
class SweepOutcome:
    planned: list[TrialSpec]
    records: list[dict]  # latest record of every trial in the file (this run)
    ran: int
    skipped: int
    stopped_early: bool
    results: Path


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _spec(
    opts: SweepOptions,
    kind: str,
    workload: str,
    setting: str,
    repeat: int,
    seed: int,
    threads: int,
    memory_format: str,
    vary: str = "impl",
) -> TrialSpec:
    size = get_workload(workload).size(opts.profile)
    spec = TrialSpec.at_profile(
        workload,
        setting,
        opts.device,
        opts.profile,
        run_id=opts.run_id,
        kind=kind,
        repeat=repeat,
        seed=seed,
        threads=threads,
        steps=opts.steps or size.steps,
        warmup=size.warmup if opts.warmup is None else opts.warmup,
        vary=vary,
        memory_format=memory_format,
        keep_params=opts.keep_params,
    )
    if kind == "audit":
        return spec
    if kind == "profiled":
        spec = replace(spec, steps=PROFILE_STEPS)
    safe = spec.trial_id.replace("/", "__").replace(":", "-")
    return replace(spec, sidecar=f"{opts.results.stem}/{safe}.{'json' if kind == 'profiled' else 'npz'}")


def plan(opts: SweepOptions) -> list[TrialSpec]:
    """Every trial of the sweep, in the order they run.

    Repeat-major; within repeat r the settings (and the A/A label) are rotated by
    r * n / R places, so each setting's position moves by a fair share of the order
    between repeats (half of it with two repeats) and slow drift of the machine spreads
    evenly over settings.
    """
    ref = "default"
    specs: list[TrialSpec] = []
    if opts.audit:
        specs += [
            _spec(opts, "audit", w, "strict", 0, opts.seed, opts.threads[0], "contiguous") for w in opts.workloads
        ]
    labels = [("timed", s) for s in opts.settings] + ([("aa", ref)] if opts.aa else [])
    for r in range(opts.repeats):
        shift = (r * len(labels)) // opts.repeats
        rotated = labels[shift:] + labels[:shift]
        for w in opts.workloads:
            for t in opts.threads:
                for mf in opts.memory_formats:
                    for v in opts.vary:
                        specs += [_spec(opts, kind, w, s, r, opts.seed, t, mf, v) for kind, s in rotated]
    if opts.explain:  # after the timed trials, so profiling never disturbs them
        specs += [
            _spec(opts, "profiled", w, s, 0, opts.seed, opts.threads[0], opts.memory_formats[0])
            for w in opts.workloads
            for s in opts.settings
        ]
    for k in range(opts.seeds):
        specs += [
            _spec(opts, "seed", w, ref, 0, opts.seed + 1 + k, opts.threads[0], opts.memory_formats[0])
            for w in opts.workloads
        ]
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
    environment: dict | None = None,
) -> dict:
    """Run one trial in a fresh process and return its record, whatever happens to it.

    A trial that hangs past `timeout` is killed and recorded as `timeout`; one whose
    process dies without sending a record is recorded as `crash`.
    """
    ctx = _context(method)
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=child_main,
        args=(spec.to_dict(), trial_environ(spec, results_dir), str(results_dir) if results_dir else None, sender),
        name=f"detcost-trial {spec.trial_id}",
        daemon=True,
    )
    started = time.perf_counter()
    proc.start()
    sender.close()  # the child holds the only writer: EOF now means the child is gone
    record, timed_out = None, False
    try:
        if receiver.poll(timeout):
            with contextlib.suppress(EOFError):  # EOF: the process died before sending
                record = receiver.recv()
        else:
            timed_out = True
            proc.kill()
    finally:
        receiver.close()
        proc.join(JOIN_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if record is None and timed_out:
        record = failure_record(
            spec, "timeout", f"no result after {timeout:g} s; the trial process was killed", environment
        )
    elif record is None:
        record = failure_record(spec, "crash", _exit_reason(proc.exitcode), environment)
    # seen from the parent: process start, the trial, sending the record and exiting
    record["process_wall_s"] = time.perf_counter() - started
    return record


def _flops_key(spec: TrialSpec) -> tuple:
    """FLOPs per step depend on the workload, its sizes and layout, not on the setting."""
    return (spec.workload, spec.batch, spec.image, spec.total_steps, spec.memory_format, spec.device)


def _record_flops_key(r: dict) -> tuple:
    return (
        r["workload"],
        r["batch_size"],
        r["image_size"],
        r["warmup"] + r["steps"],
        r.get("memory_format", "contiguous"),
        r["device"],
    )


def _check_same_options(existing: list[dict], planned: list[TrialSpec], path: Path) -> None:
    """--resume continues the same sweep: a trial already in the file must have been run
    with the device and sizes planned now, or the table would mix two configurations."""
    by_id = {s.trial_id: s for s in planned}
    for r in existing:
        spec = by_id.get(r["trial_id"])
        if spec is None:
            continue
        then = (r["device"], r["steps"], r["warmup"], r["batch_size"], r["image_size"])
        now = (spec.device, spec.steps, spec.warmup, spec.batch, spec.image)
        if then != now:
            raise UsageError(
                f"{path} was made with other options ({r['trial_id']}: device, steps, warmup, batch, image "
                f"{then}, now {now}); resume with the same options (--quick, --steps, --warmup, --device) "
                "or choose another --results"
            )


def latest_by_trial(records: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for r in records:
        latest[r["trial_id"]] = r
    return latest


def run_sweep(
    opts: SweepOptions,
    *,
    resume: bool = False,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> SweepOutcome:
    """Run the planned trials not already `ok` in the results file; append each record."""
    existing = open_for_sweep(opts.results, resume)
    if existing:
        opts = replace(opts, run_id=existing[0]["run_id"])
    done = {tid for tid, r in latest_by_trial(existing).items() if r["status"] == "ok"}
    planned = plan(opts)
    _check_same_options(existing, planned, opts.results)
    todo = [s for s in planned if s.trial_id not in done]
    method = start_method(opts.start_method, opts.device)
    environment = envmod.fingerprint(opts.device)
    new: list[dict] = []
    flops = {_record_flops_key(r): r["flops_per_step"] for r in existing if r.get("flops_per_step")}
    stopped = False
    t0 = time.monotonic()
    bar = _progress(len(todo), progress and bool(todo))
    try:
        with ResultsWriter(opts.results) as writer:
            for spec in todo:
                if opts.max_time is not None and time.monotonic() - t0 > opts.max_time:
                    stopped = True
                    break
                bar.set_postfix_str(spec.trial_id, refresh=True)
                spec = replace(spec, known_flops=flops.get(_flops_key(spec)))
                record = run_isolated(
                    spec, method=method, timeout=opts.timeout, results_dir=opts.results.parent, environment=environment
                )
                if record.get("flops_per_step"):
                    flops[_flops_key(spec)] = record["flops_per_step"]
                writer.write(record)
                new.append(record)
                if on_record:
                    on_record(record)
                bar.update(1)
    finally:
        bar.close()
    planned_ids = {s.trial_id for s in planned}
    latest = latest_by_trial(existing + new)
    return SweepOutcome(
        planned=planned,
        records=[r for tid, r in latest.items() if tid in planned_ids],
        ran=len(new),
        skipped=len(planned) - len(todo),
        stopped_early=stopped,
        results=opts.results,
    )


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc="detcost", disable=not enabled, dynamic_ncols=True)
