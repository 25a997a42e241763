"""How a group key reads: its cells in a table, its axes in a sentence."""

from __future__ import annotations

from detcost import axes
from detcost.derive.keys import GroupKey


def workload_text(name: str) -> str:
    """A workload as a table names it: a --model's callable name, not its whole target
    (the report's environment section gives the target); a built-in net's own name."""
    return name.split("@", 1)[0].rsplit(":", 1)[-1] if _is_model(name) else name


def _is_model(name: str) -> bool:
    return "@" in name and ":" in name.split("@", 1)[0]


def models_rows(workloads) -> list[tuple[str, str]]:
    """Where each --model in the tables came from, for the environment section."""
    return [(f"model {workload_text(w)}", w) for w in dict.fromkeys(workloads) if _is_model(w)]


def key_cells(key: GroupKey, fields: list[str]) -> list[str]:
    """The workload and the fields that vary, as table cells."""
    head = workload_text(key.workload)
    if "batch_size" not in fields:  # every table says what batch its times are for
        head += f" (batch {key.get('batch_size')})"
    return [head, *(str(v) for k, v in key.shown(fields).items() if k != "workload")]


def axis_values_text(values: dict) -> str:
    """`threads 2, memory_format channels_last`: the axes of a key that are not at their
    default, for a sentence ("-" when all are)."""
    shown = [a.describe(v) for a, v in axes.each(values) if a.name in values and v != a.default]
    return ", ".join(shown) or "-"
