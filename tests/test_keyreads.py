"""derive/ and report/ read records through their types, never by a field's name: no
string key that names a record-only field (a stored JSON field, or a results-table
column such as `flags.cudnn_benchmark`) is subscripted or `.get`-ed there. The names a
derived table shares with the record (the group key's workload, setting, axes and
sizes; the derived columns that `detcost.derive` reserves) are the derived tables' own
columns, which the figures and JSON read by name."""

from __future__ import annotations

import ast
from pathlib import Path

from detcost import payloads, record
from detcost.derive import DERIVED_COLUMNS
from detcost.derive.keys import group_fields

PACKAGE = Path(record.__file__).parent
SCANNED = ("derive", "report")


def _record_fields() -> set[str]:
    """Every name a stored record or a results-table row has."""
    probe = record.TrialSpec("", record.Kind.TIMED, "", "", 0, 0, "cpu", 1, 0, 1, 1)
    flat = record._known_fields(probe) | {"payload", "parts"}
    nested = {
        "busy": [*payloads.BusyReport.__dataclass_fields__, "busy"],
        "audit": payloads.Audit.__dataclass_fields__,
        "host_bound": payloads.HostBound.__dataclass_fields__,
        "cudnn_plans": payloads.CudnnPlans.__dataclass_fields__,
        "flags": [],
        "env": [*record.ENV_FIELDS, "env"],
        "layout": ["heap_pad", "env_pad", "server_pid", "mode"],
    }
    dotted = {f"{outer}.{inner}" for outer, inners in nested.items() for inner in inners}
    return flat | dotted | {f"{outer}." for outer in nested} | set(record.ENV_FIELDS)


def _derived_columns() -> set[str]:
    """The derived tables' columns: the group key's fields and the reserved derived names."""
    shared = ("workload", "setting", "label", "kind", "status", "error", "repeat", "seed")
    return {*shared, *group_fields(), *DERIVED_COLUMNS}


def _string_keys(tree: ast.AST):
    """(line, key) of every x["key"] and x.get("key", ...) in a module."""
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            key = node.args[0].value
        if isinstance(key, str):
            yield node.lineno, key


def _is_record_field(key: str, forbidden: set[str]) -> bool:
    return key in forbidden or any(key.startswith(p) for p in forbidden if p.endswith("."))


def record_key_reads() -> list[str]:
    forbidden = _record_fields() - _derived_columns()
    found = []
    for sub in SCANNED:
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for line, key in _string_keys(ast.parse(path.read_text())):
                if _is_record_field(key, forbidden):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {key!r}")
    return found


def test_derive_and_report_read_no_record_field_by_its_string_key():
    assert record_key_reads() == []


def test_the_scan_finds_a_record_field_read_by_key():
    """The scan itself can fail: a read of a stored field, or a table column, is found."""
    tree = ast.parse('x = r.payload["audit"]\ny = row.get("flags.cudnn_benchmark")\nz = p["price"]')
    keys = [k for _, k in _string_keys(tree)]
    forbidden = _record_fields() - _derived_columns()
    assert [k for k in keys if _is_record_field(k, forbidden)] == ["audit", "flags.cudnn_benchmark"]
