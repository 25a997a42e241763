"""--dry-run's estimate of a sweep's time: measured seconds per trial on the CPU; on CUDA a
model of each trial (process start, CUDA context, libraries, staging, warm-up, timed steps
from FLOPs over an assumed sustained rate, the setting's expected slowdown), every figure
it assumes listed with where it comes from (`CUDA_FIGURES`), since no GPU measured them.
On both, each axis adds what its value costs (`axes.cost`: compiling in the cold start, a
DataLoader's reads in every step), with the figures it rests on.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from detcost import axes, guard
from detcost.audit import AUDIT_STEPS
from detcost.measure import flops_per_step
from detcost.record import Kind, TrialSpec
from detcost.settings import get_setting
from detcost.timing import is_cuda
from detcost.workloads import WorkloadConfig, get_workload
from detcost.workloads.data import POOL_BATCHES

# --dry-run's estimate. On the CPU: seconds per trial, measured on a 2-core CPU (default
# sweep: 243 trials in 211 s; --quick: 79 s). On CUDA each trial is modelled from
# CUDA_FIGURES instead (`estimate`): no GPU was at hand to measure a figure per trial.
ESTIMATED_TRIAL_S = {"cpu": 0.9, "quick": 0.35}
# A new forkserver (one a round under the random layout): importing torch, torch._dynamo
# and the trial's modules again, measured on a 2-core CPU with a CPU-only torch.
CPU_SERVER_S = 2.3


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
    "libraries_s": Figure(0.7, "s a trial", "cuDNN (its engine libraries) and cuBLAS/cuBLASLt handles on first use"),
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
    "autotune_steps": Figure(
        10.0,
        "steps a new input shape",
        "cudnn.benchmark times every algorithm of each convolution once per shape, in the warm-up",
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
    "profiler_s": Figure(1.0, "s a profiled trial", "torch.profiler starting CUPTI, and writing the op table"),
}
WORST_DETERMINISTIC = ("dilated", "transposed")  # workloads that pytorch#28777's figures concern
REFERENCE_IMAGES = 512  # images a classifier's labels are normalised over (data._reference_stats)


@dataclass
class Estimate:
    seconds: float
    by_kind: dict[str, tuple[int, float]]  # kind -> (trials, seconds)
    cuda: bool = False  # modelled from CUDA_FIGURES rather than measured per trial
    once_s: float = 0.0  # outside the trials: the forkservers' starts, the first look at the machine
    axis_figures: tuple[str, ...] = ()  # what the axes' costs rest on (axes.Cost.basis), once each

    def assumptions(self) -> list[str]:
        """The figures the estimate rests on, one line each: on CUDA the trial's model
        (none on the CPU, measured per trial), then the axes' own."""
        cuda = [f"{f.value:g}{'' if f.unit.startswith('x') else ' '}{f.unit}: {f.basis}" for f in CUDA_FIGURES.values()]
        return (cuda if self.cuda else []) + list(self.axis_figures)


def estimate(specs: list[TrialSpec], size_preset: str, new_servers: int = 0) -> Estimate:
    """How long `specs` would take: measured seconds per trial on the CPU; on CUDA a model
    of each trial (CUDA_FIGURES), with each workload's FLOPs counted on the meta device;
    plus `new_servers` forkserver starts (one a round under the random layout)."""
    cuda = any(is_cuda(s.device) for s in specs)
    by_kind: dict[str, tuple[int, float]] = {}
    figures: dict[str, None] = {}
    for spec in specs:
        cost = axes.cost(spec)
        figures.update(dict.fromkeys(cost.basis))
        seconds = (_cuda_trial_s(spec) if cuda else ESTIMATED_TRIAL_S[size_preset]) + _axes_s(spec, cost)
        n, total = by_kind.get(str(spec.kind), (0, 0.0))
        by_kind[str(spec.kind)] = (n + 1, total + seconds)
    # the first server is in `once` on CUDA, and in the measured seconds a trial on the CPU
    server_s = CUDA_FIGURES["server_s"].value if cuda else CPU_SERVER_S
    once = CUDA_FIGURES["server_s"].value + guard.SAMPLE_S if cuda and specs else 0.0
    once += max(new_servers - 1, 0) * server_s if specs else 0.0
    return Estimate(once + sum(t for _, t in by_kind.values()), by_kind, cuda, once, tuple(figures))


def _axes_s(spec: TrialSpec, cost: axes.Cost) -> float:
    """What the axes add to one trial: their cold start each time the workload is built
    (the audit builds it twice, for its two passes), their step cost each step it runs."""
    if spec.kind == Kind.AUDIT:
        return 2 * (cost.cold_start_s + AUDIT_STEPS * cost.step_s)
    return cost.cold_start_s + spec.total_steps * cost.step_s


@dataclass(frozen=True)
class _Work:
    flops_per_sample: float | None  # forward + backward, per sample of the batch
    values_per_sample: int  # input values of one sample, summed over its distinct shapes
    shapes: int  # distinct input shapes (each is autotuned, each has its pool)
    classifier: bool  # labels need the reference images


@functools.cache
def _work(workload: str, image: int, total_steps: int) -> _Work:
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


def _cuda_trial_s(spec: TrialSpec) -> float:
    """One CUDA trial, modelled from CUDA_FIGURES."""
    f = {k: v.value for k, v in CUDA_FIGURES.items()}
    work = _work(spec.workload, spec.image_size, spec.total_steps)
    images = POOL_BATCHES * spec.batch_size + (REFERENCE_IMAGES if work.classifier else 0)
    per_value = f["stage_ns"] + (0.0 if work.classifier else f["pixel_labels_ns"])
    stage = images * work.values_per_sample * per_value * 1e-9
    step = _step_s(spec, work)
    fixed = f["start_s"] + f["context_s"] + f["libraries_s"]
    if spec.kind == Kind.AUDIT:  # built twice (warn-only, then strict proper), no warm-up
        return fixed + 2 * (stage + AUDIT_STEPS * step)
    tune = f["autotune_steps"] * work.shapes * step if get_setting(spec.setting).cudnn_benchmark else 0.0
    warm = max(f["min_warmup_s"], spec.warmup * step) + tune
    extra = f["profiler_s"] if spec.kind == Kind.PROFILED else 0.0
    return fixed + stage + warm + spec.steps * step + extra


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
