"""What the analysis groups by and how it names things: a group key built from a trial's
spec (workload, every axis value, the sizes, the machine kind), the labels of a price table,
the order of settings, and which records count. Every derived table reads records
through these, never through table columns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from detcost import axes
from detcost.record import MEASURED, SIZE_FIELDS, Kind, Status, TrialRecord, TrialSpec
from detcost.settings import REFERENCE, SETTINGS

AA_LABEL = "A/A control"  # the A/A control's row in a price table: `default` under a second label
SEED_LABEL = "seed yardstick"  # the seed yardstick's row in a variance table


def setting_order(names: Iterable[str]) -> list[str]:
    """Settings in the matrix's order (then any others), the same order everywhere."""
    names = set(names)
    known = [s for s in SETTINGS if s in names]
    return known + sorted(names - set(known))


def label_order(labels: Iterable[str]) -> list[str]:
    """A price table's labels: the settings in order, then the A/A control."""
    labels = set(labels)
    return setting_order(labels - {AA_LABEL}) + ([AA_LABEL] if AA_LABEL in labels else [])


def group_fields() -> tuple[str, ...]:
    """What splits a workload into groups: every registered axis, and the sizes (runs at
    other sizes do not compare)."""
    return (*axes.names(), *SIZE_FIELDS)


@dataclass(frozen=True)
class GroupKey:
    """One workload at one value of every axis and size, on one kind of machine
    (`TrialRecord.machine_kind`: the GPUs or hosts of one kind pool): trials with the same
    key are comparable, and prices and spreads are computed within a key."""

    workload: str
    values: tuple  # in the order of `group_fields()`
    machine: str = ""  # the machine kind

    @classmethod
    def of(cls, record: TrialRecord) -> GroupKey:
        return cls.of_spec(record.spec, record.machine_kind)

    @classmethod
    def of_spec(cls, spec: TrialSpec, machine: str = "") -> GroupKey:
        """The key of a planned trial (on machine kind `machine`; a plan does not know it)."""
        sizes = {"batch_size": spec.batch_size, "image_size": spec.image_size, "steps": spec.steps}
        return cls(spec.workload, tuple({**spec.axes, **sizes}.get(f) for f in group_fields()), machine)

    def without_machine(self) -> GroupKey:
        return GroupKey(self.workload, self.values)

    def get(self, name: str):
        return self.as_dict()[name]

    def as_dict(self) -> dict:
        return {"workload": self.workload, **dict(zip(group_fields(), self.values))}

    def without(self, *names: str) -> GroupKey:
        """The key with `names` blanked: trials that differ only there fall together."""
        values = tuple(None if f in names else v for f, v in zip(group_fields(), self.values))
        return GroupKey(self.workload, values, self.machine)

    def same_group(self, other: GroupKey, *ignore: str, machine: bool = False) -> bool:
        """The same workload and values, the fields `ignore` names aside (e.g. "steps": a
        run with other step counts measures the same group); on any machine unless `machine`."""
        same = self.workload == other.workload and self.without(*ignore).values == other.without(*ignore).values
        return same and (not machine or self.machine == other.machine)

    def shown(self, fields: Iterable[str]) -> dict:
        """The key's workload and the given fields (those that vary in a table)."""
        d = self.as_dict()
        return {"workload": self.workload, **{f: d[f] for f in fields}}


def varying_fields(keys: Iterable[GroupKey]) -> list[str]:
    """The group fields that vary within a workload among `keys` (constant ones would only
    clutter a table; sizes differ between workloads by design)."""
    seen: dict[tuple[str, str], set] = {}
    for key in keys:
        for f, v in zip(group_fields(), key.values):
            seen.setdefault((key.workload, f), set()).add(v)
    return [f for f in group_fields() if any(len(v) > 1 for (_, g), v in seen.items() if g == f)]


def measured_keys(records: Iterable[TrialRecord]) -> list[GroupKey]:
    """The keys of the measured trials (audit and profiled trials run other step counts
    by design, so they never make a field vary)."""
    return [GroupKey.of(r) for r in records if r.spec.kind in MEASURED]


def ok_of(records: Iterable[TrialRecord], kinds=(Kind.TIMED,)) -> list[TrialRecord]:
    """The records of `kinds` that finished."""
    return [r for r in records if r.spec.kind in kinds and r.status == Status.OK]


def is_cpu(records: Iterable[TrialRecord]) -> bool:
    records = list(records)
    return bool(records) and all(r.spec.device.startswith("cpu") for r in records)


def is_busy(record: TrialRecord) -> bool:
    """Whether the busy-machine guard flagged the trial (`TrialRecord.is_busy`)."""
    return record.is_busy


def cudnn_only(setting: str) -> bool:
    """A setting that differs from `default` only in cuDNN flags (on the CPU: no kernel changes)."""
    return setting != REFERENCE and setting in SETTINGS and SETTINGS[setting].cudnn_only


def by_key(records: Iterable[TrialRecord]) -> dict[GroupKey, list[TrialRecord]]:
    """Records grouped by their key, in the order keys first appear."""
    out: dict[GroupKey, list[TrialRecord]] = {}
    for r in records:
        out.setdefault(GroupKey.of(r), []).append(r)
    return out


def sidecar_path(record: TrialRecord) -> Path | None:
    """Where a record's sidecar file is: stored relative to its results file's folder."""
    rel = record.parts.sidecar
    if not isinstance(rel, str) or not rel:
        return None
    return Path(record.results_path or ".").parent / rel
