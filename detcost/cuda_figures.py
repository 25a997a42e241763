"""The CUDA estimate's model of a trial (`estimate`): the figures it assumes, each with
where it comes from (`CUDA_FIGURES`), since no GPU measured them, and one trial's seconds
built from them: process start, CUDA context, libraries, staging, warm-up, timed steps
from FLOPs over an assumed sustained rate, the setting's expected slowdown.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass

from detcost.audit import AUDIT_STEPS
from detcost.measure import flops_per_step
from detcost.record import Kind, TrialSpec
from detcost.settings import get_setting
from detcost.trial import spawned_for_cudnn_log
from detcost.workloads import WorkloadConfig, get_workload
from detcost.workloads.data import POOL_BATCHES


@dataclass(frozen=True)
class Figure:
    """One figure the CUDA estimate assumes, and where it comes from."""

    value: float
    unit: str
    basis: str


# What a CUDA trial costs, figure by figure. No GPU was available when these were chosen,
# so none is a measurement on a GPU: each is taken from the published figure or the
# documentation its basis cites, or else estimated, and the dry run prints them all. A
# trial is: start + CUDA context + libraries + staging + warm-up + timed steps (+ the
# profiler, or the audit's second pass).
CUDA_FIGURES: dict[str, Figure] = {
    "server_s": Figure(
        5.0,
        "s once a sweep",
        "the forkserver imports torch (with its CUDA libraries), torch._dynamo and the trial's "
        "modules; ~2.3 s on a 2-core CPU with a CPU-only torch (measured)",
    ),
    "start_s": Figure(
        0.1,
        "s a trial",
        "fork from the forkserver (~0.01 s, measured on the CPU: nothing to import again), then "
        "the outcome's hashes, the record sent back, exit",
    ),
    "context_s": Figure(
        0.5,
        "s a trial",
        "CUDA context of a fresh process, with lazy module loading (PyTorch's "
        "default) and persistence mode on; without persistence mode the driver's start adds more",
    ),
    # Revised up from 0.7 s (issue 21, item 7): cuDNN 9 splits its engines into separate
    # libraries loaded on first use, then runs its heuristics, and cuBLASLt makes a handle
    # and a workspace; public reports of a fresh process's first conv put this at 1-2 s.
    "libraries_s": Figure(
        1.5,
        "s a trial",
        "cuDNN 9's engine libraries loaded on first use, its heuristics, and the cuBLAS/cuBLASLt handles "
        "(1-2 s in a fresh process)",
    ),
    "stage_ns": Figure(
        6.0,
        "ns an input value",
        "staging on the host, once a trial: the 16 pool batches (and a classifier's 512 reference images) "
        "drawn (3.5-4.7 ns a value, serial), smoothed (9-17 ns on one core of a 2-core CPU, measured) over "
        "the 8 or more threads of a GPU host, and copied",
    ),
    "pixel_labels_ns": Figure(
        4.0,
        "ns more an input value",
        "per-pixel labels (unet, transposed): a second smoothing and a class mix, 25-35 ns on one core "
        "(measured), partly serial",
    ),
    "tflops": Figure(
        30.0,
        "TFLOP/s sustained",
        "FP32 training, convolutions in TF32 (PyTorch's default for cuDNN): NVIDIA's published ResNet-50 "
        "rate on an A100 (938 img/s x 24.6 GFLOP = 23 TFLOP/s, DeepLearningExamples) x 1.6 for the "
        "H100's memory bandwidth, rounded down (TF32 peak: 495 TFLOP/s dense)",
    ),
    "host_step_s": Figure(0.002, "s a step at least", "eager PyTorch enqueues 100-300 kernels a step, 5-10 us each"),
    "uncounted_step_s": Figure(
        0.05, "s a step", "a workload whose FLOPs the meta device cannot count (a user's): a middling step"
    ),
    "min_warmup_s": Figure(0.5, "s of warm-up at least", "CUDA trials warm up until the clocks leave idle"),
    # Revised up from 10 steps (issue 21, item 7): benchmark times up to
    # torch.backends.cudnn.benchmark_limit (10) plans for each of a convolution's forward,
    # backward-data and backward-filter, the slow candidates included, and cuDNN 9 may
    # compile a runtime engine (NVRTC) among them.
    "autotune_steps": Figure(
        25.0,
        "steps a new input shape",
        "cudnn.benchmark times up to benchmark_limit (10) plans for each of forward, backward-data and "
        "backward-filter of every convolution, once per shape, in the warm-up; the slow candidates make "
        "that ~2.5x ten steps",
    ),
    "runtime_compile_s": Figure(
        0.5,
        "s a new input shape",
        "cudnn.benchmark: cuDNN 9 compiles runtime-fused engines (NVRTC) among the candidates it times",
    ),
    "deterministic_x": Figure(
        1.2, "x the step time", "cudnn.deterministic: deterministic algorithms only (no published figure)"
    ),
    "worst_x": Figure(
        3.0,
        "x the step time",
        "cudnn.deterministic on dilated and transposed convolutions "
        "(pytorch#28777 saw 10-80x with cuDNN 7: if so, those trials take far longer)",
    ),
    "fill_x": Figure(1.12, "x the step time", "strict's NaN fill of new memory (ultralytics#26181: ~12%)"),
    "no_cudnn_x": Figure(
        3.0,
        "x the step time",
        "no_cudnn: PyTorch's own convolutions, im2col + GEMM, without TF32 (off for matmuls by default)",
    ),
    # Revised up from 1 s (issue 21, item 7): CUPTI's start, and the level-3 cuDNN API log
    # a profiled trial writes for its plan log, tens of MB.
    "profiler_s": Figure(
        2.5,
        "s a profiled trial",
        "torch.profiler starting CUPTI, the op table, and the cuDNN API log (level 3: tens of MB)",
    ),
    # A profiled CUDA trial that asks for cuDNN's API log is spawned, not forked (the log's
    # variables must be there when libcudnn loads: `cudnn_log.start_environ`), so it imports
    # torch and detcost again: 4.2 s measured on a 2-core VM, less on a GPU host's CPUs.
    "spawn_s": Figure(
        3.0,
        "s a profiled trial that writes cuDNN's API log",
        "spawned, not forked, for cuDNN's API log: a fresh interpreter imports torch again",
    ),
    # Not modelled before (issue 21, item 7): a process that held a CUDA context frees it at
    # exit (cuCtxDestroy, its memory), which the parent waits for.
    "teardown_s": Figure(0.3, "s a trial", "the CUDA context torn down at the trial's exit (its memory freed)"),
    # Not modelled before (issue 21, item 7): without nvidia-ml-py (the `gpu` extra) a timed
    # trial asks `nvidia-smi` for the GPU's other processes, a process of its own.
    "nvidia_smi_s": Figure(
        0.3,
        "s a timed trial without nvidia-ml-py",
        "the GPU's other processes from an nvidia-smi process, where nvidia-ml-py is missing",
    ),
}
WORST_DETERMINISTIC = ("dilated", "transposed")  # workloads that pytorch#28777's figures concern
REFERENCE_IMAGES = 512  # images a classifier's labels are normalised over (data._reference_stats)


@dataclass(frozen=True)
class _Work:
    flops_per_sample: float | None  # forward + backward, per sample of the batch
    values_per_sample: int  # input values of one sample, summed over its distinct shapes
    shapes: int  # distinct input shapes (each is autotuned, each has its pool)
    classifier: bool  # labels need the reference images


@functools.cache
def work_of(workload: str, image: int, total_steps: int) -> _Work:
    """A workload's work per sample, counted on the meta device at batch 1 (FLOPs grow
    linearly with the batch): no kernel runs and no CUDA is touched."""
    try:
        wl = get_workload(workload).factory(WorkloadConfig("meta", 0, 0, 1, image, total_steps))
        batches = wl.batches[:total_steps]
        flops = flops_per_step(wl.model, wl.loss_fn, batches)
    except Exception:  # a user workload the meta device cannot build: no FLOPs
        return _Work(None, 3 * image * image, 1, True)
    shapes = {tuple(x.shape): y.dim() == 1 for x, y in batches}
    values = sum(math.prod(shape) for shape in shapes)
    return _Work(flops, values, len(shapes), all(shapes.values()))


def cuda_trial_s(spec: TrialSpec) -> float:
    """One CUDA trial, modelled from CUDA_FIGURES."""
    f = {k: v.value for k, v in CUDA_FIGURES.items()}
    work = work_of(spec.workload, spec.image_size, spec.total_steps)
    images = POOL_BATCHES * spec.batch_size + (REFERENCE_IMAGES if work.classifier else 0)
    per_value = f["stage_ns"] + (0.0 if work.classifier else f["pixel_labels_ns"])
    stage = images * work.values_per_sample * per_value * 1e-9
    step = _step_s(spec, work)
    fixed = f["start_s"] + f["context_s"] + f["libraries_s"] + f["teardown_s"]
    if spec.kind == Kind.AUDIT:  # built twice (warn-only, then strict proper), no warm-up
        return fixed + 2 * (stage + AUDIT_STEPS * step)
    tune = 0.0
    if get_setting(spec.setting).cudnn_benchmark:
        tune = work.shapes * (f["autotune_steps"] * step + f["runtime_compile_s"])
    warm = max(f["min_warmup_s"], spec.warmup * step) + tune
    extra = f["profiler_s"] if spec.kind == Kind.PROFILED else 0.0
    if spawned_for_cudnn_log(spec):
        extra += f["spawn_s"]
    if spec.kind.measured and not _has_nvml():  # measure.run asks for the GPU's other processes
        extra += f["nvidia_smi_s"]
    return fixed + stage + warm + spec.steps * step + extra


@functools.cache
def _has_nvml() -> bool:
    """Whether nvidia-ml-py is installed (found, not imported: no NVML call here)."""
    return importlib.util.find_spec("pynvml") is not None


def _step_s(spec: TrialSpec, work: _Work) -> float:
    """One training step: FLOPs over the sustained rate (or the host's floor), times the
    setting's expected slowdown."""
    f = {k: v.value for k, v in CUDA_FIGURES.items()}
    if work.flops_per_sample is None:
        kernels = f["uncounted_step_s"]
    else:
        kernels = work.flops_per_sample * spec.batch_size / (f["tflops"] * 1e12)
    setting = get_setting(spec.setting)
    slowdown = 1.0
    if not setting.cudnn_enabled:
        slowdown *= f["no_cudnn_x"]
    elif setting.cudnn_deterministic:
        slowdown *= f["worst_x"] if spec.workload in WORST_DETERMINISTIC else f["deterministic_x"]
    if setting.deterministic_algorithms and setting.fill_uninitialized_memory:
        slowdown *= f["fill_x"]
    return max(f["host_step_s"], kernels) * slowdown
