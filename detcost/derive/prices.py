"""The price of each setting, from records: step time relative to the fastest label of the
same group, with an interval from within-round ratios; the ratio to `default`; the A/A
control's noise floor; host-bound marks; and a verdict that follows the interval.

On the CPU the cuDNN-only settings run the same kernels as `default` (DESIGN: a further
A/A group): they are priced as one label with `default`, so noise cannot make one of them
"the fastest" that prices everyone else. Except where the data disagrees: a cuDNN-only
setting whose interval against `default` excludes 1 while the A/A control's covers it is
priced on its own, as measured, and marked (the model or the machine reacts to the flag).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from detcost.derive.keys import AA_LABEL, GroupKey, by_key, cudnn_only, is_busy, label_order, ok_of, varying_fields
from detcost.derive.pairing import interval_level, ratio, rounds_of, without_busy
from detcost.derive.policy import MIN_ROUNDS
from detcost.derive.verdict import BudgetDecision
from detcost.record import ROUND_KINDS, Kind, TrialRecord
from detcost.settings import REFERENCE, SETTINGS
from detcost.stats import LEVEL, PairedRatio, fastest, label_bias_var


class Verdict(str, Enum):
    """What a price row says, decided from its own interval only."""

    FASTEST = "fastest"  # the reference of its group: 1.00 by definition, no interval of its own
    NOISE_FLOOR = "noise floor"  # the A/A control
    WITHIN_NOISE = "within noise"  # the interval includes 1.00
    REAL = "real"  # the interval excludes 1.00 on a steady machine
    UNCONFIRMED = "unconfirmed"  # excludes 1.00, but the run cannot stand behind it (see `why`)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Price:
    """One label of one group: a setting (or several priced as one), or the A/A control."""

    key: GroupKey
    label: str
    members: tuple[str, ...]  # the settings this row prices (several: pooled on the CPU)
    n: int
    samples_per_s: float
    samples_per_s_cv: float
    step_time_s: float
    price: PairedRatio  # step time over `price_vs`'s
    price_vs: str
    vs_default: PairedRatio | None
    cold_start_s: float
    peak_memory_bytes: float
    achieved_flops: float
    label_bias: float  # the log-ratio sd of the label's fixed effect, added to this group's intervals
    busy_trials: int
    busy_trials_priced: int
    kernel_busy_fraction: float | None = None
    host_bound: bool | None = None
    detectable: float = math.nan  # the group's smallest detectable price
    verdict: Verdict = Verdict.UNCONFIRMED
    why: str = ""  # the verdict's reason where it is not the interval alone
    # Told apart from the group's fastest by more than noise: the interval excludes 1.00 and
    # the point is further from it than the group's smallest detectable price. Set with the
    # verdict (`_judged`): a real price, or one unconfirmed for the run's reasons (too few
    # rounds, busy trials, a strayed A/A control) rather than for its size. What the
    # report's explanation shows an op table for.
    beyond_noise: bool = False
    flag_reacts: bool = False  # a cuDNN-only setting that the CPU data says is not free
    # the CV of samples/s across default's own trials in the group (the noise floor's
    # yardstick; a pooled row's own CV mixes settings)
    default_cv: float = math.nan
    level: float = LEVEL  # the confidence of this row's intervals (the sweep's, see TrialSpec)
    # Each priced setting's decision against the budget (`derive.decide.decided`, made once
    # in the analysis); empty for the A/A control and for rows not yet judged.
    decisions: tuple[tuple[str, BudgetDecision], ...] = ()

    @property
    def is_aa(self) -> bool:
        return self.label == AA_LABEL

    @property
    def pooled(self) -> bool:
        return len(self.members) > 1

    def prices(self, setting: str) -> bool:
        return setting in self.members

    @property
    def strayed(self) -> bool:
        """An A/A control whose interval excludes 1.00, its true price: by chance on 1 group
        in 20 at 95%, more often where the machine was not steady; the group's prices that
        exclude 1.00 are then unconfirmed."""
        return self.is_aa and self.price.rounds >= 2 and not self.price.includes_one

    def decision_for(self, setting: str) -> BudgetDecision:
        """The decision on `setting`'s price by this row (one of its members)."""
        found = dict(self.decisions).get(setting)
        if found is None:
            raise LookupError(f"the price of {setting} on {self.key.workload} has not been judged (derive.decide)")
        return found

    @property
    def decision(self) -> BudgetDecision:
        """The decision on this row's label."""
        return self.decision_for(self.label)

    def row(self, fields: list[str]) -> dict:
        """The row of the exported price table (derived columns only)."""
        vs = self.vs_default or PairedRatio(math.nan, math.nan, math.nan, 0)
        return {
            **self.key.shown(fields),
            "setting": self.label,
            "priced_as_one": ", ".join(self.members) if self.pooled else None,
            "n": self.n,
            "rounds": self.price.rounds,
            "samples_per_s": self.samples_per_s,
            "samples_per_s_cv": self.samples_per_s_cv,
            "default_cv": self.default_cv,
            "step_time_s": self.step_time_s,
            "price": self.price.ratio,
            "price_lo": self.price.lo,
            "price_hi": self.price.hi,
            "price_vs": self.price_vs,
            "vs_default": vs.ratio,
            "vs_default_lo": vs.lo,
            "vs_default_hi": vs.hi,
            "cold_start_s": self.cold_start_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "achieved_flops": self.achieved_flops,
            "label_bias": self.label_bias,
            "busy_trials": self.busy_trials,
            "busy_trials_priced": self.busy_trials_priced,
            "kernel_busy_fraction": self.kernel_busy_fraction,
            "host_bound": self.host_bound,
            "detectable": self.detectable,
            "verdict": str(self.verdict),
            "why": self.why or None,
            "flag_reacts": self.flag_reacts,
            "interval_level": self.level,
            "machine": self.key.machine,
        }


# ---- per label ----------------------------------------------------------------------


def _median(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def _sps(records: list[TrialRecord]) -> tuple[float, float]:
    sps = np.array([r.timing.samples_per_s for r in records])
    cv = float(sps.std(ddof=1) / sps.mean()) if len(sps) > 1 else math.nan
    return float(np.median(sps)), cv


def _group(key: GroupKey, per_label: dict[str, list[TrialRecord]], members: dict[str, tuple]) -> list[Price]:
    """The price rows of one group, one per label: each label against the fastest and
    against `default`, paired within rounds, the A/A control's label bias taken in.
    `default` there is always its own trials (the A/A control is default against itself),
    even where other settings are priced as one with it."""
    busy = {label: sum(map(is_busy, recs)) for label, recs in per_label.items()}
    level = interval_level([r for recs in per_label.values() for r in recs])
    # default's own trials, busy ones left out among themselves (not among a pooled label's)
    own = without_busy([r for r in per_label.get(REFERENCE, []) if r.spec.setting == REFERENCE])
    per_label = {label: without_busy(recs) for label, recs in per_label.items()}
    rounds = {label: rounds_of(recs) for label, recs in per_label.items()}
    timed = {k: v for k, v in rounds.items() if k != AA_LABEL}
    best = fastest(timed)
    default = rounds_of(own) or None
    # what the A/A control strayed beyond its rounds: a fixed effect of the label that
    # every price between two labels may carry too (the A/A's own interval is the test of it)
    bias = label_bias_var(rounds[AA_LABEL], default) if AA_LABEL in rounds and default else 0.0
    rows = []
    for label, recs in per_label.items():
        is_aa = label == AA_LABEL
        ref = REFERENCE if is_aa and default else best
        extra = 0.0 if is_aa else bias
        if label == best:
            price = PairedRatio.identity(len(rounds[label]))
        else:
            price = ratio(rounds[label], default if ref == REFERENCE and is_aa and default else rounds[ref], extra,
                          level)  # fmt: skip
        vs = None if not default else PairedRatio.identity(len(default)) if label == REFERENCE else ratio(
            rounds[label], default, extra, level)  # fmt: skip
        sps, cv = _sps(recs)
        timings = [r.timing for r in recs]
        default_cv = _sps(own)[1] if own else math.nan
        rows.append(
            Price(
                key=key,
                label=label,
                members=members.get(label, (REFERENCE,) if is_aa else (label,)),
                n=len(recs),
                samples_per_s=sps,
                samples_per_s_cv=cv,
                step_time_s=_median(t.step_time_median_s for t in timings),
                price=price,
                price_vs=ref,
                vs_default=vs,
                cold_start_s=_median(t.cold_start_s for t in timings),
                peak_memory_bytes=_median(t.peak_memory_bytes for t in timings),
                achieved_flops=_median(t.achieved_flops for t in timings),
                label_bias=math.sqrt(bias),
                busy_trials=busy[label],
                busy_trials_priced=sum(map(is_busy, recs)),
                default_cv=default_cv,
                level=level,
            )
        )
    return rows


# ---- a group's labels, pooled on the CPU --------------------------------------------


def _label(record: TrialRecord) -> str:
    return AA_LABEL if record.spec.kind == Kind.AA else record.spec.setting


def _labels(records: list[TrialRecord], pool: tuple[str, ...]) -> tuple[dict, dict]:
    """{label: records} and {label: members}, the settings in `pool` under one label."""
    head = REFERENCE if REFERENCE in pool else (pool[0] if pool else None)
    per_label: dict[str, list[TrialRecord]] = {}
    for r in records:
        label = _label(r)
        per_label.setdefault(head if label in pool else label, []).append(r)
    members = {head: tuple(p for p in label_order(pool))} if len(pool) > 1 else {}
    return per_label, members


def _reacting(rows: list[Price]) -> set[str]:
    """cuDNN-only settings whose interval against `default` excludes 1 while the A/A
    control's covers it (or there is none), by more than the smallest price the group can
    detect (a two-round interval can be narrow by chance): on the CPU their flags change no
    kernel, so the model or the machine reacts to the flag, and their price is shown as
    measured."""
    aa = next((p for p in rows if p.is_aa), None)
    steady = aa is None or (aa.vs_default is not None and aa.vs_default.includes_one)
    floor = _detectable(rows)
    return {
        p.label
        for p in rows
        if steady and cudnn_only(p.label) and p.vs_default is not None and p.vs_default.rounds >= 2
        and not p.vs_default.includes_one and not abs(p.vs_default.ratio - 1) <= floor
    }  # fmt: skip


def _declared(records: list[TrialRecord], labels) -> set[str]:
    """cuDNN-only settings that set a flag the workload says its steps react to on the CPU
    (`TrialRecord.reacts_to`: a diagnostic workload's injected price). They are priced as
    measured from the first round, before their data can confirm it, so that a run that
    stops early (--decide) does not pool a known price away."""
    flags = {r.reacts_to for r in records} - {None}
    default = SETTINGS[REFERENCE].expected_flags()
    return {
        s for s in labels
        if cudnn_only(s) and any(SETTINGS[s].expected_flags().get(f) != default.get(f) for f in flags)
    }  # fmt: skip


def _priced_group(key: GroupKey, records: list[TrialRecord], cpu: bool) -> list[Price]:
    per_label, _ = _labels(records, ())
    if not any(label != AA_LABEL for label in per_label):
        return []  # only A/A trials finished: nothing to price
    rows = _group(key, per_label, {})
    if not cpu:
        return rows
    reacting = _reacting(rows) | _declared(records, per_label)
    pool = tuple(s for s in label_order(per_label) if (s == REFERENCE or cudnn_only(s)) and s not in reacting)
    if len(pool) > 1:
        rows = _group(key, *_labels(records, pool))
    return [replace(p, flag_reacts=p.label in reacting) for p in rows]


# ---- the table ----------------------------------------------------------------------


def prices(records: list[TrialRecord], cpu: bool) -> list[Price]:
    """Every group's price rows, labels in the matrix's order, A/A control last; with
    host-bound marks, each group's smallest detectable price and each row's verdict."""
    out = []
    for key, recs in by_key(ok_of(records, ROUND_KINDS)).items():
        rows = _priced_group(key, [r for r in recs if r.timing], cpu)
        order = {label: i for i, label in enumerate(label_order(p.label for p in rows))}
        rows = sorted(rows, key=lambda p: order[p.label])
        detectable = _detectable(rows)
        rows = [replace(p, detectable=detectable) for p in rows]
        out += [_judged(_host_bound(p, records), rows) for p in rows]
    return out


def _detectable(rows: list[Price]) -> float:
    """The smallest price this group can tell apart from noise: how far the A/A control
    (default against itself) may stray, its point or its interval's far edge; without an
    A/A control, the median half-width of the group's price intervals."""
    aa = next((p for p in rows if p.is_aa), None)
    if aa is not None:
        r = aa.price
        return max(abs(r.ratio - 1), r.hi - 1, 1 - r.lo)
    halves = [p.price.half_width for p in rows if p.price.lo < p.price.hi]
    return float(np.median(halves)) if halves else math.nan


def _judged(p: Price, rows: list[Price]) -> Price:
    """The verdict of a row, from its own interval (and whether the run can stand behind it)."""
    if p.is_aa:
        return replace(p, verdict=Verdict.NOISE_FLOOR)
    if p.price_vs == p.label:
        return replace(p, verdict=Verdict.FASTEST)
    r = p.price
    if r.rounds < 2 or not math.isfinite(r.hi):
        return replace(p, verdict=Verdict.UNCONFIRMED, why="one round: no interval")
    if r.lo == r.hi:
        return replace(p, verdict=Verdict.UNCONFIRMED, why=f"no spread across its {r.rounds} rounds: no interval")
    if r.includes_one:
        return replace(p, verdict=Verdict.WITHIN_NOISE)
    p = replace(p, beyond_noise=not (math.isfinite(p.detectable) and abs(r.ratio - 1) < p.detectable))
    if r.rounds < MIN_ROUNDS:
        why = f"{r.rounds} rounds, fewer than the {MIN_ROUNDS} a verdict rests on: a narrow interval may be luck"
        return replace(p, verdict=Verdict.UNCONFIRMED, why=why)
    if p.busy_trials_priced:
        return replace(p, verdict=Verdict.UNCONFIRMED, why="it rests on trials run while the machine was busy")
    if math.isfinite(p.detectable) and abs(r.ratio - 1) < p.detectable:
        why = f"closer to 1.00 than the smallest price this run can detect ({p.detectable:.0%})"
        return replace(p, verdict=Verdict.UNCONFIRMED, why=why)
    if any(q.strayed for q in rows):
        return replace(p, verdict=Verdict.UNCONFIRMED, why="the A/A control strayed beyond its own interval")
    return replace(p, verdict=Verdict.REAL)


def _host_bound(p: Price, records: list[TrialRecord]) -> Price:
    """The row's kernel busy fraction and `host_bound` (None where no profiled trial
    measured it: the CPU, or no --explain): the profiled trial's kernel time per step
    over this label's median timed step, below the threshold the trial recorded. The
    profiled trial's own step is slowed by the profiler, so its fraction stands in only
    where the timed step is missing. The A/A control runs `default`, and takes its row."""
    setting = REFERENCE if p.is_aa else p.label
    found = None
    for r in ok_of(records, (Kind.PROFILED,)):
        hb = r.host_bound
        if hb and r.spec.setting == setting and GroupKey.of(r).same_group(p.key, "steps", machine=True):
            found = hb  # the latest profiled trial of the label wins
    if found is None:
        return p
    bound, fraction = found.judge(p.step_time_s if math.isfinite(p.step_time_s) else None)
    if fraction is None:
        return p
    return replace(p, kernel_busy_fraction=fraction, host_bound=bool(bound))


def price_frame_rows(rows: list[Price]) -> list[dict]:
    """The price table as rows of derived columns (the JSON and the figures read these)."""
    fields = varying_fields(p.key for p in rows)
    return [p.row(fields) for p in rows]


def half_widths(records: list[TrialRecord]) -> dict[str, float]:
    """Each price's interval half-width (0.03: ±3%), keyed `workload/axes: label`: what
    --precision drives down. The fastest label of each group has none."""
    cpu = all(r.spec.device.startswith("cpu") for r in records)
    rows = prices(records, cpu)
    fields = varying_fields(p.key for p in rows)
    out = {}
    for p in rows:
        if p.verdict != Verdict.FASTEST:
            name = "/".join(str(v) for v in p.key.shown(fields).values())
            out[f"{name}: {p.label}"] = p.price.half_width
    return out


def detectable_by_workload(prices: list[Price]) -> dict[str, float]:
    """The smallest price each workload's run can tell apart from noise (its worst group's
    `detectable`; infinite where a group has none, as without an A/A control)."""
    out: dict[str, float] = {}
    for p in prices:
        d = p.detectable if math.isfinite(p.detectable) else math.inf
        out[p.key.workload] = max(out.get(p.key.workload, -math.inf), d)
    return out


def noise_floor(prices: list[Price]) -> float:
    """The largest price difference this run cannot resolve (its worst workload's
    `detectable`): prices closer than this tie. NaN where no workload has one (then no
    price is decided, and nothing asks)."""
    finite = [d for d in detectable_by_workload(prices).values() if math.isfinite(d)]
    return max(finite) if finite else math.nan
