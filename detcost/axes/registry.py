"""The axis registry: the dimensions a trial varies along besides its workload and setting.

An axis is one `Axis` subclass (detcost's own in the modules beside this one, or one in
a user's module), registered once, and everything that needs to know the axes iterates
over the registry: the CLI flag, the sweep's plan, a trial's identity (`trial_id`), how
the trial process applies the value and reads it back, resume and compare matching, the
FLOP cache key, the dry run's estimate, the tables' group keys and the snippet. Adding an
axis edits nothing else (one of detcost's own also takes its place in the package's
`BUILT_IN`, the registry's order).

Every hook has one signature, the axis's value first, then what the hook acts on, then
the trial's spec where it needs one:

- in the trial process: `apply(value, spec)` (process state; returns what restores it),
  `wrap_model(value, model, spec)`, `wrap_step(value, step, spec)` (a `StepWrapper`),
  `batches(value, batches, spec)`, and `read_back(workload)`: what torch says is in force,
  stored as `<name>_read_back` (None: nothing to read), given no value so that it cannot
  echo the one asked for;
- in the parent: `id_part(value)`, `estimate(value, spec)` (a `Cost`, for the dry run),
  `describe(value)` (a table's words), `snippet(values, cpu)` (the recommendation's
  lines), `check(value, device)`, `check_workload(value, workload)` and
  `check_axes(value, others)` (why a value cannot run: on that device, with that
  workload, or beside the other axes' values of one trial; one line), `applies(others)`
  (whether the axis matters, given the other axes' values), `varies_seed(value,
  purpose)`, `host_threads(value, device)` and `processes(value)` (the processes a trial
  runs, `nproc`'s ranks: for the busy guard) and `defaults_for(device)` (a sweep's
  values when none are given).

The hooks import torch in the trial process, not at import: the axes sit below the record
and load without the training stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from detcost.errors import UsageError


@dataclass(frozen=True)
class Cost:
    """What one axis value adds to a trial, for the dry run's estimate: seconds once per
    build of the workload (cold start), seconds per step, and where the figures come from."""

    cold_start_s: float = 0.0
    step_s: float = 0.0
    basis: tuple[str, ...] = ()

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.cold_start_s + other.cold_start_s, self.step_s + other.step_s, self.basis + other.basis)


class StepWrapper:
    """A training step around another (what `wrap_step` returns): each part runs the inner
    step's unless a subclass overrides it. The parts: `forward(wl, x, y)` (model and
    loss, returns the loss) and `update(wl, loss)` (backward, the optimizer's step). Its
    state lives on the wrapper, so a copy of the workload's step copies it too."""

    def __init__(self, inner):
        self.inner = inner

    def forward(self, wl, x, y):
        return self.inner.forward(wl, x, y)

    def update(self, wl, loss) -> None:
        self.inner.update(wl, loss)


def wrapper_of(step, cls: type) -> Any:
    """The wrapper of type `cls` in a chain of steps, or None (for a read-back)."""
    while step is not None and not isinstance(step, cls):
        step = getattr(step, "inner", None)
    return step


@dataclass(frozen=True)
class Axis:
    """One axis. `name` is the record field, the table column and (with `-` for `_`) the
    CLI flag; `values` the allowed values (None: `parse` decides). The hooks (see the
    module's notes) do nothing unless a subclass overrides them."""

    name: str
    default: Any
    help: str
    values: tuple | None = None
    parse: Callable[[str], Any] = str
    affects_flops: bool = False  # part of the FLOP cache key (the model's layout, not the machine's)
    compare_across: bool = False  # the variance table compares one seed across this axis's values

    # ---- in the trial process
    def apply(self, value, spec) -> Callable[[], None] | None:
        return None

    def wrap_model(self, value, model, spec):
        return model

    def wrap_step(self, value, step, spec):
        return step

    def batches(self, value, batches, spec):
        return batches

    def read_back(self, workload) -> Any:
        return None

    # ---- in the parent
    def id_part(self, value) -> str | None:
        return None

    def estimate(self, value, spec) -> Cost:
        return Cost()

    def describe(self, value) -> str:
        return f"{self.name} {value}"

    def snippet(self, values: list, cpu: bool) -> list[str]:
        return []

    def check(self, value, device: str) -> str | None:
        return None

    def check_workload(self, value, workload) -> str | None:
        return None

    def check_axes(self, value, others: Mapping[str, Any]) -> str | None:
        return None

    def applies(self, others: Mapping[str, Any]) -> bool:
        return True

    def varies_seed(self, value, purpose: str) -> bool:
        return False

    def host_threads(self, value, device: str) -> int | None:
        return None

    def processes(self, value) -> int:
        return 1

    def defaults_for(self, device: str) -> list:
        return [self.default]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_list(self, text: str) -> list:
        """A comma list of values, order kept, duplicates dropped; bad input is a UsageError."""
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise UsageError(f"{self.flag}: give at least one value")
        return list(dict.fromkeys(self._parse_one(t) for t in items))

    def _parse_one(self, text: str):
        try:
            value = self.parse(text)
        except ValueError as exc:
            raise UsageError(f"{self.flag}: {exc}") from None
        if self.values is not None and value not in self.values:
            raise UsageError(f"{self.flag}: unknown value {text!r}; valid: {', '.join(map(str, self.values))}")
        return value


REGISTRY: dict[str, Axis] = {}
# Names an axis may not take, with what holds them: the record's fields and the derived
# tables' columns (their owners reserve them), where an axis's value would be overwritten.
RESERVED: dict[str, str] = {}


def _clash(name: str) -> str | None:
    for taken in (name, f"{name}_read_back"):
        if taken in RESERVED:
            return f"axis {name!r} clashes with {taken!r}, {RESERVED[taken]}; choose another name"
    return None


def reserve(names: Iterable[str], what: str) -> None:
    """Keep `names` from the axes; a registered axis that already holds one is a ValueError."""
    for name in names:
        RESERVED.setdefault(name, what)
    problem = next(filter(None, map(_clash, REGISTRY)), None)
    if problem:
        raise ValueError(problem)


def register(axis: Axis) -> Axis:
    """Add an axis; a name the record or a derived table already uses is a ValueError."""
    problem = _clash(axis.name)
    if problem:
        raise ValueError(problem)
    REGISTRY[axis.name] = axis
    return axis


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(REGISTRY)


def each(values: Mapping[str, Any]) -> Iterator[tuple[Axis, Any]]:
    """(axis, value) for every registered axis, in registry order."""
    for name, axis in REGISTRY.items():
        yield axis, values.get(name, axis.default)


def complete(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every registered axis with its value: the given one, else the axis's default.
    A name that is not an axis is a ValueError (a typo would otherwise vanish)."""
    values = dict(values or {})
    unknown = set(values) - set(REGISTRY)
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)}; registered: {names()}")
    return {axis.name: value for axis, value in each(values)}


def first_defaults(device: str) -> dict[str, Any]:
    """Each axis at the first of its sweep defaults on `device` (one trial outside a sweep)."""
    return {axis.name: axis.defaults_for(device)[0] for axis, _ in each({})}


def combinations(values: Mapping[str, list]) -> list[dict]:
    """Every combination of the given axes' values, where an axis that does not apply
    to a combination takes its default (and the duplicates that makes are dropped)."""
    out: dict[tuple, dict] = {}
    for combo in itertools.product(*values.values()):
        combo = dict(zip(values, combo))
        for name in combo:
            axis = REGISTRY.get(name)
            if axis and not axis.applies({k: v for k, v in combo.items() if k != name}):
                combo[name] = axis.default
        out.setdefault(tuple(combo.items()), combo)
    return list(out.values())


def first_problem(values: Mapping[str, list], device: str, workloads: list) -> str | None:
    """Why some axis value cannot run on `device`, on one of `workloads` (WorkloadSpecs) or
    beside another axis's value in one of the combinations a sweep runs, one line."""
    for axis, _ in each({}):
        for value in values.get(axis.name, []):
            problems = [axis.check(value, device), *(axis.check_workload(value, w) for w in workloads)]
            if any(problems):
                return next(p for p in problems if p)
    for combo in combinations(values):
        for name, value in combo.items():
            axis = REGISTRY.get(name)
            problem = axis and axis.check_axes(value, {k: v for k, v in combo.items() if k != name})
            if problem:
                return problem
    return None


def host_threads(values: Mapping[str, list], device: str) -> int:
    """The host threads a trial of these axes' values keeps busy, at most (at least 1): the
    most any axis asks for in each of the most processes any axis starts (`nproc`'s ranks)."""
    counts = [axis.host_threads(v, device) for axis, _ in each({}) for v in values.get(axis.name, [])]
    ranks = [axis.processes(v) for axis, _ in each({}) for v in values.get(axis.name, [])]
    return max([n for n in counts if n] or [1]) * max(ranks or [1])


def cost(spec) -> Cost:
    """What every axis's value adds to the trial of `spec`, for the dry run's estimate."""
    total = Cost()
    for axis, value in each(spec.axes):
        total = total + axis.estimate(value, spec)
    return total


def compares_across(name: str) -> bool:
    """Whether the variance table compares one seed across the values of this column."""
    return name in REGISTRY and REGISTRY[name].compare_across


def id_parts(values: Mapping[str, Any]) -> list[str]:
    parts = [axis.id_part(value) for axis, value in each(values)]
    return [p for p in parts if p]


def int_at_least(text: str, minimum: int) -> int:
    """An integer parser for an axis's (or a flag's) values: a ValueError names the input."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value
