"""The CI gate: is the team's setting still within its speed budget, still reproducible,
and still the same as the last release's? `judge(analysis, setting, ...) -> GateDecision`.

One more consumer of the `Analysis`: every price, interval and spread is the analysis's
own; the gate only reads them against the rules below (and, for drift against a baseline,
the two runs' ratio of prices from `derive.compare`). A rule that the run cannot settle
is "cannot decide" with its reason, never a silent pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from detcost.derive.analysis import Analysis, MachineAnalysis
from detcost.derive.compare import price_ratio
from detcost.derive.decide import FAIL, PASS, UNDECIDED, against, budget_text, more_rounds
from detcost.derive.keys import GroupKey, ok_of
from detcost.derive.prices import Price
from detcost.derive.variance import Spread
from detcost.record import TrialRecord
from detcost.settings import REFERENCE
from detcost.stats import PairedRatio

NOTE = "note"  # a note is reported, decides nothing
PRICE, REPRODUCIBLE, DRIFT, OUTCOME = "price within budget", "reproducible", "price drift", "outcome drift"
# The fingerprint fields whose change explains results that moved between two runs.
ENV_CHANGES = (("torch", "torch"), ("cuda", "CUDA"), ("cudnn", "cuDNN"), ("driver", "driver"), ("gpu", "GPU"),
               ("cpu", "CPU"), ("python", "Python"), ("numpy", "NumPy"), ("detcost", "detcost"))  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One rule on one group: its status, a one-sentence reason and the figures behind it."""

    rule: str
    status: str
    reason: str
    workload: str | None = None
    group: str = ""  # the group's other fields where they vary (threads=2, ...)
    figures: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"rule": self.rule, "status": self.status, "workload": self.workload, "group": self.group or None,
                "reason": self.reason, "figures": self.figures}  # fmt: skip


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided about `setting` and why: fail if any finding fails, else
    cannot decide if any cannot, else pass."""

    setting: str | None
    max_slowdown: float
    require_reproducible: bool
    baseline: bool
    findings: tuple[Finding, ...]

    @property
    def status(self) -> str:
        statuses = {f.status for f in self.findings}
        return FAIL if FAIL in statuses else UNDECIDED if UNDECIDED in statuses or PASS not in statuses else PASS


def judge(analysis: Analysis, setting: str | None, *, baseline: Analysis | None = None) -> GateDecision:
    """Judge `setting` on every machine of `analysis` (against `baseline`'s same machine,
    or its only one), by the analysis's policy: its budget, whether the team requires
    reproducible repeats, and each price's decision as the analysis made it."""
    max_slowdown, require_reproducible = analysis.policy.max_slowdown, analysis.policy.require_reproducible
    findings: list[Finding] = []
    if setting is None:
        findings.append(Finding(PRICE, UNDECIDED, "no setting to judge: none was given, the team config names none "
                                "and the run recommends none"))  # fmt: skip
    elif not analysis.machines:
        findings.append(Finding(PRICE, UNDECIDED, "the results hold no trial that finished"))
    for m in analysis.machines if setting else []:
        base = _baseline_machine(baseline, m.machine)
        findings += _price_findings(m, setting, max_slowdown)
        findings += _reproducible_findings(m, base, setting, require_reproducible)
        if base is not None:
            findings += _drift_findings(m, base, setting, max_slowdown)
            findings += _outcome_findings(m, base, setting, require_reproducible)
    return GateDecision(setting, max_slowdown, require_reproducible, baseline is not None, tuple(findings))


def _baseline_machine(baseline: Analysis | None, name: str) -> MachineAnalysis | None:
    if baseline is None:
        return None
    same = [b for b in baseline.machines if b.machine == name]
    return same[0] if same else baseline.machines[0] if len(baseline.machines) == 1 else None


def _where(key: GroupKey, m: MachineAnalysis) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.shown(m.fields).items() if k != "workload")


# ---- the price against the budget ---------------------------------------------------


def _ratio_figures(r: PairedRatio | None) -> dict:
    return {} if r is None else {"ratio": r.ratio, "lo": r.lo, "hi": r.hi, "rounds": r.rounds}


def _price_findings(m: MachineAnalysis, setting: str, budget: float) -> list[Finding]:
    rows = [p for p in m.prices if p.prices(setting) and not p.is_aa]
    out = [_price_finding(p, setting, budget, m) for p in rows]
    priced = {p.key.workload for p in rows}
    for workload in dict.fromkeys(p.key.workload for p in m.prices):
        if workload not in priced:
            out.append(Finding(PRICE, UNDECIDED, f"the run has no finished timed trial of {setting} on {workload}",
                               workload))  # fmt: skip
    if not m.prices:
        out.append(Finding(PRICE, UNDECIDED, "the run has no priced timed trial", None))
    return out


def _price_finding(p: Price, setting: str, budget: float, m: MachineAnalysis) -> Finding:
    """The setting's price against the fastest setting of its group (DESIGN: the budget is
    relative to the fastest, as the recommendation's is), as the analysis decided it."""
    decision = p.decision_for(setting)
    figures = {**_ratio_figures(p.price), "price_vs": p.price_vs, "interval_level": p.level, "budget": budget,
               "detectable": p.detectable, "busy_trials": p.busy_trials}  # fmt: skip
    if decision.rounds_to_decide is not None:
        figures["rounds_to_decide"] = decision.rounds_to_decide
    reason = f"{setting} on {p.key.workload} {decision.reason}"
    return Finding(PRICE, decision.status, reason, p.key.workload, _where(p.key, m), figures)


# ---- reproducibility ----------------------------------------------------------------


def _spreads_of(m: MachineAnalysis, setting: str) -> list[Spread]:
    return [s for s in m.spreads if s.setting == setting and s.same_seed]


def _reproducible_findings(
    m: MachineAnalysis, base: MachineAnalysis | None, setting: str, required: bool
) -> list[Finding]:
    out = []
    for s in _spreads_of(m, setting):
        was = next((b for b in _spreads_of(base, setting) if b.key.same_group(s.key)), None) if base else None
        was_identical = bool(was and was.bitwise_identical)
        if not (required or was_identical):
            continue
        because = "the team requires reproducible results" if required else "its repeats were identical in the baseline"
        figures = {"repeats": s.R, "identical": s.n_identical, "bitwise_identical": s.bitwise_identical,
                   "baseline_identical": was.bitwise_identical if was else None}  # fmt: skip
        found = Finding(REPRODUCIBLE, UNDECIDED, "", s.key.workload, _where(s.key, m), figures)
        head = f"{setting} on {s.key.workload}"
        if s.R < 2:
            out.append(replace(found, reason=f"{head}: one repeat, nothing to compare it with ({because})"))
        elif s.bitwise_identical:
            out.append(replace(found, status=PASS, reason=f"{head}: all {s.R} repeats bitwise identical"))
        else:
            out.append(replace(found, status=FAIL, reason=f"{head}: its {s.R} repeats are no longer bitwise "
                               f"identical ({s.n_identical} share their parameters), and {because}"))  # fmt: skip
    if not out:
        why = "no baseline whose repeats were identical, and the team does not require reproducible results"
        out.append(Finding(REPRODUCIBLE, NOTE, f"not checked: {why} (--require reproducible)"))
    return out


# ---- against the baseline -----------------------------------------------------------


def _drift_findings(m: MachineAnalysis, base: MachineAnalysis, setting: str, budget: float) -> list[Finding]:
    """The ratio of this run's price to the baseline's (each against its own `default`),
    with its interval: fail when all of it is above 1 + tolerance. The tolerance is the
    budget: a price that grew by that much would, from a free start, spend the whole
    budget on the growth alone."""
    if setting == REFERENCE:
        return []
    line = 1 + budget
    out = []
    for p in (p for p in m.prices if p.prices(setting) and not p.is_aa):
        if not any(b.key.same_group(p.key, "steps") for b in base.prices if b.prices(setting)):
            continue
        r = price_ratio(base.records, m.records, setting, p.key)
        head = f"{setting}'s price on {p.key.workload}"
        found = Finding(DRIFT, UNDECIDED, "", p.key.workload, _where(p.key, m), {**_ratio_figures(r),
                        "tolerance": budget})  # fmt: skip
        if r.rounds < 2 or not math.isfinite(r.hi):
            out.append(replace(found, reason=f"{head}: too few rounds in one of the runs for an interval"))
            continue
        status = against(r, line)
        shown = f"{r.ratio:.3f} [{r.lo:.3f}, {r.hi:.3f}] x the baseline's"
        tol = f"the tolerance of {budget_text(budget)} (the budget)"
        if status == FAIL:
            reason = f"{head} grew to {shown}: the whole interval is over {tol}"
        elif status == PASS:
            reason = f"{head} is {shown}: within {tol}"
        else:
            reason = f"{head} is {shown}: the interval straddles {tol}; {more_rounds(r, line)}"
        out.append(replace(found, status=status, reason=reason))
    return out


def _hashes(records: list[TrialRecord], setting: str) -> dict[tuple, tuple[set, set, dict, list]]:
    """{(group, seed): (params hashes, logits hashes, env, the trials)} of the setting's trials."""
    out: dict[tuple, tuple[set, set, dict, list]] = {}
    for r in ok_of(records):
        if r.spec.setting != setting or r.outcome is None:
            continue
        key = GroupKey.of(r)
        params, logits, _, trials = out.setdefault(
            ((key.workload, key.values), r.spec.seed), (set(), set(), r.env or {}, [])
        )
        params.add(r.outcome.params_sha256)
        logits.add(r.outcome.logits_sha256)
        trials.append(r)
    return out


def env_changes(a: dict, b: dict) -> list[str]:
    """What differs between two fingerprints, as `torch 2.4.0 -> 2.5.0`."""
    return [f"{label} {a.get(k)} -> {b.get(k)}" for k, label in ENV_CHANGES if a.get(k) != b.get(k)]


def _outcome_findings(m: MachineAnalysis, base: MachineAnalysis, setting: str, required: bool) -> list[Finding]:
    """The same workload, setting and seed against the baseline's hashes, where every
    repeat in both runs agrees (otherwise it is run-to-run nondeterminism, the
    reproducibility rule's business): results that moved with the environment."""
    before, now = _hashes(base.records, setting), _hashes(m.records, setting)
    out = []
    for (group, seed), (params, logits, env, trials) in now.items():
        if (group, seed) not in before:
            continue
        old_params, old_logits, old_env, old_trials = before[(group, seed)]
        workload = group[0]
        found = Finding(OUTCOME, PASS, "", workload, "", {"seed": seed})
        if len(params) > 1 or len(old_params) > 1:
            out.append(
                replace(
                    found,
                    status=NOTE,
                    reason=f"{setting} on {workload}, seed {seed}: repeats differ "
                    "within a run (run-to-run nondeterminism), so not compared with the baseline",
                )
            )
            continue  # fmt: skip
        if params == old_params and logits == old_logits:
            out.append(replace(found, reason=f"{setting} on {workload}, seed {seed}: the same parameters and logits "
                               "as the baseline"))  # fmt: skip
            continue
        if (params != old_params or logits != old_logits) and min(len(trials), len(old_trials)) < 2:
            out.append(replace(found, status=NOTE, reason=f"{setting} on {workload}, seed {seed}: other results than "
                               "the baseline, but a run with one repeat cannot tell an environment change from "
                               "run-to-run nondeterminism"))  # fmt: skip
            continue
        changes = env_changes(old_env, env)
        what = (
            ("results changed with the environment (" + ", ".join(changes) + ")")
            if changes
            else ("results changed though the fingerprint did not (the code, the data or the workload changed?)")
        )
        status = FAIL if required else NOTE
        out.append(replace(found, status=status, reason=f"{setting} on {workload}, seed {seed}: {what}; every repeat "
                           "is still identical within each run, so this is not run-to-run nondeterminism",
                           figures={"seed": seed, "environment": changes}))  # fmt: skip
    return out
