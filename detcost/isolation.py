"""Process isolation: every trial in a fresh process, and a memory layout that does not
stay the same for a whole sweep.

Trials are forked from a forkserver that has imported torch (and `torch._dynamo`) but run
no op and never touched CUDA: a trial then starts in ~10 ms instead of ~2 s, with the same
results as a spawned interpreter (tested). On CUDA too: each trial initialises CUDA itself,
after the fork, and records an error if CUDA was initialised before it started. The one
exception: a profiled CUDA trial that asks for cuDNN's API log is spawned with the log's
variables in its environment from its exec, since cuDNN reads them when `import torch`
loads it, which the forkserver has done (`cudnn_log.start_environ`).

Forked children share their server's address-space layout (where the stack, the heap and
the libraries sit), and each label's heap history is the same in every round, so on one
server a label keeps one placement of its buffers for the whole sweep. Placement moves run
times by several percent (Mytkowicz et al., ASPLOS 2009), and a bias that is fixed for a
sweep is invisible to an interval built from the spread across rounds (docs/layout-bias.md
measures it). So the layout is varied where the statistics can see it, as Stabilizer
(Curtsinger and Berger, ASPLOS 2013) does: a new server for each round (a fresh exec, so
fresh address-space randomisation, shared by the labels of that round, which stay paired),
and inside every trial a random amount of heap taken and a random-length environment
variable set before the trial allocates anything.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.forkserver as _forkserver
import os
import random
import signal
import sys
import time
import types
from pathlib import Path

from detcost.cudnn_log import start_environ
from detcost.record import Status, TrialRecord, TrialSpec
from detcost.trial import ENV_PAD_MAX, ENV_PAD_VAR, Layout, child_main, failure_record

# Imported once by the forkserver; each trial forks from it, on the CPU and on CUDA. None
# of these may call torch.cuda at import time: a process that has used CUDA cannot fork
# usable children (PyTorch's "poison fork"). tests/test_dry_run.py imports each of them
# with torch's CUDA entry points counting calls, and checks that none is called.
FORKSERVER_PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch.utils.flop_counter",
    "torch.profiler",
    "numpy",
    "detcost.trial",
]
JOIN_GRACE_S = 10.0  # how long a trial process may take to exit after sending its record

LAYOUTS = ("random", "fixed")  # a sweep's layout: varied (a new server each round, pads), or one for the sweep

# How long a trial process may run before it is killed and recorded as a timeout.
TRIAL_TIMEOUT_S = 600.0


def start_method(method: str, device: str) -> str:
    """How trial processes start. `auto` is the forkserver on every device: on CUDA a
    spawned trial would spend seconds importing torch again, and the forkserver is safe
    there because it never touches CUDA (FORKSERVER_PRELOAD, tested) and each trial checks
    that CUDA was not initialised before it started (`trial.child_main`)."""
    if method == "auto":
        method = "forkserver"
    if method not in mp.get_all_start_methods():
        method = "spawn"
    return method


def process_context(method: str):
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


_next_server_pad: int | None = None  # the environment pad of the next forkserver to start


def new_server(rng: random.Random) -> bool:
    """Stop this process's forkserver, if one runs, so that the next trial starts a new
    one: a fresh exec, so a fresh address-space layout, with an environment grown by a
    random-length variable (which moves its initial stack, as Mytkowicz et al. moved it).
    Call it only between trials. False where this Python cannot restart its forkserver
    (the sweep then keeps the one it has, and each trial's own pads still vary the heap)."""
    global _next_server_pad
    if not stop_server():
        return False
    _next_server_pad = rng.randrange(ENV_PAD_MAX)
    return True


def stop_server() -> bool:
    """Stop this process's forkserver, if one runs, so that the next trial starts a new one
    (with no pad). False where this Python cannot restart its forkserver."""
    server = _forkserver._forkserver
    if not hasattr(server, "_stop"):
        return False
    server._stop()  # nothing to do where none runs yet
    return True


@contextlib.contextmanager
def _environ_set(variables: dict):
    """`variables` in this process's environment while the body runs (so in that of a
    process it execs then), and as they were after."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _server_environ(method: str):
    """Around a trial's start: where that start will start a new forkserver, the pad
    `new_server` drew is in the environment it is exec'd with, and nowhere after."""
    global _next_server_pad
    pad = _next_server_pad if method == "forkserver" else None
    if pad is None:
        return contextlib.nullcontext()
    _next_server_pad = None
    return _environ_set({ENV_PAD_VAR: "x" * pad})


@contextlib.contextmanager
def _main_left_out():
    """Around a start: the child does not import this process's `__main__` script again.
    multiprocessing's forkserver and spawn children run the parent's main module (by its
    path) before their target, which a trial, whose target is `detcost.trial`'s, never
    needs: in a Ray worker that main is Ray's own worker script, which costs each trial
    ~0.4 s of importing Ray before it starts. A main named `__main__` is one multiprocessing
    leaves alone (as under `python -m`), so that is the name it is given while the child
    starts, and its own after."""
    main = sys.modules.get("__main__")
    if main is None or getattr(getattr(main, "__spec__", None), "name", None) is not None:
        yield  # run as a module (python -m ...): the child imports it by name, or not at all
        return
    spec = getattr(main, "__spec__", None)
    main.__spec__ = types.SimpleNamespace(name="__main__")
    try:
        yield
    finally:
        main.__spec__ = spec


def server_pid() -> int | None:
    """The running forkserver's process id (None before the first trial, or with spawn)."""
    return getattr(_forkserver._forkserver, "_forkserver_pid", None)


def exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "the trial process did not exit"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (often the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"the trial process was killed by {name}{hint} before reporting"
    return f"the trial process exited with code {exitcode} before reporting"


def run_isolated(
    spec: TrialSpec,
    *,
    method: str = "forkserver",
    timeout: float = TRIAL_TIMEOUT_S,
    results_dir: Path | None = None,
    machine: dict | None = None,
    environ: dict | None = None,
    layout: Layout | None = None,
) -> TrialRecord:
    """Run one trial in a fresh process and return its record, whatever happens to it.

    A trial that hangs past `timeout` is killed and recorded as `timeout`; one whose
    process dies without sending a record is recorded as `crash`. `machine` is the
    sweep's fingerprint, taken once in the parent and handed to the child; `environ` the
    variables the parent chose for it (`trial.trial_environ`); `layout` what it does to its
    own layout first.

    A trial whose environment must be there from its process's exec (cuDNN's API log,
    `cudnn_log.start_environ`) is spawned with it, whatever `method` says: a process
    forked from the forkserver has loaded cuDNN already.
    """
    from detcost.trial import trial_environ

    environ = trial_environ(spec, results_dir) if environ is None else environ
    at_start = start_environ(environ)
    method = "spawn" if at_start else method
    layout_json = layout.to_json() if layout else None
    args = (spec.to_dict(), environ, str(results_dir) if results_dir else None, machine)
    started = time.perf_counter()
    sent, why = in_fresh_process(
        child_main,
        args,
        {"layout": layout_json},
        method=method,
        timeout=timeout,
        name=f"detcost-trial {spec.trial_id}",
        environ=at_start,
    )
    if sent is not None:
        record = TrialRecord.from_json(sent)
    elif why == TIMED_OUT:
        record = failure_record(
            spec, Status.TIMEOUT, f"no result after {timeout:g} s; the trial process was killed", machine
        )
    else:
        record = failure_record(spec, Status.CRASH, why, machine)
    # seen from the parent: process start, the trial, sending the record and exiting
    record.process_wall_s = time.perf_counter() - started
    if layout is not None:  # which server it forked from: the labels of one round share one
        record.layout = {**layout_json, "server": server_pid() if method == "forkserver" else None}
    return record


TIMED_OUT = "timed out"  # `in_fresh_process`'s reason for a process killed at its timeout


def in_fresh_process(
    target,
    args: tuple,
    kwargs: dict | None = None,
    *,
    method: str,
    timeout: float,
    name: str,
    environ: dict | None = None,
) -> tuple[object | None, str | None]:
    """`target(*args, conn, **kwargs)` in a fresh process started by `method` (`environ` in
    the environment it is exec'd with: give it with spawn), and what it sent on `conn`:
    (the value, None), or (None, why none came: TIMED_OUT, or its crash or exit code as
    `exit_reason` words it). The process, and every process it started
    (`target` makes itself a process-group leader), is reaped on every path, Ctrl-C
    included. The one way trials, and the selfcheck's measuring children, are started."""
    ctx = process_context(method)
    receiver, sender = ctx.Pipe(duplex=False)
    # Not a daemon: a trial may start processes of its own (DataLoader workers). The
    # parent still reaps it on every path, Ctrl-C included.
    proc = ctx.Process(target=target, args=(*args, sender), kwargs=kwargs or {}, name=name)
    with _server_environ(method), _environ_set(environ or {}), _main_left_out():
        proc.start()
    sender.close()  # the child holds the only writer: EOF now means the child is gone
    sent, timed_out = receive(receiver, proc, timeout)
    if sent is not None:
        return sent, None
    return None, TIMED_OUT if timed_out else exit_reason(proc.exitcode)


def receive(receiver, proc, timeout: float) -> tuple[dict | None, bool]:
    """The record the child sent (None if it sent none) and whether it was killed for
    running past `timeout`; the child process is reaped either way."""
    sent, timed_out = None, False
    try:
        if receiver.poll(timeout):
            with contextlib.suppress(EOFError):  # EOF: the process died before sending
                sent = receiver.recv()
        else:
            timed_out = True
            kill(proc)
    except BaseException:  # Ctrl-C (or SIGTERM) in the parent: the trial dies with the sweep, at once
        kill(proc)
        raise
    finally:
        receiver.close()
        _reap(proc)
    return sent, timed_out


def kill(proc) -> None:
    """A trial process and every process it started: it leads a process group of its own
    (`trial.child_main`), which holds its DataLoader workers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()


def _reap(proc) -> None:
    proc.join(JOIN_GRACE_S)
    if proc.is_alive():
        kill(proc)
        proc.join()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers it left behind
        os.killpg(proc.pid, signal.SIGKILL)
