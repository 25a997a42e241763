"""Prices from rounds, and the quiet-machine guard's decisions, on synthetic numbers only:
nothing here depends on how busy the machine running the tests is."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detcost import guard, timing
from detcost.payloads import BusyReport
from detcost.stats import fastest, paired_ratio, per_round, unpaired_ratio
from detcost.timing import CpuSample, trial_threads

TRUE_PRICE = 1.10


def drifting_rounds(n: int, rng, drift: float = 0.05, noise: float = 0.01, spell: float = 0.0):
    """Step times per round of a reference and a setting that costs TRUE_PRICE: the machine
    slows by `drift` per round, each trial has its own `noise`, and `spell` adds a slow
    random walk (noise that outlasts a trial) shared by both trials of a round."""
    walk = np.cumsum(rng.normal(0, spell, n)) if spell else np.zeros(n)
    machine = (1 + drift * np.arange(n)) * np.exp(walk)
    ref = 0.010 * machine * np.exp(rng.normal(0, noise, n))
    setting = TRUE_PRICE * 0.010 * machine * np.exp(rng.normal(0, noise, n))
    return dict(enumerate(ref)), dict(enumerate(setting))


def test_the_paired_price_covers_the_truth_under_slow_drift():
    ref, setting = drifting_rounds(10, np.random.default_rng(0))
    price = paired_ratio(setting, ref)
    assert price.lo <= TRUE_PRICE <= price.hi
    assert price.half_width < 0.02  # drift cancels within a round: only the trials' own noise is left
    assert price.rounds == 10


def test_pairing_removes_the_bias_of_rounds_that_one_label_lacks():
    """Busy trials dropped from the early (fast) rounds of one setting: the unpaired ratio
    compares its late rounds with all of the reference's and reads the drift as a price."""
    ref, setting = drifting_rounds(10, np.random.default_rng(1), drift=0.08)
    late_only = {r: t for r, t in setting.items() if r >= 5}
    paired, unpaired = paired_ratio(late_only, ref), unpaired_ratio(late_only, ref)
    assert paired.lo <= TRUE_PRICE <= paired.hi
    assert unpaired.ratio > TRUE_PRICE * 1.15  # drift taken for price
    assert unpaired.half_width > 5 * paired.half_width  # and an interval too wide to use


def test_95_percent_intervals_cover_the_truth_in_about_95_percent_of_synthetic_sweeps():
    rng = np.random.default_rng(2)
    covered = []
    for _ in range(400):
        ref, setting = drifting_rounds(5, rng, noise=0.05, spell=0.2)
        price = paired_ratio(setting, ref)
        covered.append(price.lo <= TRUE_PRICE <= price.hi)
    assert 0.92 <= np.mean(covered) <= 0.98


def test_one_round_gives_a_point_and_no_interval():
    price = paired_ratio({0: 2.0}, {0: 1.0})
    assert price.ratio == 2.0 and price.lo == 0.0 and math.isinf(price.hi) and math.isinf(price.half_width)
    assert math.isnan(paired_ratio({0: 1.0}, {1: 1.0}).ratio)  # no round in common


def test_per_round_takes_each_trials_median_and_pools_trials_of_one_round():
    rounds = per_round([(0, [1.0, 1.0, 9.0]), (1, [2.0, 2.0, 2.0]), (1, [8.0, 8.0, 8.0])])
    assert rounds == {0: 1.0, 1: pytest.approx(4.0)}  # geometric mean of 2 and 8


def test_the_fastest_label_is_judged_by_the_paired_statistic():
    ref, setting = drifting_rounds(6, np.random.default_rng(3))
    assert fastest({"slow": setting, "fast": ref}) == "fast"


# ---- the quiet-machine guard --------------------------------------------------------


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(timing, "usable_cpus", lambda: {0, 1})
    monkeypatch.setattr(timing.os, "sysconf", lambda name: 100)


def _samples(others_cores: float, own_cores: float = 0.0, wall: float = 2.0):
    start = CpuSample(wall=0.0, busy_s=0.0, own_s=0.0, loadavg=0.0)
    end = CpuSample(wall=wall, busy_s=(others_cores + own_cores) * wall, own_s=own_cores * wall, loadavg=1.0)
    return start, end


@pytest.mark.parametrize(
    ("others", "threads", "busy"),
    [(0.0, 2, False), (0.1, 2, False), (1.0, 2, True), (0.4, 1, False), (1.0, 1, True)],
)
def test_the_guard_calls_the_machine_busy_when_others_take_the_cores_a_trial_needs(two_cpus, others, threads, busy):
    load = guard.judge(*_samples(others), threads=threads)
    assert load.busy is busy
    assert load.others_cpu_cores == pytest.approx(others)


def test_the_guard_does_not_count_detcosts_own_cpu_time(two_cpus):
    assert not guard.judge(*_samples(others_cores=0.0, own_cores=2.0), threads=2).busy


def test_another_process_on_the_gpu_makes_the_machine_busy(two_cpus):
    load = guard.judge(*_samples(0.0), threads=2, gpu_others="pid 4242 python 1.2 GB")
    assert load.busy and "4242" in load.describe()


class FakeMachine:
    """Looks that take one second each, on a clock of their own."""

    def __init__(self, loads):
        self.loads, self.now = iter(loads), 0.0

    def look(self):
        self.now += 1
        return next(self.loads)

    def clock(self):
        return self.now


def test_waiting_stops_when_the_machine_goes_quiet_or_the_bound_is_reached():
    busy, quiet = BusyReport(1.5, 0.25, cpu_busy=True), BusyReport(0.0, 0.25)
    machine, waits = FakeMachine([busy, busy, quiet]), []
    load, waited = guard.wait_for_quiet(machine.look, 60, lambda ld, w: waits.append(w), clock=machine.clock)
    assert not load.busy and waited == 2 and waits == [0, 1]

    machine = FakeMachine([busy] * 100)
    load, waited = guard.wait_for_quiet(machine.look, 5, clock=machine.clock)
    assert load.busy and waited == 5

    load, waited = guard.wait_for_quiet(FakeMachine([quiet]).look, 60)
    assert not load.busy and waited == 0.0


def test_a_cuda_trial_counts_one_host_thread_a_cpu_trial_its_thread_count():
    assert trial_threads("cuda:0", [8]) == 1
    assert trial_threads("cpu", [1, 2]) == 2 and trial_threads("cpu", [None]) == 1
