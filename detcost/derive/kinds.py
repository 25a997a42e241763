"""Machine kinds (`TrialRecord.machine_kind`: on CUDA the GPU model, driver, torch and cuDNN;
on the CPU the CPU model, its cores and torch): the analysis pools the rounds of every GPU
(or host) of one kind, and never pools two kinds. Two views of that here:

- `unit_spreads`: within one kind that ran on more than one unit (one GPU: its host and
  UUID; on the CPU one host), each price row priced again on each unit's own rounds beside
  the pooled one, and how far the units lie apart (the largest unit price over the smallest);
- `across_kinds`: where the records hold several kinds, each setting's price per kind side
  by side (one row per group and setting, a `Price` or None per kind).

Both read the analysis's own `Price` rows (`prices.prices`); nothing is priced another way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detcost.derive.keys import AA_LABEL, GroupKey, label_order, varying_fields
from detcost.derive.prices import Price, prices
from detcost.record import TrialRecord


@dataclass(frozen=True)
class UnitPrice:
    """One unit's own price row for a label of a group (its rounds only)."""

    unit: str
    price: Price


@dataclass(frozen=True)
class UnitSpread:
    """A pooled price row of one kind and the same row priced on each unit that ran it."""

    pooled: Price
    units: tuple[UnitPrice, ...]

    def rows(self, fields: list[str]) -> list[dict]:
        """One row per unit (derived columns; the JSON reads these)."""
        return [{**self.pooled.key.shown(fields), "setting": self.pooled.label, "machine": self.pooled.key.machine,
                 "unit": u.unit, "price": u.price.price.ratio, "price_lo": u.price.price.lo,
                 "price_hi": u.price.price.hi, "rounds": u.price.price.rounds, "pooled_price": self.pooled.price.ratio,
                 "max_over_min": self.ratio} for u in self.units]  # fmt: skip

    @property
    def ratio(self) -> float:
        """The largest unit's price over the smallest (1.00: the units agree); NaN with
        fewer than two units priced."""
        values = [u.price.price.ratio for u in self.units if math.isfinite(u.price.price.ratio)]
        return max(values) / min(values) if len(values) > 1 and min(values) > 0 else math.nan


def units_of(records: list[TrialRecord]) -> list[str]:
    """The units (GPUs, or hosts on the CPU) the records ran on, in the order they appear."""
    return list(dict.fromkeys(r.unit for r in records))


def unit_spreads(records: list[TrialRecord], cpu: bool, pooled: list[Price]) -> list[UnitSpread]:
    """Each pooled price row beside the same row on each unit's own records (one kind's
    records); [] where they all ran on one unit."""
    per_unit: dict[str, list[TrialRecord]] = {}
    for r in records:
        per_unit.setdefault(r.unit, []).append(r)
    if len(per_unit) < 2:
        return []
    rows = {unit: {(p.key, p.label): p for p in prices(recs, cpu)} for unit, recs in per_unit.items()}
    out = []
    for p in pooled:
        found = tuple(UnitPrice(unit, own[p.key, p.label]) for unit, own in rows.items() if (p.key, p.label) in own)
        if found:
            out.append(UnitSpread(p, found))
    return out


@dataclass(frozen=True)
class KindPrices:
    """One setting of one group (workload, axes, sizes; no machine) on every kind: the
    `Price` row that prices it there, or None where that kind did not run it."""

    key: GroupKey
    setting: str
    prices: tuple[Price | None, ...]  # in `AcrossKinds.kinds`' order


@dataclass(frozen=True)
class AcrossKinds:
    """Each setting's price per machine kind, side by side."""

    kinds: tuple[str, ...]
    fields: list[str]  # the group fields that vary across all kinds (the table's key columns)
    rows: list[KindPrices]

    def frame_rows(self) -> list[dict]:
        """One row per setting and kind that ran it (derived columns: the figure and the JSON
        read these)."""
        return [
            {**row.key.shown(self.fields), "setting": row.setting, "machine": kind, "price": p.price.ratio,
             "price_lo": p.price.lo, "price_hi": p.price.hi, "rounds": p.price.rounds, "verdict": str(p.verdict),
             "as_one_with": p.label if p.pooled and p.label != row.setting else None}
            for row in self.rows
            for kind, p in zip(self.kinds, row.prices)
            if p is not None
        ]  # fmt: skip


def across_kinds(kinds: list[tuple[str, list[Price]]]) -> AcrossKinds | None:
    """The side-by-side table of `kinds` (each kind's name and its price rows); None where
    fewer than two kinds priced anything."""
    kinds = [(name, rows) for name, rows in kinds if rows]
    if len(kinds) < 2:
        return None
    cells: dict[tuple[GroupKey, str], dict[str, Price]] = {}
    for name, rows in kinds:
        for p in rows:
            for setting in [AA_LABEL] if p.is_aa else p.members:
                cells.setdefault((p.key.without_machine(), setting), {})[name] = p
    groups = list(dict.fromkeys(key for key, _ in cells))
    out = []
    for key in groups:
        for setting in label_order(s for k, s in cells if k == key):
            found = cells[key, setting]
            out.append(KindPrices(key, setting, tuple(found.get(name) for name, _ in kinds)))
    return AcrossKinds(tuple(name for name, _ in kinds), varying_fields(groups), out)


__all__ = ["AcrossKinds", "KindPrices", "UnitPrice", "UnitSpread", "across_kinds", "unit_spreads", "units_of"]
