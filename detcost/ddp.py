"""A DDP trial (the `nproc` axis): one DistributedDataParallel job of N ranks, started by
torch's own elastic launcher (`elastic_launch`, what `torchrun --standalone` runs) from
inside the trial's process, which stays the root of the trial's process tree (so the
sweep's timeout kills the ranks with it, `isolation.kill`).

Each rank is a process forked by the launcher (`START_METHOD`): it joins the process group (gloo on the CPU, nccl on
CUDA, one process per GPU), and runs the trial's own body, the one-process trial's
(`trial.in_state`: the setting, the axes, the kind's runner; `nproc`'s hooks wrap the
model in DDP and shard the batches). Rank 0's parts are the record's; every rank's final
parameter hash is compared. A rank that fails ends the job (no restarts): the launcher
stops the others and `launch` raises `RankFailed` naming the rank and its error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from detcost import compat
from detcost.cudnn_log import rank_environ
from detcost.payloads import Distributed
from detcost.record import TrialParts, TrialSpec, one_line
from detcost.timing import is_cuda

# How the launcher starts the ranks: forked from the trial's process, which has imported
# torch (from the forkserver) but run no op and never touched CUDA on this path
# (`trial.run_trial` leaves the process state to the ranks), so a rank starts as a
# one-process trial does, with the trial's layout pad; spawned, each would import torch
# again (measured on a 2-core CPU, quick sizes: ~0.45 s a trial forked, ~4.5 s spawned).
START_METHOD = "fork"
SHUTDOWN_S = 5  # how long the launcher lets the other ranks stop after one failed, before SIGKILL


class RankFailed(RuntimeError):
    """A rank of a DDP trial raised or died; the message names it and says why."""


def world_size(spec: TrialSpec) -> int | None:
    """The DDP world size the trial runs at (None: one process, no launcher)."""
    return spec.axes.get("nproc")


def backend(device: str) -> str:
    return "nccl" if is_cuda(device) else "gloo"


def on_rank(spec: TrialSpec, local_rank: int) -> TrialSpec:
    """The spec as a rank runs it: on CUDA, the GPU of its local rank (counted from the
    spec's own index); on the CPU, the spec itself. The one place a rank picks its device."""
    if not is_cuda(spec.device):
        return spec
    import torch

    first = torch.device(spec.device).index or 0
    return dataclasses.replace(spec, device=f"cuda:{first + local_rank}")


def launch(spec: TrialSpec, results_dir: Path | None, prepare: Callable, body: Callable) -> tuple:
    """Run the trial as a DDP job of `world_size(spec)` ranks through torch's launcher:
    each rank calls `prepare(spec)` before anything touches CUDA, joins the group, and
    returns `body(spec, results_dir)`, a (threads, flags, parts) triple (ranks other than 0
    get no results directory). Returns rank 0's triple, its parts with the job's
    `Distributed` and the world size in its timing."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = world_size(spec)
    # LaunchConfig asks torch.cuda.is_available() in this process, before it forks the
    # ranks: only the NVML-based check leaves fork usable (without it, every rank fails
    # "Cannot re-initialize CUDA in forked subprocess"). Set here, not inherited from the
    # CLI's parent: a --ray worker or a library caller starts trials without it.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    _quiet_launcher()
    with tempfile.TemporaryDirectory(prefix="detcost-ddp-") as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=n,
            run_id=f"detcost-{uuid.uuid4().hex[:12]}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone picks
            max_restarts=0,
            monitor_interval=0.05,
            start_method=START_METHOD,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
            **compat.launch_shutdown(SHUTDOWN_S),  # torch 2.12+; 30 s before it
        )
        try:
            ranks = elastic_launch(config, _rank_main)(spec.to_dict(), results_dir, prepare, body, logs)
        except ChildFailedError as exc:
            raise RankFailed(_failure(exc, Path(logs))) from None
    return _with_job(spec, ranks[0])


def join(spec: TrialSpec, results_dir: Path | None, prepare: Callable, body: Callable) -> tuple:
    """Be one rank of a job that `torchrun` started (`detcost rank`, across machines too):
    the environment holds RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous. Returns what
    `launch` returns on rank 0; on every other rank, its thread count and flags and no parts."""
    got = _rank(spec.to_dict(), results_dir, prepare, body)
    return _with_job(spec, got) if got["result"] is not None else (None, None, TrialParts())


def _with_job(spec: TrialSpec, rank0: dict) -> tuple:
    """Rank 0's (threads, flags, parts), its parts with the job's `Distributed` and the
    world size in its timing."""
    threads, flags, parts = rank0["result"]
    job = Distributed(
        backend=backend(spec.device),
        nccl_version=rank0["nccl_version"],
        nccl_env=rank0["nccl_env"],
        rank_params_sha256=tuple(rank0["rank_params_sha256"]),
    )
    n = len(job.rank_params_sha256)
    timing = dataclasses.replace(parts.timing, world_size=n) if parts.timing else None
    return threads, flags, dataclasses.replace(parts, timing=timing, distributed=job)


def _quiet_launcher() -> None:
    """The launcher's loggers in this process at CRITICAL: a failed rank's traceback would
    go to the sweep's terminal, where a trial prints nothing (its error is in the record)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _failure(exc, logs: Path) -> str:
    """The job's failure as one line: the rank that failed first and its error, and the
    ranks that failed with it. A rank that raised wrote when and what (`_rank_main`);
    one that died without a word (a signal, an exit) is the launcher's `ProcessFailure`.
    The others' errors follow from the first's (gloo: "Connection closed by peer"), and the
    launcher's timestamps, in whole seconds, cannot tell which came first."""
    raised = [json.loads(f.read_text()) for f in sorted(logs.glob(f"*{RAISED}"))]
    failed = sorted({*exc.failures, *(r["rank"] for r in raised)})
    if raised:
        first = min(raised, key=lambda r: r["at"])
        rank, line = first["rank"], first["error"]
    else:
        rank, failure = exc.get_first_failure()
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        line = str(message).strip().splitlines()[0] if message else "no message"
    others = [r for r in failed if r != rank]
    also = f" (rank{'s' * (len(others) > 1)} {', '.join(map(str, others))} stopped with it)" if others else ""
    return f"rank {rank}: {line}{also}"


RAISED = ".raised.json"  # what a rank that raised writes into the launcher's log folder


def _rank_main(spec_dict: dict, results_dir: Path | None, prepare: Callable, body: Callable, logs: str) -> dict:
    """One rank, in a process the launcher started with its RANK, LOCAL_RANK, WORLD_SIZE and
    rendezvous in the environment. If it raises, it writes the error and when (the system's
    monotonic clock, the same in every rank) into `logs` first, for `_failure`."""
    try:
        return _rank(spec_dict, results_dir, prepare, body)
    except BaseException as exc:
        rank = int(os.environ["RANK"])
        said = {"rank": rank, "at": time.monotonic(), "error": one_line(exc)}
        Path(logs, f"{rank}{RAISED}").write_text(json.dumps(said))
        raise


def _rank(spec_dict: dict, results_dir: Path | None, prepare: Callable, body: Callable) -> dict:
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    os.environ.update(rank_environ(rank))  # a profiled trial's cuDNN log, a file per rank
    spec = on_rank(TrialSpec.from_dict(spec_dict), local_rank)
    prepare(spec)
    if is_cuda(spec.device):
        torch.cuda.set_device(spec.device)
    dist.init_process_group(backend(spec.device))
    try:
        threads, flags, parts = body(spec, results_dir if rank == 0 else None)
        hashes = [None] * dist.get_world_size()  # every rank's final parameters, in rank order
        dist.all_gather_object(hashes, parts.outcome.params_sha256 if parts.outcome else None)
    finally:
        dist.destroy_process_group()
    cuda = is_cuda(spec.device)
    return {
        "result": (threads, flags, parts) if rank == 0 else None,
        "rank_params_sha256": hashes,
        "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")} if cuda else {},
    }
