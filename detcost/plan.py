"""The plan of a sweep: every trial it runs, in the order it runs them.

`SweepOptions` is what a user asked for (workloads, settings, axes, rounds, sizes); `plan`
turns it into `record.TrialSpec`s: the audit, the rounds (each repeat every setting and
the A/A control once, in an order from a Williams design, `round_order`), the profiled
trials and the seed yardstick. Nothing here runs a trial: `detcost.sweep` does, and the
dry run counts and prices the same plan (`new_servers`: the forkservers it would start).
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from detcost import axes, guard
from detcost.derive.policy import DEFAULT_MAX_SLOWDOWN, MIN_ROUNDS, Policy
from detcost.errors import UsageError
from detcost.isolation import LAYOUTS, TRIAL_TIMEOUT_S, start_method
from detcost.profile import PROFILE_STEPS
from detcost.record import Kind, TrialSpec, derive_seed
from detcost.rounds import RoundServers
from detcost.settings import REFERENCE, get_setting
from detcost.stats import LEVEL, decide_looks, level_over_looks
from detcost.timing import is_cuda
from detcost.workloads import get_workload


@dataclass
class SweepOptions:
    workloads: list[str]
    settings: list[str]
    repeats: int
    seed: int
    device: str
    size_preset: str  # the workloads' sizes: gpu, cpu or quick (workloads.SIZE_PRESETS)
    results: Path
    run_id: str
    # Values of each axis; an axis left out runs at its sweep default (threads: torch's count).
    axes: dict[str, list] = field(default_factory=dict)
    steps: int | None = None
    warmup: int | None = None
    batch: int | None = None  # the batch of every workload (default: each one's own size)
    timeout: float = TRIAL_TIMEOUT_S
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
    # --decide: the speed budget (0.10: 10% over the fastest setting); add rounds only to
    # the prices whose interval still straddles 1 + budget, looking at `looks` rounds
    # (fixed when the options are made, so added rounds keep the sweep's interval level).
    decide: float | None = None
    looks: tuple[int, ...] = ()
    min_rounds: int = MIN_ROUNDS  # the least rounds a price is judged on (`derive.policy`): the first look
    # --ray: None runs the rounds one after another here; "local" (a Ray cluster of this
    # machine) or a Ray address runs them in parallel, a Ray task each (detcost.cluster)
    ray: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UsageError(f"unknown layout {self.layout!r}; valid: {', '.join(LAYOUTS)}")
        if self.decide is not None and self.precision is not None:
            raise UsageError("--decide and --precision both add rounds, to different ends: give one of them")
        if self.decide is not None and self.max_repeats < self.min_rounds:  # its first look would pass the cap
            raise UsageError(
                f"--decide judges a price on {self.min_rounds} rounds at least, and --max-repeats "
                f"{self.max_repeats} stops before: give --max-repeats {self.min_rounds} or more"
            )
        if self.decide is not None and not self.looks:
            self.looks = tuple(decide_looks(max(self.repeats, self.min_rounds), self.max_repeats))
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

    @property
    def policy(self) -> Policy:
        """What --decide judges each price by: its budget and the least rounds a verdict needs."""
        return Policy(max_slowdown=self.decide if self.decide is not None else DEFAULT_MAX_SLOWDOWN,
                      min_rounds=self.min_rounds)  # fmt: skip

    @property
    def layout_varied(self) -> bool:
        """Whether trials get random pads and each round a forkserver of its own (`random`)."""
        return self.layout != "fixed"

    @property
    def interval_level(self) -> float:
        """The level of the sweep's intervals: 95%, spread over --decide's looks."""
        return level_over_looks(len(self.looks)) if self.decide is not None else LEVEL

    def first_axes(self) -> dict:
        """Each axis at its first value: where the audit, profiled and seed trials run."""
        return self.axis_combinations()[0]

    def axis_combinations(self) -> list[dict]:
        """Every combination of the axes' values that differ: each timed trial runs at each."""
        return axes.combinations(self.axes)


# The default run's rounds, by device: the least a verdict rests on (MIN_ROUNDS) on a GPU;
# on a CPU, whose trials vary more from one fresh process to the next, rounds enough for
# the A/A control of the default workloads to resolve the default budget at the noise
# measured on a 2-core machine, with room for a neighbour (docs/statistics.md, "The
# default run").
DEFAULT_ROUNDS = {"cuda": MIN_ROUNDS, "cpu": 10}


def default_rounds(device: str) -> int:
    """`detcost run`'s rounds where --repeats is not given."""
    return DEFAULT_ROUNDS["cuda" if is_cuda(device) else "cpu"]


def size_preset(device: str, quick: bool = False) -> str:
    """The size preset a run uses: --quick's, else the device's (gpu on CUDA, cpu)."""
    return "quick" if quick else ("gpu" if is_cuda(device) else "cpu")


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _spec(opts: SweepOptions, kind: Kind, workload: str, setting: str, repeat: int, seed: int, axes: dict) -> TrialSpec:
    size = get_workload(workload).size(opts.size_preset)
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
        interval_level=opts.interval_level,
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


def new_servers(opts: SweepOptions, specs: list[TrialSpec]) -> int:
    """How many forkservers running `specs` starts: one a round under the random layout,
    none with a fixed layout or spawned trials (`rounds.RoundServers`, the sweep's rule)."""
    return RoundServers(opts.layout_varied, start_method(opts.start_method, opts.device)).count(specs)
