"""A sweep: plan every trial, run each in a fresh process, append each record as it ends.

Fresh processes are the point: cuDNN picks algorithms once per process and shape, so
repeats inside one process would hide the variance detcost measures. How a trial's
process starts, and why its memory layout is varied from round to round, is
`detcost.isolation`'s; here are the plan (rounds in a Williams design's orders), resume,
--precision's added rounds and the runner that appends each record as it arrives.
"""

from __future__ import annotations

import datetime as _dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from detcost import axes, guard
from detcost import env as envmod
from detcost.errors import HarnessError, UsageError
from detcost.isolation import LAYOUTS, Layout, new_server, run_isolated, start_method
from detcost.profile import PROFILE_STEPS
from detcost.record import ROUND_KINDS, Kind, TrialRecord, TrialSpec, derive_seed, flops_key
from detcost.results import ResultsWriter, open_for_sweep
from detcost.settings import REFERENCE, get_setting
from detcost.timing import is_cuda
from detcost.trial import CUDA_AT_START
from detcost.workloads import get_workload


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
    batch: int | None = None  # the batch of every workload (default: each one's own size)
    timeout: float = 600.0
    seeds: int = 3
    aa: bool = True
    audit: bool = True
    explain: bool = True
    keep_params: bool = False
    start_method: str = "auto"
    # "random": a new forkserver each round and a random heap and environment pad in every
    # trial, so memory-layout bias becomes noise the intervals see (isolation.py); "fixed":
    # one forkserver for the sweep and no pads (what detcost did before; biased, see
    # docs/layout-bias.md).
    layout: str = "random"
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
        if self.layout not in LAYOUTS:
            raise UsageError(f"unknown layout {self.layout!r}; valid: {', '.join(LAYOUTS)}")
        given = dict(self.axes)
        self.axes = {a.name: list(given.pop(a.name, None) or a.defaults_for(self.device)) for a, _ in axes.each({})}
        if given:
            raise UsageError(f"unknown axes {', '.join(given)}; registered: {', '.join(axes.names())}")
        problem = axes.first_problem(self.axes, self.device, [get_workload(w) for w in self.workloads])
        if problem:
            raise UsageError(problem)
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
        batch_size=opts.batch or size.batch,
        image_size=size.image,
        axes=axes,
        keep_params=opts.keep_params,
    )
    if kind == Kind.AUDIT:
        return spec
    safe = spec.trial_id.replace("/", "__").replace(":", "-")
    return replace(spec, sidecar=f"{opts.results.stem}/{safe}.{'json' if kind == Kind.PROFILED else 'npz'}")


def williams_rows(n: int) -> list[list[int]]:
    """A Williams design for n labels: n orders (2n where n is odd) in which every label
    takes every position equally often and directly follows every other label equally
    often, so what one trial leaves behind (a warm core, a full cache) lands on every label
    alike instead of always on the same one, as it does under cyclic shifts."""
    first, lo, hi = [0], 1, n - 1
    while lo <= hi:
        first.append(lo)
        if lo != hi:
            first.append(hi)
        lo, hi = lo + 1, hi - 1
    rows = [[(x + i) % n for x in first[:n]] for i in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def round_order(r: int, n: int, seed: int) -> list[int]:
    """The order of n labels in round r: a row of the Williams design, the rows taken in a
    shuffled order that is drawn again for each pass through the design, and the labels
    assigned to the design's symbols once per sweep; all from `seed`, so any record's
    place in its round can be recomputed and rounds added later continue the design."""
    rows = williams_rows(n)
    symbols = list(range(n))
    random.Random(derive_seed(seed, "round-labels")).shuffle(symbols)
    passes, at = divmod(r, len(rows))
    sequence = list(range(len(rows)))
    random.Random(derive_seed(seed, "round-rows", passes)).shuffle(sequence)
    return [symbols[x] for x in rows[sequence[at]]]


def plan(opts: SweepOptions) -> list[TrialSpec]:
    """Every trial of the sweep, in the order they run.

    Repeat-major: repeat r is a round, every setting (and the A/A label) once, back to
    back, in the order `round_order` gives (a Williams design: positions and predecessors
    balanced over the rounds).
    """
    first = opts.first_axes()
    specs = [_spec(opts, Kind.AUDIT, w, "strict", 0, opts.seed, first) for w in audited(opts)] if opts.audit else []
    labels = [(Kind.TIMED, s) for s in opts.settings] + ([(Kind.AA, REFERENCE)] if opts.aa else [])
    for r in range(opts.repeats):
        ordered = [labels[i] for i in round_order(r, len(labels), opts.seed)]
        for w in opts.workloads:
            for combo in opts.axis_combinations():
                specs += [_spec(opts, kind, w, s, r, opts.seed, combo) for kind, s in ordered]
    if opts.explain:  # after the timed trials, so profiling never disturbs them
        specs += [
            _spec(opts, Kind.PROFILED, w, s, 0, opts.seed, first)
            for w in opts.workloads
            for s in profiled_settings(opts, w)
        ]
    for k in range(opts.seeds):
        specs += [_spec(opts, Kind.SEED, w, REFERENCE, 0, opts.seed + 1 + k, first) for w in opts.workloads]
    return specs


# A workload that is another's net with a strict-safe loss: its op table is the other's
# except under use_deterministic_algorithms, where the other raises on CUDA (nll_loss2d).
LOSS_VARIANTS = {"unet_lossfix": "unet"}


def audited(opts: SweepOptions) -> list[str]:
    """The workloads the sweep audits: every one on the CPU. On CUDA a loss variant is left
    out where its base is audited: the base's warn-only audit lists every alert the variant
    raises, and the variant's timed strict trials show whether strict runs."""
    if not is_cuda(opts.device):
        return list(opts.workloads)
    return [w for w in opts.workloads if LOSS_VARIANTS.get(w) not in opts.workloads]


def profiled_settings(opts: SweepOptions, workload: str) -> list[str]:
    """The settings `workload` is profiled under: every one on the CPU. On CUDA, where a
    trial costs seconds before its first step, a profiled trial that would repeat another's
    op table is left out: a setting that differs from another in the sweep only by not
    NaN-filling new memory (strict_nofill runs strict's kernels less the fill, which
    strict's own table shows), and a loss variant wherever its base workload runs."""
    if not is_cuda(opts.device):
        return list(opts.settings)
    chosen = [s for s in opts.settings if not _fill_variant(s, opts.settings)]
    if LOSS_VARIANTS.get(workload) in opts.workloads:
        chosen = [s for s in chosen if get_setting(s).deterministic_algorithms]
    return chosen


def _fill_variant(name: str, settings: list[str]) -> bool:
    """Whether `name` is another of `settings` but for fill_uninitialized_memory off."""

    def flags(setting: str) -> dict:
        return {k: v for k, v in get_setting(setting).expected_flags().items() if k != "fill_uninitialized_memory"}

    if get_setting(name).fill_uninitialized_memory or not get_setting(name).deterministic_algorithms:
        return False
    return any(get_setting(o).fill_uninitialized_memory and flags(o) == flags(name) for o in settings if o != name)


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


def new_servers(opts: SweepOptions, specs: list[TrialSpec]) -> int:
    """How many forkservers running `specs` starts: one a round under the random layout
    (`_Runner._layout_for`), none with a fixed layout or spawned trials."""
    if opts.layout == "fixed" or start_method(opts.start_method, opts.device) != "forkserver":
        return 0
    return len({s.repeat for s in specs if s.kind in ROUND_KINDS})


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
    records = [latest[s.trial_id] for s in planned if s.trial_id in latest]
    for r in records:  # where their sidecars are: beside the results file
        r.results_path = str(opts.results)
    return SweepOutcome(
        planned=planned,
        records=records,
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
        self.method = start_method(opts.start_method, opts.device)
        # the layouts' draws: from the sweep, so a sweep's layouts can be drawn again
        self.layout_rng = random.Random(f"{opts.run_id}:{opts.seed}:layout")
        self.round: int | None = None  # the round whose forkserver is running
        self.started = False  # whether this sweep has started a forkserver of its own
        self.threads = axes.host_threads(opts.axes, opts.device)
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
            if record.error == CUDA_AT_START:  # every later trial would start tainted too
                raise HarnessError(
                    f"{spec.trial_id}: {CUDA_AT_START} (the forkserver or this process used CUDA); the sweep stopped"
                )
            retry = (
                record.timing is not None and record.timing.is_busy and not (self.opts.allow_busy or self.out_of_time())
            )
            if retry and self.wait_quiet(f"{spec.trial_id} ran while the machine was busy"):
                self._one(spec)  # run again now that the machine is quiet
                self.reruns += 1
            self.bar.update(1)
        return False

    def _one(self, spec: TrialSpec) -> TrialRecord:
        spec = replace(spec, known_flops=self.flops.get(flops_key(spec)))
        record = _run_one(self.opts, spec, self.machine, self._layout_for(spec))
        if record.timing and record.timing.flops_per_step:
            self.flops[flops_key(spec)] = record.timing.flops_per_step
        self.writer.write(record.to_json())
        self.new.append(record)
        if self.on_record:
            self.on_record(record)
        return record

    def _layout_for(self, spec: TrialSpec) -> Layout | None:
        """The trial's layout pads; with the forkserver, a server of this sweep's own for its
        first trial and a new one at each later round, so the labels of one round share a
        layout and the next round draws another."""
        if self.opts.layout == "fixed":
            return None
        if self.method == "forkserver":
            later_round = spec.kind in ROUND_KINDS and self.round not in (None, spec.repeat)
            if not self.started or later_round:
                new_server(self.layout_rng)
            self.started = True
            self.round = spec.repeat if spec.kind in ROUND_KINDS else self.round
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


def _run_one(opts: SweepOptions, spec: TrialSpec, machine: dict, layout: Layout | None) -> TrialRecord:
    method = start_method(opts.start_method, opts.device)
    return run_isolated(
        spec, method=method, timeout=opts.timeout, results_dir=opts.results.parent, machine=machine, layout=layout
    )


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc="detcost", disable=not enabled, dynamic_ncols=True)
