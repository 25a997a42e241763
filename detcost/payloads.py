"""The per-kind parts of a record, typed: the busy guard's report, the audit, the profiled
trial's host-bound measure and cuDNN plans. Each is a small frozen type with the rule
that judges it, so no reader interprets a stored dict by key.

On disk each stays the JSON it always was (`to_json` writes it, `from_json` reads it and
ignores what it does not know), so results files of every earlier version still load.
`detcost.record` holds these in `TrialParts` and re-exports them: this module is the
record's, kept apart only so that the guard (which looks at the machine between trials)
and the trial kinds share one busy report.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields

from detcost import stats
from detcost.timing import CpuSample, usable_cpus

# Kernels busy for less of a step than this: the host, not the GPU, set the pace, and a
# price measured there is understated (the slower kernels hide behind the host's launches).
HOST_BOUND_BELOW = 0.8
# Other processes are competing with a trial when they use more than the cores it leaves
# free, and at least this many cores' worth: on a 2-core machine one competing process
# slows CPU steps 10-30x, while background work on a large machine flags no trial.
BUSY_CORES_THRESHOLD = 0.25


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---- the busy guard ------------------------------------------------------------------


@dataclass(frozen=True)
class BusyReport:
    """What other processes used while a trial ran (or while the guard looked), in cores'
    worth, on the CPUs the trial may use; and whether that makes it busy.

    One report for both: the timed trial's view of its own timed region (`StepTiming.busy`)
    and the guard's look at the machine between trials. `gpu_others` are other processes
    seen on the same GPU, which make it busy whatever the CPUs did.
    """

    others_cpu_cores: float | None = None
    busy_above_cores: float = BUSY_CORES_THRESHOLD
    cpu_busy: bool = False
    usable_cpus: int | None = None
    loadavg_start: float | None = None
    loadavg_end: float | None = None
    gpu_others: str | None = None  # one line per other process on the trial's GPU
    # the trial's own process tree (its DataLoader workers too), in cores' worth
    own_cpu_cores: float | None = None

    @property
    def busy(self) -> bool:
        return bool(self.cpu_busy or self.gpu_others)

    @property
    def resources(self) -> tuple[str, ...]:
        """What other processes used to make this busy: "CPU", "GPU", both or neither."""
        return ("CPU",) * self.cpu_busy + ("GPU",) * bool(self.gpu_others)

    @classmethod
    def between(cls, start: CpuSample, end: CpuSample, threads: int = 1, gpu_others=None) -> BusyReport:
        """The report for the time between two samples: /proc/stat's busy time minus the
        CPU time of the sampled process tree, not the load average (which counts the
        trial's own threads and decays slowly). Others compete when they use more than the
        cores the trial's `threads` leave free, at least BUSY_CORES_THRESHOLD."""
        wall = max(end.wall - start.wall, 1e-9)
        n = len(usable_cpus())
        own_s = end.own_s - start.own_s
        others_s = None
        if start.busy_s is not None and end.busy_s is not None:
            others_s = max(0.0, (end.busy_s - start.busy_s) - own_s)
        free_cores = max(BUSY_CORES_THRESHOLD, n - threads - 0.5)
        # /proc/stat counts in clock ticks per CPU: allow for that rounding at both ends,
        # so a short trial is not called busy on a tick or two.
        slack_s = 2 * n / os.sysconf("SC_CLK_TCK")
        return cls(
            others_cpu_cores=None if others_s is None else round(others_s / wall, 3),
            busy_above_cores=round(free_cores, 2),
            cpu_busy=bool(others_s is not None and others_s > free_cores * wall + slack_s),
            usable_cpus=n,
            loadavg_start=start.loadavg,
            loadavg_end=end.loadavg,
            gpu_others=gpu_others or None,
            own_cpu_cores=round(own_s / wall, 3),
        )

    def describe(self) -> str:
        parts = []
        if self.cpu_busy and self.others_cpu_cores is not None:
            parts.append(
                f"other processes use {self.others_cpu_cores:.1f} CPU cores (busy above {self.busy_above_cores:.1f})"
            )
        if self.gpu_others:
            parts.append("other processes use the GPU: " + "; ".join(self.gpu_others.splitlines()))
        return ", ".join(parts) or "quiet"

    def to_json(self) -> dict:
        """The stored fields as they always were; `cpu_busy` only where the GPU's others
        make it differ from `busy`, and what a record never had only where it is known."""
        out = {k: getattr(self, k) for k in ("loadavg_start", "loadavg_end", "others_cpu_cores", "usable_cpus")}
        out.update(busy_above_cores=self.busy_above_cores, busy=self.busy)
        if self.gpu_others is not None:
            out.update(gpu_others=self.gpu_others, cpu_busy=self.cpu_busy)
        if self.own_cpu_cores is not None:
            out["own_cpu_cores"] = self.own_cpu_cores
        return out

    @classmethod
    def from_json(cls, d) -> BusyReport | None:
        if not isinstance(d, dict):
            return None
        known = _known(cls, d)
        if "cpu_busy" not in d:  # records before the report was typed stored one flag
            known["cpu_busy"] = bool(d.get("busy")) and not d.get("gpu_others")
        return cls(**known)


# ---- the audit -----------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One op strict mode warns about in warn-only mode, how often, and the modules whose
    forward or backward raised it."""

    op: str
    count: int = 1
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Audit:
    """The audit trial's finding: the alerts of a few steps under warn-only strict, and
    whether strict proper fails on the same steps."""

    steps: int = 0
    alerts: tuple[Alert, ...] = ()
    strict_fails: bool = False
    strict_error: str | None = None

    @property
    def ops(self) -> list[str]:
        return [a.op for a in self.alerts]

    def to_json(self) -> dict:
        out = asdict(self)
        out["alerts"] = [{**asdict(a), "modules": list(a.modules)} for a in self.alerts]
        return out

    @classmethod
    def from_json(cls, d) -> Audit | None:
        if not isinstance(d, dict):
            return None
        alerts = tuple(
            Alert(str(a.get("op")), int(a.get("count") or 1), tuple(a.get("modules") or ()))
            for a in d.get("alerts") or ()
            if isinstance(a, dict)
        )
        return cls(**{**_known(cls, d), "alerts": alerts})


# ---- a DDP trial -----------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """A DDP trial's job (the `nproc` axis): its backend, NCCL's version and the NCCL_*
    variables in force (CUDA only; None and {} on the CPU), and every rank's final
    parameter hash, in rank order (its world size is the timing's, `StepTiming.world_size`,
    which its throughput needs). All ranks receive the same reduced gradients, so they
    agree even where runs differ; a rank that disagrees is a finding."""

    backend: str
    nccl_version: str | None = None
    nccl_env: dict = field(default_factory=dict)
    rank_params_sha256: tuple[str | None, ...] = ()

    @property
    def ranks_agree(self) -> bool | None:
        """Whether every rank ended with the same parameters (None: fewer than two hashed)."""
        hashes = [h for h in self.rank_params_sha256 if h]
        return len(set(hashes)) == 1 if len(hashes) > 1 else None

    def to_json(self) -> dict:
        return {**asdict(self), "rank_params_sha256": list(self.rank_params_sha256), "ranks_agree": self.ranks_agree}

    @classmethod
    def from_json(cls, d) -> Distributed | None:
        if not isinstance(d, dict) or "backend" not in d:
            return None
        known = _known(cls, d)
        return cls(**{**known, "rank_params_sha256": tuple(d.get("rank_params_sha256") or ())})


# ---- the profiled trial --------------------------------------------------------------


@dataclass(frozen=True)
class HostBound:
    """How busy the device's kernels kept the profiled steps, and the one host-bound rule."""

    kernel_busy_s: float | None = None  # device busy time per step (overlaps counted once)
    step_s: float | None = None  # the profiled steps' own event time
    kernel_busy_fraction: float | None = None
    host_bound: bool | None = None  # as the profiled trial judged its own steps
    threshold: float = HOST_BOUND_BELOW

    @classmethod
    def measure(cls, busy_s_per_step: float, step_s: float) -> HostBound:
        share = cls.share(busy_s_per_step, step_s)
        fraction = share if math.isfinite(share) else None
        return cls(busy_s_per_step, step_s, fraction, fraction is not None and fraction < HOST_BOUND_BELOW)

    @staticmethod
    def share(busy_s, step_s) -> float:
        """Kernels' busy time over a step, capped at 1 (NaN where it cannot be computed)."""
        if busy_s is None or not step_s or step_s <= 0:
            return math.nan
        return float(stats.busy_share(busy_s, step_s))

    def judge(self, step_s: float | None = None) -> tuple[bool | None, float | None]:
        """(host-bound?, kernels' busy share of the step). With `step_s`, a timed trial's
        median step, the share is `kernel_busy_s` over it: the profiler slows the host side
        of the steps it watches, so the profiled steps' own fraction (used where no timed
        step is given) errs towards host-bound. None for what the record does not say."""
        share = self.share(self.kernel_busy_s, step_s) if step_s else math.nan
        if math.isfinite(share):
            return share < self.threshold, share
        fraction = _number(self.kernel_busy_fraction)
        if fraction is not None:
            fraction = min(fraction, 1.0)
            return fraction < self.threshold, fraction
        return self.host_bound, None

    @property
    def measured(self) -> bool:
        return self.kernel_busy_s is not None or self.kernel_busy_fraction is not None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d) -> HostBound | None:
        if isinstance(d, bool):  # a bare flag: judged, but not measured here
            return cls(host_bound=d)
        return cls(**_known(cls, d)) if isinstance(d, dict) else None


@dataclass(frozen=True)
class CudnnPlans:
    """What a profiled trial's cuDNN log said: the plans (engine + knobs) or legacy
    algorithms it names, the ones it says ran (`chosen`), or why it was not read."""

    status: str = "not parsed"  # "ok", "skipped" (CPU, no log asked for), "not parsed"
    reason: str | None = None
    source: str | None = None  # "frontend" or "backend" (cuDNN's API log)
    log: str | None = None
    plans: dict = field(default_factory=dict)  # tag -> how often named
    engines: dict = field(default_factory=dict)
    chosen: dict = field(default_factory=dict)
    chosen_by: str | None = None
    notes: dict = field(default_factory=dict)
    max_workspace_bytes: int | None = None
    timings_ms: list = field(default_factory=list)
    failed_plans: int | None = None
    cudnn_version: str | None = None
    calls: int | None = None
    lines: int | None = None
    truncated: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def named(self) -> frozenset[str]:
        """Every plan the log names, candidates included, and those it says ran."""
        return frozenset(map(str, self.plans)) | self.ran

    @property
    def ran(self) -> frozenset[str]:
        return frozenset(map(str, self.chosen))

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}

    @classmethod
    def from_json(cls, d) -> CudnnPlans | None:
        if not isinstance(d, dict):
            return None
        known = _known(cls, d)
        for name in ("plans", "engines", "chosen", "notes"):
            value = known.get(name)
            if isinstance(value, (list, tuple)):
                known[name] = {str(v): 1 for v in value}
            elif not isinstance(value, dict):
                known.pop(name, None)
        return cls(**known)


@dataclass(frozen=True)
class Profile:
    """The profiled trial's payload: the ops' table is in its sidecar; here the steps, the
    slowest ops, the host-bound measure (CUDA only), the cuDNN plans, and (CUDA only) the
    clock warm-up before the profiled steps, the timed trials' own (`train.warm_clocks`):
    rounds of its load and, where there were none, why."""

    profiled_steps: int | None = None
    profiled_step_s: float | None = None
    top_ops: tuple[str, ...] = ()
    host_bound: HostBound | None = None
    cudnn_plans: CudnnPlans | None = None
    profiled_clock_warmup_steps: int | None = None
    profiled_clock_warmup_note: str | None = None

    KEYS = (
        "profiled_steps",
        "profiled_step_s",
        "top_ops",
        "host_bound",
        "cudnn_plans",
        "profiled_clock_warmup_steps",
        "profiled_clock_warmup_note",
    )

    def to_json(self) -> dict:
        out = {
            "profiled_steps": self.profiled_steps,
            "profiled_step_s": self.profiled_step_s,
            "cudnn_plans": self.cudnn_plans.to_json() if self.cudnn_plans else None,
            "host_bound": self.host_bound.to_json() if self.host_bound else None,
            "top_ops": list(self.top_ops),
        }
        # only where a clock warm-up was due (CUDA): a CPU trial's record stays as it was
        for key in ("profiled_clock_warmup_steps", "profiled_clock_warmup_note"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, d: dict) -> Profile | None:
        if not any(k in d for k in cls.KEYS):
            return None
        return cls(
            profiled_steps=d.get("profiled_steps"),
            profiled_step_s=d.get("profiled_step_s"),
            top_ops=tuple(d.get("top_ops") or ()),
            host_bound=HostBound.from_json(d.get("host_bound")),
            cudnn_plans=CudnnPlans.from_json(d.get("cudnn_plans")),
            profiled_clock_warmup_steps=d.get("profiled_clock_warmup_steps"),
            profiled_clock_warmup_note=d.get("profiled_clock_warmup_note"),
        )
