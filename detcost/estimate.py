"""--dry-run's estimate of a sweep's time: measured seconds per trial on the CPU; on CUDA a
model of each trial (`cuda_figures`: process start, CUDA context, libraries, staging,
warm-up, timed steps from FLOPs over an assumed sustained rate, the setting's expected
slowdown), every figure it assumes listed with where it comes from (`CUDA_FIGURES`), since
no GPU measured them.
On both, each axis adds what its value costs (`axes.cost`: compiling in the cold start, a
DataLoader's reads in every step), with the figures it rests on.
"""

from __future__ import annotations

import socket
import statistics
from dataclasses import asdict, dataclass, field

from detcost import axes, guard
from detcost.audit import AUDIT_STEPS
from detcost.cuda_figures import CUDA_FIGURES, cuda_trial_s
from detcost.record import ROUND_KINDS, Kind, TrialRecord, TrialSpec
from detcost.rounds import rounds_in
from detcost.timing import is_cuda
from detcost.workloads import get_workload

# --dry-run's estimate. On the CPU: seconds per trial, measured on a 2-core CPU (default
# sweep: 243 trials in 211 s; --quick: 79 s). On CUDA each trial is modelled from
# CUDA_FIGURES instead (`estimate`): no GPU was at hand to measure a figure per trial.
ESTIMATED_TRIAL_S = {"cpu": 0.9, "quick": 0.35}
# A new forkserver (one a round under the random layout): importing torch, torch._dynamo
# and the trial's modules again, measured on a 2-core CPU with a CPU-only torch.
CPU_SERVER_S = 2.3


@dataclass
class Estimate:
    seconds: float
    by_kind: dict[str, tuple[int, float]]  # kind -> (trials, seconds)
    cuda: bool = False  # modelled from CUDA_FIGURES rather than measured per trial
    once_s: float = 0.0  # outside the trials: the forkservers' starts, the first look at the machine
    axis_figures: tuple[str, ...] = ()  # what the axes' costs rest on (axes.Cost.basis), once each
    learned: Learned | None = None  # an earlier run's measurements on this machine, where given
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> {SOURCES: trials}
    round_s: float = 0.0  # what one round (every setting and the A/A control once, its forkserver) costs
    rounds: int = 0

    def assumptions(self) -> list[str]:
        """The figures the estimate rests on, one line each: on CUDA the trial's model
        (none on the CPU, measured per trial), then the axes' own."""
        cuda = [f"{f.value:g}{'' if f.unit.startswith('x') else ' '}{f.unit}: {f.basis}" for f in CUDA_FIGURES.values()]
        return (cuda if self.cuda else []) + list(self.axis_figures)

    def trims(self) -> dict[str, float]:
        """On CUDA, where the estimate is over the 15-minute goal (GOAL_S): the flags that
        would trim the plan, each with the seconds it saves, most first; {} under the goal
        or on the CPU."""
        if not self.cuda or self.seconds <= GOAL_S:
            return {}
        spent = {kind: seconds for kind, (_, seconds) in self.by_kind.items()}
        out = {f"--repeats {self.rounds - 1}": self.round_s} if self.rounds > 1 else {}
        for kind, flag in ((Kind.PROFILED, "--no-explain"), (Kind.SEED, "--seeds 0"), (Kind.AUDIT, "--no-audit")):
            if spent.get(str(kind)):
                out[flag] = spent[str(kind)]
        return dict(sorted(out.items(), key=lambda item: -item[1]))


def estimate(
    specs: list[TrialSpec], size_preset: str, new_servers: int = 0, learned: Learned | None = None
) -> Estimate:
    """How long `specs` would take: measured seconds per trial on the CPU; on CUDA a model
    of each trial (CUDA_FIGURES), with each workload's FLOPs counted on the meta device;
    plus `new_servers` forkserver starts (one a round under the random layout). With
    `learned` (an earlier run on this machine, `learn`), a trial it measured takes its
    measured time, one of a kind it measured the model's times that kind's ratio."""
    cuda = any(is_cuda(s.device) for s in specs)
    by_kind: dict[str, tuple[int, float]] = {}
    sources: dict[str, dict[str, int]] = {}
    figures: dict[str, None] = {}
    in_rounds = 0.0
    for spec in specs:
        figures.update(dict.fromkeys(axes.cost(spec).basis))
        seconds, source = _trial_s(spec, size_preset, learned)
        n, total = by_kind.get(str(spec.kind), (0, 0.0))
        by_kind[str(spec.kind)] = (n + 1, total + seconds)
        counts = sources.setdefault(str(spec.kind), dict.fromkeys(SOURCES, 0))
        counts[source] += 1
        in_rounds += seconds if spec.kind in ROUND_KINDS else 0.0
    # the first server is in `once` on CUDA, and in the measured seconds a trial on the CPU
    server_s = CUDA_FIGURES["server_s"].value if cuda else CPU_SERVER_S
    once = CUDA_FIGURES["server_s"].value + guard.SAMPLE_S if cuda and specs else 0.0
    once += max(new_servers - 1, 0) * server_s if specs else 0.0
    rounds = len(rounds_in(specs))
    round_s = in_rounds / rounds + (server_s if new_servers else 0.0) if rounds else 0.0
    total = once + sum(t for _, t in by_kind.values())
    return Estimate(total, by_kind, cuda, once, tuple(figures), learned, sources, round_s, rounds)


def _trial_s(spec: TrialSpec, size_preset: str, learned: Learned | None) -> tuple[float, str]:
    """One trial's seconds and where they come from (one of SOURCES)."""
    model = _model_s(spec, size_preset)
    return learned.trial_s(spec, model) if learned else (model, ASSUMED)


def _model_s(spec: TrialSpec, size_preset: str) -> float:
    """One trial as assumed: the CUDA model, or the CPU's figure per trial; the axes' costs added."""
    base = cuda_trial_s(spec) if is_cuda(spec.device) else ESTIMATED_TRIAL_S.get(size_preset, ESTIMATED_TRIAL_S["cpu"])
    return base + _axes_s(spec, axes.cost(spec))


def _axes_s(spec: TrialSpec, cost: axes.Cost) -> float:
    """What the axes add to one trial: their cold start each time the workload is built
    (the audit builds it twice, for its two passes), their step cost each step it runs."""
    if spec.kind == Kind.AUDIT:
        return 2 * (cost.cold_start_s + AUDIT_STEPS * cost.step_s)
    return cost.cold_start_s + spec.total_steps * cost.step_s


# ---- learning from an earlier run on this machine ---------------------------------------
#
# `detcost run --dry-run --estimate-from RESULTS.jsonl`: each record's process_wall_s (seen
# from the parent: the trial's process start to its exit) is what that trial took here.

MEASURED_HERE = "measured"  # the same trial (kind, workload, setting, sizes, axes) ran: its median process_wall_s
SCALED = "scaled"  # the model, times the measured/assumed ratio of its kind (and workload, where measured)
ASSUMED = "assumed"  # the model alone: nothing of its kind was measured
SOURCES = (MEASURED_HERE, SCALED, ASSUMED)
GOAL_S = 15 * 60  # the default GPU sweep's goal: a first look at every workload in a quarter of an hour


@dataclass(frozen=True)
class Learned:
    """What an earlier results file measured on this machine: the process wall time of each
    trial it ran, and per kind (and kind x workload) how far that was from the model."""

    source: str  # the results file
    records: int  # its records used: this machine's and device's, with a process_wall_s
    left_out: int  # the others: another machine or device, or no process_wall_s
    walls: dict[tuple, float]  # _trial_key -> median process_wall_s
    ratios: dict[tuple, float]  # (kind,) and (kind, workload) -> median of measured / assumed
    busy: int = 0  # records used that the guard flagged busy (their times may be long)

    def trial_s(self, spec: TrialSpec, model_s: float) -> tuple[float, str]:
        """`spec`'s seconds: measured where the same trial ran, else the model scaled by its
        workload's ratio of its kind, else by its kind's, else the model as it is."""
        wall = self.walls.get(_trial_key(spec))
        if wall is not None:
            return wall, MEASURED_HERE
        for key in _ratio_keys(spec):
            if key in self.ratios:
                return model_s * self.ratios[key], SCALED
        return model_s, ASSUMED

    def to_json(self) -> dict:
        return {
            "from": self.source,
            "records": self.records,
            "left_out": self.left_out,
            "busy": self.busy,
            "ratios": {"/".join(k): v for k, v in self.ratios.items()},
        }


def _ratio_keys(spec: TrialSpec) -> tuple[tuple, ...]:
    """The measured/assumed ratios a trial teaches and is scaled by: its kind's on its
    workload, then its kind's."""
    return (str(spec.kind), spec.workload), (str(spec.kind),)


def learn(
    records: list[TrialRecord], source: str, device: str, gpu: str | None = None, host: str | None = None
) -> Learned:
    """The process wall times of `records` that ran on this machine (`host`, this one's name
    by default; on CUDA the same `gpu` where both are named) and on the same kind of device
    (CPU or CUDA) as `device`. A trial flagged busy counts too (and is counted): the time
    a trial takes is mostly its fixed costs, which a busy CPU or a GPU process that the
    guard took for another changes little, and where every trial is flagged (a GPU whose
    process list names the trial itself) there would be nothing else to learn from."""
    host = socket.gethostname() if host is None else host
    used = [r for r in records if _usable(r) and _same_machine(r, device, gpu, host)]
    walls: dict[tuple, list[float]] = {}
    ratios: dict[tuple, list[float]] = {}
    for r in used:
        walls.setdefault(_trial_key(r.spec), []).append(r.process_wall_s)
        model = _model_s(r.spec, _preset_of(r.spec))
        if r.ok and model > 0:
            for key in _ratio_keys(r.spec):
                ratios.setdefault(key, []).append(r.process_wall_s / model)
    return Learned(
        source,
        len(used),
        len(records) - len(used),
        {k: statistics.median(v) for k, v in walls.items()},
        {k: statistics.median(v) for k, v in ratios.items()},
        sum(r.is_busy for r in used),
    )


@dataclass(frozen=True)
class PerTrial:
    """One kind of trial in a sweep that ran: its process wall time per trial, measured,
    beside what the dry run assumes for the same trials."""

    kind: str
    trials: int
    measured_s: float  # median process_wall_s
    assumed_s: float  # median of the model's figure for the same trials
    measured_total_s: float
    assumed_total_s: float

    def to_json(self) -> dict:
        return asdict(self)


def per_trial(records: list[TrialRecord]) -> list[PerTrial]:
    """Per kind, in the order the kinds first appear: what `records`' trials took (their
    process_wall_s) and what the estimate assumes for them, so a first run shows how far
    the dry run's figures are from this machine's."""
    walls: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.process_wall_s is not None and r.spec.kind != Kind.MICROBENCH:  # busy ones too: they took that long
            walls.setdefault(str(r.spec.kind), []).append((r.process_wall_s, _model_s(r.spec, _preset_of(r.spec))))
    return [
        PerTrial(
            kind,
            len(pairs),
            statistics.median(w for w, _ in pairs),
            statistics.median(m for _, m in pairs),
            sum(w for w, _ in pairs),
            sum(m for _, m in pairs),
        )
        for kind, pairs in walls.items()
    ]


def _trial_key(spec: TrialSpec) -> tuple:
    """What makes two trials the same work: kind, workload, setting, sizes and axes (not the
    repeat, the seed or the GPU's index)."""
    sizes = {k: v for k, v in spec.sizes().items() if k != "device"}
    return (
        str(spec.kind),
        spec.workload,
        spec.setting,
        is_cuda(spec.device),
        tuple(sorted(sizes.items())),
        tuple(sorted((k, str(v)) for k, v in spec.axes.items())),
    )


def _same_machine(record: TrialRecord, device: str, gpu: str | None, host: str) -> bool:
    env = record.env or {}
    if is_cuda(record.spec.device) != is_cuda(device) or env.get("hostname") != host:
        return False
    theirs = env.get("gpu")
    if not (is_cuda(device) and gpu and isinstance(theirs, str) and theirs):
        return True  # on the CPU, or a GPU not named on one side: the host decides
    return theirs in gpu or gpu in theirs  # torch's name and nvidia-smi's


def _usable(record: TrialRecord) -> bool:
    return record.process_wall_s is not None and record.spec.kind != Kind.MICROBENCH


def _preset_of(spec: TrialSpec) -> str:
    """The size preset a recorded trial's CPU figure is the one for: quick where its batch
    and image are its workload's quick sizes (the CUDA model reads the sizes themselves)."""
    if is_cuda(spec.device):
        return "gpu"
    try:
        quick = get_workload(spec.workload).size("quick")
    except Exception:  # noqa: BLE001 - a user workload no longer importable: the CPU's figure
        return "cpu"
    return "quick" if (spec.batch_size, spec.image_size) == (quick.batch, quick.image) else "cpu"
