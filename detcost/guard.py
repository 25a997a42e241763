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
