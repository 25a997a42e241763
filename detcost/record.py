"""The record: what identifies a trial (`TrialSpec`), what it measured (`TrialRecord` and its
typed parts), the `Kind` and `Status` vocabularies, the schema version and the table
columns. The bottom layer: everything that writes or reads a record goes through here.

On disk a record is one flat JSON object (schema version 1, unchanged in meaning since the
first release; later additions are new fields that older readers ignore). In memory its
parts are typed (`parts`): `StepTiming` keeps the raw step times and derives its
statistics from them, `Outcome` the fingerprints of what training produced, and a
per-kind `payload` (`payloads`: the audit, the profiled trial's host-bound measure and
cuDNN plans, the busy guard's report). The spec, the parts and the vocabularies are
defined in modules of their own (`spec`, `parts`, `vocabulary`) and imported from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from detcost import axes as axes_mod

# The spec, the typed parts, the vocabularies and the payload types are the record's (defined
# apart, see detcost.spec, detcost.parts, detcost.vocabulary and detcost.payloads): import
# them from here.
from detcost.parts import Outcome as Outcome
from detcost.parts import StepTiming as StepTiming
from detcost.parts import TrialParts as TrialParts
from detcost.payloads import HOST_BOUND_BELOW as HOST_BOUND_BELOW
from detcost.payloads import Alert as Alert
from detcost.payloads import Audit, CudnnPlans, Distributed, HostBound, Profile
from detcost.spec import SCHEMA_VERSION as SCHEMA_VERSION
from detcost.spec import SIZE_FIELDS as SIZE_FIELDS
from detcost.spec import TrialSpec as TrialSpec
from detcost.spec import derive_seed as derive_seed
from detcost.vocabulary import MEASURED as MEASURED
from detcost.vocabulary import ROUND_KINDS as ROUND_KINDS
from detcost.vocabulary import Kind as Kind
from detcost.vocabulary import Status as Status

ERROR_CHARS = 300


def flops_key(spec: TrialSpec) -> tuple:
    """FLOPs per step depend on the workload, its sizes and the axes that change the model's
    computation (layout), not on the setting or the machine's threads."""
    model_axes = tuple(v for a, v in axes_mod.each(spec.axes) if a.affects_flops)
    return (spec.workload, spec.batch_size, spec.image_size, spec.total_steps, spec.device, *model_axes)


class FlopsCache:
    """FLOPs per step already counted (by `flops_key`), handed to the trials that come
    after as `known_flops`: a sweep learns them from the records in its file and from each
    record as it arrives; a Ray task from its own trials."""

    def __init__(self, records: list[TrialRecord] = ()) -> None:
        self.known: dict[tuple, float] = {}
        for r in records:
            self.learn(r)

    def given(self, spec: TrialSpec) -> TrialSpec:
        """`spec` with the FLOPs counted for its key (where it carries none of its own)."""
        return replace(spec, known_flops=spec.known_flops or self.known.get(flops_key(spec)))

    def learn(self, record: TrialRecord) -> None:
        if record.timing and record.timing.flops_per_step:
            self.known[flops_key(record.spec)] = record.timing.flops_per_step


# The machine's fingerprint fields a report shows, in this order (detcost.env.fingerprint).
ENV_FIELDS = (
    "torch", "cuda", "cudnn", "gpu", "driver", "cpu", "cpu_count", "threads", "python", "platform", "hostname",
    "detcost",
)  # fmt: skip

# The fingerprint fields that make a kind of machine (`TrialRecord.machine_kind`): trials of
# one kind are priced together, whichever host or GPU of that kind ran them.
MACHINE_KIND_FIELDS = {"cuda": ("gpu", "driver", "torch", "cudnn"), "cpu": ("cpu", "cpu_count", "torch")}

_RUN_FIELDS = (
    "status",
    "error",
    "started_at",
    "finished_at",
    "wall_s",
    "process_wall_s",
    "sidecar",
    "flags",
    "env",
    "layout",
    "placement",
)


@dataclass
class TrialRecord:
    """One trial's record: its spec, what happened, and what it measured."""

    spec: TrialSpec
    status: Status | None = None
    error: str | None = None
    flags: dict | None = None  # read back from torch inside the trial
    parts: TrialParts = field(default_factory=TrialParts)
    env: dict | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    process_wall_s: float | None = None  # seen from the parent: process start to exit
    # the layout the trial process was given (isolation.py): its heap and environment pads
    # and the forkserver it forked from
    layout: dict | None = None
    # where a `--ray` round ran: Ray's node and task, the host, its pinned cores or its GPU
    placement: dict | None = None
    results_path: str | None = None  # the file it was loaded from (not stored)

    @property
    def trial_id(self) -> str:
        return self.spec.trial_id

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def timing(self) -> StepTiming | None:
        return self.parts.timing

    @property
    def outcome(self) -> Outcome | None:
        return self.parts.outcome

    @property
    def is_busy(self) -> bool:
        """Whether the busy-machine guard flagged the trial's timed region."""
        return bool(self.parts.timing and self.parts.timing.is_busy)

    @property
    def workload_notes(self) -> dict:
        return self.parts.workload_notes or {}

    @property
    def reacts_to(self) -> str | None:
        """The flag a workload says its steps react to on the CPU, as `read_flags()` names
        it (`cudnn_benchmark`): a diagnostic workload that injects a known price under a
        cuDNN flag declares it (`workload_notes.price_applies_to`)."""
        flag = self.workload_notes.get("price_applies_to")
        return flag.replace(".", "_") if isinstance(flag, str) else None

    @property
    def audit(self) -> Audit | None:
        return self.parts.audit

    @property
    def profile(self) -> Profile | None:
        return self.parts.profile

    @property
    def distributed(self) -> Distributed | None:
        """A DDP trial's job (`nproc`): its backend, NCCL, every rank's final parameter hash."""
        return self.parts.distributed

    @property
    def host_bound(self) -> HostBound | None:
        """The profiled trial's host-bound measure, where it made one."""
        hb = self.parts.profile.host_bound if self.parts.profile else None
        return hb if hb is not None and hb.measured else None

    @property
    def cudnn_plans(self) -> CudnnPlans | None:
        return self.parts.profile.cudnn_plans if self.parts.profile else None

    @property
    def machine(self) -> str:
        """The machine the trial ran on, as a report names it: host (GPU, else CPU model)."""
        env = self.env or {}
        gpu = env.get("gpu")
        return f"{env.get('hostname', '?')} ({gpu if isinstance(gpu, str) and gpu else env.get('cpu', '?')})"

    @property
    def on_cuda(self) -> bool:
        return self.spec.device.startswith("cuda")

    @property
    def machine_kind_fields(self) -> dict:
        """What makes two trials' machines the same kind (`MACHINE_KIND_FIELDS`: on CUDA the GPU
        model, driver, torch and cuDNN; on the CPU the CPU model, its cores and torch), read
        from the fingerprint; a field the record lacks (an older file, a trial that failed
        before it read its GPU) is None."""
        env = self.env or {}
        return {f: env.get(f) for f in MACHINE_KIND_FIELDS["cuda" if self.on_cuda else "cpu"]}

    @property
    def machine_kind(self) -> str:
        """The kind of machine the trial ran on, as a report names it: `NVIDIA H100, driver
        550.54, torch 2.4.0, cuDNN 90100` or `AMD EPYC x2 cores, torch 2.4.0`. Prices pool
        across the trials of one kind (many hosts, many GPUs), never across kinds."""
        k = {f: ("?" if v in (None, "") else v) for f, v in self.machine_kind_fields.items()}
        if self.on_cuda:
            return f"{k['gpu']}, driver {k['driver']}, torch {k['torch']}, cuDNN {k['cudnn']}"
        return f"{k['cpu']} x{k['cpu_count']} cores, torch {k['torch']}"

    @property
    def unit(self) -> str:
        """The one GPU (on the CPU: the one host) the trial ran on: the host and the GPU's
        UUID where NVML gave it, else the host and the device (`cuda:0`), which under
        CUDA_VISIBLE_DEVICES names the GPU only within one process's view."""
        env = self.env or {}
        host = str(env.get("hostname") or "?")
        if not self.on_cuda:
            return host
        uuid = env.get("gpu_uuid")
        if isinstance(uuid, str) and uuid:
            return f"{host} {uuid}"
        ray_gpu = (self.placement or {}).get("ray_gpu")  # --ray without NVML: the GPU Ray assigned
        return f"{host} GPU {ray_gpu}" if ray_gpu is not None else f"{host} {self.spec.device}"

    @property
    def layout_varied(self) -> bool:
        """Whether the trial was given a random heap and environment pad (isolation.py)."""
        return bool(self.layout and self.layout.get("heap_pad") is not None)

    def environment(self) -> list[tuple[str, str]]:
        """The machine's fingerprint as a report shows it: ENV_FIELDS in order, then the
        relevant environment variables."""
        env = self.env or {}
        rows = [(k, str(env.get(k))) for k in ENV_FIELDS if k in env]
        if isinstance(env.get("env"), dict) and env["env"]:
            rows.append(("env vars", ", ".join(f"{k}={v}" for k, v in env["env"].items())))
        return rows

    def fail(self, status: Status, error: str) -> TrialRecord:
        self.status, self.error = Status(status), error
        return self

    def to_json(self) -> dict:
        """The flat JSON object stored on disk (one line of the results file)."""
        out = {**self.spec.identity(), "status": _str(self.status), "error": self.error}
        out.update(started_at=self.started_at, flags=self.flags)
        for part in (self.parts.timing, self.parts.outcome):
            out.update(part.to_json() if part else {})
        out.update(self.parts.payload)
        if self.parts.audit is not None:
            out["audit"] = self.parts.audit.to_json()
        if self.parts.profile is not None:
            out.update(self.parts.profile.to_json())
        if self.parts.distributed is not None:
            out["distributed"] = self.parts.distributed.to_json()
        if self.parts.workload_notes:
            out["workload_notes"] = self.parts.workload_notes
        if self.parts.sidecar:
            out["sidecar"] = self.parts.sidecar
        out.update({f"{name}_read_back": value for name, value in self.parts.read_back.items()})
        out.update(wall_s=self.wall_s, finished_at=self.finished_at, env=self.env)
        if self.process_wall_s is not None:
            out["process_wall_s"] = self.process_wall_s
        if self.layout is not None:
            out["layout"] = self.layout
        if self.placement is not None:
            out["placement"] = self.placement
        return out

    @classmethod
    def from_json(cls, d: dict) -> TrialRecord:
        spec = TrialSpec.from_json(d)
        known = _known_fields(spec)
        parts = TrialParts(
            timing=StepTiming.from_json(d),
            outcome=Outcome.from_json(d),
            audit=Audit.from_json(d.get("audit")),
            profile=Profile.from_json(d),
            distributed=Distributed.from_json(d.get("distributed")),
            workload_notes=d.get("workload_notes") or None,
            payload={k: v for k, v in d.items() if k not in known},
            sidecar=d.get("sidecar"),
            read_back={a: d[f"{a}_read_back"] for a in axes_mod.names() if f"{a}_read_back" in d},
        )
        run = {k: d.get(k) for k in _RUN_FIELDS if k not in ("status", "sidecar")}
        status = Status(d["status"]) if d.get("status") else None
        return cls(spec, status, parts=parts, results_path=d.get("results_path"), **run)

    def row(self) -> dict:
        """One row of the results table: the stored fields, nested ones flattened one level
        with dots (`flags.cudnn_benchmark`, `env.gpu`, `busy.busy`, `audit.alerts`), the
        statistics recomputed from the raw step times, and the file it came from."""
        row = {}
        for key, value in self.to_json().items():
            if isinstance(value, dict):
                row.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                row[key] = value
        row["results_path"] = self.results_path
        return row


def _str(value) -> str | None:
    return None if value is None else str(value)


_TIMING_FIELDS = {f.name for f in fields(StepTiming)} | set(StepTiming.DERIVED)
_OUTCOME_FIELDS = {f.name for f in fields(Outcome)}
_PAYLOAD_FIELDS = {"audit", "distributed", "workload_notes", *Profile.KEYS}


def _known_fields(spec: TrialSpec) -> set[str]:
    read_backs = {f"{a}_read_back" for a in axes_mod.names()}
    parts = _TIMING_FIELDS | _OUTCOME_FIELDS | _PAYLOAD_FIELDS
    return set(spec.identity()) | set(_RUN_FIELDS) | parts | read_backs | {"results_path"}


def _fields_besides_axes() -> set[str]:
    """Every name a record writes besides its axes and their read-backs."""
    probe = TrialSpec("", Kind.TIMED, "", "", 0, 0, "cpu", 1, 0, 1, 1)
    return _known_fields(probe) - set(probe.axes) - {f"{a}_read_back" for a in probe.axes}


# An axis of one of these names would be overwritten in the record that stores it.
axes_mod.reserve(_fields_besides_axes(), "a field of the record")

# Columns every table has, even an empty one (the identity and the status).
TABLE_COLUMNS = ("schema_version", "run_id", "trial_id", "kind", "workload", "setting", "status")


def table_rows(records: list[dict]) -> list[dict]:
    """The results table's rows, one per stored record (see `TrialRecord.row`)."""
    return [TrialRecord.from_json(r).row() for r in records]


def one_line(exc: BaseException) -> str:
    """An exception as the one-line `error` of a record."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    # strict mode's message goes on with advice every user has seen; the op is the finding
    first = first.split(", but you set 'torch.use_deterministic_algorithms(True)'")[0]
    text = f"{type(exc).__name__}: {first}".strip()
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."
