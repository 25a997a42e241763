"""Rounds on a Ray cluster (`detcost run --ray [ADDRESS]`): one Ray task per round.

A round (one workload at one value of every axis, every label once, back to back) is what
a price pairs, so it never leaves one GPU (or, on the CPU, one set of cores): each round is
one Ray task, asking for one GPU (`num_gpus=1`) or for the CPUs its trials' threads use, and
rounds run in parallel as far as the cluster holds them. Ray does the scheduling, across
the GPUs of a box or the nodes of a cluster; detcost schedules nothing itself.

Inside the task every trial is still a fresh process, forked from a forkserver the task
starts anew (`isolation`), so a task that lands on a reused Ray worker inherits nothing.
Before its first trial the task checks what Ray gave it and takes its place (`placement`:
the GPU Ray assigned, cores of its own it pins itself to). Each record streams back to the
sweep's parent as its trial ends (a Ray streaming generator) and is appended to the one
results file there, so a parent killed mid-sweep loses only the trials still running, and
`--resume` runs those. A task that dies (its worker or node lost) has its remaining trials
recorded as crashes, with Ray's reason, and the sweep goes on.

Ray is an optional extra (`pip install 'detcost[ray]'`); nothing here imports it at module
level, so the rest of detcost, and this module's checks, run without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from detcost import axes
from detcost import env as envmod
from detcost.errors import UsageError
from detcost.isolation import Layout, new_server, run_isolated, start_method, stop_server
from detcost.placement import place
from detcost.record import FlopsCache, Status, TrialRecord, TrialSpec
from detcost.rounds import Round
from detcost.timing import is_cuda, usable_cpus
from detcost.trial import failure_record

LOCAL = "local"  # `--ray` with no address: a Ray cluster of this machine, started for the sweep
RAY_MISSING = "--ray needs Ray: pip install 'detcost[ray]'"
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # records are small; Ray's default takes 30% of RAM


def check_available() -> None:
    """A one-line refusal, before any trial, where Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError(RAY_MISSING)


def check_options(device: str, nproc: list[int]) -> None:
    """What `--ray` cannot run, refused in one line: a DDP trial needs several GPUs (or
    processes) of one box, not the one a round gets; a round takes whichever GPU Ray gives
    it, so `--device cuda:N` cannot hold. `device` is the one the user asked for (auto,
    cpu, cuda, cuda:N): resolved, auto and cuda are cuda:0 on a GPU box."""
    if any(n > 1 for n in nproc):
        raise UsageError(
            "--ray runs each round on one GPU (or cores of its own); --nproc's DDP trials need a box each: "
            "run --nproc without --ray"
        )
    if is_cuda(device) and device != "cuda":
        raise UsageError(f"--ray gives each round the GPU Ray assigns it; use --device cuda, not {device}")


def task_key(spec: TrialSpec) -> tuple:
    """The task a trial runs in: a round's trials of one group (workload, axis values and
    sizes) share one; the audit, profiled and seed trials share one per kind and workload."""
    rnd = Round.of(spec)
    if rnd is not None:
        sizes = (spec.batch_size, spec.image_size, spec.steps, spec.warmup)
        return (rnd, spec.workload, json.dumps(spec.axes, sort_keys=True, default=str), sizes)
    return (str(spec.kind), spec.workload)


def tasks_of(specs: list[TrialSpec]) -> list[list[TrialSpec]]:
    """`specs` as the tasks that run them, each in plan order, in order of their first trial."""
    tasks: dict[tuple, list[TrialSpec]] = {}
    for spec in specs:
        tasks.setdefault(task_key(spec), []).append(spec)
    return list(tasks.values())


def task_threads(specs: list[TrialSpec], device: str) -> int:
    """The host threads the task's trials keep busy: the CPUs it asks Ray for (on the CPU)."""
    return max(axes.host_threads({k: [v] for k, v in s.axes.items()}, device) for s in specs)


def _alive(nodes: list[dict]) -> list[dict]:
    """The resources of each node of `ray.nodes()` that is alive."""
    return [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]


def gpu_share(nodes: list[dict]) -> int:
    """The cores a GPU round is pinned to: the fewest CPUs per GPU of any node with GPUs,
    so every node can hold a round on each of its GPUs."""
    alive = _alive(nodes)
    shares = [int(r.get("CPU", 0) // r["GPU"]) for r in alive if r.get("GPU")]
    return max(1, min(shares, default=1))


def slots(nodes: list[dict], device: str, threads: int) -> int:
    """How many rounds the cluster runs at once: its GPUs on CUDA; on the CPU, each node's
    CPUs divided by a round's threads. None at all is refused in one line."""
    alive = _alive(nodes)
    if is_cuda(device):
        gpus = sum(int(r.get("GPU", 0)) for r in alive)
        if not gpus:
            raise UsageError("--ray --device cuda: the Ray cluster has no GPU")
        return gpus
    per_node = [int(r.get("CPU", 0) // threads) for r in alive]
    if not any(per_node):
        most = max((int(r.get("CPU", 0)) for r in alive), default=0)
        raise UsageError(
            f"--ray: a round at --threads {threads} needs {threads} cores of its own, and no node of the Ray "
            f"cluster has more than {most}; lower --threads"
        )
    return sum(per_node)


@dataclass
class Task:
    """What one Ray task runs: its trials in order, each with its layout, and how its
    forkserver starts (a new one with a pad drawn from `server_seed`, or a plain new one)."""

    specs: list[TrialSpec]
    layouts: list[Layout | None]
    server_seed: str | None
    device: str
    start_method: str
    timeout: float
    results_dir: str
    seconds_left: float | None = None  # --max-time: no trial starts after this many seconds
    threads: int = 1

    def to_json(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("specs", "layouts")}
        return {
            "specs": [s.to_dict() for s in self.specs],
            "layouts": [lay.to_json() if lay else None for lay in self.layouts],
            **plain,
        }

    @classmethod
    def from_json(cls, d: dict) -> Task:
        return cls(
            specs=[TrialSpec.from_dict(s) for s in d["specs"]],
            layouts=[Layout(**lay) if lay else None for lay in d["layouts"]],
            **{k: d[k] for k in ("server_seed", "device", "start_method", "timeout", "results_dir")},
            seconds_left=d.get("seconds_left"),
            threads=d.get("threads", 1),
        )


# ---- in the Ray task ----------------------------------------------------------------


def run_task(task: dict, ray_context: dict | None = None) -> Iterator[dict]:
    """The body of a round's Ray task: check and take its place (GPU or cores), start a
    forkserver of its own, run its trials one after another, yield each record's JSON as
    it ends. `ray_context` is what Ray says of the task (`_ray_context`); without it (a
    test), the task runs where it is called."""
    t = Task.from_json(task)
    started = time.monotonic()
    with place(t.device, t.threads, ray_context or {}) as placement:
        machine = envmod.fingerprint(t.device, gpu_properties=False)  # this node's, not the parent's
        method = start_method(t.start_method, t.device)
        if method == "forkserver":  # a server of this task's own (its pad: `executors.Layouts`), after the pinning
            new_server(random.Random(t.server_seed)) if t.server_seed is not None else stop_server()
        results_dir = _results_dir(t.results_dir)
        flops = FlopsCache()  # counted once per task, as the serial sweep counts once per sweep
        for spec, layout in zip(t.specs, t.layouts):
            if t.seconds_left is not None and time.monotonic() - started > t.seconds_left:
                return  # --max-time: the parent records nothing for these; --resume runs them
            spec = flops.given(spec)
            record = run_isolated(
                spec, method=method, timeout=t.timeout, results_dir=results_dir, machine=machine, layout=layout
            )
            flops.learn(record)
            record.placement = placement
            yield record.to_json()


def _results_dir(path: str) -> str | None:
    """Where the trials' sidecars go: the results file's folder on the node that runs
    them (created there on another node), or none where it cannot be made."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return None


# ---- in the sweep's parent ------------------------------------------------------------


@dataclass(frozen=True)
class RaySummary:
    """Where a sweep's rounds ran on Ray: the cluster's address, the tasks submitted, the
    most that ran at once, and the cluster's nodes alive at the end (None: not known)."""

    address: str
    tasks: int
    at_once: int
    nodes: int | None

    def to_json(self) -> dict:
        return {"address": self.address, "tasks": self.tasks, "at_once": self.at_once, "nodes": self.nodes}


@dataclass
class Cluster:
    """The Ray cluster a sweep runs its rounds on: connected (or started, for `LOCAL`) when
    made, shut down by `close` where this sweep started it."""

    address: str
    device: str
    started_here: bool = False
    running: dict = field(default_factory=dict)  # generator -> (Task, trial ids still to come)
    remote: object = None  # `_ray_task` as Ray's remote function, made once
    width: int = 0  # the most rounds it ran at once
    submitted: int = 0

    @classmethod
    def connect(cls, address: str, device: str) -> Cluster:
        check_available()
        import ray

        kwargs = {"logging_level": "ERROR", "log_to_driver": False}
        if address == LOCAL:  # always a new cluster of this box ("local"), never one found running
            kwargs.update(
                num_cpus=len(usable_cpus()),
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                include_dashboard=False,
            )
        else:
            check_reachable(address)  # Ray itself retries an address that answers nothing for minutes
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--ray {address}: Ray could not start or join the cluster: {first}") from None
        return cls(address, device, started_here=address == LOCAL)

    def slots(self, threads: int, nodes: list[dict] | None = None) -> int:
        import ray

        return slots(ray.nodes() if nodes is None else nodes, self.device, threads)

    def run(
        self,
        tasks: list[list[TrialSpec]],
        prepare: Callable[[list[TrialSpec]], Task],
        on_record: Callable[[TrialRecord], None],
        out_of_time: Callable[[], bool],
        machine: dict | None = None,
    ) -> bool:
        """Run every task, as many at once as the cluster holds, each prepared just before it
        is submitted (so it learns from the records that came before); `on_record` is told
        of every record as it arrives, a lost task's trials as crashes. True if --max-time
        kept a task from starting."""
        import ray

        queue, nodes = list(tasks), ray.nodes()
        width = self.slots(max(task_threads(t, self.device) for t in tasks), nodes) if tasks else 1
        share = gpu_share(nodes) if is_cuda(self.device) else None
        self.width = max(self.width, min(width, len(tasks)))
        stopped = False
        try:
            while queue or self.running:
                while queue and len(self.running) < width:
                    if out_of_time():
                        stopped, queue = True, []
                        break
                    task = prepare(queue.pop(0))
                    if share is not None:  # a GPU each, and that GPU's share of its node's cores
                        task.threads = share
                    self._submit(task)
                if not self.running:
                    break
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=None)
                for gen in ready:
                    self._receive(gen, on_record, machine)
        finally:
            self._cancel()
        return stopped

    def _submit(self, task: Task) -> None:
        import ray

        options = {"num_cpus": task.threads} | ({"num_gpus": 1} if is_cuda(self.device) else {})
        if self.remote is None:  # a task that fails is recorded, never run again behind the sweep's back
            self.remote = ray.remote(max_retries=0)(_ray_task)
        self.running[self.remote.options(**options).remote(task.to_json())] = (task, [s.trial_id for s in task.specs])
        self.submitted += 1

    def _receive(self, gen, on_record, machine: dict | None) -> None:
        import ray

        task, waiting = self.running[gen]
        try:
            record = TrialRecord.from_json(ray.get(next(gen)))
        except StopIteration:  # the task ran all it would (--max-time may have stopped it early)
            del self.running[gen]
            return
        except Exception as exc:  # noqa: BLE001 - the task (worker, node) is lost: its trials are findings
            del self.running[gen]
            why = f"the Ray task running it was lost: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            for spec in task.specs:
                if spec.trial_id in waiting:
                    on_record(failure_record(spec, Status.CRASH, why, machine))
            return
        waiting.remove(record.trial_id)
        on_record(record)

    def _cancel(self) -> None:
        """Whatever still runs (Ctrl-C, an error) is cancelled: Ray interrupts the task, which
        kills its trial process as the serial sweep's Ctrl-C does."""
        import ray

        for gen in list(self.running):
            with contextlib.suppress(Exception):
                ray.cancel(gen)
        self.running.clear()

    def summary(self) -> RaySummary:
        """What the sweep's summary says of the cluster: where, how many tasks, how wide."""
        import ray

        nodes = sum(1 for n in ray.nodes() if n.get("Alive", True)) if ray.is_initialized() else None
        return RaySummary(self.address, self.submitted, self.width, nodes)

    def close(self) -> None:
        import ray

        if ray.is_initialized():  # a cluster started here stops; one joined is only left
            ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT address whose port takes no connection is refused in one line, at once."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _ray_task(task: dict):
    """The Ray task: `run_task` with what Ray says of where it runs."""
    import ray

    ctx = ray.get_runtime_context()
    context = {"ray_node": ctx.get_node_id()[:16], "ray_task": ctx.get_task_id()[:16]}
    if is_cuda(task["device"]):
        context["gpu_ids"] = ray.get_gpu_ids()
    yield from run_task(task, context)
