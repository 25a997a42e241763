"""Statistics of step times, with NumPy only: what one trial's steps say (median, quartiles,
strata of input shapes) and the interval of a ratio between two groups of trials.

Kept free of torch so the record (which derives its statistics here) and every table built
from records load without the training stack.
"""

from __future__ import annotations

import numpy as np

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


def pooled_typical(trials: list[list[float]], strata: list[int] | None = None) -> float:
    """The typical step time of a group of trials, their steps pooled."""
    return typical_step_time(np.concatenate(trials), _tile(strata, trials))


def _tile(strata: list[int] | None, trials: list[list[float]]):
    return None if strata is None else np.concatenate([np.asarray(strata[: len(t)]) for t in trials])


def _bootstrap_typical(trials: list[list[float]], strata: list[int] | None, n: int, rng) -> np.ndarray:
    """`n` bootstrap replicates of the typical step time of a group of trials.

    Each replicate resamples the trials (fresh processes), then the steps within each
    trial and stratum, so both the spread between processes and within one enter.
    """
    length = min(len(t) for t in trials)
    times = np.asarray([t[:length] for t in trials], dtype=float)  # (trials, steps)
    strata_arr = np.zeros(length, int) if strata is None else np.asarray(strata[:length])
    r = len(trials)
    out = np.zeros(n)
    for k in np.unique(strata_arr):
        cols = np.flatnonzero(strata_arr == k)
        picked_trials = rng.integers(0, r, (n, r))  # (n, r)
        picked_steps = cols[rng.integers(0, len(cols), (n, r, len(cols)))]  # (n, r, m)
        sample = times[picked_trials[:, :, None], picked_steps].reshape(n, -1)
        out += np.median(sample, axis=1) * (len(cols) / length)
    return out


def bootstrap_ratio(
    a: list[list[float]],
    b: list[list[float]],
    *,
    strata: list[int] | None = None,
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Ratio of typical step times a/b with a bootstrap interval over trials and steps.

    `a` and `b` are lists of trials, each a list of step times (and, for workloads whose
    input shape varies, `strata`: the shape index of each step, the same in all trials).
    """
    rng = np.random.default_rng(seed)
    point = pooled_typical(a, strata) / pooled_typical(b, strata)
    ratios = _bootstrap_typical(a, strata, n, rng) / _bootstrap_typical(b, strata, n, rng)
    lo, hi = np.percentile(ratios, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(point), float(lo), float(hi)
