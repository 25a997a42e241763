"""How a sweep's trials run, behind one interface (`Executor`): one after another here, each
forked from a forkserver of this sweep's (`Serial`), or a round per Ray task on a Ray
cluster (`OnRay`, `detcost.cluster`). Either hands each record to the sweep as it arrives
(`keep`), gives each trial the FLOPs counted so far (`record.FlopsCache`) and its memory
layout (`Layouts`), starts nothing past --max-time (`Clock`) and shows its progress
(`Progress`); the sweep's runner (`detcost.sweep`) holds one of them and does not ask which.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from detcost import axes
from detcost.errors import HarnessError
from detcost.guard import SweepGuard
from detcost.isolation import Layout, new_server, run_isolated, start_method
from detcost.payloads import BusyReport
from detcost.plan import SweepOptions
from detcost.record import FlopsCache, TrialRecord, TrialSpec
from detcost.rounds import RoundServers
from detcost.trial import CUDA_AT_START

if TYPE_CHECKING:
    from detcost.cluster import Cluster, RaySummary, Task


class Clock:
    """The sweep's time since it started, against --max-time: no trial starts past it."""

    def __init__(self, max_time: float | None) -> None:
        self.max_time, self.t0 = max_time, time.monotonic()

    def out_of_time(self) -> bool:
        return self.max_time is not None and time.monotonic() - self.t0 > self.max_time

    def left(self) -> float | None:
        """The seconds --max-time leaves (None without it)."""
        return None if self.max_time is None else max(0.0, self.max_time - (time.monotonic() - self.t0))


class Progress:
    """The sweep's progress bar: the trials to run, the one running, a pause for a busy
    machine, and what --decide or --precision is adding rounds for."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="trial", desc="detcost", disable=not enabled, dynamic_ncols=True)

    def add(self, trials: int) -> None:
        self.bar.total += trials
        self.bar.refresh()

    def running(self, what: str) -> None:
        self.bar.set_postfix_str(what, refresh=True)

    def done(self) -> None:
        self.bar.update(1)

    def paused(self, load: BusyReport, waited: float) -> None:
        self.bar.set_description_str(f"paused: machine busy ({waited:.0f} s)")
        self.bar.set_postfix_str(load.describe(), refresh=True)

    def resumed(self) -> None:
        self.bar.set_description_str("detcost")

    def note_open(self, undecided: int | None, rounds: int) -> None:
        shown = "every price" if undecided is None else f"{undecided} undecided price(s)"
        self.bar.set_description_str(f"detcost (--decide: {shown}, rounds to {rounds})")

    def note_widest(self, widest: float, target: float) -> None:
        shown = "no interval yet" if widest == float("inf") else f"±{widest:.1%}"
        self.bar.set_description_str(f"detcost (widest {shown}, target ±{target:.1%})")

    def close(self) -> None:
        self.bar.close()


class Layouts:
    """The sweep's memory layouts (--layout, `isolation`): under `random` a heap and
    environment pad drawn for every trial and a new forkserver for each round (here
    `rounds.RoundServers`; on Ray each task, a round, starts its own from a seed drawn
    here); under `fixed` neither. All drawn from the sweep's run id and seed, so a sweep's
    layouts can be drawn again."""

    def __init__(self, opts: SweepOptions, method: str) -> None:
        self.varied = opts.layout_varied
        self.name = f"{opts.run_id}:{opts.seed}"
        self.rng = random.Random(f"{self.name}:layout")
        self.servers = RoundServers(self.varied, method)

    def for_trial(self, spec: TrialSpec) -> Layout | None:
        """A trial's pads, after a new forkserver where the trial opens a round."""
        if not self.varied:
            return None
        if self.servers.starts(spec):
            new_server(self.rng)
        return Layout.draw(self.rng)

    def for_task(self, trials: int, task: int) -> tuple[list[Layout | None], str | None]:
        """The pads of a Ray task's trials, and the seed of the pad of its forkserver."""
        pads = [Layout.draw(self.rng) if self.varied else None for _ in range(trials)]
        return pads, f"{self.name}:server:{task}" if self.varied else None


class Executor:
    """Runs a sweep's trials: each record handed to `keep` as it arrives (appended to the
    results file there), none started past --max-time."""

    def __init__(
        self,
        opts: SweepOptions,
        machine: dict,
        keep: Callable[[TrialRecord], TrialRecord],
        flops: FlopsCache,
        guard: SweepGuard,
        clock: Clock,
        progress: Progress,
    ) -> None:
        self.opts, self.machine, self.keep, self.flops = opts, machine, keep, flops
        self.guard, self.clock, self.progress = guard, clock, progress
        self.method = start_method(opts.start_method, opts.device)
        self.layouts = Layouts(opts, self.method)

    def run(self, specs: list[TrialSpec]) -> bool:
        """Run `specs`; True if --max-time stopped it first."""
        raise NotImplementedError

    def rounds_at_once(self) -> int:
        """How many rounds run at once (what --precision adds at each step)."""
        return 1

    def summary(self) -> RaySummary | None:
        """What the sweep's summary says of where the rounds ran (on Ray)."""
        return None

    def close(self) -> None:
        """Let go of what the executor holds (a Ray cluster)."""


class Serial(Executor):
    """One trial after another, each in a fresh process (`isolation.run_isolated`); a trial
    that ran while the machine was busy runs again at once, once the guard finds it quiet."""

    def run(self, specs: list[TrialSpec]) -> bool:
        for spec in specs:
            if self.clock.out_of_time():
                return True
            self.progress.running(spec.trial_id)
            record = self._one(spec)
            _stop_if_cuda_at_start(record, "the forkserver or this process")
            if self.guard.again_at_once(record, self.clock.out_of_time()):
                self._one(spec)  # run again now that the machine is quiet
            self.progress.done()
        return False

    def _one(self, spec: TrialSpec) -> TrialRecord:
        spec = self.flops.given(spec)
        return self.keep(_run_one(self.opts, spec, self.machine, self.layouts.for_trial(spec)))


class OnRay(Executor):
    """--ray: the trials as Ray tasks (a round each), run in parallel as the cluster holds
    them (`detcost.cluster`), the cluster joined (or started) at the first trial. A busy
    trial is not run again at once (its neighbours are the sweep's own rounds): the sweep
    runs those at the end, the machine quiet."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cluster: Cluster | None = None
        self.tasks = 0  # the tasks submitted, each with a forkserver of its own
        self.threads = axes.host_threads(self.opts.axes, self.opts.device)  # what a round's cores are counted in

    def run(self, specs: list[TrialSpec]) -> bool:
        from detcost.cluster import tasks_of

        def arrived(record: TrialRecord) -> None:
            self.keep(record)
            self.progress.done()
            _stop_if_cuda_at_start(record, "a Ray worker")

        self.progress.running(f"on Ray ({self.opts.ray})")
        return self._connected().run(tasks_of(specs), self._task, arrived, self.clock.out_of_time, self.machine)

    def rounds_at_once(self) -> int:
        """As many rounds as the cluster holds."""
        return self._connected().slots(self.threads)

    def _connected(self) -> Cluster:
        """The cluster, joined (or started) at the first trial, after the guard's first look."""
        from detcost.cluster import Cluster

        if self.cluster is None:
            self.cluster = Cluster.connect(self.opts.ray, self.opts.device)
        return self.cluster

    def _task(self, specs: list[TrialSpec]) -> Task:
        """A Ray task of `specs`, prepared as it is submitted: the FLOPs learned so far, the
        layouts drawn from the sweep's seed, a forkserver of its own, the time left."""
        from detcost.cluster import Task, task_threads

        specs = [self.flops.given(s) for s in specs]
        self.tasks += 1
        left = self.clock.left()
        layouts, server_seed = self.layouts.for_task(len(specs), self.tasks)
        return Task(
            specs=specs,
            layouts=layouts,
            server_seed=server_seed,
            device=self.opts.device,
            start_method=self.opts.start_method,
            timeout=self.opts.timeout,
            results_dir=str(self.opts.results.parent.resolve()),
            seconds_left=left,
            threads=task_threads(specs, self.opts.device),
        )

    def summary(self) -> RaySummary | None:
        return self.cluster.summary() if self.cluster is not None else None

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()


def _stop_if_cuda_at_start(record: TrialRecord, who: str) -> None:
    """A trial that found CUDA initialised before it started stops the sweep: every later
    trial would start tainted too."""
    if record.error == CUDA_AT_START:
        raise HarnessError(f"{record.trial_id}: {CUDA_AT_START} ({who} used CUDA); the sweep stopped")


def _run_one(opts: SweepOptions, spec: TrialSpec, machine: dict, layout: Layout | None) -> TrialRecord:
    method = start_method(opts.start_method, opts.device)
    return run_isolated(
        spec, method=method, timeout=opts.timeout, results_dir=opts.results.parent, machine=machine, layout=layout
    )
