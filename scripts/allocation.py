"""Which allocation of a CPU run's minutes gives the narrowest A/A interval per minute?

For each workload and each allocation (the cpu size preset's steps or half or twice
them, at 2 threads or 1), runs a sweep of `default` and its A/A control alone, `--rounds`
rounds, in fresh processes as `detcost run` does, and reports the A/A control's 95%
half-width (how far apart two labels of the same setting may look: the noise floor), the
sweep's wall time, and the half-width scaled to one minute (a t interval narrows as
1/sqrt(rounds), so at a fixed rate of rounds as 1/sqrt(minutes)): lower is better.

    python scripts/allocation.py --workloads simple_cnn,resnet18 --rounds 10 --out reports/allocation

Run it on a quiet machine: a busy one flags trials, and the figures then say more about
the neighbours than about the allocation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detcost.derive.analysis import analyse  # noqa: E402
from detcost.plan import SweepOptions  # noqa: E402
from detcost.sweep import run_sweep  # noqa: E402
from detcost.workloads import get_workload  # noqa: E402

ALLOCATIONS = {  # name: (steps over the cpu preset's, threads)
    "preset-t2": (1.0, 2),
    "preset-t1": (1.0, 1),
    "half-t2": (0.5, 2),
    "twice-t2": (2.0, 2),
}


def one(workload: str, name: str, rounds: int, folder: Path, seed: int) -> dict:
    factor, threads = ALLOCATIONS[name]
    steps = max(2, round(get_workload(workload).size("cpu").steps * factor))
    opts = SweepOptions(
        workloads=[workload], settings=["default"], repeats=rounds, seed=seed, device="cpu", size_preset="cpu",
        results=folder / f"{workload}-{name}-{seed}.jsonl",
        run_id=f"allocation-{seed}", axes={"threads": [threads]}, steps=steps, seeds=0, audit=False, explain=False,
    )  # fmt: skip
    t0 = time.monotonic()
    out = run_sweep(opts, progress=False)
    wall = time.monotonic() - t0
    m = analyse(out.records).only
    aa = next(p for p in m.prices if p.is_aa)
    finite = aa.price.rounds >= 2 and aa.price.lo > 0 and math.isfinite(aa.price.hi)
    half = math.log(aa.price.hi / aa.price.lo) / 2 if finite else math.inf  # on the log scale
    busy = sum(1 for r in out.records if r.is_busy)
    trial_sd = _trial_sd(out.records)
    return {
        "workload": workload, "allocation": name, "steps": steps, "threads": threads, "rounds": aa.price.rounds,
        "wall_s": wall, "aa": aa.price.ratio, "aa_lo": aa.price.lo, "aa_hi": aa.price.hi,
        "half_width": math.expm1(half), "half_width_per_minute": math.expm1(half * math.sqrt(wall / 60)),
        "busy_trials": busy, "trial_sd": trial_sd,
    }  # fmt: skip


def _trial_sd(records) -> float:
    """The per-trial noise: the sd of the log of each timed trial's median step time around
    its label's mean (default's and the A/A control's trials, pooled)."""
    import numpy as np

    by_label: dict[str, list[float]] = {}
    for r in records:
        if r.timing and r.spec.kind.value in ("timed", "aa"):
            by_label.setdefault(r.spec.kind.value, []).append(math.log(float(np.median(r.timing.step_times_s))))
    devs = [x - float(np.mean(v)) for v in by_label.values() if len(v) > 1 for x in v]
    dof = sum(len(v) - 1 for v in by_label.values() if len(v) > 1)
    return math.sqrt(sum(d * d for d in devs) / dof) if dof else math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="simple_cnn,resnet18")
    ap.add_argument("--allocations", default=",".join(ALLOCATIONS), help="names, comma list")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="sweeps per cell (alternated across cells)")
    ap.add_argument("--out", type=Path, default=None, help="write <out>.json")
    args = ap.parse_args()
    names = [a.strip() for a in args.allocations.split(",") if a.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):  # every cell once, then again: drift spreads over all of them
            for w in args.workloads.split(","):
                for name in names:
                    row = one(w, name, args.rounds, Path(tmp), seed=k)
                    rows.append(row)
                    print(f"{w:12} {name:10} steps {row['steps']:>3}  {row['rounds']} rounds  {row['wall_s']:6.1f} s  "
                          f"A/A ±{row['half_width']:.1%}  per minute ±{row['half_width_per_minute']:.1%}  "
                          f"trial sd {row['trial_sd']:.3f}  busy {row['busy_trials']}", flush=True)  # fmt: skip
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
