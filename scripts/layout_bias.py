"""A/A experiments: does a label carry a bias that is fixed for a whole sweep, and what causes it?

Every trial here runs the same work (`simple_cnn` at its CPU size, the same seed); only a
label's *incidental* properties differ, one candidate cause at a time. A sweep is R rounds
of L labels, as detcost plans them; from each sweep's table of log step times (rounds x
labels) a two-way analysis gives the label effect that rounds cannot average away:

- F and its p-value for "labels differ" (no bias: p uniform, 5% of sweeps under 0.05);
- tau, the between-label standard deviation of that fixed effect (method of moments,
  (MS_label - MS_residual) / R; negative values kept in the pooled figure so it is unbiased);
- sigma, the round-to-round noise of one trial (what the interval already sees);
- one-sided: in how many sweeps label 1's per-round ratio to label 0 sits on one side of 1 in
  at least 80% of the rounds (no bias: about 11% of sweeps at 10 rounds).

Conditions (each under --method forkserver or spawn) name the labels, then what varies the
layout, joined with "+":

    settings       the labels a sweep has: default, benchmark, deterministic, the A/A control
                   (on the CPU the same kernels)
    identical      L byte-identical specs
    spec_size      identical, but label k's spec carries k x 400 more bytes (its run id)
    env_size       identical, but label k's process gets k x 1000 more bytes of environment
    results_path   identical, but label k writes under a results path k x 60 characters longer
    position       identical specs in a fixed order (the label is its position)

    +order_random  each round in a random order (otherwise a cyclic shift, as before)
    +williams      each round in the order detcost now plans (plan.round_order)
    +new_server    a new forkserver each round (a fresh layout per round)
    +pads          a random heap and environment pad in every trial
    +remedy        what detcost now does: new_server + pads + williams

    python scripts/layout_bias.py --conditions settings,identical,results_path,results_path+remedy \
        --sweeps 5 --rounds 10 --out reports/layout-bias/forkserver
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats as sstats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detcost import guard  # noqa: E402
from detcost.isolation import Layout, new_server, run_isolated  # noqa: E402
from detcost.plan import round_order  # noqa: E402
from detcost.record import Kind, TrialSpec  # noqa: E402
from detcost.trial import trial_environ  # noqa: E402
from detcost.workloads import get_workload  # noqa: E402

LABELS = ("settings", "identical", "spec_size", "env_size", "results_path", "position")
MODIFIERS = ("order_random", "williams", "new_server", "pads", "remedy")
REMEDY = {"williams", "new_server", "pads"}


def parse(condition: str) -> tuple[str, set[str]]:
    """'results_path+remedy' -> ('results_path', {'williams', 'new_server', 'pads'})."""
    base, *mods = condition.split("+")
    if base not in LABELS or set(mods) - set(MODIFIERS):
        raise SystemExit(f"unknown condition {condition!r}; labels: {', '.join(LABELS)}; +{', +'.join(MODIFIERS)}")
    return base, (set(mods) - {"remedy"}) | (REMEDY if "remedy" in mods else set())


THREADS = 2  # both cores, as a default CPU sweep runs
SETTINGS_LABELS = [
    (Kind.TIMED, "default"),
    (Kind.TIMED, "benchmark"),
    (Kind.TIMED, "deterministic"),
    (Kind.AA, "default"),
]


def base_spec(workload: str, run_id: str) -> TrialSpec:
    size = get_workload(workload).size("cpu")
    return TrialSpec(
        run_id=run_id,
        kind=Kind.TIMED,
        workload=workload,
        setting="default",
        repeat=0,
        seed=0,
        device="cpu",
        steps=size.steps,
        warmup=size.warmup,
        batch_size=size.batch,
        image_size=size.image,
        axes={"threads": THREADS},
    )


def label_specs(condition: str, base: TrialSpec, n: int) -> list[TrialSpec]:
    if condition == "settings":
        return [replace(base, kind=k, setting=s) for k, s in SETTINGS_LABELS[:n]]
    if condition == "spec_size":
        return [replace(base, run_id=base.run_id + "x" * (400 * k)) for k in range(n)]
    return [base] * n


def order(condition: str, mods: set[str], r: int, n: int, rng: random.Random, seed: int) -> list[int]:
    if condition == "position":
        return list(range(n))
    if "order_random" in mods:
        return rng.sample(range(n), n)
    if "williams" in mods:
        return round_order(r, n, seed)
    shift = r % n  # a cyclic shift, as rounds were ordered before
    return list(range(shift, n)) + list(range(shift))


def one_sweep(condition: str, method: str, rounds: int, n: int, workload: str, tmp: Path, k: int) -> dict:
    rng = random.Random(f"{condition}:{method}:{k}:{time.time_ns()}")
    seed = rng.randrange(1 << 30)  # the sweep's order seed (williams)
    name = condition
    condition, mods = parse(name)
    base = base_spec(workload, run_id=f"aa-{condition}-{k}")
    labels = label_specs(condition, base, n)
    new_each_round = "new_server" in mods and method == "forkserver"
    padded = "pads" in mods
    times = np.full((rounds, n), np.nan)
    busy = 0
    if method == "forkserver":
        new_server(rng)  # every sweep starts on a server of its own, as a `detcost run` does
    for r in range(rounds):
        if new_each_round and r:
            new_server(rng)
        for li in order(condition, mods, r, n, rng, seed):
            spec = replace(labels[li], repeat=r)
            results_dir = tmp / ("p" * (60 * li) if condition == "results_path" else "p")
            results_dir.mkdir(parents=True, exist_ok=True)
            environ = dict(trial_environ(spec, results_dir))
            if condition == "env_size":
                environ["DETCOST_AA_PAD"] = "x" * (1000 * li)
                os.environ["DETCOST_AA_PAD"] = environ["DETCOST_AA_PAD"]  # a spawned process's own exec
            layout = Layout.draw(rng) if padded else None
            record = run_isolated(spec, method=method, results_dir=results_dir, environ=environ, layout=layout)
            os.environ.pop("DETCOST_AA_PAD", None)
            if not record.ok:
                raise SystemExit(f"{condition}: {spec.trial_id} failed: {record.error}")
            times[r, li] = record.timing.step_time_median_s
            busy += int(record.timing.is_busy)
    return {"condition": name, "method": method, "sweep": k, "busy": busy, **analyse(np.log(times))}


def analyse(logt: np.ndarray) -> dict:
    """The label effect in one sweep's rounds x labels table of log step times."""
    rounds, n = logt.shape
    resid = logt - logt.mean(axis=1, keepdims=True) - logt.mean(axis=0, keepdims=True) + logt.mean()
    label_means = logt.mean(axis=0) - logt.mean()
    ms_label = rounds * float((label_means**2).sum()) / (n - 1)
    ms_resid = float((resid**2).sum()) / ((n - 1) * (rounds - 1))
    f = ms_label / ms_resid
    ratio = np.exp(logt[:, 1] - logt[:, 0])
    above = int((ratio > 1).sum())
    return {
        "f": f,
        "p": float(sstats.f.sf(f, n - 1, (n - 1) * (rounds - 1))),
        "tau2": (ms_label - ms_resid) / rounds,
        "sigma": math.sqrt(ms_resid),
        "label_effects": [float(x) for x in label_means],
        "ratio_1_0": [float(x) for x in ratio],
        "one_sided": max(above, rounds - above) >= 0.8 * rounds,
    }


def summary(rows: list[dict]) -> dict:
    tau2 = float(np.mean([r["tau2"] for r in rows]))
    return {
        "sweeps": len(rows),
        "p_under_0.05": sum(r["p"] < 0.05 for r in rows),
        "median_f": float(np.median([r["f"] for r in rows])),
        "tau": math.copysign(math.sqrt(abs(tau2)), tau2),
        "sigma": float(np.sqrt(np.mean([r["sigma"] ** 2 for r in rows]))),
        "one_sided": sum(r["one_sided"] for r in rows),
        "busy_trials": sum(r["busy"] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conditions", default="settings,identical")
    p.add_argument("--method", default="forkserver", choices=("forkserver", "spawn"))
    p.add_argument("--sweeps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--labels", type=int, default=4)
    p.add_argument("--workload", default="simple_cnn")
    p.add_argument("--out", type=Path, default=Path("reports/layout-bias/forkserver"))
    args = p.parse_args()
    conditions = [c for c in args.conditions.split(",") if c]
    for c in conditions:
        parse(c)
    rows, out = [], {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for condition in conditions:
            mine = []
            for k in range(args.sweeps):
                guard.wait_for_quiet(lambda: guard.sample("cpu", THREADS), 120, lambda *_: None)
                t0 = time.monotonic()
                row = one_sweep(condition, args.method, args.rounds, args.labels, args.workload, Path(tmp), k)
                mine.append(row)
                effects = " ".join(f"{100 * x:+.1f}%" for x in row["label_effects"])
                print(
                    f"{condition} [{args.method}] sweep {k + 1}/{args.sweeps}: p {row['p']:.3f} "
                    f"tau^2 {row['tau2']:+.5f} sigma {row['sigma']:.3f} labels {effects} "
                    f"one-sided {row['one_sided']} ({time.monotonic() - t0:.0f} s)",
                    flush=True,
                )
            rows += mine
            out[condition] = summary(mine)
            print(json.dumps({condition: out[condition]}), flush=True)
            args.out.with_suffix(".json").write_text(json.dumps({"summary": out, "sweeps": rows}, indent=1))


if __name__ == "__main__":
    main()
