"""The axes: the registry (`detcost.axes.registry`) and detcost's own axes, registered
whenever this package is imported, in the order of `BUILT_IN`.

That order is the registry's, so it is the order in which a trial process runs the hooks
(`memory_format` lays out the weights before `compile` wraps the model; `data` makes the
loader whose batches `memory_format` lays out) and the order of a trial id's parts, which
stored results keep: a new axis goes at the end. An axis of a user's module (or a test's)
registers itself with `register` and comes after these.

Import what callers use from here (`from detcost import axes`; `axes.register`,
`axes.Axis`, `axes.each`, ...), not from the modules inside.
"""

from __future__ import annotations

from detcost.axes.data import (
    DATA,
    DATA_MODES,
    LOADER_SAMPLE_S,
    LOADER_WORKER_BATCH_S,
    LOADER_WORKER_START_S,
    WORKERS,
    Data,
    Workers,
)
from detcost.axes.distributed import BUCKET_MB, DDP_START_S, NCCL_ALGO, NCCL_ALGOS, NPROC, BucketMb, NcclAlgo, Nproc
from detcost.axes.model import (
    AMP,
    AMP_MODES,
    COMPILE,
    COMPILE_CPU_S,
    COMPILE_CUDA_S,
    COMPILE_MODES,
    MEMORY_FORMAT,
    MEMORY_FORMATS,
    Amp,
    Autocast,
    Compile,
    MemoryFormat,
)
from detcost.axes.process import TF32, TF32_MODES, THREADS, Tf32, Threads
from detcost.axes.registry import (
    REGISTRY,
    RESERVED,
    Axis,
    Cost,
    StepWrapper,
    combinations,
    compares_across,
    complete,
    cost,
    each,
    first_defaults,
    first_problem,
    host_threads,
    id_parts,
    int_at_least,
    names,
    register,
    reserve,
    unregister,
    wrapper_of,
)
from detcost.axes.vary import VARY, VARY_MODES, Vary

BUILT_IN = (THREADS, VARY, DATA, WORKERS, MEMORY_FORMAT, TF32, COMPILE, AMP, NPROC, NCCL_ALGO, BUCKET_MB)
for _axis in BUILT_IN:
    register(_axis)

__all__ = [
    # the registry
    "REGISTRY", "RESERVED", "Axis", "Cost", "StepWrapper", "combinations", "compares_across", "complete", "cost",
    "each", "first_defaults", "first_problem", "host_threads", "id_parts", "int_at_least", "names", "register",
    "reserve", "unregister", "wrapper_of",
    # detcost's own axes, their classes and figures
    "BUILT_IN", "THREADS", "VARY", "DATA", "WORKERS", "MEMORY_FORMAT", "TF32", "COMPILE", "AMP", "NPROC", "NCCL_ALGO",
    "BUCKET_MB",
    "Threads", "Vary", "Data", "Workers", "MemoryFormat", "Tf32", "Compile", "Amp", "Autocast", "Nproc", "NcclAlgo",
    "BucketMb",
    "VARY_MODES", "DATA_MODES", "MEMORY_FORMATS", "TF32_MODES", "COMPILE_MODES", "AMP_MODES",
    "NCCL_ALGOS",
    "LOADER_SAMPLE_S", "LOADER_WORKER_BATCH_S", "LOADER_WORKER_START_S", "COMPILE_CPU_S", "COMPILE_CUDA_S",
    "DDP_START_S",
]  # fmt: skip
