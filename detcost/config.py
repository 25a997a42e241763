"""The team's default as configuration: `[tool.detcost]` in the project's `pyproject.toml`,
or a `detcost.toml` (its keys at the top level, or under `[tool.detcost]`), found from a
folder upward. It names the team's setting, its seed, its speed budget, the workloads (or
the `--model`) it cares about, an optional baseline results file and what the gate
requires. `detcost.apply()` with no argument, `detcost run` and `detcost gate` read it.

A malformed file, an unknown key or a value of the wrong kind is a `UsageError` of one line
that names the file and the key (exit 2 at the CLI).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from detcost.errors import UsageError
from detcost.settings import get_setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "detcost.toml"
PROJECT_FILE = "pyproject.toml"
REQUIREMENTS = ("reproducible",)  # what `require` may list


@dataclass(frozen=True)
class TeamConfig:
    """The team's default, as its file states it (paths resolved against the file's folder)."""

    path: Path
    setting: str | None = None
    seed: int | None = None
    max_slowdown: float | None = None  # a fraction: 0.10 is 10%
    threads: int | None = None  # the CPU thread count `detcost.apply()` fixes (results depend on it)
    workloads: tuple[str, ...] = ()
    model: str | None = None
    baseline: Path | None = None
    require: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def requires_reproducible(self) -> bool:
        return "reproducible" in self.require


def _fraction(value, where: str) -> float:
    """0.1, 10, "10%" or "0.1": a budget as a fraction."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f'{where} must be a fraction such as 0.1 or a percentage such as "10%"')
    text = str(value).strip()
    try:
        number = float(text.rstrip("%"))
    except ValueError:
        raise UsageError(f'{where}: {value!r} is not a number (e.g. 0.1 or "10%")') from None
    fraction = number / 100 if text.endswith("%") else number
    if not 0 <= fraction <= 10:
        raise UsageError(f"{where}: {value!r} is out of range; give a fraction such as 0.1 (10%)")
    return fraction


def _strings(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f'{where} must be a list of names, e.g. ["simple_cnn", "resnet18"]')
    return tuple(value)


def parse(table: dict, path: Path) -> TeamConfig:
    """A `[tool.detcost]` table as a TeamConfig; the first unknown or malformed key is one line."""
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.detcost] must be a table")
    known = {"setting", "seed", "max_slowdown", "threads", "workloads", "model", "baseline", "require"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(
            f"{path}: unknown key {unknown[0]!r} in [tool.detcost]; known keys: {', '.join(sorted(known))}"
        )
    where = f"{path}: [tool.detcost]"
    out: dict = {}
    if "setting" in table:
        if not isinstance(table["setting"], str):
            raise UsageError(f"{where} setting must be a setting's name")
        try:
            out["setting"] = get_setting(table["setting"]).name
        except UsageError as exc:
            raise UsageError(f"{where} setting: {exc}") from None
    if "seed" in table:
        seed = table["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
            raise UsageError(f"{where} seed must be a whole number from 0 to {2**32 - 1}")
        out["seed"] = seed
    if "threads" in table:
        threads = table["threads"]
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"{where} threads must be a whole number of 1 or more (torch's CPU thread count)")
        out["threads"] = threads
    if "max_slowdown" in table:
        out["max_slowdown"] = _fraction(table["max_slowdown"], f"{where} max_slowdown")
    if "workloads" in table:
        out["workloads"] = _strings(table["workloads"], f"{where} workloads")
    if "model" in table:
        if not isinstance(table["model"], str) or ":" not in table["model"]:
            raise UsageError(f'{where} model must be "path/to/file.py:callable" or "package.module:callable"')
        out["model"] = table["model"]
    if "baseline" in table:
        if not isinstance(table["baseline"], str):
            raise UsageError(f"{where} baseline must be the path of a results file")
        out["baseline"] = (path.parent / table["baseline"]).resolve()
    if "require" in table:
        require = _strings(table["require"], f"{where} require")
        bad = [r for r in require if r not in REQUIREMENTS]
        if bad:
            raise UsageError(f"{where} require: unknown requirement {bad[0]!r}; known: {', '.join(REQUIREMENTS)}")
        out["require"] = require
    return TeamConfig(path=path, **out)


def read(path: Path) -> TeamConfig | None:
    """The team config in one file (None for a pyproject.toml without [tool.detcost])."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("detcost") if isinstance(data.get("tool"), dict) else None
    if path.name == CONFIG_FILE and table is None:
        table = data  # detcost.toml: the keys at the top level
    return None if table is None else parse(table, path)


def find(start: Path | None = None) -> TeamConfig | None:
    """The team config nearest `start` (default: the working directory), looking upward:
    in each folder a detcost.toml first, then a pyproject.toml with [tool.detcost]."""
    folder = (start or Path.cwd()).resolve()
    for here in (folder, *folder.parents):
        for name in (CONFIG_FILE, PROJECT_FILE):
            candidate = here / name
            if candidate.is_file():
                found = read(candidate)
                if found is not None:
                    return found
    return None
