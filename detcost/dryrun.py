"""`detcost run --dry-run`: the trials a sweep would start (with resume: those still to do),
a rough time for them (learnt from an earlier run on this machine where one is given), and
whether the machine is busy now, run nothing.

Nothing here initialises CUDA: the estimate counts FLOPs on the meta device, the GPU is
named by nvidia-smi, and the look at the machine asks NVML for the GPU's other processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detcost import axes, guard, results
from detcost import env as envmod
from detcost.cluster import tasks_of
from detcost.estimate import Estimate, estimate, learn
from detcost.payloads import BusyReport
from detcost.plan import SweepOptions, new_servers, plan
from detcost.record import TrialRecord, TrialSpec
from detcost.sweep import ok_trial_ids
from detcost.timing import is_cuda


@dataclass(frozen=True)
class DryRun:
    """What a sweep with these options would do, and the machine as it is now."""

    specs: list[TrialSpec]  # the trials it would start, in order
    estimate: Estimate  # by kind, outside the trials, and the figures it assumes (the axes' too)
    gpu: str | None  # the GPU as nvidia-smi names it, on CUDA
    load: BusyReport  # one look at the machine, by the guard's rule
    wait_quiet: float  # how long a run would wait for a busy machine to go quiet
    ray_tasks: int | None = None  # --ray: the Ray tasks the trials make (a round each, and a few more)

    @property
    def trial_ids(self) -> list[str]:
        return [s.trial_id for s in self.specs]


def dry_run(opts: SweepOptions, *, resume: bool = False, estimate_from: Path | None = None) -> DryRun:
    """Plan `opts` (with `resume`, less the trials already `ok` in its results file),
    estimate the time, name the GPU, and look at the machine once. The estimate learns
    from `estimate_from`, an earlier results file (with `resume`, the results file itself
    where none is given): the process wall times its trials took on this machine."""
    specs = plan(opts)
    if resume and opts.results.exists():
        done = ok_trial_ids([TrialRecord.from_json(r) for r in results.iter_records(opts.results)])
        specs = [s for s in specs if s.trial_id not in done]
    gpu = gpu_name(opts.device) if is_cuda(opts.device) else None
    source = estimate_from or (opts.results if resume and opts.results.exists() else None)
    learned = learn(results.load_records(source), str(source), opts.device, gpu) if source else None
    est = estimate(specs, opts.size_preset, new_servers(opts, specs), learned)
    load = guard.sample(opts.device, axes.host_threads(opts.axes, opts.device))
    tasks = len(tasks_of(specs)) if opts.ray is not None else None
    return DryRun(specs, est, gpu, load, opts.wait_quiet, tasks)


def gpu_name(device: str) -> str | None:
    """The name of `device` as nvidia-smi lists it (no CUDA in this process), if it does."""
    names, index = envmod.gpu_names(), int(device.partition(":")[2] or 0)
    return names[index] if index < len(names) else None
