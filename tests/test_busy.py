"""The busy guard counts a trial's whole process tree as its own: its DataLoader workers
are the trial's work, not a neighbour's, while other processes still make it busy.

The rule is checked on a faked process tree (no clock, no quiet machine needed); a real
child's CPU time is checked against what the child says it used; and one real sweep, on
a machine this test makes busy itself, is flagged, waits, and runs the trial again.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import sys
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest

from detcost import guard, measure, timing
from detcost.cli import main
from detcost.payloads import BusyReport
from detcost.timing import CpuSample, tree_cpu_s
from detcost.trial import run_trial
from tests.conftest import QUICK, TIMED_ONLY, make_spec

CpuTimes = namedtuple("CpuTimes", "user system children_user children_system")


class FakeTree:
    """A process tree on a clock of its own: this process (`own_s`, the children it reaped,
    `reaped_s`) and live descendants by pid, each with its CPU seconds so far. `busy_s` is
    every CPU second the machine spent, the tree's and `others_s`."""

    def __init__(self):
        self.own_s, self.reaped_s, self.others_s, self.live = 0.0, 0.0, 0.0, {}
        self.vanishing: set[int] = set()  # pids that end while being read

    def run(self, own=0.0, others=0.0, **workers: float) -> None:
        self.own_s += own
        self.others_s += others
        for name, s in workers.items():
            self.live[name] = self.live.get(name, 0.0) + s

    def reap(self, name: str) -> None:
        """The child ends and this process waits for it: its time moves to RUSAGE_CHILDREN."""
        self.reaped_s += self.live.pop(name)

    def rusage(self, who):
        s = self.own_s if who == resource.RUSAGE_SELF else self.reaped_s
        return SimpleNamespace(ru_utime=s * 0.75, ru_stime=s * 0.25)

    def children(self, recursive: bool = False):
        assert recursive
        return [FakeChild(self, name) for name in self.live]

    def sample(self, wall: float, main_only: bool = False) -> CpuSample:
        """A sample as `timing.cpu_sample` takes it; `main_only`: as it took it before it
        counted the tree (RUSAGE_SELF alone)."""
        tree = tree_cpu_s(process=self, rusage=self.rusage)
        own = self.own_s if main_only else tree
        return CpuSample(wall=wall, busy_s=tree + self.others_s, own_s=own, loadavg=None)


class FakeChild:
    def __init__(self, tree: FakeTree, name: str):
        self.tree, self.name = tree, name

    def cpu_times(self) -> CpuTimes:
        if self.name in self.tree.vanishing:
            raise psutil.NoSuchProcess(pid=0)
        if self.name == "hidden":
            raise psutil.AccessDenied(pid=0)
        return CpuTimes(self.tree.live[self.name], 0.0, 0.0, 0.0)


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(timing, "usable_cpus", lambda: {0, 1})
    monkeypatch.setattr(timing.os, "sysconf", lambda name: 100)


def test_a_trial_whose_loader_workers_use_the_cores_is_not_busy(two_cpus):
    tree = FakeTree()
    tree.run(own=5.0, w0=1.0, w1=1.0)  # the warm-up: workers started and prefetched
    start, start_main = tree.sample(wall=0.0), tree.sample(wall=0.0, main_only=True)
    tree.run(own=2.0, w0=0.9, w1=0.9)  # 2 s: one thread of the trial, two busy workers
    end, end_main = tree.sample(wall=2.0), tree.sample(wall=2.0, main_only=True)
    report = BusyReport.between(start, end, threads=1)
    assert not report.busy, report
    assert report.own_cpu_cores == pytest.approx(1.9) and report.others_cpu_cores == pytest.approx(0.0)
    # counted as its main process alone, its own workers would flag it
    assert BusyReport.between(start_main, end_main, threads=1).busy


def test_others_using_the_cores_still_make_a_trial_with_workers_busy(two_cpus):
    tree = FakeTree()
    tree.run(own=5.0, w0=1.0, w1=1.0)
    start = tree.sample(wall=0.0)
    tree.run(own=1.0, others=1.6, w0=0.3, w1=0.3)  # a neighbour takes 0.8 of a core for 2 s
    report = BusyReport.between(start, tree.sample(wall=2.0), threads=1)
    assert report.busy and report.others_cpu_cores == pytest.approx(0.8)
    assert report.own_cpu_cores == pytest.approx(0.8)


def test_a_worker_reaped_between_the_samples_is_neither_lost_nor_counted_twice(two_cpus):
    tree = FakeTree()
    tree.run(own=4.0, w0=3.0, w1=3.0)
    start = tree.sample(wall=0.0)  # w0 and w1 alive: 3 s each through psutil
    tree.run(own=1.0, w0=0.5, w1=0.5)
    tree.reap("w0")  # the loader shuts w0 down: its 3.5 s move to RUSAGE_CHILDREN
    tree.run(own=0.5, w1=0.5)
    end = tree.sample(wall=2.0)
    assert end.own_s - start.own_s == pytest.approx(1.5 + 0.5 + 1.0)  # what the tree used in between
    assert BusyReport.between(start, end, threads=1).others_cpu_cores == pytest.approx(0.0)

    tree.reap("w1")
    assert tree.sample(wall=3.0).own_s == pytest.approx(end.own_s)  # reaping alone uses no time


def test_a_worker_that_ends_or_hides_while_it_is_read_adds_nothing():
    tree = FakeTree()
    tree.run(own=1.0, w0=2.0, hidden=5.0, gone=7.0)
    tree.vanishing.add("gone")
    assert tree_cpu_s(process=tree, rusage=tree.rusage) == pytest.approx(3.0)


def test_a_grandchild_reaped_by_a_worker_stays_in_the_tree():
    """A live descendant counts the children it reaped (psutil's children_* times)."""

    class Worker:
        def __init__(self, times):
            self.times = times

        def cpu_times(self):
            return self.times

    class Tree:
        def __init__(self, *kids):
            self.kids = kids

        def children(self, recursive=False):
            return list(self.kids)

    nothing = lambda who: SimpleNamespace(ru_utime=0.0, ru_stime=0.0)  # noqa: E731
    before = Tree(Worker(CpuTimes(1.0, 0.0, 0.0, 0.0)), Worker(CpuTimes(2.0, 0.5, 0.0, 0.0)))  # worker, grandchild
    after = Tree(Worker(CpuTimes(1.0, 0.0, 2.0, 0.5)))  # the worker waited for its child
    assert tree_cpu_s(before, nothing) == pytest.approx(tree_cpu_s(after, nothing)) == pytest.approx(3.5)


# ---- the real process tree ---------------------------------------------------------

# Spins for a fixed amount of CPU work (not of wall time: on a loaded machine it takes
# longer, not less), says how much CPU time it used, and stays alive until stdin closes.
SPIN = """
import sys, time
while time.process_time() < {cpu_s}:
    pass
print(time.process_time(), flush=True)
sys.stdin.read()
"""


def test_a_live_child_and_then_a_reaped_one_count_as_this_processs_own_time():
    start = tree_cpu_s()
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN.format(cpu_s=0.3)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        used = float(child.stdout.readline())  # the child's own count, once it has spun
        live = tree_cpu_s() - start
    finally:
        child.stdin.close()
        child.wait()
    reaped = tree_cpu_s() - start
    # /proc counts a live child in clock ticks (10 ms): allow a few, whatever the load
    assert used >= 0.3 and live >= used - 0.05, (used, live)
    assert reaped >= used, (used, reaped)  # RUSAGE_CHILDREN has it exactly


def test_a_trials_loader_workers_are_in_its_own_cpu_time(monkeypatch):
    """A real `--data loader --workers 2` trial: the samples around its timed region
    count the workers (alive at the end, persistent), beyond the trial process's own time.
    Many small samples a batch: the workers' work (per sample) is tens of milliseconds, a
    few of /proc's clock ticks, while the model's (per pixel) stays small."""
    seen = []

    def sample(*tree):  # measure passes whose tree it counts (a DDP rank's is its launcher's)
        s = timing.cpu_sample(*tree)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        workers = [p.pid for p in psutil.Process().children()]
        seen.append((s, usage.ru_utime + usage.ru_stime, workers))
        return s

    monkeypatch.setattr(measure, "cpu_sample", sample)
    spec = make_spec(steps=30, batch_size=128, image_size=16, axes={"threads": 1, "data": "loader", "workers": 2})
    record = run_trial(spec).to_json()
    assert record["status"] == "ok", record["error"]
    (start, self_start, _), (end, self_end, workers) = seen
    assert len(workers) >= 2  # the persistent workers, alive at the end of the region
    workers_s = (end.own_s - start.own_s) - (self_end - self_start)
    assert workers_s > 0, (start, end)
    wall = end.wall - start.wall
    assert record["busy"]["own_cpu_cores"] == pytest.approx((end.own_s - start.own_s) / wall, abs=2e-3)
    assert record["busy"]["others_cpu_cores"] is not None


# ---- a real sweep on a machine this test makes busy ----------------------------------

# A CPU hog with a bound of its own, should the test die before it kills it.
BURN = "import time\nt = time.time()\nwhile time.time() - t < 120: pass"
# Started through a launcher that exits at once, so the hogs are not this process's
# descendants: they are another job to the guard, as a neighbour's would be.
LAUNCH = (
    "import subprocess, sys\n"
    "for _ in range({n}):\n"
    "    p = subprocess.Popen([sys.executable, '-c', {burn!r}], start_new_session=True,\n"
    "                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "    print(p.pid)\n"
)


@pytest.fixture
def hogs():
    """One stopped CPU hog per usable CPU, outside this process's tree; killed at the end."""
    n = len(timing.usable_cpus())
    if n > 8:
        pytest.skip(f"{n} CPUs: this test starts at most 8 hogs")
    out = subprocess.run([sys.executable, "-c", LAUNCH.format(n=n, burn=BURN)], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    procs = [psutil.Process(p) for p in pids]
    try:
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        assert not set(pids) & {c.pid for c in psutil.Process().children(recursive=True)}
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_a_trial_run_beside_cpu_hogs_is_flagged_and_run_again_once_they_stop(tmp_path, monkeypatch, hogs, capsys):
    """Without --allow-busy. The hogs start at the guard's look before the sweep (taken as
    quiet: the hogs are the load this test is about), and the guard's first busy look after
    the trial, a real one, kills them: what happens follows the test's steps, not a clock.
    What other jobs do after that is not the test's to control: where they keep the machine
    busy through the wait or the rerun, the test skips."""
    results = tmp_path / "r.jsonl"
    real_sample, state = guard.sample, {"hogs": "stopped", "busy_looks_after_trial": 0}

    def records() -> list[dict]:
        return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []

    def look(device, threads, seconds=guard.SAMPLE_S):
        if not records():  # the look before the sweep (test_trust.py tests it): the hogs start
            for p in hogs:
                p.send_signal(signal.SIGCONT)
            state["hogs"] = "running"
            return BusyReport(0.0, 0.5)
        load = real_sample(device, threads, seconds)
        if load.busy:
            state["busy_looks_after_trial"] += 1
            if state["hogs"] == "running":
                for p in hogs:
                    p.kill()
                psutil.wait_procs(hogs, timeout=5)
                state["hogs"] = "killed"
        return load

    monkeypatch.setattr(guard, "sample", look)
    argv = [a for a in QUICK if a != "--allow-busy"]
    argv += [*TIMED_ONLY, "--workloads", "simple_cnn", "--settings", "default", "--repeats", "1", "--threads", "1"]
    argv += ["--steps", "40", "--wait-quiet", "20", "--no-report", "--results", str(results)]
    code = main(["run", *argv])
    out = capsys.readouterr().out
    assert code == 0
    first, *again = records()
    assert first["busy"]["busy"] and first["busy"]["others_cpu_cores"] > first["busy"]["busy_above_cores"], first
    assert first["busy"]["own_cpu_cores"] is not None
    assert state["busy_looks_after_trial"] >= 1 and state["hogs"] == "killed"  # the guard looked, saw them, waited
    assert "ran while the machine was busy" in out
    if not again:
        pytest.skip("other processes kept the machine busy after the hogs were killed: no quiet look to run again")
    assert len(again) == 1 and again[0]["trial_id"] == first["trial_id"]
    if again[0]["busy"]["busy"]:
        pytest.skip(f"other processes used the CPUs during the rerun: {again[0]['busy']}")
    assert again[0]["status"] == "ok"


def test_a_cuda_trial_asks_the_gpu_for_other_processes_and_counts_one_host_thread(monkeypatch):
    """The timed region's CUDA branch, faked on the CPU: another process on the trial's GPU
    makes it busy though the CPUs were quiet; the trial is judged at one host thread."""
    asked = []
    monkeypatch.setattr(
        measure, "gpu_processes", lambda device, own=None, processes=1: asked.append(device) or "4242 python 900MiB"
    )
    samples = iter([CpuSample(0.0, 0.0, 0.0, None), CpuSample(1.0, 0.0, 0.0, None)])
    monkeypatch.setattr(measure, "cpu_sample", lambda *tree: next(samples))
    report = measure._busy(make_spec(device="cuda:1"), next(samples))
    assert asked == ["cuda:1"] and report.busy and not report.cpu_busy
    assert "4242 python" in report.describe()
    assert report.busy_above_cores == round(max(0.25, report.usable_cpus - 1 - 0.5), 2)  # one host thread
    quiet = iter([CpuSample(0.0, 0.0, 0.0, None), CpuSample(1.0, 0.0, 0.0, None)])
    monkeypatch.setattr(measure, "cpu_sample", lambda *tree: next(quiet))
    assert not measure._busy(make_spec(device="cpu"), next(quiet)).busy and asked == ["cuda:1"]  # the CPU asks no GPU
