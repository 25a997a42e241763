"""A selfcheck's measuring, run in a child process started as the sweep starts its trials.

The selfcheck's own process never touches the device: a parent that held a CUDA context
while it started CUDA trial processes would break them (a GPU in exclusive-process mode
admits one context; a process that has used CUDA cannot fork usable children). The child
is started, reaped and judged dead or timed out by `detcost.isolation.in_fresh_process`,
as a trial is; its exception, crash or timeout comes back as a failed check.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from detcost.isolation import TRIAL_TIMEOUT_S
from detcost.record import one_line
from detcost.selfcheck.checks import Check, failed

CHILD_TIMEOUT_S = TRIAL_TIMEOUT_S  # a selfcheck child is given what a trial is


@dataclass(frozen=True)
class ChildResult:
    value: object = None
    error: str | None = None  # why the child gave no value: its exception, crash or timeout


def _child_main(fn: Callable, args: tuple, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.setpgid(0, 0)  # a process group of its own, as a trial's: killed with what it starts
    try:
        sent = ChildResult(value=fn(*args))
    except Exception as exc:
        sent = ChildResult(error=one_line(exc))
    conn.send(sent)
    conn.close()


def in_child(fn: Callable, *args, device: str, timeout: float = CHILD_TIMEOUT_S) -> ChildResult:
    """`fn(*args)` in a fresh process started as trials on `device` are, and its result;
    an exception, a crash or a timeout there is the result's `error`, never raised here.
    `fn` and its arguments and result must be picklable (`fn` at module level)."""
    from detcost.isolation import TIMED_OUT, in_fresh_process, start_method

    method = start_method("auto", device)
    name = f"detcost-selfcheck {fn.__name__}"
    sent, why = in_fresh_process(_child_main, (fn, args), method=method, timeout=timeout, name=name)
    if sent is not None:
        return sent
    return ChildResult(error=f"no result after {timeout:g} s; its process was killed" if why == TIMED_OUT else why)


def isolated(name: str, fn: Callable[..., Check], *args, device: str, target: str = "runs") -> Check:
    """A check whose measuring builds a workload, run in a child process: its Check, or a
    failed one with the child's error."""
    result = in_child(fn, *args, device=device)
    return result.value if result.error is None else failed(name, result.error, target)
