"""Where a Ray task runs a round (`detcost.cluster`), checked before its first trial, since
users report both going wrong: on CUDA, that `CUDA_VISIBLE_DEVICES` names the one GPU Ray
assigned (a stale value is replaced before the forkserver that passes it on starts); and
that its cores are its own, by taking a lock per core on the node and pinning itself (and
so its forkserver and trials) to the cores it holds (on the CPU its trials' threads; on
CUDA its GPU's share of the node's cores), so parallel rounds never share a core and no
trial's busy check takes a sibling round for another job.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path

from detcost import env as envmod
from detcost.errors import HarnessError
from detcost.timing import is_cuda, usable_cpus

CORE_LOCKS = Path(tempfile.gettempdir()) / "detcost-cores"  # one lock file per core, per node
CORE_WAIT_S = 60.0  # how long a task waits for cores a finishing task still holds


@contextlib.contextmanager
def place(device: str, threads: int, ray_context: dict):
    """A round's place, checked: on CUDA the GPU Ray assigned, made the only visible one;
    and `threads` cores of the node held by this round's task alone (on CUDA its GPU's share
    of the node's cores), this process pinned to them. So a round's neighbours, the sweep's
    other rounds, never run on its cores, and each trial's busy check (which looks at the
    cores it may use) does not take them for other jobs. Yields what a record stores."""
    placement = {"host": socket.gethostname(), **{k: v for k, v in ray_context.items() if k != "gpu_ids"}}
    near = None
    if is_cuda(device):
        placement.update(check_gpu(ray_context.get("gpu_ids")))
        near = envmod.gpu_local_cpus(device)  # the GPU's NUMA node, taken first
    with hold_cores(threads, prefer=near) as cores:
        os.sched_setaffinity(0, cores)
        if set(os.sched_getaffinity(0)) != set(cores):
            raise HarnessError(f"could not pin the round to cores {sorted(cores)}")
        yield {**placement, "cores": sorted(cores)}


def check_gpu(gpu_ids) -> dict:
    """The one GPU Ray gave the task, as `CUDA_VISIBLE_DEVICES` names it for the trials
    (replacing a stale value, before the forkserver that passes it on starts)."""
    if gpu_ids is None:
        return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    ids = [str(i) for i in gpu_ids]
    if len(ids) != 1:
        raise HarnessError(f"Ray gave the round {len(ids)} GPUs ({', '.join(ids) or 'none'}); a round needs one")
    out = {"ray_gpu": ids[0]}
    if os.environ.get("CUDA_VISIBLE_DEVICES") != ids[0]:
        out["stale_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[0]
    out["cuda_visible_devices"] = ids[0]
    return out


@contextlib.contextmanager
def hold_cores(n: int, wait_s: float = CORE_WAIT_S, lock_dir: Path = CORE_LOCKS, prefer: set[int] | None = None):
    """`n` of this process's usable cores that no other task on the node holds, those in
    `prefer` (a GPU's NUMA node) first: an exclusive lock on one file per core, held until
    the task ends (the kernel drops it if the task dies). Waits up to `wait_s` for a
    finishing task's cores; refuses after."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user's sweeps on the node, as /tmp is
        lock_dir.chmod(0o1777)
    cores = sorted(usable_cpus(), key=lambda core: (core not in (prefer or ()), core))
    if n > len(cores):
        raise HarnessError(f"the round needs {n} cores and this node lets it use {len(cores)}")
    deadline = time.monotonic() + wait_s
    held: dict[int, int] = {}
    try:
        while True:
            for core in cores:
                if len(held) == n:
                    break
                if core not in held:
                    # read-only: a lock file another user's sweep made is still ours to lock
                    fd = os.open(lock_dir / f"core-{core}.lock", os.O_CREAT | os.O_RDONLY, 0o644)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        held[core] = fd
                    except BlockingIOError:
                        os.close(fd)
            if len(held) == n:
                break
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"the round needs {n} cores of its own and other rounds hold the rest of {len(cores)} "
                    f"after {wait_s:g} s (does Ray advertise more CPUs than the node has?)"
                )
            time.sleep(0.2)
        yield set(held)
    finally:
        for fd in held.values():
            os.close(fd)
