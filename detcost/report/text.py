"""What the terminal shows: the tables and sentences the CLI prints, built from derived
tables. The HTML report and the CLI share these renderings, so a rule (what is "within
noise", how an audit reads) is written once."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from detcost import axes
from detcost.derive.attribution import MIN_CALL_CHANGE
from detcost.derive.frame import AA_LABEL, busy_count, failures, group_fields, is_cpu, of_kind, setting_order
from detcost.derive.prices import noise_floors
from detcost.derive.variance import SEED_LABEL
from detcost.record import Kind, Status
from detcost.settings import SETTINGS


def priced_settings(df: pd.DataFrame) -> list[str]:
    """The settings a run priced (its timed trials'), not those its audit or profile used."""
    timed = df[df["kind"] == str(Kind.TIMED)] if "kind" in df else df
    return list(timed["setting"].dropna().unique())


def cpu_note(settings) -> str:
    """What the CPU does with the settings this run used: the cuDNN flags nothing (those
    settings are an A/A group), use_deterministic_algorithms a NaN fill that costs time."""
    present = [s for s in setting_order(settings) if s in SETTINGS]
    same = [s for s in present if SETTINGS[s].cudnn_only]
    filled = [s for s in present if SETTINGS[s].deterministic_algorithms and SETTINGS[s].fill_uninitialized_memory]
    note = "On the CPU the cuDNN flags do nothing"
    note += (
        f": {', '.join(same)} run the same kernels, so differences between them are noise (an A/A group)."
        if len(same) > 1
        else "."
    )
    if filled:
        note += (
            f" {', '.join(filled)} {'differs' if len(filled) == 1 else 'differ'} for real: "
            "use_deterministic_algorithms NaN-fills every uninitialised allocation."
        )
    return note


CPU_RANKING_NOTE = (
    "On the CPU, self times of single ops are unreliable (first-touch page faults move between ops): ops are "
    "ranked by the change in call count, and 'whole step' is the change in the timed trials' median step; an op "
    "whose calls did not change is listed only when its self time moved by more than 3% of the step, as a hint."
)


# ---- prices -------------------------------------------------------------------------


def interval_text(ratio: float, lo: float, hi: float) -> str:
    """`1.05 [0.98, 1.12]`; one round has no interval and says so."""
    if not np.isfinite(ratio):
        return "-"
    if not np.isfinite(hi):
        return f"{ratio:.2f} [one round: no interval]"
    if hi > 10 * max(ratio, 1e-12):
        return f"{ratio:.2f} [{lo:.2f}, >10x: no usable interval]"
    return f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"


def percent_text(fraction: float) -> str:
    """`7%`; `>100%` where a spread is so wide that its digits mean nothing."""
    if not np.isfinite(fraction):
        return "- (one round)"
    return ">100%" if fraction > 1 else f"{fraction:.0%}"


def detectable_text(speed: pd.DataFrame) -> str:
    """One sentence: the smallest price each workload's run can tell apart from noise."""
    if speed.empty or "detectable" not in speed:
        return ""
    per = speed.groupby("workload", sort=False)["detectable"].max()
    parts = [f"{w} {percent_text(d)}" for w, d in per.items()]
    return (
        "Smallest price this run can detect (prices under it are not distinguishable from noise here): "
        + ", ".join(parts)
        + "."
    )


HOST_BOUND_NOTE = "host-bound: the price is understated"


def is_host_bound(value) -> bool:
    """A price row's `host_bound` cell: True only where a profiled trial measured it so
    (None where nothing was measured: the CPU, or a run without profiled trials)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def host_bound_lines(speed: pd.DataFrame) -> list[str]:
    """One sentence naming the host-bound prices and how busy their kernels kept the GPU
    (none where no price is host-bound)."""
    if speed.empty or "host_bound" not in speed:
        return []
    rows = speed[speed["host_bound"].map(is_host_bound) & (speed["setting"] != AA_LABEL)]
    per = [
        f"{w} " + ", ".join(f"{r.setting} {r.kernel_busy_fraction:.0%}" for r in g.itertuples())
        for w, g in rows.groupby("workload", sort=False)
    ]
    if not per:
        return []
    return [
        f"{HOST_BOUND_NOTE} where the GPU waited on the host: kernels kept it busy for only this share of a "
        "step, so kernel launches, not cuDNN's algorithms, set the pace (a larger batch or image shows the "
        "price): " + "; ".join(per) + "."
    ]


def speed_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """Workloads down, settings across: 'samples/s (step time vs default)'."""
    if table.empty:
        return table
    keys = [c for c in ("workload", *group_fields()) if c in table]

    def cell(r) -> str:
        ratio = f" ({r.vs_default:.2f}x)" if np.isfinite(r.vs_default) else ""
        bound = " host-bound" if is_host_bound(r.get("host_bound")) else ""
        return f"{r.samples_per_s:,.1f}{ratio}{bound}"

    cells = table.assign(cell=table.apply(cell, axis=1))
    pivot = cells.pivot_table(index=keys, columns="setting", values="cell", aggfunc="first")
    cols = setting_order([c for c in pivot.columns if c != AA_LABEL]) + ([AA_LABEL] if AA_LABEL in pivot else [])
    return pivot[cols].fillna("-")


def layout_text(df: pd.DataFrame) -> str:
    """How the run varied its trials' memory layout (the records' `layout`), in one sentence."""
    measured = of_kind(df, Kind.TIMED)
    if "layout.heap_pad" in measured and measured["layout.heap_pad"].notna().all() and len(measured):
        return (
            "Each round's trials forked from a server process of their own, and every trial first took a random "
            "amount of heap and environment, so the memory layout changed from round to round and its effect on "
            "a label's speed shows in the intervals instead of biasing them (docs/layout-bias.md)."
        )
    return (
        "The trials did not vary their memory layout (--layout fixed, or a detcost before it did): a label may "
        "carry a bias of its layout for the whole run that no interval from rounds can see (docs/layout-bias.md)."
    )


def noise_lines(speed: pd.DataFrame) -> list[str]:
    """One line per A/A control: the noise floor, and a warning where it left its interval."""
    lines = []
    for row in noise_floors(speed).to_dict(orient="records"):
        r = pd.Series(row)
        axes_shown = axis_values_text(row)
        where = r.workload if axes_shown == "-" else f"{r.workload}, {axes_shown}"
        cv = f"; CV of samples/s across repeats {r.default_cv:.1%}" if pd.notna(r.default_cv) else ""
        lines.append(
            f"noise floor ({where}): default vs itself {interval_text(r.price, r.price_lo, r.price_hi)}"
            f"{cv} - differences inside this are noise"
        )
        if not r.steady:
            lines.append(
                f"  warning: on {where} default differed from itself beyond its 95% interval (by chance on 1 "
                "workload in 20; more often, the machine was not steady): read the prices there with care"
            )
        if r.get("label_bias", 0) > 0:
            lines.append(
                f"  it strayed further than its rounds allow: every price's interval on {where} also takes in a "
                f"fixed effect of its label of {math.expm1(r.label_bias):.1%} (one standard deviation, added to "
                "the rounds' own spread), which this run's prices may carry too"
            )
    return lines


# ---- variance -----------------------------------------------------------------------

VARIANCE_COLUMNS = {
    "identical": "identical",
    "max_abs_dtheta": "max|dθ|",
    "rel_l2": "rel L2",
    "loss_std": "loss std",
    "disagreement": "pred. disagree",
    "max_abs_dlogits": "max|dlogits|",
    "first_diff_step": "first diff step",
    "rel_l2_vs_seeds": "rel L2 / seeds",
    "accuracy_range": "acc. range",
    "class_accuracy_range": "class acc. range",
    "same_data_order": "data order",
}
VARIANCE_LEGEND = (
    "identical: repeats whose final parameters are bitwise equal; rel L2: ||dθ|| / ||θ|| on the "
    "parameter sample; rel L2 / seeds: that spread as a fraction of the seed yardstick's; "
    "'1 vs 2' under an axis: the same seed at each of those values; acc. range: max - min of "
    "evaluation accuracy; class acc. range: the largest such spread of one class's accuracy; data "
    "order: whether a DataLoader gave every repeat the same sample order."
)


def _compact(v) -> str:
    return "-" if pd.isna(v) else ("0" if v == 0 else f"{v:.2e}")


def variance_display(table: pd.DataFrame) -> pd.DataFrame:
    """The variance table as a person reads it: `identical` as n/R, numbers compact, and
    a row across an axis's values shows them ('1 vs 2') in that axis's column."""
    if table.empty:
        return table
    out = table.copy()
    out["identical"] = [
        f"{r.R} seeds" if r.setting == SEED_LABEL else f"{r.n_identical}/{r.R}" for r in out.itertuples()
    ]
    for axis in out["across"].dropna().unique() if "across" in out else []:
        rows = out["across"] == axis
        out[axis] = out[axis].astype(object)
        out.loc[rows, axis] = out.loc[rows, "across_values"]
    keys = ["workload", "setting"] + [a for a in group_fields() if a in out]
    out = out[keys + [c for c in VARIANCE_COLUMNS if c in out]].rename(columns=VARIANCE_COLUMNS)
    for col in ("max|dθ|", "rel L2", "loss std", "max|dlogits|", "rel L2 / seeds"):
        out[col] = out[col].map(_compact)
    for col in ("pred. disagree", "acc. range", "class acc. range"):
        out[col] = out[col].map(lambda v: "-" if pd.isna(v) else f"{v:.1%}")
    order = out["data order"].map(lambda v: "-" if v is None or pd.isna(v) else ("same" if v else "differs"))
    out["data order"] = order
    if (order == "-").all():  # staged batches only: their order is fixed by the data seed
        out = out.drop(columns="data order")
    out["first diff step"] = [
        "-" if r < 2 else ("never" if pd.isna(v) else str(int(v))) for v, r in zip(out["first diff step"], table["R"])
    ]
    return out


def divergence_text(curves: pd.DataFrame) -> str:
    """Distance between repeats at each checkpoint step, one block per workload."""
    keys = [c for c in curves.columns if c not in ("step", "rel_l2", "max_abs_dtheta", "workload")]
    keys = [c for c in keys if c == "setting" or curves[c].nunique() > 1]
    blocks = []
    for workload, rows in curves.groupby("workload", sort=False):  # each has its own checkpoints
        table = rows.pivot_table(index=keys, columns="step", values="rel_l2")
        blocks.append(f"{workload}:\n" + table.to_string(float_format="{:.1e}".format))
    return "\n".join(blocks)


# ---- explain ------------------------------------------------------------------------


def headline(rows: pd.DataFrame, cuda: bool) -> str:
    """One sentence per workload x setting: '+309 aten::fill_ calls/step (+1.2 ms self CPU)'."""
    first = rows.iloc[0]
    step = f"; whole step {first.delta_step_ms:+.2f} ms" if pd.notna(first.delta_step_ms) else ""
    lead = f"{first.setting} vs {first.reference} on {first.workload}: "
    if first.op is None or pd.isna(first.op):
        return lead + f"no op's {'time' if cuda else 'call count'} changed" + step
    parts = []
    for r in rows.head(3).itertuples():
        ms = r.delta_ms
        where = ("device" if r.kind == "kernel" else "host") if cuda else "CPU"
        if abs(r.delta_calls) >= MIN_CALL_CHANGE:
            parts.append(f"{r.delta_calls:+.0f} {r.op} calls/step ({ms:+.2f} ms self {where})")
        else:
            parts.append(f"{r.op} {ms:+.2f} ms self {where}" + ("" if cuda else " (same calls; indicative)"))
    return lead + ", ".join(parts) + step


def explain_text(table: pd.DataFrame, cpu: bool) -> str:
    """The attribution, one headline and its op table per workload x setting."""
    blocks = ["note: " + CPU_RANKING_NOTE + "\n"] if cpu else []
    for _, rows in table.groupby(["workload", "setting"], sort=False):
        block = [headline(rows, cuda=not cpu)]
        cols = ["op", "kind", "delta_calls", "delta_self_cpu_ms"] + ([] if cpu else ["delta_self_device_ms"])
        shown = rows.dropna(subset=["op"])[cols].copy()
        if len(shown):
            shown["delta_calls"] = shown["delta_calls"].map(lambda v: f"{v:+.0f}" if v == round(v) else f"{v:+.2f}")
            block.append(shown.to_string(index=False, float_format="{:+.3f}".format))
        blocks.append("\n".join(block) + "\n")
    return "\n".join(blocks)


# ---- audit --------------------------------------------------------------------------


def audit_cells(audit: dict) -> tuple[str, str]:
    """An audit payload as (alerts, strict's verdict), the way the report and CLI say it."""
    alerts = "; ".join(f"{a['op']} x{a['count']} in {', '.join(a['modules'])}" for a in audit["alerts"])
    strict = f"fails: {audit['strict_error']}" if audit["strict_fails"] else "runs"
    return alerts or "none found", strict


def audit_text(records) -> str:
    """The audit trials' findings, a few lines per workload."""
    lines = []
    for r in records:
        audit = r.payload.get("audit")
        if not r.ok or not audit:
            lines.append(f"{r.spec.workload}: the audit itself failed: {r.error}")
            continue
        n = len(audit["alerts"])
        found = f"{n} op(s) without a deterministic implementation" if n else "no alerts"
        lines.append(f"{r.spec.workload} on {r.spec.device}: {found} in {audit['steps']} training steps")
        alerts, strict = audit_cells(audit)
        lines += [f"  alerts: {alerts}", f"  strict {strict}"]
        if not n and r.spec.device == "cpu":
            lines.append("  (on the CPU torch raises few such alerts; the CUDA kernels are where most live)")
    return "\n".join(lines)


def axis_values_text(values: dict) -> str:
    """`threads 2, memory_format channels_last`: the axes of a key that are not at their
    default, for a sentence ("-" when all are)."""
    shown = [a.describe(v) for a, v in axes.each(values) if a.name in values and v != a.default]
    return ", ".join(shown) or "-"


# ---- a sweep ------------------------------------------------------------------------


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
    cuda = cuda_estimate_lines(len(specs), estimate, gpu)
    axes_in = [] if estimate.cuda else [f"  the axes add: {line}" for line in estimate.assumptions()]
    return "\n".join(lines + axes_in + cuda)


def cuda_estimate_lines(trials: int, estimate, gpu: str | None) -> list[str]:
    """How a CUDA estimate is made and what it assumes; nothing on the CPU, whose figures
    per trial were measured."""
    if not estimate.cuda:
        return []
    lines = [
        "how the CUDA estimate is made: no GPU was available to measure these figures, so each is an "
        "assumption: from the published figure or documentation it cites, else an estimate. A trial is its "
        "start, a CUDA context, the cuDNN/cuBLAS libraries, staging its data, a warm-up, its timed steps (and "
        "the profiler, or the audit's second pass); a step is its FLOPs (counted on the meta device) over a "
        "sustained rate, times the setting's expected slowdown. The figures:",
        *(f"  {line}" for line in estimate.assumptions()),
        f"each 0.1 s more per trial adds {trials * 0.1 / 60:.1f} min; after a run, each record's process_wall_s "
        "says what its trial took",
    ]
    if gpu is None:
        return [*lines, "GPU: not named by nvidia-smi; the figures assume an H100-class GPU"]
    same = any(name in gpu for name in ("H100", "H200"))
    return [*lines, f"GPU: {gpu}" + ("" if same else "; the figures assume an H100-class GPU: expect other times")]


def run_summary(df: pd.DataFrame, speed: pd.DataFrame, outcome, wall: float, report=None, rec=None) -> str:
    """What `detcost run` prints at the end: a speed caveat first where there is one, then
    prices, the noise floor, failures, warnings and the recommendation."""
    parts = []
    if rec is not None and rec.speed_caveat:
        parts += [f"THIS RUN CANNOT JUDGE SPEED: {rec.speed_caveat}. Read every price below as unconfirmed."]
    if not speed.empty:
        parts += ["", "samples/s, median over repeats (step time vs default; above 1.00x is slower):"]
        parts += [speed_pivot(speed).to_string(), *noise_lines(speed), detectable_text(speed), *host_bound_lines(speed)]
    if is_cpu(df):
        parts += ["", "note: " + cpu_note(priced_settings(df))]
    failed = failures(df)
    if not failed.empty:
        parts += ["", f"{len(failed)} trial(s) did not finish (findings, not crashes of detcost):"]
        parts.append(failed.to_string(index=False, max_colwidth=90))
    busy = busy_count(df)
    if busy:
        parts += [
            "",
            f"warning: {busy} trial(s) ran while other processes used the CPU; their times are suspect "
            "(busy.busy in the results)",
        ]
    parts += [f"quiet-machine guard: {e}" for e in outcome.events]
    if outcome.precision:
        parts += ["", precision_text(outcome.precision)]
    if outcome.stopped_early:
        parts += ["", f"stopped by --max-time; rerun with --resume --results {outcome.results} to finish"]
    if rec is not None:
        parts += ["", recommendation_text(rec)]
    ok = int((of_kind(df, Kind.TIMED)["status"] == str(Status.OK)).sum()) if not df.empty else 0
    again = f" ({outcome.reruns} run again after a busy machine)" if outcome.reruns else ""
    parts += [
        "",
        f"{len(outcome.planned)} trials: {outcome.ran} run now{again}, {outcome.skipped} already done; "
        f"{ok} timed trial(s) ok; {wall:.0f} s",
    ]
    parts.append(f"results: {outcome.results}")
    if report:
        parts.append(f"report:  {report.html}\n         {report.markdown}")
    return "\n".join(parts)


def precision_text(p: dict) -> str:
    """Whether --precision was reached, and where not, what each price reached."""
    if p["reached"]:
        return f"precision: every price within ±{p['target']:.1%} after {p['rounds']} rounds"
    unmet = ", ".join(
        f"{k} ±{w:.1%}" if np.isfinite(w) else f"{k} (no interval)" for k, w in sorted(p["unmet"].items())
    )
    return (
        f"precision ±{p['target']:.1%} NOT reached after {p['rounds']} rounds (stopped by {p['stopped_by']}): {unmet}"
    )


def recommendation_text(rec) -> str:
    if not rec.setting:
        return f"no recommendation: {rec.reason}"
    return f"recommendation: use {rec.setting} ({rec.reason})\n" + "\n".join(
        "    " + ln for ln in rec.snippet.splitlines()
    )


def records_json(df: pd.DataFrame) -> list[dict]:
    """A table as JSON-ready records (NaN becomes None)."""
    return df.astype(object).where(df.notna(), None).to_dict(orient="records") if len(df) else []


def run_summary_json(df: pd.DataFrame, speed: pd.DataFrame, outcome, wall: float, report=None, rec=None) -> dict:
    timed = of_kind(df, Kind.TIMED)
    return {
        "results": str(outcome.results),
        "wall_s": wall,
        "ran": outcome.ran,
        "skipped": outcome.skipped,
        "stopped_early": outcome.stopped_early,
        "timed_ok": int((timed["status"] == str(Status.OK)).sum()) if not timed.empty else 0,
        "busy_trials": busy_count(df),
        "guard": outcome.events,
        "precision": outcome.precision,
        "speed": records_json(speed),
        "failures": records_json(failures(df)),
        "report": {"html": str(report.html), "markdown": str(report.markdown)} if report else None,
        "recommendation": None
        if rec is None
        else {"setting": rec.setting, "reason": rec.reason, "snippet": rec.snippet, "speed_caveat": rec.speed_caveat},
    }
