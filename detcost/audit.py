"""Audit: which ops of a workload have no deterministic implementation, and where.

A few training steps run under `torch.use_deterministic_algorithms(True, warn_only=True)`;
torch's alerts are captured as warnings. A dispatch mode notes which module called each
aten op during the forward pass, so an alert raised in the backward pass (named after the
backward kernel) is traced to the module whose forward op it belongs to. Then the same
steps run under `strict` proper, to say whether `strict` fails here and with what message.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detcost.ops import ALERT_MARK, alert_op, op_base
from detcost.record import Alert, Audit, TrialParts, TrialSpec, one_line
from detcost.settings import applied, get_setting
from detcost.train import build, read_back, run_steps

AUDIT_STEPS = 2
OUTSIDE = "(outside the model: loss or training loop)"


class _OpOwners(TorchDispatchMode):
    """Records, for every aten op dispatched, the innermost module running at the time."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.owners: dict[str, set[str]] = defaultdict(set)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.stack:
            self.owners[op_base(str(func))].add(self.stack[-1])
        elif torch._C._current_graph_task_id() == -1:  # outside the model, and not in backward:
            self.owners[op_base(str(func))].add(OUTSIDE)  # the loss or the training loop
        return func(*args, **(kwargs or {}))


def _module_stack_hooks(model: torch.nn.Module, stack: list[str]) -> list:
    handles = []
    for name, module in model.named_modules():
        label = f"{name or 'model'} ({type(module).__name__})"
        handles.append(module.register_forward_pre_hook(lambda m, a, label=label: _push(stack, label)))
        handles.append(module.register_forward_hook(lambda m, a, o: _pop(stack)))
    return handles


def _push(stack: list[str], label: str) -> None:  # hooks must return None (a value replaces
    stack.append(label)  # the module's input or output)


def _pop(stack: list[str]) -> None:
    stack.pop()


def _alerts(spec: TrialSpec, steps: int) -> tuple[list[Alert], dict]:
    """The alerts of `steps` training steps under warn-only strict, each with the modules
    whose ops raised it; and the workload's read-back."""
    stack: list[str] = []
    with applied(get_setting("strict"), warn_only=True):
        wl = build(spec)
        handles = _module_stack_hooks(wl.model, stack)
        owners = _OpOwners(stack)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with owners:
                run_steps(wl, wl.batches[:steps])
        for h in handles:
            h.remove()
    alerts: Counter = Counter(alert_op(str(w.message)) for w in caught if ALERT_MARK in str(w.message))
    found = [
        Alert(op, count, tuple(sorted(owners.owners.get(op_base(op), set())) or ["(not traced)"]))
        for op, count in alerts.most_common()
    ]
    return found, read_back(wl)


def _strict_error(spec: TrialSpec, steps: int) -> str | None:
    """What `strict` proper says about the same steps: None when it runs."""
    try:
        with applied(get_setting("strict")):
            wl = build(spec)
            run_steps(wl, wl.batches[:steps])
    except Exception as exc:
        return one_line(exc)
    return None


def run(spec: TrialSpec, results_dir=None, steps: int = AUDIT_STEPS) -> TrialParts:
    """The audit as a trial kind: alerts with module attribution, and strict's verdict."""
    found, back = _alerts(spec, steps)
    error = _strict_error(spec, steps)
    audit = Audit(steps, tuple(found), strict_fails=error is not None, strict_error=error)
    return TrialParts(audit=audit, read_back=back)
