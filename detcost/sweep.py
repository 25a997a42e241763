"""A sweep: run every planned trial in a fresh process, append each record as it ends.

Fresh processes are the point: cuDNN picks algorithms once per process and shape, so
repeats inside one process would hide the variance detcost measures. What runs is
`detcost.plan`'s; how the trials run (here one after another, or a round per Ray task) is
`detcost.executors`'; how a trial's process starts, and why its memory layout is varied
from round to round, is `detcost.isolation`'s. Here are the runner that appends each record
as it arrives, resume, the rounds --precision and --decide add, and what the sweep did
(`SweepResult`); and `detcost audit`'s trials, run the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from detcost import axes
from detcost import env as envmod
from detcost.cluster import RaySummary
from detcost.derive.keys import AA_LABEL, GroupKey
from detcost.errors import UsageError
from detcost.executors import Clock, OnRay, Progress, Serial
from detcost.guard import SweepGuard
from detcost.isolation import run_isolated, start_method
from detcost.plan import SweepOptions, plan
from detcost.record import ROUND_KINDS, FlopsCache, Kind, TrialRecord, TrialSpec
from detcost.results import ResultsWriter, open_for_sweep
from detcost.settings import REFERENCE
from detcost.timing import is_cuda
from detcost.train import spec_at_preset


@dataclass(frozen=True)
class PrecisionReport:
    """--precision: the target half-width, the rounds run, whether every price reached it,
    the widest interval, the prices that did not reach it (with what they reached), and
    what stopped the sweep short of it."""

    target: float
    rounds: int
    reached: bool
    widest: float
    unmet: dict[str, float]
    stopped_by: str | None

    def to_json(self) -> dict:
        return {"target": self.target, "rounds": self.rounds, "reached": self.reached, "widest": self.widest,
                "unmet": dict(self.unmet), "stopped_by": self.stopped_by}  # fmt: skip


@dataclass(frozen=True)
class DecideReport:
    """--decide: the budget, the looks and their interval level, the rounds run, how many
    prices stayed undecided, and what stopped the sweep before they were."""

    budget: float
    looks: tuple[int, ...]
    level: float
    rounds: int
    undecided: int
    stopped_by: str | None

    def to_json(self) -> dict:
        return {"budget": self.budget, "looks": list(self.looks), "level": self.level, "rounds": self.rounds,
                "undecided": self.undecided, "stopped_by": self.stopped_by}  # fmt: skip


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
    precision: PrecisionReport | None = None  # --precision: reached or not, and what each price reached
    decide: DecideReport | None = None  # --decide: the budget, the looks, the level, why it stopped
    ray: RaySummary | None = None  # --ray: the cluster's address, the tasks, how many ran at once, its nodes


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
        runner.guard.before_sweep()
        stopped = runner.run(runner.todo(planned))
        if not stopped:
            stopped = runner.rerun_busy(planned)
        if opts.precision is not None and not stopped:
            opts, planned, stopped, precision = _add_rounds(opts, runner, planned)
        if opts.decide is not None and not stopped:
            opts, planned, stopped, decision = _decide_rounds(opts, runner, planned)
        ray = runner.executor.summary()
    latest = latest_by_trial(existing + runner.new)
    records = [latest[s.trial_id] for s in planned if s.trial_id in latest]
    for r in records:  # where their sidecars are: beside the results file
        r.results_path = str(opts.results)
    return SweepResult(
        planned=planned,
        records=records,
        ran=len(runner.new) - runner.guard.reruns,
        reruns=runner.guard.reruns,
        reruns_at_end=runner.guard.again_at_end,
        skipped=len({s.trial_id for s in planned} & runner.done_before),
        stopped_early=stopped,
        results=opts.results,
        events=runner.guard.summary(),
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
        runner.progress.note_widest(max(widths.values(), default=0.0), opts.precision)
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
        runner.progress.note_open(len(undecided) if looked else None, opts.repeats)
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


def _decide_report(opts: SweepOptions, undecided: list, stopped_by: str | None) -> DecideReport:
    """The budget, the looks and their level, the rounds run, and why prices stayed open."""
    return DecideReport(
        budget=opts.decide,
        looks=tuple(opts.looks),
        level=opts.interval_level,
        rounds=opts.repeats,
        undecided=len(undecided),
        stopped_by=None if not undecided else (stopped_by or f"the last look (--max-repeats {opts.max_repeats})"),
    )


def _precision_report(opts: SweepOptions, widths: dict, stopped_by: str | None) -> PrecisionReport:
    """Whether every price reached the precision; the ones that did not, with what they reached."""
    unmet = {k: w for k, w in widths.items() if not w <= opts.precision}
    return PrecisionReport(
        target=opts.precision,
        rounds=opts.repeats,
        reached=not unmet,
        widest=max(widths.values(), default=0.0),
        unmet=unmet,
        stopped_by=None if not unmet else (stopped_by or f"--max-repeats {opts.max_repeats}"),
    )


class _Runner:
    """The sweep's trials as they run, through its executor (`executors.Serial`, or
    `executors.OnRay` under --ray): each record appended to the results file as soon as it
    arrives and its FLOPs learned, a busy one run again once the machine is quiet."""

    def __init__(self, opts: SweepOptions, existing: list[TrialRecord], progress: bool, on_record) -> None:
        self.existing, self.on_record = existing, on_record
        self.done_before = ok_trial_ids(existing)
        self.new: list[TrialRecord] = []
        self.flops = FlopsCache(existing)
        # once per sweep, without touching CUDA; each trial adds its own part
        machine = envmod.fingerprint(opts.device, gpu_properties=False)
        self.clock = Clock(opts.max_time)
        self.progress = Progress(progress)
        threads = axes.host_threads(opts.axes, opts.device)
        self.guard = SweepGuard(opts.device, threads, opts.wait_quiet, opts.allow_busy, self.clock.left,
                                self.progress.paused, self.progress.resumed)  # fmt: skip
        self.writer = ResultsWriter(opts.results)
        executor = Serial if opts.ray is None else OnRay
        self.executor = executor(opts, machine, self._keep, self.flops, self.guard, self.clock, self.progress)

    def __enter__(self) -> _Runner:
        self.writer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close()
        try:
            self.executor.close()
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
        self.progress.add(len(specs))
        return self.executor.run(specs)

    def rerun_busy(self, planned: list[TrialSpec]) -> bool:
        """After the planned trials: those whose newest record still ran busy run once more
        if the machine is quiet now (`guard.SweepGuard.give_another_chance`). True if
        --max-time stopped it."""
        latest = latest_by_trial(self.existing + self.new)
        busy = [s for s in planned if s.trial_id in latest and latest[s.trial_id].is_busy]
        if not self.guard.give_another_chance(busy, self.clock.out_of_time()):
            return False
        return self.run(busy)

    def rounds_at_once(self) -> int:
        return self.executor.rounds_at_once()

    def _keep(self, record: TrialRecord) -> TrialRecord:
        """A record as it arrives: appended to the results file at once, its FLOPs learned."""
        self.flops.learn(record)
        self.writer.write(record.to_json())
        self.new.append(record)
        if self.on_record:
            self.on_record(record)
        return record


def audit_workloads(workloads: list[str], device: str, preset: str) -> list[TrialRecord]:
    """`detcost audit`: one audit trial of each workload under strict at the size `preset`,
    each in a fresh process as a sweep's trials are; a failed one is a record, not an error."""
    method = start_method("auto", device)
    specs = [spec_at_preset(w, "strict", device, preset, run_id="audit", kind=Kind.AUDIT) for w in workloads]
    return [run_isolated(spec, method=method) for spec in specs]
