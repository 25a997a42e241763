"""Calibration: how often do detcost's 95% price intervals cover the truth on this machine?

Runs many short sweeps of `diag_price` (simple_cnn whose steps take a known factor longer
under cudnn.benchmark; on the CPU nothing else changes) under `default` and `benchmark`,
with the A/A control. Two truths are known in every sweep:

- the A/A control (default against itself): 1.00 exactly;
- benchmark against default: the price the workload injected, read back from the records
  (`workload_notes.injected_price`, benchmark's over default's, medians over the sweep).

Coverage is the share of sweeps whose interval contains the truth; the target is 90% or
more for 95% intervals. A benchmark script, not a test: it takes minutes and its answer
depends on the machine, which is the point.

    python scripts/calibrate.py --sweeps 30 --repeats 5 --out reports/calibration
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from detcost import results
from detcost.derive.frame import AA_LABEL
from detcost.derive.prices import speed_table
from detcost.sweep import SweepOptions, run_sweep
from detcost.workloads.diagnostic import INJECTED_PRICE


def one_sweep(folder: Path, k: int, repeats: int, profile: str) -> dict:
    opts = SweepOptions(
        workloads=["diag_price"],
        settings=["default", "benchmark"],
        repeats=repeats,
        seed=0,
        device="cpu",
        profile=profile,
        results=folder / f"sweep-{k}.jsonl",
        run_id=f"calibration-{k}",
        seeds=0,
        audit=False,
        explain=False,
    )
    out = run_sweep(opts, progress=False)
    df = results.load(out.results)
    speed = speed_table(df).set_index("setting")
    notes = df[df["kind"] == "timed"].groupby("setting")["workload_notes.injected_price"].median()
    truth = float(notes["benchmark"] / notes["default"])
    aa, bench = speed.loc[AA_LABEL], speed.loc["benchmark"]
    return {
        "sweep": k,
        "rounds": int(bench["rounds"]),
        "busy_events": len(out.events),
        "aa": float(aa["price"]),
        "aa_lo": float(aa["price_lo"]),
        "aa_hi": float(aa["price_hi"]),
        "truth": truth,
        "price": float(bench["vs_default"]),
        "price_lo": float(bench["vs_default_lo"]),
        "price_hi": float(bench["vs_default_hi"]),
    }


def summary(table: pd.DataFrame) -> dict:
    aa_cover = (table["aa_lo"] <= 1.0) & (table["aa_hi"] >= 1.0)
    price_cover = (table["price_lo"] <= table["truth"]) & (table["price_hi"] >= table["truth"])
    return {
        "sweeps": len(table),
        "rounds_per_sweep": int(table["rounds"].median()),
        "aa_coverage": float(aa_cover.mean()),
        "known_price_coverage": float(price_cover.mean()),
        "injected_price": INJECTED_PRICE,
        "truth_median": float(table["truth"].median()),
        "price_median": float(table["price"].median()),
        "aa_half_width_median": float(((table["aa_hi"] - table["aa_lo"]) / 2).median()),
        "price_half_width_median": float(((table["price_hi"] - table["price_lo"]) / 2 / table["price"]).median()),
    }


def figure(table: pd.DataFrame, stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (col, truth, title) in zip(
        axes,
        [
            ("aa", pd.Series(1.0, index=table.index), f"A/A control: covers 1.00 in {stats['aa_coverage']:.0%}"),
            ("price", table["truth"], f"known price: covers the truth in {stats['known_price_coverage']:.0%}"),
        ],
    ):
        covered = (table[f"{col}_lo"] <= truth) & (table[f"{col}_hi"] >= truth)
        for i, r in table.iterrows():
            c = "tab:blue" if covered[i] else "tab:red"
            ax.plot([r[f"{col}_lo"], r[f"{col}_hi"]], [i, i], color=c, lw=2)
            ax.plot(r[col], i, "o", color=c, ms=3)
            ax.plot(truth[i], i, "|", color="black", ms=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step time ratio (95% interval; | = truth)")
    axes[0].set_ylabel("sweep")
    fig.suptitle(f"detcost calibration: {stats['sweeps']} sweeps of {stats['rounds_per_sweep']} rounds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="rounds per sweep")
    p.add_argument("--profile", default="cpu", choices=("cpu", "quick"))
    p.add_argument("--out", type=Path, default=Path("reports/calibration"))
    args = p.parse_args()
    rows, t0 = [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.sweeps):
            rows.append(one_sweep(Path(tmp), k, args.repeats, args.profile))
            r = rows[-1]
            print(
                f"sweep {k + 1}/{args.sweeps}: A/A {r['aa']:.3f} [{r['aa_lo']:.3f}, {r['aa_hi']:.3f}]  "
                f"known {r['truth']:.3f}: {r['price']:.3f} [{r['price_lo']:.3f}, {r['price_hi']:.3f}]",
                flush=True,
            )
    table = pd.DataFrame(rows)
    stats = {**summary(table), "wall_s": round(time.monotonic() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    args.out.with_suffix(".json").write_text(json.dumps(stats, indent=2))
    figure(table, stats, args.out.with_suffix(".png"))
    print(json.dumps(stats, indent=2))
    print(
        f"coverage target (>= 90%): A/A {'met' if stats['aa_coverage'] >= 0.9 else 'NOT met'}, "
        f"known price {'met' if stats['known_price_coverage'] >= 0.9 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
