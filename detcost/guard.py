"""The quiet-machine guard: is another job using this machine's CPUs (or, on CUDA, its
GPU) right now, and waiting, within a bound, for it to stop.

On a shared 2-core machine one CPU-bound neighbour makes steps 10-30x slower, and no
statistic repairs a price measured beside it. So the sweep samples the machine before it
starts and waits for it to go quiet, and a trial that comes back flagged busy is run again
once the machine is quiet (DESIGN: Busy-machine guard; the same rule as each trial's flag,
`payloads.BusyReport.between`, applied to a short sample taken while detcost itself is idle).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from detcost.env import gpu_processes
from detcost.payloads import BusyReport
from detcost.record import TrialRecord, TrialSpec
from detcost.timing import cpu_sample, is_cuda

SAMPLE_S = 1.0  # how long one look at the machine lasts
DEFAULT_WAIT_S = 120.0  # how long the sweep waits for a busy machine to go quiet, each time


def judge(start, end, threads: int, gpu_others: str | None = None) -> BusyReport:
    """The load between two `timing.CpuSample`s, by the rule that flags a trial busy."""
    return BusyReport.between(start, end, threads, gpu_others)


def sample(device: str, threads: int, seconds: float = SAMPLE_S) -> BusyReport:
    """Look at the machine for `seconds` while detcost does nothing. What detcost's own
    process tree uses meanwhile (its forkserver, a trial still ending) is its own, as in a
    trial's view; only other processes' time can make the machine busy."""
    start = cpu_sample()
    time.sleep(seconds)
    end = cpu_sample()
    return judge(start, end, threads, gpu_processes(device) if is_cuda(device) else None)


def wait_for_quiet(
    look: Callable[[], BusyReport],
    max_wait: float,
    on_wait: Callable[[BusyReport, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[BusyReport, float]:
    """Look until the machine is quiet or `max_wait` seconds have passed. Returns the last
    look and the seconds spent waiting; `on_wait(load, waited)` is told of each busy look."""
    load = look()
    if not load.busy:
        return load, 0.0
    t0 = clock()  # waiting starts once a look found the machine busy
    while load.busy and clock() - t0 < max_wait:
        if on_wait:
            on_wait(load, clock() - t0)
        load = look()
    return load, clock() - t0


class SweepGuard:
    """The guard as a sweep runs it: a look before the first trial and a wait before a busy
    trial runs again, each bounded by --wait-quiet (`max_wait`) and the time --max-time
    leaves (`time_left`); what it did, as `events`, and the trials run again because the
    machine was busy. After a wait that ended with the machine still busy, the sweep stops
    waiting: the load is not passing, and waiting before every trial would only stretch the
    run. So only one look is taken each time, until the machine is seen quiet again."""

    def __init__(
        self,
        device: str,
        threads: int,
        max_wait: float,
        allow_busy: bool,
        time_left: Callable[[], float | None],
        on_wait: Callable[[BusyReport, float], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.device, self.threads, self.max_wait, self.allow_busy = device, threads, max_wait, allow_busy
        self.time_left, self.on_wait, self.on_end = time_left, on_wait, on_end
        self.events: list[str] = []
        self.gave_up = False
        self.again_now: list[TrialSpec] = []  # busy trials run again at once, the machine quiet
        self.again_at_end = 0  # busy trials run again after the planned trials (`give_another_chance`)

    @property
    def reruns(self) -> int:
        """Every trial run again because the machine was busy the first time."""
        return len(self.again_now) + self.again_at_end

    def before_sweep(self) -> None:
        if not self.allow_busy:
            self.wait("the machine was busy before the sweep started")

    def wait(self, why: str) -> bool:
        """Wait for the machine to go quiet; True if it is quiet now."""
        budget = 0.0 if self.gave_up else self.max_wait
        left = self.time_left()
        if left is not None:
            budget = min(budget, left)
        load, waited = self.look(budget)
        if self.on_end:
            self.on_end()
        if load.busy and not self.gave_up:
            self.events.append(
                f"{why}; still busy after {waited:.0f} s ({load.describe()}): went on, busy trials stay flagged "
                "(no more waiting until the machine is seen quiet)"
            )
        elif not load.busy and (waited > 0 or self.gave_up):
            self.events.append(f"{why}; waited {waited:.0f} s for the machine to go quiet")
        self.gave_up = load.busy
        return not load.busy

    def look(self, budget: float) -> tuple[BusyReport, float]:
        return wait_for_quiet(lambda: sample(self.device, self.threads), budget, self.on_wait)

    def again_at_once(self, record: TrialRecord, out_of_time: bool) -> bool:
        """Whether a trial that came back busy runs again now: not under --allow-busy or
        past --max-time, and only once a wait found the machine quiet."""
        if not record.is_busy or self.allow_busy or out_of_time:
            return False
        if not self.wait(f"{record.trial_id} ran while the machine was busy"):
            return False
        self.again_now.append(record.spec)
        return True

    def give_another_chance(self, busy: list[TrialSpec], out_of_time: bool) -> bool:
        """After the planned trials: whether the trials whose newest record still ran busy
        (the guard gave up waiting while they ran) run once more, the machine quiet now, so
        a neighbour that has left costs no round. One full wait: the trials are worth it."""
        if not busy or self.allow_busy or out_of_time:
            return False
        self.gave_up = False
        if not self.wait(f"{len(busy)} trial(s) ran while the machine was busy"):
            return False
        self.events.append(f"ran {len(busy)} busy trial(s) again at the end, the machine quiet: {named(busy)}")
        self.again_at_end += len(busy)
        return True

    def summary(self) -> list[str]:
        """The events, and one line for the trials run again at once (the waits name the
        trials that made the sweep wait)."""
        if not self.again_now:
            return self.events
        return [*self.events, f"ran {len(self.again_now)} busy trial(s) again at once, the machine quiet: "
                              f"{named(self.again_now)}"]  # fmt: skip


def named(specs: list[TrialSpec], most: int = 5) -> str:
    """The trials' ids, the first `most` of them and how many more."""
    shown = ", ".join(s.trial_id for s in specs[:most])
    return shown + (f" and {len(specs) - most} more" if len(specs) > most else "")
