"""Statistics of step times, with NumPy and SciPy only: what one trial's steps say (median,
quartiles, strata of input shapes) and the price of one label against another from rounds.

A price's interval comes from rounds, not steps (DESIGN: Intervals): a round runs one trial
of each label back to back; within a round the two trials saw the same state of the
machine, so their ratio cancels drift slower than a round, and the spread of that ratio
across rounds is the uncertainty. Steps inside one process are not independent samples of
the machine's noise, and spells of noise outlast a trial.

Kept free of torch so the record (which derives its statistics here) and every table built
from records load without the training stack.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

# A trial's steps are "noisy" when their interquartile range exceeds this share of the
# median (torch.utils.benchmark warns at the same 10%).
IQR_WARN_THRESHOLD = 0.10


def typical_step_time(times, strata=None) -> float:
    """The median step time; with strata (input shapes that vary between steps), the
    median within each stratum weighted by how often it occurs, so the statistic is
    not the median of a mixture (whose value jumps between shapes)."""
    times = np.asarray(times, dtype=float)
    if strata is None:
        return float(np.median(times))
    strata = np.asarray(strata)
    return float(sum(np.median(times[strata == k]) * np.mean(strata == k) for k in np.unique(strata)))


def step_quartiles(times, strata=None) -> tuple[float, float]:
    """The 25th and 75th percentile of step times; with strata, those of each step's ratio
    to its stratum's median, scaled by the typical step time."""
    t = np.asarray(times, dtype=float)
    if strata is None:
        q25, q75 = np.percentile(t, [25, 75])
        return float(q25), float(q75)
    st = np.asarray(strata)
    rel = np.concatenate([t[st == k] / np.median(t[st == k]) for k in np.unique(st)])
    q25, q75 = np.percentile(rel, [25, 75]) * typical_step_time(t, strata)
    return float(q25), float(q75)


# ---- prices from rounds -------------------------------------------------------------

# The confidence of every interval a sweep draws, where nothing was decided by looking at
# its intervals (a fixed number of rounds, or --precision, which stops on their width).
LEVEL = 0.95
# --decide's first look: two rounds give a t interval on one degree of freedom (its 95%
# quantile is 12.7), which decides nothing, so no alpha is spent on it.
FIRST_LOOK = 3


def decide_looks(first: int, last: int) -> list[int]:
    """The round counts at which `--decide` looks at the intervals: the first (at least
    FIRST_LOOK), doubling after that, and the last. Few looks, because each one spends
    part of the 5% the intervals may miss by."""
    last = max(first, last)
    looks, n = [], max(first, FIRST_LOOK)
    while n < last:
        looks.append(n)
        n *= 2
    return [*looks, last]


def level_over_looks(looks: int, level: float = LEVEL) -> float:
    """The level of each interval when a sweep may stop at any of `looks` looks: alpha
    spent evenly across them (Bonferroni), so the chance that any look's interval missed,
    and so the one the sweep stopped at, is at most 1 - level whatever the stopping rule.
    One look is the plain level."""
    return 1 - (1 - level) / max(looks, 1)


@dataclass(frozen=True)
class PairedRatio:
    """a / b estimated from the rounds both ran: the geometric mean of the within-round
    ratios, and a t-interval on their logs (across rounds only). One round gives a point
    and no interval (0 to infinity)."""

    ratio: float
    lo: float
    hi: float
    rounds: int

    @property
    def half_width(self) -> float:
        """The interval's larger distance from the point, relative to it (0.03: ±3%)."""
        if not self.rounds or not math.isfinite(self.hi):
            return math.inf
        return max(self.hi / self.ratio - 1, 1 - self.lo / self.ratio)

    @property
    def includes_one(self) -> bool:
        return self.lo <= 1.0 <= self.hi

    @classmethod
    def identity(cls, rounds: int) -> PairedRatio:
        return cls(1.0, 1.0, 1.0, rounds)


def paired_ratio(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], level: float = LEVEL, bias_var: float = 0.0
) -> PairedRatio:
    """Ratio of typical step times a / b, each given per round ({round: seconds}).

    `bias_var` is a variance (of the log ratio) that the rounds cannot see, a fixed effect
    of the sweep on this pair of labels (`label_bias_var`); it is added to the rounds'
    own before the interval is drawn."""
    common = [r for r in a if r in b]
    logs = np.log([a[r] / b[r] for r in common])
    n = len(logs)
    if n == 0:
        return PairedRatio(math.nan, math.nan, math.nan, 0)
    mean = float(logs.mean())
    if n == 1:
        return PairedRatio(math.exp(mean), 0.0, math.inf, 1)
    se = math.sqrt(float(logs.var(ddof=1)) / n + bias_var)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * se
    return PairedRatio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def label_bias_var(aa: Mapping[Hashable, float], ref: Mapping[Hashable, float]) -> float:
    """The variance a fixed, sweep-long effect of its label adds to a price's log ratio,
    measured by the A/A control (`ref` run again under a second label, so its true ratio
    is 1): with d the mean of the A/A's within-round log ratios over n rounds and s^2
    their variance, E[d^2] = 2 tau^2 + s^2 / n, where tau^2 is one label's fixed-effect
    variance, and a price between two labels carries 2 tau^2 of it. So the estimate is
    max(0, d^2 - s^2 / n): zero where the A/A control strays no further than its rounds
    say it may, and otherwise what it strayed beyond that (docs/layout-bias.md)."""
    common = [r for r in aa if r in ref]
    if len(common) < 2:
        return 0.0
    logs = np.log([aa[r] / ref[r] for r in common])
    return max(0.0, float(logs.mean()) ** 2 - float(logs.var(ddof=1)) / len(logs))


def per_round(trials: list[tuple[Hashable, list[float]]], strata: list[int] | None = None) -> dict[Hashable, float]:
    """{round: typical step time} from (round, step times) pairs; where a round holds
    several trials of one label (settings priced as one), their geometric mean."""
    by_round: dict[Hashable, list[float]] = {}
    for rnd, times in trials:
        by_round.setdefault(rnd, []).append(typical_step_time(times, strata[: len(times)] if strata else None))
    return {r: float(np.exp(np.mean(np.log(v)))) for r, v in by_round.items()}


def fastest(per_label: Mapping[str, Mapping[Hashable, float]]) -> str:
    """The label with the smallest step time, judged on the rounds every label ran (so
    each label is compared on the same state of the machine); where no round is common
    to all (busy trials dropped), each label against the first on the rounds they share."""
    common = set.intersection(*(set(rounds) for rounds in per_label.values())) if per_label else set()
    if common:
        return min(per_label, key=lambda lb: float(np.mean(np.log([per_label[lb][r] for r in common]))))
    base = next(iter(per_label))

    def against_base(label: str) -> float:
        ratio = paired_ratio(per_label[label], per_label[base]).ratio
        return ratio if math.isfinite(ratio) else math.inf

    return min(per_label, key=against_base)


def unpaired_ratio(a: Mapping[Hashable, float], b: Mapping[Hashable, float], level: float = LEVEL) -> PairedRatio:
    """a / b for runs that share no rounds (two machines, two commits): the ratio of the
    geometric means over each run's rounds, with a Welch t-interval on the logs. Drift
    between the runs does not cancel here; that is why a sweep pairs within rounds."""
    la, lb = np.log(list(a.values())), np.log(list(b.values()))
    if not len(la) or not len(lb):
        return PairedRatio(math.nan, math.nan, math.nan, 0)
    mean = float(la.mean() - lb.mean())
    n = min(len(la), len(lb))
    if n < 2:
        return PairedRatio(math.exp(mean), 0.0, math.inf, n)
    va, vb = la.var(ddof=1) / len(la), lb.var(ddof=1) / len(lb)
    se = math.sqrt(va + vb)
    if se == 0:
        return PairedRatio(math.exp(mean), math.exp(mean), math.exp(mean), n)
    dof = (va + vb) ** 2 / (va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1))
    half = float(_scipy_stats.t.ppf((1 + level) / 2, dof)) * se
    return PairedRatio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def busy_share(busy_s, step_s):
    """How much of a step the device's kernels kept it busy: busy time over step time,
    capped at 1 (overlapping streams can add up past the step). Scalars or arrays; NaN
    stays NaN. Below the profiled trial's threshold a step is host-bound."""
    return np.minimum(np.asarray(busy_s, dtype=float) / np.asarray(step_s, dtype=float), 1.0)
