"""One trial of any kind, run in this process: apply the trial's process state (axes,
device, setting), read the flags back, hand over to the kind's runner, and return one
record; whatever the runner raises becomes the record's status.

`child_main` is what the sweep starts in a fresh process; `run_trial` is the same work
in the current process (tests and benchmarks call it directly). The kinds (`measure`,
`audit`, `profile`) are peers below this module: none of them imports another.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from detcost import audit, cudnn_log, ddp, measure, profile
from detcost import env as envmod
from detcost.errors import is_out_of_memory
from detcost.record import Kind, Status, TrialParts, TrialRecord, TrialSpec, one_line
from detcost.settings import get_setting, read_flags, set_environ
from detcost.timing import is_cuda
from detcost.train import trial_state

RUNNERS: dict[Kind, Callable[[TrialSpec, Path | None], TrialParts]] = {
    Kind.TIMED: measure.run,
    Kind.AA: measure.run,
    Kind.SEED: measure.run,
    Kind.AUDIT: audit.run,
    Kind.PROFILED: profile.run,
}


def failure_kind(exc: BaseException) -> Status:
    msg = str(exc)
    if is_out_of_memory(exc):
        return Status.OOM
    if "does not have a deterministic implementation" in msg:
        return Status.UNSUPPORTED
    return Status.ERROR


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_trial(
    spec: TrialSpec, results_dir: Path | str | None = None, machine: dict | None = None, *, joined: bool = False
) -> TrialRecord:
    """Run one trial in this process and return its record; failures become a status.

    `machine` is the sweep's fingerprint of this machine, taken once in the parent; the
    trial adds only what can differ per trial (its thread count and environment). A DDP
    trial launches its ranks, or with `joined` this process is one rank of a job that
    torchrun started (`detcost rank`): rank 0's record holds the measurements."""
    record = TrialRecord(spec, started_at=now())
    t0 = time.perf_counter()
    results_dir = Path(results_dir) if results_dir is not None else None
    threads = None
    try:
        if ddp.world_size(spec) is None:
            threads, record.flags, record.parts = in_state(spec, results_dir)
        else:  # one DDP job, through torch's launcher: each rank runs `in_state`, rank 0's is the record's
            start = ddp.join if joined else ddp.launch
            threads, record.flags, record.parts = start(spec, results_dir, before_cuda, in_state)
        record.status, record.error = record.outcome.judge() if record.outcome else (Status.OK, None)
    except Exception as exc:  # recorded as a finding; the sweep goes on
        record.fail(failure_kind(exc), one_line(exc))
    record.wall_s = time.perf_counter() - t0
    record.finished_at = now()
    try:
        machine = machine if machine is not None else envmod.fingerprint(spec.device)
        record.env = envmod.for_trial(machine, spec.device, threads)
    except Exception as exc:  # the record still goes back, with the sweep's fingerprint and why
        record.env = machine
        if record.ok:
            record.fail(Status.ERROR, f"fingerprint: {one_line(exc)}")
    return record


def in_state(spec: TrialSpec, results_dir: Path | None) -> tuple[int, dict, TrialParts]:
    """The trial's body under its process state: its thread count (the state is restored
    on leaving), the flags read back, and what the kind's runner measured. A DDP trial's
    ranks each run it (`ddp.launch`)."""
    with trial_state(spec):
        threads = torch.get_num_threads()
        return threads, read_flags(), RUNNERS[spec.kind](spec, results_dir)


CUDA_AT_START = "CUDA was initialised before the trial process started"

# A trial's layout pad (see detcost/isolation.py for why). A heap pad below glibc's smallest
# mmap threshold (128 KiB) comes from the main heap and moves every later small and medium
# allocation; 64 KiB spans sixteen 4 KiB pages, so every offset that aliases in the caches
# (address mod 4096) is reachable. The environment pad moves the initial stack of a
# process exec'd with it (a new forkserver, a spawned trial), as Mytkowicz et al. moved it.
HEAP_PAD_MAX = 64 * 1024
ENV_PAD_MAX = 4096
ENV_PAD_VAR = "DETCOST_LAYOUT_PAD"


@dataclass(frozen=True)
class Layout:
    """What a trial process does to its own memory layout before anything else: bytes of
    heap it takes and keeps for the trial, and the length of an environment variable it
    sets. Drawn by the parent from the sweep's seed, and stored in the record."""

    heap_pad: int = 0
    env_pad: int = 0

    @classmethod
    def draw(cls, rng: random.Random) -> Layout:
        return cls(heap_pad=16 * rng.randrange(HEAP_PAD_MAX // 16), env_pad=rng.randrange(ENV_PAD_MAX))

    def apply(self) -> bytearray:
        """Set the variable and take the heap; keep the returned block alive for the trial."""
        if self.env_pad:
            os.environ[ENV_PAD_VAR] = "x" * self.env_pad
        return bytearray(self.heap_pad)

    def to_json(self) -> dict:
        return {"heap_pad": self.heap_pad, "env_pad": self.env_pad}


def child_main(
    spec_dict: dict, environ: dict, results_dir: str | None, machine: dict | None, conn, layout: dict | None = None
) -> None:
    """Entry point of a trial process: move its layout as the parent drew it (first, so
    that everything the trial allocates lands after the pad), set the environment the
    parent chose (before anything touches CUDA), run the trial, send the record back.
    Ctrl-C is the parent's to handle: it stops the sweep and kills this process, which so
    never prints a traceback."""
    # Ctrl-C first: a terminal's SIGINT reaches this process's group until setpgid below
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pad = Layout(**layout).apply() if layout else None  # held until the trial ends
    os.setpgid(0, 0)  # a process group of its own: the parent kills it with its DataLoader workers
    spec = TrialSpec.from_dict(spec_dict)
    # The invariant forked trials rest on, checked in every one: no CUDA before the fork
    # (is_initialized() is False in a child forked from a process that used CUDA, which
    # torch marks as a bad fork instead).
    if torch.cuda.is_initialized() or torch.cuda._is_in_bad_fork():
        record = failure_record(spec, Status.ERROR, CUDA_AT_START, machine)
    else:
        job_before_cuda(spec)
        set_environ(environ.items())
        record = run_trial(spec, results_dir, machine)
    conn.send(record.to_json())
    conn.close()
    del pad


def before_cuda(spec: TrialSpec) -> None:
    """What a trial process (a DDP trial's ranks too) does before anything touches CUDA: a
    timed CUDA trial lists the GPU's compute processes, which its busy guard judges
    against at the end of its timed region (where NVML may list this process under a host
    pid it cannot tell as its own)."""
    if RUNNERS[spec.kind] is measure.run and is_cuda(spec.device):
        envmod.remember_gpu_processes(spec.device)


def job_before_cuda(spec: TrialSpec) -> None:
    """`before_cuda` for every GPU of the trial's job: a DDP trial's process lists each
    rank's GPU before it forks the ranks, which keep that list (listed in a rank, a
    sibling rank that started CUDA first would be on it)."""
    for rank in range(ddp.world_size(spec) or 1):
        before_cuda(ddp.on_rank(spec, rank))


def trial_environ(spec: TrialSpec, results_dir: Path | None = None) -> dict:
    """The environment variables the parent sets for this trial's process: the setting's
    (CUBLAS_WORKSPACE_CONFIG) and, for a profiled trial on CUDA whose setting uses cuDNN,
    the cuDNN log's (which spawn the trial: `cudnn_log.start_environ`)."""
    setting = get_setting(spec.setting)
    logs = cudnn_log.cudnn_log_environ(spec, results_dir) if setting.cudnn_enabled else {}
    return {**dict(setting.env), **logs}


def spawned_for_cudnn_log(spec: TrialSpec) -> bool:
    """Whether the trial starts spawned, not forked, for cuDNN's API log (what
    `trial_environ` then asks for: `cudnn_log.start_environ`)."""
    return get_setting(spec.setting).cudnn_enabled and cudnn_log.logs_cudnn(spec)


def failure_record(spec: TrialSpec, status: Status, error: str, machine: dict | None = None) -> TrialRecord:
    """A record the parent writes for a trial whose process produced none (crash, timeout)."""
    return TrialRecord(spec, started_at=now(), env=machine).fail(status, error)
