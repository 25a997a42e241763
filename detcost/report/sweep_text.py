"""What `detcost run` prints: the dry run's plan, estimate and look at the machine, and the
summary at the end of a sweep (terminal and JSON), rendered from one analysis."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from detcost.derive.analysis import Analysis, MachineAnalysis
from detcost.derive.decide import FAIL, PASS, UNDECIDED, budget_text, level_text
from detcost.estimate import ASSUMED, GOAL_S, MEASURED_HERE, SCALED
from detcost.report.banner import BANNER_HEAD, banner
from detcost.report.kinds_text import kinds_json, kinds_text, unit_spread_json, unit_spread_text
from detcost.report.prices_text import compact_cell, detectable_text, host_bound_lines, noise_lines, price_matrix
from detcost.report.scaling_text import scaling_json, scaling_text

VERDICT_LEGEND = (
    "price = step time over the fastest setting's, [95% interval across rounds], verdict: real (the interval "
    "excludes 1.00), ~ within noise (it includes 1.00), ? unconfirmed (excludes 1.00, but the run cannot stand "
    "behind it), A/A the noise floor; '= default': priced as one with default (the same kernels on the CPU); "
    "! the CPU reacts to this cuDNN flag. summary.md and the report write each verdict out"
)


def plan_text(specs, estimate, gpu: str | None = None) -> str:
    """The dry run: the planned trials, the estimate by kind and, on CUDA, what it assumes."""
    kinds = ", ".join(f"{kind} {n} ({t / 60:.1f} min)" for kind, (n, t) in estimate.by_kind.items())
    start = (
        f"; outside the trials (forkserver starts, a look at the machine) {estimate.once_s:.0f} s"
        if estimate.once_s
        else ""
    )
    lines = [s.trial_id for s in specs]
    lines += [f"{len(specs)} trials planned; rough estimate {estimate.seconds / 60:.1f} min", f"  {kinds}{start}"]
    lines += learned_lines(estimate)
    cuda = cuda_estimate_lines(len(specs), estimate, gpu)
    axes_in = [] if estimate.cuda else [f"  the axes add: {line}" for line in estimate.assumptions()]
    return "\n".join(lines + axes_in + cuda + trim_lines(estimate))


def learned_lines(estimate) -> list[str]:
    """Where an earlier run was given (--estimate-from): which trials' figures it measured,
    which it scaled, which stay assumed; nothing without one."""
    learned = estimate.learned
    if learned is None:
        return []
    notes = [f"{learned.busy} flagged busy: their times may be long"] if learned.busy else []
    if learned.left_out:
        notes.append(f"{learned.left_out} left out: another machine or device, or no process_wall_s")
    head = f"learned from {learned.source}: {learned.records} record(s) of this machine"
    head += f" ({'; '.join(notes)})" if notes else ""
    if not learned.records:
        return [f"{head}; every figure below is assumed"]

    def counted(source: str, ratio: bool = False) -> str:
        parts = []
        for kind, counts in estimate.sources.items():
            if counts.get(source):
                factor = learned.ratios.get((kind,))
                parts.append(f"{kind} {counts[source]}" + (f" (x{factor:.2f})" if ratio and factor else ""))
        return ", ".join(parts) or "none"

    lines = [
        head,
        f"  measured here (the same trial's median process_wall_s): {counted(MEASURED_HERE)}",
        f"  scaled (the assumed figure x its kind's measured/assumed ratio, its workload's where measured): "
        f"{counted(SCALED, ratio=True)}",
        f"  assumed (nothing of its kind measured): {counted(ASSUMED)}",
    ]
    return lines + ([f"  still assumed: outside the trials ({estimate.once_s:.0f} s)"] if estimate.once_s else [])


def trim_lines(estimate) -> list[str]:
    """On CUDA over the 15-minute goal: the flags that trim the plan, what each saves, and
    which together bring it under the goal."""
    cuts = estimate.trims()
    if not cuts:
        return []
    over = (estimate.seconds - GOAL_S) / 60
    each = ", ".join(f"{flag} saves {saved / 60:.1f} min" for flag, saved in cuts.items())
    together, left = [], estimate.seconds
    for flag, saved in cuts.items():
        if left <= GOAL_S:
            break
        together.append(flag)
        left -= saved
    return [
        f"over the {GOAL_S / 60:.0f}-minute goal of a first GPU sweep by {over:.1f} min: {each}; "
        f"with {' '.join(together)}: about {left / 60:.1f} min"
    ]


def dry_run_text(dry) -> str:
    """`detcost run --dry-run`: the plan and its estimate (`plan_text`), then the machine now."""
    if dry.load.busy:
        wait = f"a run would wait up to {dry.wait_quiet:g} s for it to go quiet"
        machine = f"the machine is busy now: {dry.load.describe()}; {wait}"
    else:
        machine = "the machine is quiet now (no other process competes for its CPUs or GPU)"
    ray = ""
    if dry.ray_tasks is not None:
        ray = (
            f"\nwith --ray: {dry.ray_tasks} Ray task(s), a round each (and a task per kind and workload for the "
            "other trials); the estimate above is serial: Ray runs as many tasks at once as it has GPUs (or "
            "cores per --threads), each task also starting a forkserver of its own"
        )
    return plan_text(dry.specs, dry.estimate, dry.gpu) + ray + "\n" + machine


def dry_run_json(dry) -> dict:
    est = dry.estimate
    return {
        "trials": dry.trial_ids,
        "estimated_s": est.seconds,
        "estimate": {
            "by_kind": est.by_kind,
            "once_s": est.once_s,
            "assumptions": est.assumptions(),
            "sources": est.sources,
            "learned": est.learned.to_json() if est.learned else None,
            "trims": est.trims(),
        },
        "gpu": dry.gpu,
        "busy_now": dry.load.describe() if dry.load.busy else None,
    } | ({"ray_tasks": dry.ray_tasks} if dry.ray_tasks is not None else {})


def cuda_estimate_lines(trials: int, estimate, gpu: str | None) -> list[str]:
    """How a CUDA estimate is made and what it assumes; nothing on the CPU, whose figures
    per trial were measured."""
    if not estimate.cuda:
        return []
    learned = estimate.learned is not None and estimate.learned.records > 0
    lines = [
        (
            "how the CUDA estimate is made: a trial this machine measured takes its measured time, one of a kind "
            "it measured the figure below scaled (above); the figures, each an assumption"
            if learned
            else "how the CUDA estimate is made: no GPU was available to measure these figures, so each is an "
            "assumption"
        )
        + ": from the published figure or documentation it cites, else an estimate. A trial is its "
        "start, a CUDA context, the cuDNN/cuBLAS libraries, staging its data, a warm-up, its timed steps (and "
        "the profiler, or the audit's second pass); a step is its FLOPs (counted on the meta device) over a "
        "sustained rate, times the setting's expected slowdown. The figures:",
        *(f"  {line}" for line in estimate.assumptions()),
        f"each 0.1 s more per trial adds {trials * 0.1 / 60:.1f} min; after a run, each record's process_wall_s "
        "says what its trial took, and --dry-run --estimate-from RESULTS.jsonl estimates from them",
    ]
    if gpu is None:
        return [*lines, "GPU: not named by nvidia-smi; the figures assume an H100-class GPU"]
    same = any(name in gpu for name in ("H100", "H200"))
    return [*lines, f"GPU: {gpu}" + ("" if same else "; the figures assume an H100-class GPU: expect other times")]


def price_matrix_text(m: MachineAnalysis, team: str | None = None) -> str:
    """The price matrix for a terminal: workloads down, settings across, as in the report,
    each cell compact (`compact_cell`; the legend above it says each mark)."""
    header, rows = price_matrix(m, team, cell=compact_cell)
    nkeys = len(header) - len(rows[0]["cells"]) if rows else 0
    index = [" / ".join(r["head"]) for r in rows]
    frame = pd.DataFrame([[c for c, _ in r["cells"]] for r in rows], index=index, columns=header[nkeys:])
    return frame.to_string()


def _machine_lines(m: MachineAnalysis, several: bool, team: str | None = None, ran: dict | None = None) -> list[str]:
    rec = m.recommendation
    parts = [f"== machine: {m.machine}"] if several else []
    said = banner(rec, ran)
    if said:  # the report's banner, its head in capitals for a terminal
        parts += [said.replace(BANNER_HEAD, BANNER_HEAD.upper(), 1)]
    if m.prices:
        parts += ["", VERDICT_LEGEND + ":", price_matrix_text(m, team), *noise_lines(m), detectable_text(m.prices)]
        parts += host_bound_lines(m.prices)
    parts += unit_spread_text(m)
    parts += scaling_text(m)
    parts += ["", *(f"note: {n}" for n in rec.notes)] if rec.notes else []
    failed = m.failure_frame()
    if not failed.empty:
        parts += ["", f"{len(failed)} trial(s) did not finish (findings, not crashes of detcost):"]
        parts.append(failed.to_string(index=False, max_colwidth=90))
    if m.busy_trials:
        parts += [
            "",
            f"warning: {m.busy_trials} trial(s) ran while other processes used {m.busy_used}; their times are suspect "
            "(busy.busy in the results)",
        ]
    return parts


def run_summary(analysis: Analysis, outcome, wall: float, report=None, team: str | None = None, per_trial=None) -> str:
    """What `detcost run` prints at the end: per machine a speed caveat first where there is
    one, then the price matrix, the noise floor, notes, failures and warnings; then the
    guard, precision and the recommendation, and `per_trial` (`estimate.per_trial`: each
    kind's measured time per trial beside the dry run's figure). The `team` config's setting
    is marked."""
    several = len(analysis.machines) > 1
    ran = ran_report(outcome)
    parts = [line for m in analysis.machines for line in _machine_lines(m, several, team, ran)]
    parts += kinds_text(analysis)
    parts += [f"quiet-machine guard: {e}" for e in outcome.events]
    if getattr(outcome, "ray", None):
        r = outcome.ray
        parts += ["", f"on Ray ({r.address}): {r.tasks} task(s), up to {r.at_once} at once, on {r.nodes} node(s)"]
    if outcome.precision:
        parts += ["", precision_text(outcome.precision)]
    if outcome.decide:
        parts += ["", decide_text(outcome.decide, analysis)]
    else:
        parts += budget_lines(analysis)
    if outcome.stopped_early:
        parts += ["", f"stopped by --max-time; rerun with --resume --results {outcome.results} to finish"]
    for m in analysis.machines:
        parts += ["", recommendation_text(m.recommendation) + (f" [{m.machine}]" if several else "")]
    ok = sum(1 for r in analysis.records if str(r.spec.kind) == "timed" and r.ok)
    again = ""
    if outcome.reruns:
        end = getattr(outcome, "reruns_at_end", 0)
        split = f": {outcome.reruns - end} at once, {end} at the end" if end else ""
        again = f" ({outcome.reruns} run again after a busy machine{split})"
    parts += ["", per_trial_text(per_trial, outcome.results)] if per_trial else []
    parts += [
        "",
        f"{len(outcome.planned)} trials: {outcome.ran} run now{again}, {outcome.skipped} already done; "
        f"{ok} timed trial(s) ok; {wall:.0f} s",
    ]
    parts.append(f"results: {outcome.results}")
    if report:
        parts.append(f"report:  {report.html}\n         {report.markdown}")
    return "\n".join(parts)


def ran_report(outcome) -> dict:
    """How the sweep added rounds, for the banner's advice: --decide's and --precision's reports."""
    return {"decide": getattr(outcome, "decide", None), "precision": getattr(outcome, "precision", None)}


def decisions(analysis: Analysis) -> list[dict]:
    """Every price (the A/A control aside) against the budget, as the analysis decided it
    (the decision `detcost gate` and the recommendation read too)."""
    out = []
    for m in analysis.machines:
        for p in m.prices:
            if p.is_aa:
                continue
            dec = p.decision
            where = ", ".join(f"{k}={v}" for k, v in p.key.shown(m.fields).items() if k != "workload")
            out.append({"workload": p.key.workload, "group": where or None, "setting": p.label,
                        "priced_as_one": [x for x in p.members if x != p.label], "status": dec.status,
                        "reason": dec.reason, "rounds": p.price.rounds})  # fmt: skip
    return out


_DECIDED = {PASS: "within budget", FAIL: "over budget", UNDECIDED: "cannot decide"}


def decide_text(d, analysis: Analysis) -> str:
    """What --decide decided for each price (`d`: the sweep's `DecideReport`), and why any
    stayed open."""
    looks = ", ".join(map(str, d.looks))
    lines = [
        f"--decide against the {budget_text(d.budget)} budget (over the fastest setting): each interval at "
        f"{level_text(d.level)}, the 95% spread over {len(d.looks)} look(s) at {looks} rounds, so a price "
        "decided at an early look is as sure as it says"
    ]
    for x in decisions(analysis):
        lines.append(f"  {_DECIDED[x['status']]}: {_priced(x)} {x['reason']}")
    if d.stopped_by:
        lines.append(f"  {d.undecided} price(s) still undecided after {d.rounds} rounds: stopped by {d.stopped_by}")
    return "\n".join(lines)


def _priced(x: dict) -> str:
    """A decision's price: its setting (and those priced as one with it) on its workload."""
    label = x["setting"] + (f" (+ {', '.join(x['priced_as_one'])})" if x["priced_as_one"] else "")
    return f"{label} on {x['workload']}" + (f" ({x['group']})" if x["group"] else "")


def budget_lines(analysis: Analysis) -> list[str]:
    """Every price's decision against the budget, for a run without --decide (whose lines
    list them one by one): the prices within it on one line, the others grouped by their
    reason, which says what would decide them. Read from the analysis, never judged here."""
    xs = decisions(analysis)
    if not xs:
        return []
    lines = ["", f"against the {budget_text(analysis.policy.max_slowdown)} budget (each price's decision, which the "
             "recommendation and detcost gate read):"]  # fmt: skip
    within: dict[str, list[str]] = {}  # workload (and group): its settings within the budget
    for x in xs:
        if x["status"] == PASS:
            pooled = f" (+ {len(x['priced_as_one'])} priced as one)" if x["priced_as_one"] else ""
            where = x["workload"] + (f" ({x['group']})" if x["group"] else "")
            within.setdefault(where, []).append(x["setting"] + pooled)
    if within:
        lines.append("  within budget: " + "; ".join(f"{w}: " + ", ".join(v) for w, v in within.items()))
    by_reason: dict[tuple, list[str]] = {}
    for x in xs:
        if x["status"] != PASS:
            by_reason.setdefault((x["status"], x["reason"]), []).append(_priced(x))
    lines += [f"  {_DECIDED[status]}: {'; '.join(priced)}: {reason}" for (status, reason), priced in by_reason.items()]
    return lines


def per_trial_text(per_trial, results) -> str:
    """Each kind's process wall time per trial, measured in this sweep, beside what
    --dry-run assumes for the same trials, and the totals."""
    kinds = ", ".join(f"{p.kind} {p.measured_s:.2f} s ({p.assumed_s:.2f} s)" for p in per_trial)
    measured = sum(p.measured_total_s for p in per_trial) / 60
    assumed = sum(p.assumed_total_s for p in per_trial) / 60
    trials = sum(p.trials for p in per_trial)
    return (
        f"time per trial, measured here (and as --dry-run assumes it), medians: {kinds}; all {trials} "
        f"trials {measured:.1f} min ({assumed:.1f} min); `detcost run --dry-run --estimate-from {results}` "
        "estimates from these"
    )


def precision_text(p) -> str:
    """Whether --precision was reached (`p`: the sweep's `PrecisionReport`), and where
    not, what each price reached."""
    if p.reached:
        return (
            f"precision: every price's interval within ±{p.target:.1%} after {p.rounds} rounds (the width of "
            "each interval; the smallest detectable price above is how far the A/A control strays, a separate figure)"
        )
    unmet = ", ".join(f"{k} ±{w:.1%}" if np.isfinite(w) else f"{k} (no interval)" for k, w in sorted(p.unmet.items()))
    return f"precision ±{p.target:.1%} NOT reached after {p.rounds} rounds (stopped by {p.stopped_by}): {unmet}"


def recommendation_text(rec) -> str:
    if not rec.setting:
        return f"no recommendation: {rec.reason}"
    lines = rec.snippet.splitlines()
    if rec.snippets.get("apply"):  # the one call that does all of the above (the report shows every form)
        call = rec.snippets["apply"].splitlines()[-1].split("  #")[0]
        lines.append(f"# or, with detcost installed: {call}")
    return f"recommendation: use {rec.setting} ({rec.reason})\n" + "\n".join("    " + ln for ln in lines)


def records_json(rows) -> list[dict]:
    """Rows (a table or a list of dicts) as JSON-ready records (NaN becomes None)."""
    rows = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else list(rows or [])
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


def _plain(v):
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    return v


def recommendation_json(rec) -> dict:
    return {"setting": rec.setting, "reason": rec.reason, "snippet": rec.snippet, "snippets": rec.snippets,
            "speed_caveat": rec.speed_caveat, "notes": rec.notes}  # fmt: skip


def run_summary_json(analysis: Analysis, outcome, wall: float, report=None, per_trial=None) -> dict:
    machines = analysis.machines
    extra = {"per_trial": [p.to_json() for p in per_trial]} if per_trial else {}
    if getattr(outcome, "ray", None):  # --ray: where the rounds ran
        extra["ray"] = outcome.ray.to_json()
    return {
        "results": str(outcome.results),
        "wall_s": wall,
        "ran": outcome.ran,
        "skipped": outcome.skipped,
        "stopped_early": outcome.stopped_early,
        "timed_ok": sum(1 for r in analysis.records if str(r.spec.kind) == "timed" and r.ok),
        "busy_trials": sum(m.busy_trials for m in machines),
        "guard": outcome.events,
        "precision": outcome.precision.to_json() if outcome.precision else None,
        "decide": outcome.decide.to_json() if outcome.decide else None,
        "policy": analysis.policy.to_json(),
        "decisions": decisions(analysis),
        "speed": [row for m in machines for row in records_json(m.price_frame())],
        "failures": [row for m in machines for row in records_json(m.failure_frame())],
        "ddp": [row for m in machines for row in scaling_json(m)],
        "unit_spread": [row for m in machines for row in unit_spread_json(m)],
        "across_kinds": kinds_json(analysis),
        "report": {"html": str(report.html), "markdown": str(report.markdown)} if report else None,
        "recommendation": recommendation_json(machines[0].recommendation) if machines else None,
    } | extra
