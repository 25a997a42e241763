"""Audit: which ops of a workload have no deterministic implementation, and where.

A few training steps run under `torch.use_deterministic_algorithms(True, warn_only=True)`;
torch's alerts are captured as warnings. A dispatch mode notes which module called each
aten op during the forward pass, so an alert raised in the backward pass (named after the
backward kernel) is traced to the module whose forward op it belongs to. Then the same
steps run under `strict` proper, to say whether `strict` fails here and with what message.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detcost.settings import applied, get_setting

AUDIT_STEPS = 2
# Known ways around ops that strict mode rejects on CUDA, keyed by the op's base name.
WORKAROUNDS = {
    "nll_loss2d": "compute F.cross_entropy(logits, target, reduction='none').mean(): no atomic reduction, so "
    "strict accepts it (workload unet_lossfix)",
    "upsample_bilinear2d": "turn strict on before the forward pass (bilinear interpolate is then decomposed into "
    "deterministic ops), or upsample with mode='nearest'",
    "adaptive_avg_pool2d": "pool to output size 1, or use avg_pool2d with a fixed kernel",
    "index_add": "accumulate with index_put_(..., accumulate=True), which has a sort-based deterministic path",
    "scatter_add": "accumulate with index_put_(..., accumulate=True), which has a sort-based deterministic path",
    "put": "write with index_put_ or an out-of-place torch.where instead of put_",
}
ALERT_MARK = "does not have a deterministic implementation"
OUTSIDE = "(outside the model: loss or training loop)"
# Words that name a kernel variant rather than the op ("upsample_bilinear2d_backward_out_cuda").
_VARIANT_WORDS = {"backward", "forward", "out", "cuda", "cpu", "template", "kernel", "mps"}


def op_base(name: str) -> str:
    """`upsample_bilinear2d_backward_out_cuda` and `aten.upsample_bilinear2d.vec` -> `upsample_bilinear2d`."""
    name = name.split("aten.", 1)[-1].split(".", 1)[0].strip("_").lower()
    return "_".join(w for w in name.split("_") if w and w not in _VARIANT_WORDS)


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


def _alert_op(message: str) -> str:
    match = re.match(r"\s*([\w.:<>]+)\s+" + ALERT_MARK, message)
    return match.group(1) if match else message.split(" ", 1)[0]


def _steps(spec, wl, n: int) -> None:
    from detcost.trial import _train_step

    wl.model.train()
    for x, y in wl.batches[:n]:
        _train_step(wl, x, y)


def audit_workload(spec, steps: int = AUDIT_STEPS) -> dict:
    """Alerts of `steps` training steps with module attribution, and strict's verdict."""
    from detcost.trial import _build, one_line

    strict = get_setting("strict")
    stack: list[str] = []
    with applied(strict, warn_only=True):
        wl = _build(spec)
        handles = _module_stack_hooks(wl.model, stack)
        owners = _OpOwners(stack)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with owners:
                _steps(spec, wl, steps)
        for h in handles:
            h.remove()
    alerts: Counter = Counter(_alert_op(str(w.message)) for w in caught if ALERT_MARK in str(w.message))
    found = [
        {
            "op": op,
            "count": count,
            "modules": sorted(owners.owners.get(op_base(op), set())) or ["(not traced)"],
        }
        for op, count in alerts.most_common()
    ]
    strict_error = None
    try:
        with applied(strict):
            _steps(spec, _build(spec), steps)
    except Exception as exc:
        strict_error = one_line(exc)
    return {
        "audit": {
            "steps": steps,
            "alerts": found,
            "strict_fails": strict_error is not None,
            "strict_error": strict_error,
        }
    }


def run_audit(spec) -> dict:
    """The audit as a trial kind (`kind == "audit"`), run in its own fresh process."""
    return audit_workload(spec)


def workaround(message: str | None) -> str | None:
    """A known way around the op a strict-mode error names, if there is one."""
    if not message or ALERT_MARK not in message:
        return None
    op = op_base(_alert_op(message.split(": ", 1)[-1]))
    return next((fix for name, fix in WORKAROUNDS.items() if op == name or op.startswith(name)), None)
