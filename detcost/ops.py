"""What detcost knows about ops: how a kernel's name maps to its op, and the known ways
around the ops that `strict` rejects. Plain text rules, read by the audit (in the trial
process) and by the report (for the failures table)."""

from __future__ import annotations

import re

ALERT_MARK = "does not have a deterministic implementation"
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
# Words that name a kernel variant rather than the op ("upsample_bilinear2d_backward_out_cuda").
_VARIANT_WORDS = {"backward", "forward", "out", "cuda", "cpu", "template", "kernel", "mps"}


def op_base(name: str) -> str:
    """`upsample_bilinear2d_backward_out_cuda` and `aten.upsample_bilinear2d.vec` -> `upsample_bilinear2d`."""
    name = name.split("aten.", 1)[-1].split(".", 1)[0].strip("_").lower()
    return "_".join(w for w in name.split("_") if w and w not in _VARIANT_WORDS)


def alert_op(message: str) -> str:
    """The op a deterministic-algorithms alert names ("put_ does not have a ...")."""
    match = re.match(r"\s*([\w.:<>]+)\s+" + ALERT_MARK, message)
    return match.group(1) if match else message.split(" ", 1)[0]


def workaround(message: str | None) -> str | None:
    """A known way around the op a strict-mode error names, if there is one."""
    if not message or ALERT_MARK not in message:
        return None
    op = op_base(alert_op(message.split(": ", 1)[-1]))
    return next((fix for name, fix in WORKAROUNDS.items() if op == name or op.startswith(name)), None)
