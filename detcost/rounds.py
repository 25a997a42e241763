"""A round: one trial of every label, back to back, in one repeat of one run, on one unit.

A price is the ratio of two labels' step times within each round, its interval drawn from
the spread across rounds (DESIGN: Intervals). So the round is what the plan lays out (each
repeat a round, its labels in an order from a Williams design, `plan.round_order`), what
the prices pair (`derive.pairing.rounds_of`), what a Ray task keeps on one GPU or one set
of cores (`cluster.task_key`: a round's trials of one group), and what the random layout
gives a forkserver of its own (`RoundServers`, docs/layout-bias.md). Each of them asks
`Round` which round a trial is in, so the rule is written once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from detcost.record import ROUND_KINDS, TrialSpec

if TYPE_CHECKING:
    from detcost.record import TrialRecord


@dataclass(frozen=True)
class Round:
    """The identity of a round: the run, the repeat and the unit (the GPU, or on the CPU
    the host) its trials ran on. Two units of one machine kind that ran under one run id
    ran two rounds, never one: their trials do not pair."""

    run_id: str
    repeat: int
    unit: str | None = None  # None while planned: the sweep has not run it anywhere yet

    @classmethod
    def of(cls, spec: TrialSpec) -> Round | None:
        """The round a planned trial runs in; None for the trials outside rounds (the
        audit, profiled and seed trials)."""
        return cls(spec.run_id, spec.repeat) if spec.kind in ROUND_KINDS else None

    @classmethod
    def ran(cls, record: TrialRecord) -> Round:
        """The round a record's trial ran in, on the unit it ran on."""
        return cls(record.spec.run_id, record.spec.repeat, record.unit)


def rounds_in(specs: Iterable[TrialSpec]) -> list[Round]:
    """The rounds `specs` run, each once, in the order of their first trial."""
    return list(dict.fromkeys(r for r in map(Round.of, specs) if r is not None))


class RoundServers:
    """The random layout's forkservers (`isolation`): a new one at the first trial of each
    round, so the labels of a round share one layout and the next round draws another.
    The sweep's first trial starts one whatever its kind (the audit's trials share the
    first round's), and a trial outside the rounds runs on the server that is up. None at
    all under a fixed layout or where trials are spawned (`on` False)."""

    def __init__(self, varied: bool, method: str) -> None:
        self.on = varied and method == "forkserver"
        self.current: Round | None = None  # the round whose server is up
        self.started = False  # whether this sweep has started a server of its own

    def starts(self, spec: TrialSpec) -> bool:
        """Whether a new server starts before `spec` runs (and take note that it runs)."""
        if not self.on:
            return False
        rnd = Round.of(spec)
        new = not self.started or (rnd is not None and self.current not in (None, rnd))
        self.started = True
        self.current = rnd or self.current
        return new

    def count(self, specs: list[TrialSpec]) -> int:
        """How many servers running `specs` starts: one a round (what the dry run prices)."""
        return len(rounds_in(specs)) if self.on else 0
