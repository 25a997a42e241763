"""How a group key reads: its cells in a table, its axes in a sentence."""

from __future__ import annotations

from detcost import axes
from detcost.derive.keys import GroupKey


def key_cells(key: GroupKey, fields: list[str]) -> list[str]:
    """The workload and the fields that vary, as table cells."""
    return [str(v) for v in key.shown(fields).values()]


def axis_values_text(values: dict) -> str:
    """`threads 2, memory_format channels_last`: the axes of a key that are not at their
    default, for a sentence ("-" when all are)."""
    shown = [f"{a.name} {v}" for a, v in axes.each(values) if a.name in values and v != a.default]
    return ", ".join(shown) or "-"
