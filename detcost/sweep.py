"""A sweep: run every planned trial in a fresh process, append each record as it ends.

Fresh processes are the point: cuDNN picks algorithms once per process and shape, so
repeats inside one process would hide the variance detcost measures. What runs is
`detcost.plan`'s; how a trial's process starts, and why its memory layout is varied from
round to round, is `detcost.isolation`'s. Here are the runner that appends each record as
it arrives, resume, and --precision's added rounds; and `detcost audit`'s trials, run the
same way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from detcost import axes, guard
from detcost import env as envmod
from detcost.derive.keys import AA_LABEL, GroupKey
from detcost.errors import HarnessError, UsageError
from detcost.isolation import Layout, new_server, run_isolated, start_method
from detcost.payloads import BusyReport
from detcost.plan import SweepOptions, plan
from detcost.record import ROUND_KINDS, Kind, TrialRecord, TrialSpec, flops_key
from detcost.results import ResultsWriter, open_for_sweep
from detcost.rounds import RoundServers
from detcost.settings import REFERENCE
from detcost.timing import is_cuda
from detcost.train import spec_at_preset
from detcost.trial import CUDA_AT_START


@dataclass
class SweepResult:
    """What a sweep did: the trials planned, the latest record of each, and how it went."""

    planned: list[TrialSpec]
    records: list[TrialRecord]  # latest record of every planned trial in the file
    ran: int
    skipped: int
    stopped_early: bool
    results: Path
    events: list[str] = field(default_factory=list)  # what the quiet-machine guard did
    reruns: int = 0  # trials run a second time because the machine was busy the first
    reruns_at_end: int = 0  # of those, the ones run again after the planned trials (`rerun_busy`)
    precision: dict | None = None  # --precision: reached or not, and what each price reached
    decide: dict | None = None  # --decide: the budget, the looks, the level, why it stopped
    ray: dict | None = None  # --ray: the cluster's address, the tasks, how many ran at once, its nodes


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
            "(--quick, --steps, --warmup, --batch, --device) or choose another --results"
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
) -> SweepResult:
    """Run the planned trials not already `ok` in the results file, appending each record
    as it ends; with `opts.precision`, add rounds until every price is that precise."""
    existing = [TrialRecord.from_json(r) for r in open_for_sweep(opts.results, resume)]
    if existing:
        opts = replace(opts, run_id=existing[0].spec.run_id)
    planned = plan(opts)
    _check_same_options(existing, planned, opts.results)
    precision = decision = None
    with _Runner(opts, existing, progress, on_record) as runner:
        runner.start_when_quiet()
        stopped = runner.run(runner.todo(planned))
        if not stopped:
            stopped = runner.rerun_busy(planned)
        if opts.precision is not None and not stopped:
            opts, planned, stopped, precision = _add_rounds(opts, runner, planned)
        if opts.decide is not None and not stopped:
            opts, planned, stopped, decision = _decide_rounds(opts, runner, planned)
        ray = runner.cluster.summary() if runner.cluster is not None else None
    if runner.rerun_now:  # one line for them all (the waits above name the trials that made the sweep wait)
        runner.events.append(f"ran {len(runner.rerun_now)} busy trial(s) again at once, the machine quiet: "
                             f"{_named(runner.rerun_now)}")  # fmt: skip
    latest = latest_by_trial(existing + runner.new)
    records = [latest[s.trial_id] for s in planned if s.trial_id in latest]
    for r in records:  # where their sidecars are: beside the results file
        r.results_path = str(opts.results)
    return SweepResult(
        planned=planned,
        records=records,
        ran=len(runner.new) - runner.reruns,
        reruns=runner.reruns,
        reruns_at_end=runner.reruns_at_end,
        skipped=len({s.trial_id for s in planned} & runner.done_before),
        stopped_early=stopped,
        results=opts.results,
        events=runner.events,
        precision=precision,
        decide=decision,
        ray=ray,
    )


def _add_rounds(opts: SweepOptions, runner: _Runner, planned: list[TrialSpec]):
    """--precision: one more round at a time (on Ray, as many as run at once) until every
    price's interval half-width is at most the target, or --max-repeats or --max-time comes
    first."""
    from detcost.derive.prices import half_widths  # the prices' own statistic, not a copy

    while True:
        widths = half_widths(runner.records_of(planned))
        runner.note_widest(max(widths.values(), default=0.0))
        if max(widths.values(), default=0.0) <= opts.precision or opts.repeats >= opts.max_repeats:
            return opts, planned, False, _precision_report(opts, widths, None)
        before = opts.repeats  # one round more; on Ray as many as run at once
        opts = replace(opts, repeats=min(opts.max_repeats, opts.repeats + runner.rounds_at_once()))
        planned = plan(opts)
        # only the new rounds: failed trials of earlier rounds are findings, not retried
        new_rounds = [s for s in runner.todo(planned) if s.repeat >= before and s.kind in ROUND_KINDS]
        if runner.run(new_rounds):
            widths = half_widths(runner.records_of(planned))
            return opts, planned, True, _precision_report(opts, widths, "--max-time")


def _decide_rounds(opts: SweepOptions, runner: _Runner, planned: list[TrialSpec]):
    """--decide: at each look (`opts.looks`), the prices the budget does not decide yet get
    the rounds up to the next look, with their group's fastest setting, `default` and the A/A
    control beside them; decided prices get no more. Until every price is decided, the
    last look (--max-repeats) or --max-time. Between looks no interval is read."""
    from detcost.derive.decide import decided, open_prices  # the analysis's own decisions, not a copy
    from detcost.derive.prices import prices

    cpu = not is_cuda(opts.device)
    policy = opts.policy
    while True:
        rows = decided(prices(runner.records_of(planned), cpu), policy)
        looked = opts.repeats in opts.looks
        undecided = open_prices(rows) if looked else rows
        if looked and (not undecided or opts.repeats >= opts.looks[-1]):
            return opts, planned, False, _decide_report(opts, undecided, None)
        wanted = _beside(rows, undecided)
        grown = replace(opts, repeats=next(n for n in opts.looks if n > opts.repeats))
        added = [s for s in plan(grown) if s.kind in ROUND_KINDS and s.repeat >= opts.repeats
                 and (GroupKey.of_spec(s), AA_LABEL if s.kind == Kind.AA else s.setting) in wanted]  # fmt: skip
        opts, planned = grown, planned + added
        runner.note_open(len(undecided) if looked else None, opts.repeats)
        if runner.run(runner.todo(added)):
            rows = decided(prices(runner.records_of(planned), cpu), policy)
            return opts, planned, True, _decide_report(opts, open_prices(rows), "--max-time")


def _beside(rows: list, undecided: list) -> set[tuple]:
    """(group, label) of every trial a round for the undecided prices runs: their settings,
    and in their groups the fastest label, `default` and the A/A control."""
    open_groups = {p.key for p in undecided}
    wanted = {(p.key.without_machine(), s) for p in undecided for s in p.members}
    for p in rows:
        if p.key in open_groups and (p.label == p.price_vs or p.is_aa or p.label == REFERENCE):
            wanted |= {(p.key.without_machine(), AA_LABEL if p.is_aa else p.label)}
    return wanted | {(p.key.without_machine(), REFERENCE) for p in undecided}


def _decide_report(opts: SweepOptions, undecided: list, stopped_by: str | None) -> dict:
    """The budget, the looks and their level, the rounds run, and why prices stayed open."""
    return {
        "budget": opts.decide,
        "looks": list(opts.looks),
        "level": opts.interval_level,
        "rounds": opts.repeats,
        "undecided": len(undecided),
        "stopped_by": None if not undecided else (stopped_by or f"the last look (--max-repeats {opts.max_repeats})"),
    }


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
        self.method = start_method(opts.start_method, opts.device)
        # the layouts' draws: from the sweep, so a sweep's layouts can be drawn again
        self.layout_rng = random.Random(f"{opts.run_id}:{opts.seed}:layout")
        self.servers = RoundServers(opts.layout_varied, self.method)  # a new forkserver each round
        self.threads = axes.host_threads(opts.axes, opts.device)
        self.new: list[TrialRecord] = []
        self.events: list[str] = []
        self.reruns = 0  # busy trials run again once the machine was quiet
        self.reruns_at_end = 0  # of those, run again after the planned trials
        self.rerun_now: list[TrialSpec] = []  # of those, the ones run again at once
        # After a wait that ended with the machine still busy, the sweep stops waiting: the
        # load is not passing, and waiting before every trial would only stretch the run.
        self.gave_up = False
        self.t0 = time.monotonic()
        self.bar = _progress(0, progress)
        self.writer = ResultsWriter(opts.results)
        self.cluster = None  # --ray: the Ray cluster the rounds run on, connected at the first trial
        self.tasks = 0  # --ray: the tasks submitted, each with a forkserver of its own

    def __enter__(self) -> _Runner:
        self.writer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        try:
            if self.cluster is not None:
                self.cluster.close()
        finally:
            self.writer.__exit__(*exc)

    def todo(self, planned: list[TrialSpec]) -> list[TrialSpec]:
        ok = self.done_before | {r.trial_id for r in self.new if r.ok}
        return [s for s in planned if s.trial_id not in ok]

    def records_of(self, planned: list[TrialSpec]) -> list[TrialRecord]:
        latest = latest_by_trial(self.existing + self.new)
        return [latest[s.trial_id] for s in planned if s.trial_id in latest]

    def run(self, specs: list[TrialSpec]) -> bool:
        """Run `specs`; True if --max-time stopped it first. Nothing to run starts nothing
        (a --resume of a finished sweep joins no Ray cluster)."""
        if not specs:
            return False
        self.bar.total += len(specs)
        self.bar.refresh()
        if self.opts.ray is not None:
            return self._run_on_cluster(specs)
        for spec in specs:
            if self.out_of_time():
                return True
            self.bar.set_postfix_str(spec.trial_id, refresh=True)
            record = self._one(spec)
            _stop_if_cuda_at_start(record, "the forkserver or this process")
            retry = record.is_busy and not (self.opts.allow_busy or self.out_of_time())
            if retry and self.wait_quiet(f"{spec.trial_id} ran while the machine was busy"):
                self._one(spec)  # run again now that the machine is quiet
                self.reruns += 1
                self.rerun_now.append(spec)
            self.bar.update(1)
        return False

    def rerun_busy(self, planned: list[TrialSpec]) -> bool:
        """After the planned trials: those whose newest record still ran busy (the guard
        gave up waiting while they ran) run once more if the machine is quiet now, so a
        neighbour that has left costs no round. True if --max-time stopped it."""
        latest = latest_by_trial(self.existing + self.new)
        busy = [s for s in planned if s.trial_id in latest and latest[s.trial_id].is_busy]
        if not busy or self.opts.allow_busy or self.out_of_time():
            return False
        self.gave_up = False  # one full wait: the trials are worth it
        if not self.wait_quiet(f"{len(busy)} trial(s) ran while the machine was busy"):
            return False
        self.events.append(f"ran {len(busy)} busy trial(s) again at the end, the machine quiet: {_named(busy)}")
        self.reruns += len(busy)
        self.reruns_at_end += len(busy)
        return self.run(busy)

    def _one(self, spec: TrialSpec) -> TrialRecord:
        spec = replace(spec, known_flops=self.flops.get(flops_key(spec)))
        return self._keep(_run_one(self.opts, spec, self.machine, self._layout_for(spec)))

    def _keep(self, record: TrialRecord) -> TrialRecord:
        """A record as it arrives: appended to the results file at once, its FLOPs learned."""
        if record.timing and record.timing.flops_per_step:
            self.flops[flops_key(record.spec)] = record.timing.flops_per_step
        self.writer.write(record.to_json())
        self.new.append(record)
        if self.on_record:
            self.on_record(record)
        return record

    def _run_on_cluster(self, specs: list[TrialSpec]) -> bool:
        """--ray: `specs` as Ray tasks (a round each), run in parallel as the cluster holds
        them (detcost.cluster). A busy trial is not run again at once (its neighbours are
        detcost's own rounds): `rerun_busy` runs those at the end, the machine quiet."""
        from detcost.cluster import tasks_of

        def arrived(record: TrialRecord) -> None:
            self._keep(record)
            self.bar.update(1)
            _stop_if_cuda_at_start(record, "a Ray worker")

        self.bar.set_postfix_str(f"on Ray ({self.opts.ray})", refresh=True)
        return self._connected().run(tasks_of(specs), self._task, arrived, self.out_of_time, self.machine)

    def rounds_at_once(self) -> int:
        """How many rounds run at once: one here; on Ray, as many as the cluster holds."""
        return 1 if self.opts.ray is None else self._connected().slots(self.threads)

    def _connected(self):
        """--ray's cluster, joined (or started) at the first trial, after the guard's first look."""
        from detcost.cluster import Cluster

        if self.cluster is None:
            self.cluster = Cluster.connect(self.opts.ray, self.opts.device)
        return self.cluster

    def _task(self, specs: list[TrialSpec]):
        """A Ray task of `specs`, prepared as it is submitted: the FLOPs learned so far, the
        layouts drawn from the sweep's seed, a forkserver of its own, the time left."""
        from detcost.cluster import Task, task_threads

        specs = [replace(s, known_flops=self.flops.get(flops_key(s))) for s in specs]
        varied = self.opts.layout_varied
        self.tasks += 1
        left = None if self.opts.max_time is None else max(0.0, self.opts.max_time - (time.monotonic() - self.t0))
        return Task(
            specs=specs,
            layouts=[Layout.draw(self.layout_rng) if varied else None for _ in specs],
            server_seed=f"{self.opts.run_id}:{self.opts.seed}:server:{self.tasks}" if varied else None,
            device=self.opts.device,
            start_method=self.opts.start_method,
            timeout=self.opts.timeout,
            results_dir=str(self.opts.results.parent.resolve()),
            seconds_left=left,
            threads=task_threads(specs, self.opts.device),
        )

    def _layout_for(self, spec: TrialSpec) -> Layout | None:
        """The trial's layout pads, after a new forkserver where the trial opens a round
        (`rounds.RoundServers`)."""
        if not self.opts.layout_varied:
            return None
        if self.servers.starts(spec):
            new_server(self.layout_rng)
        return Layout.draw(self.layout_rng)

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

        def paused(load: BusyReport, waited: float) -> None:
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

    def look(self, budget: float, on_wait) -> tuple[BusyReport, float]:
        return guard.wait_for_quiet(lambda: guard.sample(self.opts.device, self.threads), budget, on_wait)

    def note_open(self, undecided: int | None, rounds: int) -> None:
        shown = "every price" if undecided is None else f"{undecided} undecided price(s)"
        self.bar.set_description_str(f"detcost (--decide: {shown}, rounds to {rounds})")

    def note_widest(self, widest: float) -> None:
        shown = "no interval yet" if widest == float("inf") else f"±{widest:.1%}"
        self.bar.set_description_str(f"detcost (widest {shown}, target ±{self.opts.precision:.1%})")


def _named(specs: list[TrialSpec], most: int = 5) -> str:
    """The trials' ids, the first `most` of them and how many more."""
    shown = ", ".join(s.trial_id for s in specs[:most])
    return shown + (f" and {len(specs) - most} more" if len(specs) > most else "")


def _stop_if_cuda_at_start(record: TrialRecord, who: str) -> None:
    """A trial that found CUDA initialised before it started stops the sweep: every later
    trial would start tainted too."""
    if record.error == CUDA_AT_START:
        raise HarnessError(f"{record.trial_id}: {CUDA_AT_START} ({who} used CUDA); the sweep stopped")


def audit_workloads(workloads: list[str], device: str, preset: str) -> list[TrialRecord]:
    """`detcost audit`: one audit trial of each workload under strict at the size `preset`,
    each in a fresh process as a sweep's trials are; a failed one is a record, not an error."""
    method = start_method("auto", device)
    specs = [spec_at_preset(w, "strict", device, preset, run_id="audit", kind=Kind.AUDIT) for w in workloads]
    return [run_isolated(spec, method=method) for spec in specs]


def _run_one(opts: SweepOptions, spec: TrialSpec, machine: dict, layout: Layout | None) -> TrialRecord:
    method = start_method(opts.start_method, opts.device)
    return run_isolated(
        spec, method=method, timeout=opts.timeout, results_dir=opts.results.parent, machine=machine, layout=layout
    )


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc="detcost", disable=not enabled, dynamic_ncols=True)
