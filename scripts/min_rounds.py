"""How much evidence a verdict needs: judge real rounds of this machine, a few at a time.

Takes results files of sweeps with many rounds, draws subsets of n rounds from each (n = 2,
3, ...), and judges every price of each subset against a budget exactly as detcost does
(`analyse` with the least-rounds rule lowered to 2, so that the rule itself is what is
measured). A verdict on a subset is wrong where it contradicts the price all rounds give:
"within budget" for a price whose all-rounds estimate is over the line, or "over budget"
for one under it; it is lucky where all the rounds together cannot decide that price. The
A/A control's interval missing 1.00, its truth, counts too.

    python scripts/min_rounds.py results/many-rounds.jsonl --budgets 5%,10% --draws 200

It prints one row per round count and writes the table as CSV and JSON beside --out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detcost import results  # noqa: E402
from detcost.derive.analysis import analyse  # noqa: E402
from detcost.derive.policy import Policy  # noqa: E402
from detcost.derive.verdict import FAIL, PASS  # noqa: E402
from detcost.record import ROUND_KINDS  # noqa: E402


def _fraction(text: str) -> float:
    return float(text.rstrip("%")) / (100 if text.endswith("%") else 1)


def _subset(records, rounds: set[int]):
    return [r for r in records if r.spec.kind not in ROUND_KINDS or r.spec.repeat in rounds]


def measure(records, budgets: list[float], sizes: list[int], draws: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    every = sorted({r.spec.repeat for r in records if r.spec.kind in ROUND_KINDS})
    rows = []
    for budget in budgets:
        policy = Policy(max_slowdown=budget, min_rounds=2)
        whole = analyse(records, policy).only
        truth = {(p.key, p.label): p for p in whole.prices if not p.is_aa and p.label != p.price_vs}
        for n in sizes:
            counts: Counter = Counter()
            for _ in range(draws):
                m = analyse(_subset(records, set(rng.sample(every, n))), policy).only
                for p in m.prices:
                    if p.is_aa:
                        counts["aa"] += 1
                        counts["aa_missed"] += not p.price.includes_one
                        continue
                    full = truth.get((p.key, p.label))
                    if full is None or p.label == p.price_vs:
                        continue
                    status = p.decision.status
                    counts["prices"] += 1
                    counts["decided"] += status in (PASS, FAIL)
                    over = full.price.ratio > 1 + budget
                    counts["wrong"] += (status == PASS and over) or (status == FAIL and not over)
                    # decided on n rounds where all of them cannot decide: a verdict by luck
                    counts["lucky"] += status in (PASS, FAIL) and not full.decision.decided
            rows.append({
                "budget": budget, "rounds": n, "draws": draws, "prices": counts["prices"],
                "decided": counts["decided"] / max(counts["prices"], 1),
                "wrong": counts["wrong"] / max(counts["prices"], 1),
                "wrong_of_decided": counts["wrong"] / max(counts["decided"], 1),
                "lucky": counts["lucky"] / max(counts["prices"], 1),
                "aa_missed": counts["aa_missed"] / max(counts["aa"], 1),
            })  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--budgets", default="5%,10%")
    ap.add_argument("--sizes", default="2,3,4,5,6,8")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="write <out>.csv and <out>.json")
    args = ap.parse_args()
    records = results.load_records(args.results)
    rounds = len({r.spec.repeat for r in records if r.spec.kind in ROUND_KINDS})
    rows = measure(records, [_fraction(b) for b in args.budgets.split(",")],
                   [int(n) for n in args.sizes.split(",")], args.draws)  # fmt: skip
    print(f"{len(args.results)} file(s), {rounds} rounds; verdicts on random subsets of n rounds")
    print("budget rounds  decided  wrong  wrong/decided  decided, all rounds cannot  A/A missed 1.00")
    for r in rows:
        print(f"{r['budget']:>6.0%} {r['rounds']:>6}  {r['decided']:>7.1%} {r['wrong']:>6.1%} "
              f"{r['wrong_of_decided']:>14.1%} {r['lucky']:>27.1%} {r['aa_missed']:>16.1%}")  # fmt: skip
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({"files": [str(p) for p in args.results],
                                                             "rounds": rounds, "rows": rows}, indent=2))  # fmt: skip
        import csv

        with open(args.out.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
