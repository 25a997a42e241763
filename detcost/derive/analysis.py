"""One analysis of a set of records, computed once: `analyse(records) -> Analysis`.

Prices, variance, divergence curves, attribution, audit findings, failures, the noise
floor, host-bound marks and the recommendation, per machine kind (`TrialRecord.machine_kind`:
the rounds of every GPU or host of one kind pool, two kinds never do), each a typed value
keyed by a `GroupKey` built from the spec; the spread between the units of one kind, and
where several kinds ran, each setting's price per kind side by side (`kinds`). The CLI
hands a sweep's records straight in, or loads files once at the top; text, HTML,
Markdown, JSON, asv tracking and the gate only render or judge an `Analysis`, and none of
them computes a statistic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from detcost.derive.attribution import attribution
from detcost.derive.decide import decided
from detcost.derive.frameworks import SwitchVerdict, framework_switches
from detcost.derive.keys import (
    AA_LABEL,
    GroupKey,
    is_busy,
    is_cpu,
    measured_keys,
    ok_of,
    varying_fields,
)
from detcost.derive.kinds import AcrossKinds, UnitSpread, across_kinds, unit_spreads, units_of
from detcost.derive.policy import Policy
from detcost.derive.prices import Price, price_frame_rows, prices
from detcost.derive.recommend import Recommendation, recommend
from detcost.derive.scaling import Scaling, scaling
from detcost.derive.variance import Divergence, Spread, divergence_curves, load_sidecars, spreads
from detcost.ops import workaround
from detcost.record import Alert, CudnnPlans, Kind, Status, TrialRecord
from detcost.settings import REFERENCE


@dataclass(frozen=True)
class Failure:
    """A trial that did not finish, with its reason (strict-mode errors are findings)."""

    key: GroupKey
    kind: str
    setting: str
    repeat: int
    seed: int
    status: str
    error: str | None
    workaround: str | None

    def row(self, fields: list[str]) -> dict:
        return {"kind": self.kind, **self.key.shown(fields), "setting": self.setting, "repeat": self.repeat,
                "seed": self.seed, "status": self.status, "error": self.error}  # fmt: skip


@dataclass(frozen=True)
class AuditFinding:
    """What one audit trial found: the ops without a deterministic implementation."""

    workload: str
    device: str
    ok: bool
    error: str | None
    alerts: tuple[Alert, ...] = ()
    strict_fails: bool = False
    strict_error: str | None = None
    steps: int | None = None

    @classmethod
    def of(cls, r: TrialRecord) -> AuditFinding:
        audit = r.audit if r.ok else None
        if audit is None:
            return cls(r.spec.workload, r.spec.device, False, r.error or "the record has no audit")
        return cls(r.spec.workload, r.spec.device, True, None, audit.alerts, audit.strict_fails, audit.strict_error,
                   audit.steps)  # fmt: skip


@dataclass(frozen=True)
class MachineAnalysis:
    """Everything derived from the records of one machine kind (every host and GPU of it)."""

    machine: str  # the kind's name (`TrialRecord.machine_kind`)
    records: list[TrialRecord]
    cpu: bool
    fields: list[str]  # the group fields that vary (the tables' extra key columns)
    prices: list[Price]
    spreads: list[Spread]
    curves: list[Divergence]
    attribution: pd.DataFrame
    audits: list[AuditFinding]
    failures: list[Failure]
    recommendation: Recommendation
    busy_trials: int
    layout_varied: bool
    environment: list[tuple[str, str]]
    priced_settings: list[str]
    cudnn_plans: list[tuple[str, str, CudnnPlans]]  # (workload, setting, what the profiled trial's cuDNN log said)
    # Each framework switch the run priced: its price and reproducibility beside detcost's cheapest equivalent.
    frameworks: list[SwitchVerdict] = field(default_factory=list)
    # DDP (`nproc`): each setting's global samples/s at N ranks over one process's
    scaling: list[Scaling] = field(default_factory=list)
    # What makes the kind (`TrialRecord.machine_kind_fields`), the units (GPUs; hosts on the
    # CPU) its records ran on, and where there are several, each price row on each unit.
    kind_fields: dict = field(default_factory=dict)
    units: list[str] = field(default_factory=list)
    unit_spreads: list[UnitSpread] = field(default_factory=list)

    @property
    def busy_used(self) -> str:
        """What other processes used in the busy trials, as "N trial(s) ran while other
        processes used ..." ends: "the CPU", "the GPU", or both with each one's trials."""
        counts = Counter(res for r in self.records if is_busy(r) for res in r.parts.timing.busy.resources)
        if len(counts) < 2:
            return f"the {next(iter(counts), 'CPU')}"
        return " and ".join(f"the {res} ({n})" for res, n in sorted(counts.items()))

    @property
    def aa(self) -> list[Price]:
        return [p for p in self.prices if p.is_aa]

    def price_frame(self) -> pd.DataFrame:
        return pd.DataFrame(price_frame_rows(self.prices))

    def spread_frame(self) -> pd.DataFrame:
        return pd.DataFrame([s.row(self.fields) for s in self.spreads])

    def curve_frame(self) -> pd.DataFrame:
        rows = [{**c.key.shown(self.fields), "setting": c.setting, "step": c.step, "rel_l2": c.rel_l2,
                 "max_abs_dtheta": c.max_abs_dtheta} for c in self.curves]  # fmt: skip
        return pd.DataFrame(rows, columns=None if rows else ["workload", "setting", "step", "rel_l2"])

    def failure_frame(self) -> pd.DataFrame:
        rows = [f.row(self.fields) for f in self.failures]
        return pd.DataFrame(rows)

    def price_of(self, workload: str, setting: str) -> Price | None:
        """The row that prices `setting` on `workload` (its pooled row on the CPU)."""
        return next((p for p in self.prices if p.key.workload == workload and p.prices(setting) and not p.is_aa), None)

    def spread_of(self, workload: str, setting: str) -> Spread | None:
        return next((s for s in self.spreads if s.key.workload == workload and s.setting == setting and s.same_seed),
                    None)  # fmt: skip


@dataclass(frozen=True)
class Analysis:
    """The analysis of a set of records: one `MachineAnalysis` per machine kind they ran on,
    and where there are several, each setting's price per kind side by side."""

    records: list[TrialRecord]
    machines: list[MachineAnalysis]
    policy: Policy
    across_kinds: AcrossKinds | None = None

    @property
    def max_slowdown(self) -> float:
        return self.policy.max_slowdown

    @property
    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(r.spec.run_id for r in self.records))

    @property
    def only(self) -> MachineAnalysis | None:
        """The one machine's analysis (the first where several machines ran)."""
        return self.machines[0] if self.machines else None


def analyse(records: list[TrialRecord], policy: Policy | float | None = None) -> Analysis:
    """Every table and verdict of these records, computed once, per machine kind: each
    price decided against `policy` (`derive.policy.resolve`: the flag, the team config,
    the built-in default; a number is a budget under the built-in rest; None: all built-in)."""
    if not isinstance(policy, Policy):
        policy = Policy() if policy is None else Policy(max_slowdown=float(policy), budget_from="given")
    per_kind: dict[str, list[TrialRecord]] = {}
    for r in records:
        per_kind.setdefault(r.machine_kind, []).append(r)
    machines = [analyse_machine(name, recs, policy) for name, recs in per_kind.items()]
    return Analysis(list(records), machines, policy, across_kinds([(m.machine, m.prices) for m in machines]))


def analyse_machine(name: str, records: list[TrialRecord], policy: Policy) -> MachineAnalysis:
    cpu = is_cpu(records)
    priced = decided(prices(records, cpu), policy)
    sides = load_sidecars(records)
    spread = spreads(records, sides)
    timed = [r for r in records if r.spec.kind == Kind.TIMED]
    failures = _failures(records)
    return MachineAnalysis(
        machine=name,
        records=records,
        cpu=cpu,
        fields=varying_fields(measured_keys(records)),
        prices=priced,
        spreads=spread,
        curves=divergence_curves(records, sides),
        attribution=attribution(records, priced, cpu),
        audits=[AuditFinding.of(r) for r in records if r.spec.kind == Kind.AUDIT],
        failures=failures,
        recommendation=recommend(records, priced, spread, policy),
        busy_trials=sum(map(is_busy, records)),
        layout_varied=bool(timed) and all(r.layout_varied for r in timed),
        environment=_environment(records),
        priced_settings=list(dict.fromkeys(r.spec.setting for r in timed)),
        cudnn_plans=[
            (r.spec.workload, r.spec.setting, r.cudnn_plans)
            for r in ok_of(records, (Kind.PROFILED,))
            if r.cudnn_plans is not None
        ],
        frameworks=framework_switches(
            priced, spread, cpu, [(f.key, f.setting, f"{f.status}: {f.error}") for f in failures if f.kind == "timed"]
        ),
        scaling=scaling(records, spread),
        kind_fields=records[0].machine_kind_fields if records else {},
        units=units_of(records),
        unit_spreads=unit_spreads(records, cpu, priced),
    )


def _failures(records: list[TrialRecord]) -> list[Failure]:
    return [
        Failure(GroupKey.of(r), str(r.spec.kind), r.spec.setting, r.spec.repeat, r.spec.seed, str(r.status), r.error,
                workaround(r.error))
        for r in records
        if r.status != Status.OK
    ]  # fmt: skip


def _environment(records: list[TrialRecord]) -> list[tuple[str, str]]:
    """The machine's fingerprint as a `default` trial saw it (other settings add their own
    variables, such as CUBLAS_WORKSPACE_CONFIG)."""
    with_env = [r for r in records if r.env]
    plain = [r for r in with_env if r.spec.setting == REFERENCE]
    return (plain or with_env)[0].environment() if with_env else []


__all__ = ["AA_LABEL", "Analysis", "AuditFinding", "Failure", "MachineAnalysis", "analyse", "ok_of"]
