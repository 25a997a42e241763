"""The recommendation: the most reproducible setting whose slowdown stays within a budget
on every workload, and the lines of Python that apply it.

Ties (contract): most reproducible first, then lowest price, then fewest changes from
`default`. Prices whose intervals overlap, or that are closer than the machine's noise
floor (the A/A control), count as equal; on a CPU the settings that run the same kernels
are priced as one row (`prices.py`), so noise does not pick among them. A setting is over
the budget when the whole interval of its worst price across workloads lies above it.
When the run cannot judge prices against the budget (busy trials, or a noise floor wider
than the budget), the pick rests on reproducibility, still leaving out settings shown to
be over budget. Every figure it quotes is a row of the analysis's own price table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from detcost import axes
from detcost.derive.decide import budget_text
from detcost.derive.keys import is_cpu, ok_of, setting_order
from detcost.derive.policy import Policy
from detcost.derive.prices import Price, detectable_by_workload, noise_floor
from detcost.derive.variance import Spread
from detcost.derive.verdict import BUSY, FAIL, NOISY, PASS, RUN_CAUSES, TOO_FEW_ROUNDS, UNDECIDED, UNPAIRED
from detcost.record import Kind, Status, TrialRecord
from detcost.settings import REFERENCE, SETTINGS, get_setting
from detcost.snippets import snippet, snippets

# Which price of a setting is its worst: one decided over the budget before one not decided,
# that before one within it; then the higher point. So the worst price a table shows is the
# one the recommendation's "over budget" read, never a higher point that was not decided.
SEVERITY = {FAIL: 2, UNDECIDED: 1, PASS: 0}

# Two spreads this close are the same spread (float noise of a mean): ties go to fewer changes.
SPREAD_TIE = 1.0001


@dataclass(frozen=True)
class Candidate:
    """One setting as the recommendation weighs it."""

    setting: str
    runs_everywhere: bool
    failures: str
    worst: Price | None  # its worst price across the groups (`SEVERITY`, then the highest point)
    over_budget: bool  # a price of it decided over the budget (`Price.decision_for`)
    bitwise_workloads: int
    groups: int
    spread: float
    changes: int

    @property
    def max_price(self) -> float:
        return self.worst.price.ratio if self.worst else math.nan

    @property
    def max_price_lo(self) -> float:
        return self.worst.price.lo if self.worst else math.nan

    @property
    def max_price_hi(self) -> float:
        return self.worst.price.hi if self.worst else math.nan


@dataclass(frozen=True)
class Recommendation:
    setting: str | None
    reason: str
    snippet: str
    max_slowdown: float
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)
    # Why this run cannot judge speed (None when it can): then the pick rests on
    # reproducibility alone, and the report says so above the recommendation.
    speed_caveat: str | None = None
    # The pick in every form a user may apply it (`snippets.snippets`: detcost.apply(), plain
    # PyTorch, the nearest framework switch and what to add, TensorFlow as text).
    snippets: dict[str, str] = field(default_factory=dict)
    # Where the run cannot judge speed: about how many rounds in all would let it (None
    # where no number of rounds would, or it can judge).
    rounds_to_judge: int | None = None


def changes_from_default(name: str) -> int:
    """How many flags (and environment variables) a setting changes relative to `default`."""
    base, other = get_setting(REFERENCE).expected_flags(), get_setting(name).expected_flags()
    return sum(base[k] != other[k] for k in base)


def candidates(records: list[TrialRecord], prices: list[Price], spreads: list[Spread]) -> list[Candidate]:
    """Per setting: does it run everywhere, its worst price, how reproducible it is."""
    timed = [r for r in records if r.spec.kind == Kind.TIMED]
    workloads = {r.spec.workload for r in timed}
    out = []
    for s in setting_order({r.spec.setting for r in timed}):
        trials = [r for r in timed if r.spec.setting == s]
        failed = [r for r in trials if r.status != Status.OK]
        rows = [p for p in prices if p.prices(s) and not p.is_aa and math.isfinite(p.price.ratio)]
        same = [v for v in spreads if v.same_seed and v.setting == s]
        out.append(
            Candidate(
                setting=s,
                runs_everywhere=not failed and {r.spec.workload for r in trials} == workloads,
                failures="; ".join(sorted({f"{r.spec.workload}: {r.status}" for r in failed})),
                worst=max(rows, key=lambda p: (SEVERITY[p.decision_for(s).status], p.price.ratio)) if rows else None,
                over_budget=any(p.decision_for(s).status == FAIL for p in rows),
                bitwise_workloads=sum(v.all_identical for v in same),
                groups=len(same),
                spread=float(sum(0.0 if math.isnan(v.rel_l2) else v.rel_l2 for v in same) / len(same))
                if same
                else math.nan,
                changes=changes_from_default(s) if s in SETTINGS else 99,
            )
        )
    return out


def speed_caveat(prices: list[Price], policy: Policy) -> str | None:
    """Why this run cannot judge a price against the budget, or None when it can: the
    run's own reasons among the prices' open decisions (`verdict.RUN_CAUSES`: too few
    rounds, a busy machine, a noise floor wider than the budget, no common round), each
    said once with its figures. What to run instead follows from how the run was made,
    and the renderers add it (`Recommendation.rounds_to_judge`)."""
    open_ = [(p, d) for p in prices if not p.is_aa for _, d in p.decisions if d.cause in RUN_CAUSES]
    causes = {d.cause for _, d in open_}
    reasons = []
    if TOO_FEW_ROUNDS in causes:
        least = min(p.price.rounds for p, d in open_ if d.cause == TOO_FEW_ROUNDS)
        reasons.append(f"its prices rest on {least} round(s), and detcost judges none on fewer than "
                       f"{policy.min_rounds}: a few rounds that happen to agree look precise by luck")  # fmt: skip
    busy = sum(p.busy_trials_priced for p in prices)
    if BUSY in causes:
        reasons.append(f"{busy} priced trial(s) ran while the machine was busy with other processes")
    if NOISY in causes:
        detectable = detectable_by_workload(prices)
        wide = {w: d for w, d in detectable.items() if not d <= policy.max_slowdown}
        worst = max(wide, key=lambda w: wide[w] if math.isfinite(wide[w]) else -1)
        shown = f"{wide[worst]:.0%}" if math.isfinite(wide[worst]) else "unknown: no A/A control"
        shown = ">100%" if math.isfinite(wide[worst]) and wide[worst] > 1 else shown
        reasons.append(f"the smallest price this run can detect is larger than the {budget_text(policy.max_slowdown)} "
                       f"budget on {len(wide)} of {len(detectable)} workload(s) ({worst}: {shown})")  # fmt: skip
    if UNPAIRED in causes:
        reasons.append("some prices share no round with their group's fastest setting")
    return "; ".join(reasons) or None


def rounds_to_judge(prices: list[Price]) -> int | None:
    """About how many rounds in all would let this run judge speed: the most that any of
    its prices open for a reason of the run's needs (None where no number would do, or
    none is open for such a reason)."""
    needs = [d.rounds_to_decide for p in prices if not p.is_aa for _, d in p.decisions if d.cause in RUN_CAUSES]
    return max((n for n in needs if n), default=None)


def _most_reproducible(cands: list[Candidate]) -> list[Candidate]:
    """The candidates bitwise reproducible on the most groups; among them, where not all
    are bitwise, those with the smallest spread between repeats."""
    best = max(c.bitwise_workloads for c in cands)
    tied = [c for c in cands if c.bitwise_workloads == best]
    if any(c.spread > 0 for c in tied):
        low = min(c.spread for c in tied)
        tied = [c for c in tied if c.spread <= low * SPREAD_TIE]
    return tied


def _repro_text(c: Candidate) -> str:
    if c.bitwise_workloads:
        return f"bitwise reproducible on {c.bitwise_workloads} of {c.groups} workload groups"
    return "not bitwise reproducible on any workload; the smallest spread between repeats"


def recommend(records: list[TrialRecord], prices: list[Price], spreads: list[Spread], policy: Policy) -> Recommendation:
    """The recommendation from the decided prices (`derive.decide.decided`): a setting is
    over the budget where a price of it was decided over it; none is judged here."""
    max_slowdown = policy.max_slowdown
    cpu = is_cpu(records)
    cands = candidates(records, prices, spreads)
    notes = _notes(records, prices, cands, cpu)
    caveat = speed_caveat(prices, policy)
    if not prices:
        return Recommendation(None, "no timed trial finished", "", max_slowdown, cands, notes)
    if caveat:
        rec = _on_reproducibility_alone(records, cands, notes, max_slowdown, caveat, cpu)
        return replace(rec, rounds_to_judge=rounds_to_judge(prices))
    budget, noise = 1 + max_slowdown, noise_floor(prices)
    eligible = [c for c in cands if c.runs_everywhere and not c.over_budget]
    if not eligible:
        reason = f"no setting ran on every workload within a {budget_text(max_slowdown)} slowdown"
        return Recommendation(None, reason, "", max_slowdown, cands, notes)
    pick, tied = _pick(eligible, noise)
    code = "\n".join([snippet(get_setting(pick.setting)), *axis_snippet(records, cpu)])
    return Recommendation(pick.setting, _reason(pick, tied, budget, noise), code, max_slowdown, cands, notes,
                          snippets=_forms(pick.setting, records, cpu))  # fmt: skip


def _on_reproducibility_alone(records, cands, notes, max_slowdown, caveat, cpu) -> Recommendation:
    """The recommendation when speed cannot be judged: the most reproducible setting that
    ran everywhere, ties to the fewest changes from `default`; no price enters."""
    eligible = [c for c in cands if c.runs_everywhere and not c.over_budget]
    if not eligible:
        reason = f"no setting ran on every workload without being shown over the {budget_text(max_slowdown)} budget"
        return Recommendation(None, reason, "", max_slowdown, cands, notes, caveat)
    pick = min(_most_reproducible(eligible), key=lambda c: c.changes)
    reason = f"{_repro_text(pick)}; chosen on reproducibility alone, because this run cannot judge speed"
    code = "\n".join([snippet(get_setting(pick.setting)), *axis_snippet(records, cpu)])
    forms = _forms(pick.setting, records, cpu)
    return Recommendation(pick.setting, reason, code, max_slowdown, cands, notes, caveat, forms)


def _forms(setting: str, records: list[TrialRecord], cpu: bool) -> dict[str, str]:
    """Every form of the pick's snippet; the plain PyTorch one with the axes' lines, as
    `snippet`, and the `detcost.apply` call with the CPU thread count those lines fix."""
    forms = snippets(get_setting(setting), threads=fixed_threads(records, cpu))
    forms["pytorch"] = "\n".join([forms["pytorch"], *axis_snippet(records, cpu)])
    return forms


def fixed_threads(records: list[TrialRecord], cpu: bool) -> int | None:
    """The one CPU thread count the run's timed trials used, which the snippet fixes (None
    on CUDA, or where the run varied it)."""
    values = {r.spec.axes.get("threads") for r in ok_of(records)} - {None}
    return next(iter(values)) if cpu and len(values) == 1 else None


def _pick(eligible: list[Candidate], noise: float) -> tuple[Candidate, list[Candidate]]:
    """The most reproducible eligible setting; among ties in price (overlapping intervals
    or within the noise floor) the one that changes fewest flags. Returns it and the ties."""
    tied = _most_reproducible(eligible)
    cheapest = min(tied, key=lambda c: c.max_price)
    tied = [c for c in tied if c.max_price_lo <= cheapest.max_price_hi or c.max_price <= cheapest.max_price + noise]
    return min(tied, key=lambda c: (c.changes, c.max_price)), tied


def _reason(pick: Candidate, tied: list[Candidate], budget: float, noise: float) -> str:
    within = pick.worst is not None and pick.worst.decision_for(pick.setting).status == PASS
    where = f"within the {budget:.2f}x budget" if within else f"its interval reaches into the {budget:.2f}x budget"
    if not math.isfinite(pick.max_price_hi):
        bracket = "[one round: no interval]"
    elif pick.max_price_lo == pick.max_price_hi:
        bracket = "(it is the fastest on every workload)"  # against itself: no interval to give
    else:
        bracket = f"[{pick.max_price_lo:.2f}, {pick.max_price_hi:.2f}]"
    reason = (
        f"{_repro_text(pick)}; worst price {pick.max_price:.2f}x the fastest setting "
        f"{bracket}, {where} "
        f"(this run detects prices above {noise:.0%})"
    )
    if len(tied) > 1:
        others = ", ".join(t.setting for t in tied if t.setting != pick.setting)
        change = "changes no flag" if pick.changes == 0 else f"changes {pick.changes} flag(s) from default"
        reason += (f"; {others} tie with it in price (their worst prices' intervals overlap, or differ by less "
                   f"than the noise floor), and {pick.setting} {change}")  # fmt: skip
    return reason


def axis_snippet(records: list[TrialRecord], cpu: bool) -> list[str]:
    """Each axis's lines for the values this run used (on the CPU: fix the thread count)."""
    timed = ok_of(records)
    lines = []
    for axis, _ in axes.each({}):
        values = sorted({r.spec.axes.get(axis.name) for r in timed} - {None}, key=str)
        if axis.snippet and values:
            lines += axis.snippet(values, cpu)
    return lines


def cpu_note(settings) -> str:
    """What the CPU does with the settings a run used: the cuDNN flags nothing (those
    settings are an A/A group, priced as one), use_deterministic_algorithms a NaN fill
    that costs time; and that the cuDNN flags' price needs a GPU."""
    present = [s for s in setting_order(settings) if s in SETTINGS]
    same = [s for s in present if SETTINGS[s].cudnn_only]
    filled = [s for s in present if SETTINGS[s].deterministic_algorithms and SETTINGS[s].fill_uninitialized_memory]
    note = "On the CPU the cuDNN flags do nothing"
    note += (
        f": {', '.join(same)} run the same kernels, so differences between them are noise (an A/A group, "
        "priced as one unless the data says otherwise)."
        if len(same) > 1
        else "."
    )
    if filled:
        note += (
            f" {', '.join(filled)} {'differs' if len(filled) == 1 else 'differ'} for real: "
            "use_deterministic_algorithms NaN-fills every uninitialised allocation."
        )
    note += (
        " The cuDNN flags' own price can only be measured on a GPU: run the same sweep on one before choosing them "
        "for GPU training. On the CPU the reproducibility axis is the thread count (the same seed at another "
        "thread count gives other numbers)."
    )
    return note


def _notes(records: list[TrialRecord], prices: list[Price], cands: list[Candidate], cpu: bool) -> list[str]:
    notes = [cpu_note({r.spec.setting for r in records if r.spec.kind == Kind.TIMED})] if cpu else []
    notes += [reacts_text(p) for p in prices if p.flag_reacts]
    whole = [c for c in cands if c.runs_everywhere and c.bitwise_workloads == c.groups and c.groups > 0]
    if cands and not whole:
        notes.append(
            "No setting was bitwise reproducible on every workload on this machine (among settings that ran "
            "on all of them)." + _blockers(records)
        )
    notes += [f"{c.setting} did not finish everywhere ({c.failures}): see Failures." for c in cands if c.failures]
    return notes


def reacts_text(p: Price) -> str:
    """The warning for a cuDNN-only setting whose CPU price the data says is real."""
    vs = p.vs_default
    return (
        f"On {p.key.workload} {p.label} took {vs.ratio:.2f}x [{vs.lo:.2f}, {vs.hi:.2f}] default's step time "
        "while the A/A control's interval covers 1.00. On the CPU its flags change no kernel, so the model (a code "
        "path that branches on torch.backends.cudnn) or the machine reacts to the flag: its price is shown as "
        "measured, not pooled with default."
    )


def _blockers(records: list[TrialRecord]) -> str:
    ops = sorted(
        {
            f"{a.op} in {', '.join(a.modules)}"
            for r in ok_of(records, (Kind.AUDIT,))
            if r.audit is not None
            for a in r.audit.alerts
        }
    )
    return (" The audit found ops with no deterministic implementation: " + "; ".join(ops) + ".") if ops else ""
