"""Measuring: step timers (CUDA events or perf_counter), peak memory and a busy-machine
guard. The statistics of the times they produce live in `detcost.stats`.

All CUDA-only code of the measurement lives here, each piece behind an explicit
`if self.cuda` / `if is_cuda(device)` so the CPU path is the same function.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch


def is_cuda(device: str | torch.device) -> bool:
    return str(device).startswith("cuda")


# A GPU's clocks leave idle only under load: on CUDA the warm-up lasts at least this long
# as well as its step count. The CPU needs no such time.
CUDA_MIN_WARMUP_S = 0.5


def min_warmup_s(device: str) -> float:
    return CUDA_MIN_WARMUP_S if is_cuda(device) else 0.0


# The clock warm-up's load: square fp32 matmuls on buffers of its own, the same for every
# label, whatever wraps its model (compiled, DDP), and touching none of the trial's state.
# On CUDA 4096 (~0.14 TFLOP a product: milliseconds on a datacenter GPU; 128 MiB of
# buffers); the CPU needs no warm-up, and where a test asks for one a small product keeps it fast.
WARM_LOAD_N = {"cuda": 4096, "cpu": 128}
WARM_LOAD_PRODUCTS = 4  # products between synchronisations: the device never idles for the host


def warm_load(device: str, seconds: float, clock: Callable[[], float] = time.perf_counter) -> int:
    """Keep `device` busy for `seconds` with matmuls (`WARM_LOAD_N`), synchronising after
    each few; returns how many rounds of products ran. Its buffers come from no generator
    and are freed before it returns."""
    n = WARM_LOAD_N["cuda" if is_cuda(device) else "cpu"]
    a = torch.ones(n, n, device=device)
    out = torch.empty_like(a)
    rounds, t0 = 0, clock()
    while clock() - t0 < seconds:
        for _ in range(WARM_LOAD_PRODUCTS):
            torch.mm(a, a, out=out)
        synchronize(device)
        rounds += 1
    del a, out
    return rounds


def synchronize(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def cuda_device(device: str) -> torch.device:
    """`cuda` or `cuda:N` as an indexed device (`cuda` means `cuda:0`)."""
    d = torch.device(device)
    return torch.device("cuda", d.index or 0)


def use_device(device: str) -> None:
    """Make `device` the current CUDA device, so events and streams are on it (no-op on CPU)."""
    if is_cuda(device):
        torch.cuda.set_device(cuda_device(device))


class StepTimer:
    """Per-step times of a timed region, with no synchronisation inside it.

    CUDA: a pair of events per step, recorded on the current stream; `times()`
    synchronises once, after the region. CPU: `time.perf_counter` around each step.
    Start and end marks are separate, so work done between steps (snapshots) is in
    neither step.
    """

    def __init__(self, device: str, n: int):
        self.cuda = is_cuda(device)
        self.name = "cuda_event" if self.cuda else "perf_counter"
        self.device = device
        if self.cuda:
            self._starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            self._ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        else:
            self._starts = [0.0] * n
            self._ends = [0.0] * n

    def start(self, i: int) -> None:
        if self.cuda:
            self._starts[i].record(torch.cuda.current_stream(self.device))
        else:
            self._starts[i] = time.perf_counter()

    def stop(self, i: int) -> None:
        if self.cuda:
            self._ends[i].record(torch.cuda.current_stream(self.device))
        else:
            self._ends[i] = time.perf_counter()

    def times(self) -> list[float]:
        """Seconds per step; on CUDA this is the one synchronisation of the region."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) / 1e3 for s, e in zip(self._starts, self._ends)]
        return [e - s for s, e in zip(self._starts, self._ends)]


# ---- peak memory -------------------------------------------------------------------


def release_cached_memory(device: str) -> None:
    """Give the CUDA caching allocator's free blocks back (after an allocation failed);
    nothing to do on the CPU."""
    if is_cuda(device):
        torch.cuda.empty_cache()


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS on Linux."""
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets VmHWM, the peak resident set size (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # peak_memory falls back to the lifetime peak


def peak_memory(device: str) -> tuple[int, str]:
    """(bytes, metric): CUDA max allocated, or the peak RSS of this process on the CPU."""
    if is_cuda(device):
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "peak_rss"
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak_rss_lifetime"


# ---- busy-machine guard ------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    wall: float
    busy_s: float | None  # CPU seconds spent busy on the CPUs this process may use (/proc/stat)
    own_s: float  # CPU seconds of this process's tree: its threads, live descendants, reaped children
    loadavg: float | None


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity: a container's cpuset included)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def tree_cpu_s(process: psutil.Process | None = None, rusage=resource.getrusage) -> float:
    """CPU seconds (user + system) of this process's whole tree, so a trial's DataLoader
    workers (or a sweep's forkserver and its trials) are its own work, not another job's.

    Each process of the tree counts its own time and that of the children it has reaped:
    this process through `getrusage` (RUSAGE_SELF + RUSAGE_CHILDREN), each live descendant
    through psutil (`user + system + children_user + children_system`). A child's time is
    then in exactly one place at each sample: while it lives, in its own entry; once its
    parent has reaped it, in that parent's reaped-children time (Linux adds a reaped child's
    time, and its own reaped children's, to the parent's). So a worker alive at one sample
    and reaped before the next is neither lost nor counted twice in the difference of the
    two; it only moves from one term to another. What no difference sees: a descendant
    orphaned before it ends (reaped by init, not by the tree), and a child reaped by another
    thread while this one samples (DataLoader workers, multiprocessing children and a
    sweep's trials are reaped by the thread that samples, so not in between). /proc counts
    a live process in clock ticks, so a child moving into the reaped term may shift the
    sum by up to a tick.
    """
    own, reaped = rusage(resource.RUSAGE_SELF), rusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    return total + live_descendants_cpu_s(process)


def live_descendants_cpu_s(process: psutil.Process | None = None) -> float:
    """CPU seconds of the live descendants of `process` (this one by default), each with
    the children it has reaped; a process that ends or hides while it is read adds nothing."""
    try:
        descendants = (process or psutil.Process()).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    total = 0.0
    for p in descendants:
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_sample(tree: Callable[[], float] = tree_cpu_s) -> CpuSample:
    """A look at the machine's CPUs: their busy time (/proc/stat) and this process tree's
    own time (`tree`), the two a busy report subtracts."""
    own_s = tree()
    cpus, busy = usable_cpus(), None
    try:
        busy = 0.0
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                    continue
                fields = [int(v) for v in values]
                # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
                busy += sum(fields[:8]) - fields[3] - fields[4]
        busy /= os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return CpuSample(time.monotonic(), busy, own_s, load)


def trial_threads(device: str, thread_counts) -> int:
    """The host threads a trial keeps busy: its thread count on the CPU, one on CUDA."""
    return 1 if is_cuda(device) else max(n or 1 for n in (thread_counts or [1]))
