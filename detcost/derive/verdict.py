"""A price's decision against the speed budget, as a value: within it (pass), over it
(fail) or cannot decide, with the reason, what would decide it, and, where it is open,
why. `derive.decide` makes them; the price rows carry them; everything else reads them."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, UNDECIDED = "pass", "fail", "cannot decide"

# Why a price stayed open. The first four are the run's, not the price's: a run where any
# price is open for one of them cannot judge speed (the banner says so, and what to run).
TOO_FEW_ROUNDS = "too few rounds"
BUSY = "busy machine"
NOISY = "noise floor above the budget"
UNPAIRED = "no common round"
NO_INTERVAL = "no interval"
STRADDLES = "straddles the budget"  # the price's own: more rounds would decide it
RUN_CAUSES = (TOO_FEW_ROUNDS, BUSY, NOISY, UNPAIRED)


@dataclass(frozen=True)
class BudgetDecision:
    """A price against the budget: its status, the reason (a sentence that follows the
    setting and workload), about how many rounds in all would decide it (where it is
    open and a number would), and why it is open (`cause`, one of the names above)."""

    status: str
    reason: str
    rounds_to_decide: int | None = None
    cause: str | None = None

    @property
    def decided(self) -> bool:
        return self.status != UNDECIDED

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason, "rounds_to_decide": self.rounds_to_decide,
                "cause": self.cause}  # fmt: skip
