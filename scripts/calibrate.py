"""Calibration: how often do detcost's 95% price intervals cover the truth on this machine?

Runs many sweeps of a known-price workload under `default` and `benchmark`, with the A/A
control, at two sizes and two round counts. The workload's steps take a known factor
longer under cudnn.benchmark, which changes nothing else on the CPU; two truths are known
in every sweep:

- the A/A control (default against itself): 1.00 exactly;
- benchmark against default: the price the workload injected, read back from the records
  (`workload_notes.injected_price`, benchmark's over default's, medians over the sweep).

Sizes: `small` is `diag_price` (a tiny net at tiny sizes, 1.20 injected: intervals of
about ±25% on a shared 2-core VM); `tight` is `diag_price_cnn` (simple_cnn at its own CPU
size, 1.10 injected), where a quiet machine prices to a few percent, the widths users
read. Coverage is the share of sweeps whose interval contains the truth; the target is at
least 90% in every cell. Also counted: sweeps whose per-round A/A ratios sit on one side of
1 in at least 80% of the rounds (a label bias fixed for the sweep; with none, about 11% of
sweeps at 10 rounds and 38% at 5).

A benchmark script, not a test: it takes about an hour and its answer depends on the
machine, which is the point. tests/test_calibration.py checks its logic on synthetic
timings.

    python scripts/calibrate.py --sizes small,tight --rounds 5,10 --sweeps 20 --out reports/calibration
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sstats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detcost import results  # noqa: E402
from detcost.derive.decide import decide  # noqa: E402
from detcost.derive.keys import AA_LABEL  # noqa: E402
from detcost.derive.policy import Policy  # noqa: E402
from detcost.derive.prices import prices  # noqa: E402
from detcost.plan import SweepOptions  # noqa: E402
from detcost.record import Kind, TrialRecord  # noqa: E402
from detcost.sweep import run_sweep  # noqa: E402

SIZES = {"small": "diag_price", "tight": "diag_price_cnn"}
TARGET = 0.90
ONE_SIDED_SHARE = 0.8  # a sweep's A/A ratios "sit on one side of 1" in at least this share of rounds


def one_sweep(
    folder: Path, k: int, size: str, rounds: int, layout: str, allow_busy: bool = False, decide: float | None = None
) -> dict:
    """One sweep of the known-price workload; its two intervals and their truths. With
    `decide` (a budget), the sweep runs as `detcost run --decide` does: two rounds, then
    rounds at each look (5, 10, 20, ...: from the least rounds a verdict rests on) only
    while the known price is not decided against the budget, up to `rounds`."""
    name = f"{size}-{rounds}-{k}" if decide is None else f"{size}-decide{decide:g}-{rounds}-{k}"
    opts = SweepOptions(
        workloads=[SIZES[size]],
        settings=["default", "benchmark"],
        repeats=rounds if decide is None else 2,
        max_repeats=rounds,
        decide=decide,
        seed=k,
        device="cpu",
        size_preset="cpu",
        results=folder / f"{name}.jsonl",
        run_id=f"calibration-{name}",
        seeds=0,
        audit=False,
        explain=False,
        layout=layout,
        allow_busy=allow_busy,
    )
    out = run_sweep(opts, progress=False)
    judged = judge(results.load_records(out.results), decide)
    return {"size": size, "cell": cell_name(size, rounds, decide), "sweep": k, "busy_events": len(out.events), **judged}


def cell_name(size: str, rounds: int, decide: float | None) -> str:
    """A cell of the calibration: a size at a round count, or --decide at a budget (up to
    a round count)."""
    return f"{size}/{rounds}" if decide is None else f"{size}/decide {decide:.0%} (up to {rounds})"


def judge(records: list[TrialRecord], decide_budget: float | None = None) -> dict:
    """A sweep's A/A control and known price, their intervals, and its per-round A/A ratios.
    Priced without the CPU's pooling of cuDNN-only settings: the known price is injected
    under one of them, and the calibration checks the interval itself."""
    rows = {p.label: p for p in prices(records, cpu=False)}
    aa, bench = rows[AA_LABEL], rows["benchmark"]
    measured = [r for r in records if r.ok and r.spec.kind in (Kind.TIMED, Kind.AA)]
    injected: dict[str, list] = {}
    for r in measured:
        if r.spec.kind == Kind.TIMED:
            injected.setdefault(r.spec.setting, []).append(r.workload_notes.get("injected_price"))
    step = {(AA_LABEL if r.spec.kind == Kind.AA else r.spec.setting, r.spec.repeat): r.timing.step_time_median_s
            for r in measured}  # fmt: skip
    ratios = [step[(AA_LABEL, k)] / step[("default", k)] for (label, k) in step if label == AA_LABEL
              and ("default", k) in step]  # fmt: skip
    # the decision as the sweep took it: on the CPU's rows, where cuDNN-only settings pool
    # with default unless they react (the known price's workload says benchmark does)
    on_cpu = next(p for p in prices(records, cpu=True) if "benchmark" in p.members)
    decided = (
        decide(on_cpu, "benchmark", Policy(max_slowdown=decide_budget)).status if decide_budget is not None else None
    )
    return {
        "rounds": bench.price.rounds,
        "level": bench.level,
        "budget": decide_budget,
        "decision": decided,
        "aa": aa.price.ratio,
        "aa_lo": aa.price.lo,
        "aa_hi": aa.price.hi,
        "truth": float(np.median(injected["benchmark"]) / np.median(injected["default"])),
        "price": bench.vs_default.ratio,
        "price_lo": bench.vs_default.lo,
        "price_hi": bench.vs_default.hi,
        "label_bias": bench.label_bias,
        "aa_above_1": int(sum(r > 1 for r in ratios)),
        "aa_ratios": len(ratios),
    }


def one_sided(table: pd.DataFrame) -> pd.Series:
    """Sweeps whose per-round A/A ratios sit on one side of 1 in most rounds."""
    above, n = table["aa_above_1"], table["aa_ratios"]
    return np.maximum(above, n - above) >= ONE_SIDED_SHARE * n


def rounds_alone(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The known price's interval without the label bias the A/A control measured: the
    rounds' own variance, recovered from the widened half-width (log scale)."""
    level = table.get("level", 0.95)  # older tables: every interval at 95%
    t = pd.Series(sstats.t.ppf((1 + level) / 2, table["rounds"] - 1), index=table.index)
    widened = np.log(table["price_hi"] / table["price"]) / t
    own = np.sqrt(np.maximum(widened**2 - table["label_bias"] ** 2, 0.0)) * t
    return table["price"] * np.exp(-own), table["price"] * np.exp(own)


def summary(table: pd.DataFrame) -> dict:
    """Coverage and widths of one cell (one size at one round count)."""
    aa_cover = (table["aa_lo"] <= 1.0) & (table["aa_hi"] >= 1.0)
    price_cover = (table["price_lo"] <= table["truth"]) & (table["price_hi"] >= table["truth"])
    lo, hi = rounds_alone(table)
    decisions = table["decision"].value_counts().to_dict() if "decision" in table else {}
    wrong = 0
    if "budget" in table and "decision" in table:  # a decision the known price contradicts
        over = table["truth"] > 1 + table["budget"]
        wrong = int((((table["decision"] == "pass") & over) | ((table["decision"] == "fail") & ~over)).sum())
    return {
        "known_price_covered_rounds_alone": int(((lo <= table["truth"]) & (hi >= table["truth"])).sum()),
        "sweeps": len(table),
        "rounds_per_sweep": int(table["rounds"].median()),
        "rounds_range": [int(table["rounds"].min()), int(table["rounds"].max())],
        "level": float(table["level"].min()) if "level" in table else 0.95,
        "decisions": {str(k): int(v) for k, v in decisions.items()},
        "wrong_decisions": wrong,
        "aa_covered": int(aa_cover.sum()),
        "known_price_covered": int(price_cover.sum()),
        "aa_coverage": float(aa_cover.mean()),
        "known_price_coverage": float(price_cover.mean()),
        "aa_one_sided": int(one_sided(table).sum()),
        "truth_median": float(table["truth"].median()),
        "price_median": float(table["price"].median()),
        "aa_half_width_median": float(((table["aa_hi"] - table["aa_lo"]) / 2).median()),
        "price_half_width_median": float(((table["price_hi"] - table["price_lo"]) / 2 / table["price"]).median()),
        "widened_sweeps": int((table["label_bias"] > 0).sum()),
        "busy_events": int(table["busy_events"].sum()),
    }


def figure(table: pd.DataFrame, cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cells)
    fig, axes = plt.subplots(2, len(keys), figsize=(3.6 * len(keys), 7), squeeze=False)
    for j, key in enumerate(keys):
        cell = table[table["cell"] == key].reset_index(drop=True)
        for i, (col, name) in enumerate([("aa", "A/A control"), ("price", "known price")]):
            ax = axes[i][j]
            truth = pd.Series(1.0, index=cell.index) if col == "aa" else cell["truth"]
            covered = (cell[f"{col}_lo"] <= truth) & (cell[f"{col}_hi"] >= truth)
            for k, r in cell.iterrows():
                c = "tab:blue" if covered[k] else "tab:red"
                ax.plot([r[f"{col}_lo"] / truth[k], r[f"{col}_hi"] / truth[k]], [k, k], color=c, lw=2)
                ax.plot(r[col] / truth[k], k, "o", color=c, ms=3)
            ax.axvline(1.0, color="black", lw=0.8)
            ax.set_title(f"{key}: {name}\ncovered in {int(covered.sum())} of {len(cell)}", fontsize=9)
            ax.set_xlabel("interval / truth")
    fig.suptitle("detcost calibration: intervals against known truths (red: missed)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(cells: dict, meta: dict, image: str = "calibration.png") -> str:
    lines = [
        f"# Calibration of detcost's price intervals ({meta['machine']}, torch {meta['torch']})",
        "",
        f"`{meta['command']}`, {meta['date']}, {meta['wall_s'] / 60:.0f} min, layout `{meta['layout']}`. Each sweep: "
        "a known-price workload under `default` and `benchmark` plus the A/A control, `cpu` sizes, the "
        "quiet-machine guard on. Sizes: `small` = `diag_price` (1.20 injected), `tight` = `diag_price_cnn` "
        "(simple_cnn at its CPU size, 1.10 injected).",
        "",
        "| size | rounds | level | sweeps | known price covered | A/A covers 1.00 | median half-width (price, A/A) "
        "| A/A one-sided | prices widened | known price covered by the rounds alone |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in cells.items():
        size, rounds = key.split("/", 1)
        if "decide" in rounds:
            lo, hi = c.get("rounds_range", [c["rounds_per_sweep"]] * 2)
            rounds += (
                f": {lo}-{hi}, median {c['rounds_per_sweep']}; "
                + ", ".join(f"{v} {k}" for k, v in sorted(c.get("decisions", {}).items()))
                + f"; {c.get('wrong_decisions', 0)} wrong"
            )
        lines.append(
            f"| {size} | {rounds} | {c.get('level', 0.95):.4g} | {c['sweeps']} "
            f"| {c['known_price_covered']} of {c['sweeps']} "
            f"({c['known_price_coverage']:.0%}) | {c['aa_covered']} of {c['sweeps']} ({c['aa_coverage']:.0%}) "
            f"| ±{c['price_half_width_median']:.1%}, ±{c['aa_half_width_median']:.1%} "
            f"| {c['aa_one_sided']} of {c['sweeps']} | {c['widened_sweeps']} of {c['sweeps']} "
            f"| {c['known_price_covered_rounds_alone']} of {c['sweeps']} |"
        )
    met = all(c["aa_coverage"] >= TARGET and c["known_price_coverage"] >= TARGET for c in cells.values())
    lines += [
        "",
        f"Target: at least {TARGET:.0%} coverage in every cell: {'met' if met else 'NOT met'}. "
        f'"A/A one-sided": sweeps whose per-round A/A ratios sat on one side of 1 in at least '
        f"{ONE_SIDED_SHARE:.0%} of rounds (with no label bias about 11% of sweeps at 10 rounds, 38% at 5). "
        '"Prices widened": sweeps where the A/A control strayed beyond its rounds and every price\'s '
        "interval took that in (`label_bias`); the last column is the known price's coverage without that "
        "(the interval from the rounds' spread alone). A `decide` cell runs each sweep as `detcost run --decide` "
        "does (two rounds, then rounds only while the known price is not decided against the budget, looked at 3, "
        "6, 12, ... rounds, each interval at 95% spread over the looks); its rounds column gives the rounds the "
        "sweeps ran and what they decided (pass: within the budget, fail: over it; wrong: a decision the known "
        "price contradicts). The worst case for coverage "
        "under such stopping is a truth near the budget's line.",
        "",
        f"![calibration]({image})",
        "",
    ]
    return "\n".join(lines)


def run_cells(
    sizes: list[str], round_counts: list[int], sweeps: int, layout: str, decide: float | None = None
) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for rounds in round_counts:
                for k in range(sweeps):
                    r = one_sweep(Path(tmp), k, size, rounds, layout, decide=decide)
                    rows.append(r)
                    print(
                        f"{r['cell']} sweep {k + 1}/{sweeps} ({r['rounds']} rounds): A/A {r['aa']:.3f} "
                        f"[{r['aa_lo']:.3f}, {r['aa_hi']:.3f}]  known {r['truth']:.3f}: {r['price']:.3f} "
                        f"[{r['price_lo']:.3f}, {r['price_hi']:.3f}]  A/A above 1 in "
                        f"{r['aa_above_1']}/{r['aa_ratios']}",
                        flush=True,
                    )
    return pd.DataFrame(rows)


def write(table: pd.DataFrame, meta: dict, out: Path) -> str:
    """The cells' summaries, the figure and the Markdown page, from the per-sweep table."""
    if "cell" not in table:  # a table from before cells were named: one per size and round count
        table = table.assign(cell=[f"{s}/{r}" for s, r in zip(table["size"], table["rounds"])])
    cells = {name: summary(table[table["cell"] == name]) for name in dict.fromkeys(table["cell"])}
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=2))
    figure(table, cells, out.with_suffix(".png"))
    page = markdown(cells, meta, out.with_suffix(".png").name)
    out.with_suffix(".md").write_text(page)
    return page


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=20)
    p.add_argument("--rounds", default="5,10", help="comma list of rounds per sweep")
    p.add_argument("--sizes", default="small,tight", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--layout", default="random", choices=("random", "fixed"))
    p.add_argument(
        "--decide",
        type=float,
        default=None,
        metavar="BUDGET",
        help="run each sweep as `detcost run --decide` against this budget (0.1: 10%%), up to --rounds",
    )
    p.add_argument("--out", type=Path, default=Path("reports/calibration"))
    p.add_argument("--from-csv", type=Path, help="render an earlier run's per-sweep table again, run nothing")
    args = p.parse_args()
    if args.from_csv:
        table = pd.read_csv(args.from_csv)
        meta = json.loads(args.from_csv.with_suffix(".json").read_text())["meta"]
        print(write(table, meta, args.out))
        return
    sizes, round_counts = args.sizes.split(","), [int(r) for r in args.rounds.split(",")]
    if set(sizes) - set(SIZES):
        p.error(f"unknown sizes {', '.join(set(sizes) - set(SIZES))}; valid: {', '.join(SIZES)}")
    t0 = time.monotonic()
    table = run_cells(sizes, round_counts, args.sweeps, args.layout, args.decide)
    import torch

    meta = {
        "command": "python scripts/calibrate.py " + " ".join(sys.argv[1:]),
        "date": _dt.date.today().isoformat(),
        "wall_s": round(time.monotonic() - t0, 1),
        "layout": args.layout,
        "machine": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__,
    }
    print(write(table, meta, args.out))


if __name__ == "__main__":
    main()
