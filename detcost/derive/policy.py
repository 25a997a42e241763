"""How a team judges a run, resolved once: `resolve(...) -> Policy`.

The speed budget comes from the flag, then the team config (`[tool.detcost]`), then the
built-in 10%; the team's setting and whether it requires bitwise-reproducible repeats
come from the config too; and the least evidence any verdict may rest on is fixed here.
`detcost run`, `report`, `gate`, `compare`, the selfcheck and the asv suite all take their
policy from `resolve`, and `analyse(records, policy)` decides every price by it: no
command judges against a budget of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from detcost import config
from detcost.config import TeamConfig

DEFAULT_MAX_SLOWDOWN = 0.10
# The least rounds a price may be judged on (within or over budget, a gate pass): fewer
# and the price "cannot decide". Two rounds give a t interval one degree of freedom; when
# they happen to agree, the spread is estimated near zero and the interval is narrow by
# luck. How the number was chosen, on this project's measurements: docs/statistics.md,
# "How much evidence a verdict needs" (scripts/min_rounds.py).
MIN_ROUNDS = 5
_FIND = object()  # resolve(): look for the team config from the working directory


@dataclass(frozen=True)
class Policy:
    """What a run is judged against: the speed budget (over the fastest setting, as a
    fraction) and where it came from, the team's setting, whether the team requires
    bitwise-reproducible repeats, and the least rounds a verdict may rest on."""

    max_slowdown: float = DEFAULT_MAX_SLOWDOWN
    budget_from: str = "the built-in default"
    setting: str | None = None
    require_reproducible: bool = False
    min_rounds: int = MIN_ROUNDS

    def __post_init__(self) -> None:
        if self.min_rounds < 2:
            raise ValueError("a verdict needs an interval: min_rounds is 2 or more")

    def to_json(self) -> dict:
        return {
            "max_slowdown": self.max_slowdown,
            "budget_from": self.budget_from,
            "setting": self.setting,
            "require_reproducible": self.require_reproducible,
            "min_rounds": self.min_rounds,
        }


def resolve(max_slowdown: float | None = None, *, team: TeamConfig | None | object = _FIND,
            require_reproducible: bool = False) -> Policy:  # fmt: skip
    """The policy: a flag's value where given, else the team config's (found from the
    working directory unless `team` is passed, None for none), else the built-in default."""
    if team is _FIND:
        team = config.find()
    assert team is None or isinstance(team, TeamConfig)
    if max_slowdown is not None:
        budget, source = max_slowdown, "--max-slowdown"
    elif team is not None and team.max_slowdown is not None:
        budget, source = team.max_slowdown, f"the team config ({team.path.name})"
    else:
        budget, source = DEFAULT_MAX_SLOWDOWN, "the built-in default"
    return Policy(
        max_slowdown=budget,
        budget_from=source,
        setting=team.setting if team is not None else None,
        require_reproducible=require_reproducible or bool(team is not None and team.requires_reproducible),
    )
