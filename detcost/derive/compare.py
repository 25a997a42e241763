"""Two runs side by side: B's step time relative to A's for every group both ran, from
the records of each, with each run's own prices beside it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from detcost import axes
from detcost.derive.keys import GroupKey, by_key, ok_of
from detcost.derive.pairing import rounds_of, without_busy
from detcost.derive.prices import Price
from detcost.record import TrialRecord
from detcost.settings import REFERENCE
from detcost.stats import PairedRatio, unpaired_ratio


def match_fields() -> tuple[str, ...]:
    """What must match for two runs' trials to be compared: the workload, the setting,
    every axis and the sizes (steps may differ)."""
    return ("workload", "setting", *axes.names(), "batch_size", "image_size")


def _match_key(record: TrialRecord) -> tuple:
    spec = record.spec
    return (spec.workload, spec.setting, *(spec.axes.get(a) for a in axes.names()), spec.batch_size, spec.image_size)


@dataclass(frozen=True)
class RunDelta:
    """One workload x setting (x axes) that both runs ran: B's step time over A's."""

    match: dict
    a_samples_per_s: float
    b_samples_per_s: float
    b_vs_a: PairedRatio
    within_noise: bool
    a_price: float
    b_price: float

    def row(self) -> dict:
        r = self.b_vs_a
        return {**self.match, "a_samples_per_s": self.a_samples_per_s, "b_samples_per_s": self.b_samples_per_s,
                "b_vs_a": r.ratio, "b_vs_a_lo": r.lo, "b_vs_a_hi": r.hi, "within_noise": self.within_noise,
                "a_price": self.a_price, "b_price": self.b_price}  # fmt: skip


def _groups(records: list[TrialRecord]) -> dict[tuple, list[TrialRecord]]:
    out: dict[tuple, list[TrialRecord]] = {}
    for r in ok_of(records):
        if r.timing:
            out.setdefault(_match_key(r), []).append(r)
    return out


def _price_of(prices: list[Price], record: TrialRecord) -> float:
    """The price a run's own table gives this trial's group and setting (NaN if none)."""
    key = next(iter(by_key([record])))
    for p in prices:
        if p.key.same_group(key, "steps", machine=True) and p.prices(record.spec.setting) and not p.is_aa:
            return p.price.ratio
    return math.nan


def compare_runs(
    a: list[TrialRecord], b: list[TrialRecord], a_prices: list[Price], b_prices: list[Price]
) -> tuple[list[RunDelta], list[dict]]:
    """Per group in both runs: samples/s of each, and B's step time over A's (above 1: B is
    slower, the direction of every price) with a 95% interval over each run's rounds
    (unpaired: the runs share no rounds). Busy trials are left out. "Within noise" is the
    interval's verdict, as in a price table: it includes 1. Also the groups found in one
    run only."""
    a_groups, b_groups = _groups(a), _groups(b)
    match = match_fields()
    rows, missing = [], []
    for key in sorted(set(a_groups) | set(b_groups), key=str):
        if key not in a_groups or key not in b_groups:
            missing.append({**dict(zip(match, key)), "only_in": "A" if key in a_groups else "B"})
            continue
        ga, gb = without_busy(a_groups[key]), without_busy(b_groups[key])
        ratio = unpaired_ratio(rounds_of(gb), rounds_of(ga))
        rows.append(
            RunDelta(
                match=dict(zip(match, key)),
                a_samples_per_s=_median_sps(ga),
                b_samples_per_s=_median_sps(gb),
                b_vs_a=ratio,
                within_noise=ratio.includes_one,
                a_price=_price_of(a_prices, ga[0]),
                b_price=_price_of(b_prices, gb[0]),
            )
        )
    return rows, missing


def _median_sps(records: list[TrialRecord]) -> float:
    values = sorted(r.timing.samples_per_s for r in records)
    n = len(values)
    return float((values[(n - 1) // 2] + values[n // 2]) / 2)


def _round_prices(records: list[TrialRecord], setting: str, key: GroupKey) -> dict:
    """{round: the setting's step time over `default`'s} in one run, for the group `key`
    (steps and machine aside), busy trials left out as in a price table."""

    def group(label: str) -> list[TrialRecord]:
        return without_busy([r for r in ok_of(records) if r.timing and r.spec.setting == label and
                             GroupKey.of(r).same_group(key, "steps")])  # fmt: skip

    mine, default = group(setting), group(REFERENCE)
    if not mine or not default:
        return {}
    a, b = rounds_of(mine), rounds_of(default)
    return {r: a[r] / b[r] for r in a if r in b}


def price_ratio(a: list[TrialRecord], b: list[TrialRecord], setting: str, key: GroupKey) -> PairedRatio:
    """B's price of `setting` over A's on the group `key` (each run's price against its
    own `default`, within rounds), with a Welch interval over the two runs' rounds
    (unpaired: the runs share no rounds). Above 1: the setting costs more in B."""
    return unpaired_ratio(_round_prices(b, setting, key), _round_prices(a, setting, key))
