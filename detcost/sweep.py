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

from detcost import axes, guard
from detcost import env as envmod
from detcost.errors import UsageError
from detcost.profile import PROFILE_STEPS
from detcost.record import ROUND_KINDS, Kind, Status, TrialRecord, TrialSpec, flops_key
from detcost.results import ResultsWriter, open_for_sweep
from detcost.settings import REFERENCE
from detcost.timing import is_cuda, trial_threads
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
    # The quiet-machine guard: wait up to `wait_quiet` s for a busy machine (before the
    # sweep, and before running a busy trial again); `allow_busy` skips both.
    allow_busy: bool = False
    wait_quiet: float = guard.DEFAULT_WAIT_S
    # --precision: add rounds until every price's interval half-width is at most this
    # (0.02: ±2%), up to `max_repeats` rounds.
    precision: float | None = None
    max_repeats: int = 20

    def __post_init__(self) -> None:
        given = dict(self.axes)
        self.axes = {a.name: list(given.pop(a.name, None) or a.defaults_for(self.device)) for a, _ in axes.each({})}
        if given:
            raise UsageError(f"unknown axes {', '.join(given)}; registered: {', '.join(axes.names())}")
        for axis, _ in axes.each({}):
            problems = [axis.check(v, self.device) for v in self.axes[axis.name]] if axis.check else []
            if any(problems):
                raise UsageError(next(p for p in problems if p))
        # The A/A control is `default` run under a second label, and the seed yardstick
        # runs under `default` (contract): both need `default` in the sweep.
        if (self.aa or self.seeds) and REFERENCE not in self.settings:
            self.settings = [REFERENCE, *self.settings]
            self.added_default = True

    added_default: bool = field(default=False, init=False)

    def first_axes(self) -> dict:
        """Each axis at its first value: where the audit, profiled and seed trials run."""
        return self.axis_combinations()[0]

    def axis_combinations(self) -> list[dict]:
        """Every combination of the axes' values that differ: each timed trial runs at each."""
        return axes.combinations(self.axes)


@dataclass
class SweepOutcome:
    planned: list[TrialSpec]
    records: list[TrialRecord]  # latest record of every planned trial in the file
    ran: int
    skipped: int
    stopped_early: bool
    results: Path
    events: list[str] = field(default_factory=list)  # what the quiet-machine guard did
    reruns: int = 0  # trials run a second time because the machine was busy the first
    precision: dict | None = None  # --precision: reached or not, and what each price reached


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


def _van_der_corput(r: int) -> float:
    """0, 1/2, 1/4, 3/4, 1/8, ...: round r's place in [0, 1), spread evenly however many
    rounds follow (so the rounds --precision adds keep moving every setting's position)."""
    x, base = 0.0, 0.5
    while r:
        x, r, base = x + base * (r & 1), r >> 1, base / 2
    return x


def plan(opts: SweepOptions) -> list[TrialSpec]:
    """Every trial of the sweep, in the order they run.

    Repeat-major: repeat r is a round, every setting (and the A/A label) once, back to
    back. Round r's order is rotated by vdc(r) * n places (van der Corput: 0, 1/2, 1/4,
    3/4, ...), a function of r alone, so between two rounds each setting moves by half the
    order, rounds added later keep spreading positions, and any record's place in its
    round can be recomputed.
    """
    first = opts.first_axes()
    specs = [_spec(opts, Kind.AUDIT, w, "strict", 0, opts.seed, first) for w in opts.workloads] if opts.audit else []
    labels = [(Kind.TIMED, s) for s in opts.settings] + ([(Kind.AA, REFERENCE)] if opts.aa else [])
    for r in range(opts.repeats):
        shift = int(_van_der_corput(r) * len(labels))
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
    # Not a daemon: a trial may start processes of its own (DataLoader workers). The
    # parent still reaps it on every path, Ctrl-C included.
    proc = ctx.Process(target=child_main, args=(*args, sender), name=f"detcost-trial {spec.trial_id}")
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
    except BaseException:  # Ctrl-C in the parent: the trial dies with the sweep, at once
        proc.kill()
        raise
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


def ok_trial_ids(records: list[TrialRecord]) -> set[str]:
    """The trials whose newest record is `ok`: what resume skips."""
    return {tid for tid, r in latest_by_trial(records).items() if r.ok}


def run_sweep(
    opts: SweepOptions,
    *,
    resume: bool = False,
    progress: bool = True,
    on_record: Callable[[TrialRecord], None] | None = None,
) -> SweepOutcome:
    """Run the planned trials not already `ok` in the results file, appending each record
    as it ends; with `opts.precision`, add rounds until every price is that precise."""
    existing = [TrialRecord.from_json(r) for r in open_for_sweep(opts.results, resume)]
    if existing:
        opts = replace(opts, run_id=existing[0].spec.run_id)
    planned = plan(opts)
    _check_same_options(existing, planned, opts.results)
    precision = None
    with _Runner(opts, existing, progress, on_record) as runner:
        runner.start_when_quiet()
        stopped = runner.run(runner.todo(planned))
        if opts.precision is not None and not stopped:
            opts, planned, stopped, precision = _add_rounds(opts, runner, planned)
    latest = latest_by_trial(existing + runner.new)
    return SweepOutcome(
        planned=planned,
        records=[latest[s.trial_id] for s in planned if s.trial_id in latest],
        ran=len(runner.new) - runner.reruns,
        reruns=runner.reruns,
        skipped=len({s.trial_id for s in planned} & runner.done_before),
        stopped_early=stopped,
        results=opts.results,
        events=runner.events,
        precision=precision,
    )


def _add_rounds(opts: SweepOptions, runner: _Runner, planned: list[TrialSpec]):
    """--precision: one more round at a time until every price's interval half-width is at
    most the target, or --max-repeats or --max-time comes first."""
    from detcost.derive.prices import half_widths  # the prices' own statistic, not a copy

    while True:
        widths = half_widths(runner.records_of(planned))
        runner.note_widest(max(widths.values(), default=0.0))
        if max(widths.values(), default=0.0) <= opts.precision or opts.repeats >= opts.max_repeats:
            return opts, planned, False, _precision_report(opts, widths, None)
        opts = replace(opts, repeats=opts.repeats + 1)
        planned = plan(opts)
        # only the new round: failed trials of earlier rounds are findings, not retried
        new_round = [s for s in runner.todo(planned) if s.repeat == opts.repeats - 1 and s.kind in ROUND_KINDS]
        if runner.run(new_round):
            widths = half_widths(runner.records_of(planned))
            return opts, planned, True, _precision_report(opts, widths, "--max-time")


def _precision_report(opts: SweepOptions, widths: dict, stopped_by: str | None) -> dict:
    """Whether every price reached the precision; the ones that did not, with what they reached."""
    unmet = {k: w for k, w in widths.items() if not w <= opts.precision}
    return {
        "target": opts.precision,
        "rounds": opts.repeats,
        "reached": not unmet,
        "widest": max(widths.values(), default=0.0),
        "unmet": unmet,
        "stopped_by": None if not unmet else (stopped_by or f"--max-repeats {opts.max_repeats}"),
    }


class _Runner:
    """Runs trials one after another: each record appended as soon as it arrives, a busy
    one run again once the machine is quiet, nothing started past --max-time."""

    def __init__(self, opts: SweepOptions, existing: list[TrialRecord], progress: bool, on_record) -> None:
        self.opts, self.existing, self.on_record = opts, existing, on_record
        self.done_before = ok_trial_ids(existing)
        self.flops = {
            flops_key(r.spec): r.timing.flops_per_step for r in existing if r.timing and r.timing.flops_per_step
        }
        # once per sweep, without touching CUDA; each trial adds its own part
        self.machine = envmod.fingerprint(opts.device, gpu_properties=False)
        self.threads = trial_threads(opts.device, opts.axes.get("threads"))
        self.new: list[TrialRecord] = []
        self.events: list[str] = []
        self.reruns = 0  # busy trials run again once the machine was quiet
        # After a wait that ended with the machine still busy, the sweep stops waiting: the
        # load is not passing, and waiting before every trial would only stretch the run.
        self.gave_up = False
        self.t0 = time.monotonic()
        self.bar = _progress(0, progress)
        self.writer = ResultsWriter(opts.results)

    def __enter__(self) -> _Runner:
        self.writer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self.writer.__exit__(*exc)

    def todo(self, planned: list[TrialSpec]) -> list[TrialSpec]:
        ok = self.done_before | {r.trial_id for r in self.new if r.ok}
        return [s for s in planned if s.trial_id not in ok]

    def records_of(self, planned: list[TrialSpec]) -> list[TrialRecord]:
        latest = latest_by_trial(self.existing + self.new)
        return [latest[s.trial_id] for s in planned if s.trial_id in latest]

    def run(self, specs: list[TrialSpec]) -> bool:
        """Run `specs`; True if --max-time stopped it first."""
        self.bar.total += len(specs)
        self.bar.refresh()
        for spec in specs:
            if self.out_of_time():
                return True
            self.bar.set_postfix_str(spec.trial_id, refresh=True)
            record = self._one(spec)
            retry = (
                record.timing is not None and record.timing.is_busy and not (self.opts.allow_busy or self.out_of_time())
            )
            if retry and self.wait_quiet(f"{spec.trial_id} ran while the machine was busy"):
                self._one(spec)  # run again now that the machine is quiet
                self.reruns += 1
            self.bar.update(1)
        return False

    def _one(self, spec: TrialSpec) -> TrialRecord:
        record = _run_one(self.opts, replace(spec, known_flops=self.flops.get(flops_key(spec))), self.machine)
        if record.timing and record.timing.flops_per_step:
            self.flops[flops_key(spec)] = record.timing.flops_per_step
        self.writer.write(record.to_json())
        self.new.append(record)
        if self.on_record:
            self.on_record(record)
        return record

    def out_of_time(self) -> bool:
        return self.opts.max_time is not None and time.monotonic() - self.t0 > self.opts.max_time

    def start_when_quiet(self) -> None:
        if not self.opts.allow_busy:
            self.wait_quiet("the machine was busy before the sweep started")

    def wait_quiet(self, why: str) -> bool:
        """Wait (bounded by --wait-quiet and --max-time) for the machine to go quiet; True
        if it is quiet now. After a wait that ended busy, only one look is taken each time,
        until the machine is seen quiet again."""
        budget = 0.0 if self.gave_up else self.opts.wait_quiet
        if self.opts.max_time is not None:
            budget = min(budget, max(0.0, self.opts.max_time - (time.monotonic() - self.t0)))

        def paused(load: guard.Load, waited: float) -> None:
            self.bar.set_description_str(f"paused: machine busy ({waited:.0f} s)")
            self.bar.set_postfix_str(load.describe(), refresh=True)

        load, waited = self.look(budget, paused)
        self.bar.set_description_str("detcost")
        if load.busy and not self.gave_up:
            self.events.append(
                f"{why}; still busy after {waited:.0f} s ({load.describe()}): went on, busy trials stay flagged "
                "(no more waiting until the machine is seen quiet)"
            )
        elif not load.busy and (waited > 0 or self.gave_up):
            self.events.append(f"{why}; waited {waited:.0f} s for the machine to go quiet")
        self.gave_up = load.busy
        return not load.busy

    def look(self, budget: float, on_wait) -> tuple[guard.Load, float]:
        return guard.wait_for_quiet(lambda: guard.sample(self.opts.device, self.threads), budget, on_wait)

    def note_widest(self, widest: float) -> None:
        shown = "no interval yet" if widest == float("inf") else f"±{widest:.1%}"
        self.bar.set_description_str(f"detcost (widest {shown}, target ±{self.opts.precision:.1%})")


def _run_one(opts: SweepOptions, spec: TrialSpec, machine: dict) -> TrialRecord:
    method = start_method(opts.start_method, opts.device)
    return run_isolated(spec, method=method, timeout=opts.timeout, results_dir=opts.results.parent, machine=machine)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc="detcost", disable=not enabled, dynamic_ncols=True)
