"""The typed parts of a record (import them from detcost.record): `StepTiming` keeps a
trial's raw step times and derives its statistics from them, `Outcome` the fingerprints of
what training produced (each writes its own flat fields of the stored record and reads
them back), and `TrialParts` is what a trial kind's runner returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from detcost import stats
from detcost.payloads import Audit, BusyReport, Distributed, Profile
from detcost.vocabulary import Status


def _from(cls, d: dict, **extra):
    """An instance of a record part from the stored fields it knows (None if none is there)."""
    known = {f.name for f in fields(cls)} - set(extra)
    present = {k: d[k] for k in known if k in d}
    return cls(**present, **extra) if present else None


@dataclass(frozen=True)
class StepTiming:
    """The timed region of one trial: raw step times and what was measured around them.

    The statistics are properties of the raw times, as `torch.utils.benchmark`'s
    `Measurement` derives its own, so any statistic can be recomputed from a record.
    Steps in `excluded_steps` took a parameter snapshot and are left out of them.
    """

    step_times_s: list[float]
    batch_size: int
    excluded_steps: list[int] = field(default_factory=list)
    step_strata: list[int] | None = None  # input-shape index per step, where shapes vary
    timer: str | None = None  # "cuda_event" or "perf_counter"
    build_s: float | None = None
    first_step_s: float | None = None
    cold_start_s: float | None = None  # wall time of the warm-up steps (where cuDNN autotunes)
    # On CUDA, rounds of a load of its own (timing.warm_load) after the warm-up steps, until
    # the warm-up has lasted timing.CUDA_MIN_WARMUP_S (clocks leave idle); the trial's bits
    # are untouched. Records written before counted training steps on a copy of the model.
    clock_warmup_steps: int | None = None
    clock_warmup_s: float | None = None
    clock_warmup_note: str | None = None
    region_s: float | None = None
    peak_memory_bytes: int | None = None
    memory_metric: str | None = None
    busy: BusyReport | None = None  # the busy-machine guard's view of the timed region
    # the ranks of a DDP trial (the `nproc` axis), each stepping `batch_size` samples: the
    # step's samples are world_size x batch_size (None: one process)
    world_size: int | None = None
    flops_per_step: float | None = None
    flops_source: str | None = None

    @property
    def kept(self) -> tuple[list[float], list[int] | None]:
        """The step times (and strata) the statistics use."""
        times, strata = list(self.step_times_s), self.step_strata
        strata = list(strata) if strata is not None else None
        drop = set(int(j) for j in self.excluded_steps or ())
        if not drop:
            return times, strata
        keep = [j for j in range(len(times)) if j not in drop]
        return [times[j] for j in keep], ([strata[j] for j in keep] if strata else None)

    @property
    def step_time_median_s(self) -> float:
        return stats.typical_step_time(*self.kept)

    @property
    def step_time_iqr_s(self) -> float:
        q25, q75 = stats.step_quartiles(*self.kept)
        return q75 - q25

    @property
    def step_samples(self) -> int:
        """The samples one step trains on, over every rank of a DDP job (global samples)."""
        return self.batch_size * (self.world_size or 1)

    @property
    def samples_per_s(self) -> float:
        return self.step_samples / self.step_time_median_s

    @property
    def samples_per_s_iqr(self) -> float:
        q25, q75 = stats.step_quartiles(*self.kept)
        return self.step_samples / q25 - self.step_samples / q75

    @property
    def noisy_steps(self) -> bool:
        return self.step_time_iqr_s / self.step_time_median_s > stats.IQR_WARN_THRESHOLD

    @property
    def achieved_flops(self) -> float | None:
        return self.flops_per_step / self.step_time_median_s if self.flops_per_step else None

    @property
    def is_busy(self) -> bool:
        return bool(self.busy and self.busy.busy)

    DERIVED = (
        "step_time_median_s",
        "step_time_iqr_s",
        "samples_per_s",
        "samples_per_s_iqr",
        "noisy_steps",
        "achieved_flops",
    )

    def to_json(self) -> dict:
        raw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "batch_size"}
        raw["busy"] = self.busy.to_json() if self.busy else None
        return {**raw, **{name: getattr(self, name) for name in self.DERIVED}}

    @classmethod
    def from_json(cls, d: dict) -> StepTiming | None:
        if not d.get("step_times_s"):
            return None
        return _from(cls, d, batch_size=d["batch_size"], busy=BusyReport.from_json(d.get("busy")))


@dataclass(frozen=True)
class Outcome:
    """Fingerprints of what training produced: comparing them across repeats is the variance."""

    final_loss: float | None = None
    first_nonfinite_step: int | None = None
    eval_accuracy: float | None = None
    params_sha256: str | None = None
    logits_sha256: str | None = None
    data_order_sha256: str | None = None  # the sample order a DataLoader gave (None: staged batches)
    class_accuracy: list | None = None  # evaluation accuracy per class (None where a class is absent)

    def judge(self) -> tuple[Status, str | None]:
        if self.first_nonfinite_step:
            return Status.NAN, f"loss became non-finite at step {self.first_nonfinite_step}"
        if self.final_loss is not None and not math.isfinite(self.final_loss):
            return Status.NAN, "final loss is not finite"
        return Status.OK, None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Outcome | None:
        return _from(cls, d)


@dataclass(frozen=True)
class TrialParts:
    """What a trial kind's runner returns: the parts of the record it measured."""

    timing: StepTiming | None = None
    outcome: Outcome | None = None
    audit: Audit | None = None  # the audit trial's alerts and strict's verdict
    profile: Profile | None = None  # the profiled trial's steps, host-bound measure, cuDNN plans
    distributed: Distributed | None = None  # a DDP trial's job: backend, NCCL, every rank's hash
    workload_notes: dict | None = None  # what a workload says of itself (an injected price)
    payload: dict = field(default_factory=dict)  # fields no part knows (a newer writer's)
    sidecar: str | None = None  # arrays beside the results file (relative path)
    read_back: dict = field(default_factory=dict)  # each axis's value as torch reported it
