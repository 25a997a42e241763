"""What differs between the torch releases detcost supports (pyproject's `torch>=` bound
and up), in one place. Each entry names the torch release that needs it, so that it can go
when the lower bound moves past it.

Imports torch inside its functions only: it sits at the bottom of the layers.
"""

from __future__ import annotations

# ---- TF32 (torch < 2.9) -------------------------------------------------------------------
# torch 2.9 added `torch.backends.cudnn.conv.fp32_precision` and
# `torch.backends.cuda.matmul.fp32_precision`; before it TF32 is the legacy booleans
# `torch.backends.cudnn.allow_tf32` and `torch.backends.cuda.matmul.allow_tf32`. Where the new
# API exists it is the only one used: mixing the two makes the legacy getters raise (2.9+).
# Both read back as the same words, "tf32" or "ieee" (the new API's own values).


def _tf32_holders():
    """torch's cuDNN module and cuBLAS matmul object, which hold TF32 in either API (one
    function so that a test can hand in a torch without the new API)."""
    import torch

    return torch.backends.cudnn, torch.backends.cuda.matmul


def _legacy_tf32(matmul) -> bool:
    return not hasattr(matmul, "fp32_precision")


def get_tf32() -> tuple[str, str]:
    """TF32 in force as (conv, matmul): "tf32" or "ieee" (the new API may say more)."""
    cudnn, matmul = _tf32_holders()
    if _legacy_tf32(matmul):
        return ("tf32" if cudnn.allow_tf32 else "ieee"), ("tf32" if matmul.allow_tf32 else "ieee")
    return cudnn.conv.fp32_precision, matmul.fp32_precision


def set_tf32(conv: str, matmul_precision: str) -> None:
    """Set TF32 for cuDNN convolutions and matmul: each "tf32" or "ieee" (or, on the new
    API, any value `get_tf32` read from it, to restore it)."""
    cudnn, matmul = _tf32_holders()
    if _legacy_tf32(matmul):
        cudnn.allow_tf32 = conv == "tf32"
        matmul.allow_tf32 = matmul_precision == "tf32"
    else:
        cudnn.conv.fp32_precision, matmul.fp32_precision = conv, matmul_precision


def tf32_snippet(precision: str) -> tuple[str, str]:
    """The two lines that set TF32 ("tf32" or "ieee") for convolutions and matmul in the
    user's code, written for the torch installed here."""
    _, matmul = _tf32_holders()
    if _legacy_tf32(matmul):
        on = precision == "tf32"
        return f"torch.backends.cudnn.allow_tf32 = {on}", f"torch.backends.cuda.matmul.allow_tf32 = {on}"
    return (
        f'torch.backends.cudnn.conv.fp32_precision = "{precision}"',
        f'torch.backends.cuda.matmul.fp32_precision = "{precision}"',
    )


# ---- Inductor's deterministic mode (torch < 2.10) -------------------------------------------
# torch 2.10 added `torch._inductor.config.deterministic`, which use_deterministic_algorithms
# turns on; before it Inductor asked `torch.are_deterministic_algorithms_enabled()` itself
# and skipped autotuning when it was on (since torch 2.1), so that is what is in force.


def _inductor_config():
    import torch._inductor.config as inductor

    return inductor


def inductor_deterministic() -> bool:
    """Whether Inductor compiles deterministically (skips autotuning) in this process."""
    import torch

    inductor = _inductor_config()
    if hasattr(inductor, "deterministic"):
        return bool(inductor.deterministic)
    return torch.are_deterministic_algorithms_enabled()


# ---- the DDP launcher's shutdown grace (torch < 2.12) ----------------------------------------
# torch 2.12 added `LaunchConfig(shutdown_timeout=...)`, how long the launcher lets the other
# ranks stop after one failed before SIGKILL; before it that grace is a fixed 30 s, and the
# keyword is a TypeError that failed every DDP trial.


def launch_shutdown(seconds: int) -> dict[str, int]:
    """The keyword arguments of torch's `LaunchConfig` that set the shutdown grace, where
    this torch takes one."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    if any(f.name == "shutdown_timeout" for f in dataclasses.fields(LaunchConfig)):
        return {"shutdown_timeout": seconds}
    return {}
