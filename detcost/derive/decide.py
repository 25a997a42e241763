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
from dataclasses import replace

from detcost.derive.policy import Policy
from detcost.derive.prices import Price
from detcost.derive.verdict import (
    BUSY,
    FAIL,
    NO_INTERVAL,
    NOISY,
    PASS,
    STRADDLES,
    TOO_FEW_ROUNDS,
    UNDECIDED,
    UNPAIRED,
    BudgetDecision,
)
from detcost.stats import PairedRatio

__all__ = ["FAIL", "PASS", "UNDECIDED", "BudgetDecision", "decide", "decided", "open_prices"]


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


def decide(p: Price, setting: str, policy: Policy) -> BudgetDecision:
    """The price of `setting` (priced by row `p`) against the policy's budget, by the row's
    interval; "cannot decide" below the policy's least rounds, whatever the interval says."""
    budget = policy.max_slowdown
    line, r = 1 + budget, p.price
    if not r.rounds:
        return BudgetDecision(UNDECIDED, f"shares no round with {p.price_vs}, the fastest, to be priced against it",
                              cause=UNPAIRED)  # fmt: skip
    if r.rounds < policy.min_rounds:
        return BudgetDecision(UNDECIDED, f"rests on {r.rounds} round(s): detcost judges a price on {policy.min_rounds} "
                              "or more, since a few rounds that happen to agree look precise by luck",
                              _rounds_at_least(p, policy), cause=TOO_FEW_ROUNDS)  # fmt: skip
    if p.busy_trials_priced:
        return BudgetDecision(UNDECIDED, "has a price that rests on trials run while the machine was busy", cause=BUSY)
    if not p.detectable <= budget and not _over_and_detected(p, line):
        shown = f"{p.detectable:.1%}" if math.isfinite(p.detectable) else "unknown (no A/A control)"
        need = rounds_to_detect(p.detectable, budget, r.rounds)
        more = f"; about {need} rounds in all would bring it within the budget at the observed spread" if need else ""
        return BudgetDecision(UNDECIDED, f"cannot be judged: the run cannot detect a price the size of the budget "
                              f"({budget_text(budget)}): the smallest it can detect is {shown}{more}",
                              need, cause=NOISY)  # fmt: skip
    if p.label == p.price_vs:
        if p.pooled and setting != p.label:
            return BudgetDecision(PASS, f"is priced as one with {p.label}, the fastest, on the CPU (its flags change "
                                  "no CPU kernel): within any budget")  # fmt: skip
        return BudgetDecision(PASS, "is the fastest setting of the run: its price is 1.00, within any budget")
    if not math.isfinite(r.hi) or r.lo == r.hi:
        return BudgetDecision(UNDECIDED, f"has no spread across its {r.rounds} rounds, so no interval",
                              cause=NO_INTERVAL)  # fmt: skip
    status = against(r, line)
    shown = (f"costs {r.ratio:.3f} [{r.lo:.3f}, {r.hi:.3f}] x {p.price_vs}'s step time (the fastest), "
             f"{level_text(p.level)} interval over {r.rounds} rounds")  # fmt: skip
    busy = f" ({p.busy_trials} busy trial(s) left out)" if p.busy_trials else ""
    if status == FAIL:
        return BudgetDecision(FAIL, f"{shown}{busy}: the whole interval is over the {budget_text(budget)} budget")
    if status == PASS:
        return BudgetDecision(PASS, f"{shown}{busy}: the whole interval is within the {budget_text(budget)} budget")
    return BudgetDecision(UNDECIDED, f"{shown}{busy}: the interval straddles the {budget_text(budget)} budget; "
                          f"{more_rounds(r, line)}", rounds_to_decide(r, line), cause=STRADDLES)  # fmt: skip


def decided(rows: list[Price], policy: Policy) -> list[Price]:
    """The price rows, each with its decision against the policy for every setting it
    prices (several where the CPU pools settings); the A/A control has none. The one place
    a price is judged: everything downstream reads `Price.decision_for`."""
    return [p if p.is_aa else replace(p, decisions=tuple((s, decide(p, s, policy)) for s in p.members)) for p in rows]


def _rounds_at_least(p: Price, policy: Policy) -> int:
    """Rounds in all that a run with too few would need to judge this price: the least a
    verdict rests on, or more where the spread so far (a rough guide on so few rounds)
    says the noise floor would still be above the budget. (A price on the budget's line
    may need more: its own interval says so once the run can judge it.)"""
    needs = [policy.min_rounds]
    if p.price.rounds >= 2:
        needs.append(rounds_to_detect(p.detectable, policy.max_slowdown, p.price.rounds) or 0)
    return max(needs)


def _over_and_detected(p: Price, line: float) -> bool:
    """A price over the budget that a run too noisy to pass anything can still fail: its
    whole interval is over the line and the price is further from 1.00 than the smallest
    price the run can detect."""
    r = p.price
    return (p.label != p.price_vs and r.rounds >= 2 and math.isfinite(r.hi) and r.lo < r.hi and r.lo > line
            and r.ratio - 1 > p.detectable)  # fmt: skip


def open_prices(rows: list[Price]) -> list[Price]:
    """The price rows (A/A control aside) whose decision (`decided`) is still open."""
    return [p for p in rows if not p.is_aa and not p.decision.decided]
