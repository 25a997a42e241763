"""A price against a speed budget, decided by its interval: over it (the whole interval
above 1 + budget), within it (the whole interval below), or "cannot decide" (it straddles
the line, or the run cannot stand behind it), with the reason in one sentence.

The one rule behind `detcost gate`'s price finding and `detcost run --decide`'s stopping.
The budget is relative to the fastest setting of the group (DESIGN: Price), the same price
the recommendation reads. The interval is the row's own, at the level its sweep drew it
(95%, or under --decide 95% spread over the looks), so stopping when an interval clears
the line does not make the decision more confident than it says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detcost.derive.prices import Price
from detcost.stats import PairedRatio

PASS, FAIL, UNDECIDED = "pass", "fail", "cannot decide"


@dataclass(frozen=True)
class BudgetDecision:
    """A price against the budget: its status, the reason (a sentence that follows the
    setting and workload) and, where the interval straddles, about how many rounds in
    all would decide it at the observed spread."""

    status: str
    reason: str
    rounds_to_decide: int | None = None

    @property
    def decided(self) -> bool:
        return self.status != UNDECIDED


def against(r: PairedRatio, line: float) -> str:
    """Fail when the whole interval is over `line`, pass when all of it is under."""
    return FAIL if r.lo > line else PASS if r.hi < line else UNDECIDED


def rounds_to_decide(r: PairedRatio, line: float) -> int | None:
    """About how many rounds in all would take the interval of `r` clear of `line` at the
    observed spread: the half-width (on the log scale) shrinks roughly as 1/sqrt(rounds - 1)
    for a t interval. None where the point sits on the line (no number of rounds would do)."""
    distance = abs(math.log(r.ratio) - math.log(line))
    half = math.log(r.hi / r.ratio) if r.ratio < line else math.log(r.ratio / r.lo)
    if distance <= 0 or not math.isfinite(half):
        return None
    return _rounds_to_shrink(r.rounds, half / distance)


def _rounds_to_shrink(rounds: int, by: float) -> int:
    """Rounds in all that shrink a t interval's half-width (log scale) `by` times, at the
    spread observed over `rounds`: it goes roughly as 1/sqrt(rounds - 1)."""
    return 1 + math.ceil((rounds - 1) * by**2)


def rounds_to_detect(detectable: float, budget: float, rounds: int) -> int | None:
    """About how many rounds in all would bring the smallest detectable price (the A/A
    control's reach, mostly its interval) down to `budget`, were it all interval: it
    shrinks roughly as 1/sqrt(rounds - 1). None without an interval or a budget."""
    if not (math.isfinite(detectable) and budget > 0 and rounds >= 2):
        return None
    return _rounds_to_shrink(rounds, math.log1p(detectable) / math.log1p(budget))


def more_rounds(r: PairedRatio, line: float) -> str:
    need = rounds_to_decide(r, line)
    if need is None:
        return "its point sits on the line, so no number of rounds would decide it"
    return f"about {need} rounds in all (this run has {r.rounds}) would decide it at the observed spread"


def budget_text(budget: float) -> str:
    """10% as "10%", 0.005 as "0.5%": a budget in the digits it was given."""
    return f"{budget * 100:.3g}%"


def level_text(level: float) -> str:
    """95% as "95%", 0.9875 as "98.75%"."""
    return f"{level * 100:.4g}%"


def decide(p: Price, setting: str, budget: float) -> BudgetDecision:
    """The price of `setting` (priced by row `p`) against `budget`, by the row's interval."""
    line, r = 1 + budget, p.price
    if not r.rounds:
        return BudgetDecision(UNDECIDED, f"shares no round with {p.price_vs}, the fastest, to be priced against it")
    if p.busy_trials_priced:
        return BudgetDecision(UNDECIDED, "has a price that rests on trials run while the machine was busy")
    if not p.detectable <= budget and not _over_and_detected(p, line):
        shown = f"{p.detectable:.1%}" if math.isfinite(p.detectable) else "unknown (one round)"
        need = rounds_to_detect(p.detectable, budget, r.rounds)
        more = f"; about {need} rounds in all would bring it within the budget at the observed spread" if need else ""
        return BudgetDecision(UNDECIDED, f"cannot be judged: the run cannot detect a price the size of the budget "
                              f"({budget_text(budget)}): the smallest it can detect is {shown}{more}",
                              need)  # fmt: skip
    if p.label == p.price_vs:
        if p.pooled and setting != p.label:
            return BudgetDecision(PASS, f"is priced as one with {p.label}, the fastest, on the CPU (its flags change "
                                  "no CPU kernel): within any budget")  # fmt: skip
        return BudgetDecision(PASS, "is the fastest setting of the run: its price is 1.00, within any budget")
    if r.rounds < 2 or not math.isfinite(r.hi):
        return BudgetDecision(UNDECIDED, "has one round, which gives no interval; run 2 rounds or more")
    if r.lo == r.hi:
        return BudgetDecision(UNDECIDED, f"has no spread across its {r.rounds} rounds, so no interval")
    status = against(r, line)
    shown = (f"costs {r.ratio:.3f} [{r.lo:.3f}, {r.hi:.3f}] x {p.price_vs}'s step time (the fastest), "
             f"{level_text(p.level)} interval over {r.rounds} rounds")  # fmt: skip
    busy = f" ({p.busy_trials} busy trial(s) left out)" if p.busy_trials else ""
    if status == FAIL:
        return BudgetDecision(FAIL, f"{shown}{busy}: the whole interval is over the {budget_text(budget)} budget")
    if status == PASS:
        return BudgetDecision(PASS, f"{shown}{busy}: the whole interval is within the {budget_text(budget)} budget")
    return BudgetDecision(UNDECIDED, f"{shown}{busy}: the interval straddles the {budget_text(budget)} budget; "
                          f"{more_rounds(r, line)}", rounds_to_decide(r, line))  # fmt: skip


def _over_and_detected(p: Price, line: float) -> bool:
    """A price over the budget that a run too noisy to pass anything can still fail: its
    whole interval is over the line and the price is further from 1.00 than the smallest
    price the run can detect."""
    r = p.price
    return (p.label != p.price_vs and r.rounds >= 2 and math.isfinite(r.hi) and r.lo < r.hi and r.lo > line
            and r.ratio - 1 > p.detectable)  # fmt: skip


def open_prices(rows: list[Price], budget: float) -> list[Price]:
    """The price rows (A/A control aside) that the budget does not yet decide."""
    return [p for p in rows if not p.is_aa and not decide(p, p.label, budget).decided]
