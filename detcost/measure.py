"""The measured trial kinds (timed, A/A, seed): warm up, time each step, capture what
training produced. Runs inside the trial process, under the trial's setting.

On CUDA the timed region has no synchronisation: step marks are events on the current
stream, losses and parameter snapshots are gathered on the device into preallocated
buffers, and everything is copied out after the region.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import torch

from detcost.env import gpu_processes, own_pids
from detcost.loader import batch_shapes, order_sha256
from detcost.payloads import BusyReport
from detcost.record import Outcome, StepTiming, TrialParts, TrialSpec
from detcost.timing import (
    StepTimer,
    cpu_sample,
    is_cuda,
    live_descendants_cpu_s,
    peak_memory,
    reset_peak_memory,
    synchronize,
    tree_cpu_s,
    trial_threads,
)
from detcost.train import build, read_back, run_steps, warm_clocks
from detcost.workloads import Workload

SAMPLE_SIZE = 4096  # parameter coordinates kept at each checkpoint
SAMPLE_SEED = 20240601  # fixed: the same coordinates in every trial of a workload


def checkpoint_steps(total: int) -> list[int]:
    """Steps after which parameters are sampled: 1, 2, 4, 8, ... and the last step."""
    steps, k = [], 1
    while k < total:
        steps.append(k)
        k *= 2
    return steps + [total]


class ParamSampler:
    """A fixed, seeded sample of parameter coordinates and per-tensor norms at checkpoints.

    Buffers are preallocated on the device; `take()` launches device work only (no host
    copy, no synchronisation), so it may run between timed steps.
    """

    def __init__(self, model: torch.nn.Module, n_checkpoints: int, n: int = SAMPLE_SIZE):
        self.params = [p for p in model.parameters()]
        sizes = torch.tensor([p.numel() for p in self.params])
        total = int(sizes.sum())
        # Floyd's sampling: O(n), where a permutation of all parameters costs ~0.3 s on ResNet-18.
        picks = np.random.default_rng(SAMPLE_SEED).choice(total, size=min(n, total), replace=False)
        flat = torch.from_numpy(np.sort(picks))
        offsets = torch.cumsum(sizes, 0) - sizes
        owner = torch.searchsorted(torch.cumsum(sizes, 0), flat, right=True)
        device = self.params[0].device
        self.parts = [
            (p, (flat[owner == k] - offsets[k]).to(device))
            for k, p in enumerate(self.params)
            if bool((owner == k).any())
        ]
        self.samples = torch.zeros(n_checkpoints, len(flat), device=device)
        self.norms = torch.zeros(n_checkpoints, len(self.params), device=device)

    @torch.no_grad()
    def take(self, k: int) -> None:
        torch.cat([p.detach().reshape(-1).index_select(0, idx).float() for p, idx in self.parts], out=self.samples[k])
        torch.stack(torch._foreach_norm([p.detach() for p in self.params]), out=self.norms[k])


def tensors_sha256(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous()
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def flops_per_step(model: torch.nn.Module, loss_fn, batches) -> float | None:
    """Forward + backward FLOPs per step, counted on a meta-device copy (no kernel runs,
    so no cuDNN cache is touched); averaged over the shapes the steps use."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = copy.deepcopy(model).to("meta").train()
        shapes = Counter(batch_shapes(batches, 0, len(batches)))
        total = 0
        for (xs, xd, ys, yd), count in shapes.items():
            x = torch.zeros(xs, dtype=xd, device="meta")
            y = torch.zeros(ys, dtype=yd, device="meta")
            with FlopCounterMode(display=False) as counter:
                loss_fn(meta(x), y).backward()
            total += counter.get_total_flops() * count
        return total / len(batches)
    except Exception:  # a user model the meta device cannot run: leave FLOPs out
        return None


class StepLog:
    """Each step's loss and the parameter snapshots at checkpoints 1, 2, 4, ..., kept on
    the device (no sync, no host copy) until the trial reads them after timing."""

    def __init__(self, model: torch.nn.Module, total_steps: int, device: str):
        self.checkpoints = checkpoint_steps(total_steps)
        self.snap_at = {step: k for k, step in enumerate(self.checkpoints)}
        self.sampler = ParamSampler(model, len(self.checkpoints))
        self.losses = torch.zeros(total_steps, device=device)

    def record(self, i: int, loss: torch.Tensor) -> None:
        """After step i (0-based): keep its loss, and snapshot if step i + 1 is a checkpoint."""
        self.losses[i] = loss.detach()
        if i + 1 in self.snap_at:
            self.sampler.take(self.snap_at[i + 1])

    def from_step(self, first: int):
        """`record` for a loop whose step 0 is step `first` of the trial."""
        return lambda j, loss: self.record(first + j, loss)


def warm_up(spec: TrialSpec, wl: Workload, log: StepLog, min_seconds: float | None = None) -> dict:
    """The cold start: the first steps, where cuDNN autotunes (synchronising here is
    outside the timed region); then, on CUDA, a load of its own until the warm-up has
    lasted `min_seconds` (the clocks leave idle, `train.warm_clocks`), which leaves the
    trial's bits alone."""
    out, t0 = {}, time.perf_counter()
    for i in range(spec.warmup):
        run_steps(wl, [wl.batches[i]], after_step=log.from_step(i))
        if i == 0:
            synchronize(spec.device)
            out["first_step_s"] = time.perf_counter() - t0
    synchronize(spec.device)
    out["cold_start_s"] = time.perf_counter() - t0 if spec.warmup else None
    out.update(warm_clocks(spec, t0, min_seconds))
    return out


def _strata(wl: Workload, spec: TrialSpec) -> list[int] | None:
    """Index of the input shape of each timed step, when shapes vary (else None)."""
    shapes = [x for x, *_ in batch_shapes(wl.batches, spec.warmup, spec.total_steps)]
    if len(set(shapes)) < 2:
        return None
    index = {s: k for k, s in enumerate(sorted(set(shapes)))}
    return [index[s] for s in shapes]


def _busy(spec: TrialSpec, cpu_start) -> BusyReport:
    """The busy guard's view of the timed region. The trial's own CPU time is its process
    tree's (`timing.tree_cpu_s`), so its DataLoader workers are its own work, not a
    neighbour's. On the CPU a trial uses its thread count; a CUDA trial drives the GPU from
    one host thread, and another compute process on the same GPU (NVML, nvidia-smi) makes
    it busy whatever the CPUs did. A DDP trial's ranks (`nproc`) are its own work too: its
    tree is the launcher's, and it uses its thread count in each rank."""
    ranks = spec.axes.get("nproc") or 1
    threads = trial_threads(spec.device, [torch.get_num_threads()]) * ranks
    gpu_others = None
    if is_cuda(spec.device):  # the trial's own processes: a DDP job's are every rank
        own = own_pids(_launcher()) if spec.axes.get("nproc") else None
        gpu_others = gpu_processes(spec.device, own, processes=ranks)
    return BusyReport.between(cpu_start, cpu_sample(_own_tree(spec)), threads, gpu_others)


def _launcher() -> psutil.Process:
    """A DDP rank's parent: the launcher that started every rank of the job (`detcost.ddp`;
    torchrun's agent for `detcost rank`)."""
    return psutil.Process(os.getppid())


def _own_tree(spec: TrialSpec):
    """What `cpu_sample` counts as the trial's own CPU time: this process's tree, or for a
    rank of a DDP trial the tree of the launcher that started every rank (`detcost.ddp`)."""
    if not spec.axes.get("nproc"):
        return tree_cpu_s
    launcher = _launcher()

    def job_cpu_s() -> float:
        t = launcher.cpu_times()
        return t.user + t.system + t.children_user + t.children_system + live_descendants_cpu_s(launcher)

    return job_cpu_s


def timed_region(spec: TrialSpec, wl: Workload, log: StepLog) -> dict:
    """The timed steps; peak memory and the busy guard around them. All step times are
    kept raw; steps that took a snapshot are marked excluded from the statistics (unless
    every timed step took one, as in a run of a step or two)."""
    out, cpu_start = {}, cpu_sample(_own_tree(spec))
    reset_peak_memory(spec.device)
    timer = StepTimer(spec.device, spec.steps)
    t0 = time.perf_counter()
    run_steps(wl, wl.batches[spec.warmup : spec.total_steps], timer=timer, after_step=log.from_step(spec.warmup))
    times = timer.times()  # on CUDA: the one synchronisation of the region
    out["region_s"] = time.perf_counter() - t0
    out["peak_memory_bytes"], out["memory_metric"] = peak_memory(spec.device)
    out["busy"] = _busy(spec, cpu_start)
    snapped = [j for j in range(spec.steps) if spec.warmup + j + 1 in log.snap_at]
    out.update(step_times_s=times, timer=timer.name, step_strata=_strata(wl, spec))
    out["excluded_steps"] = snapped if len(snapped) < len(times) else []
    return out


def class_accuracy(preds: torch.Tensor, labels: torch.Tensor, classes: int) -> list[float | None]:
    """Accuracy on the evaluation samples (or pixels) of each class; None for a class
    the evaluation batch does not hold."""
    hit, labels = (preds == labels).reshape(-1).float().cpu(), labels.reshape(-1).cpu()
    out = []
    for c in range(classes):
        mine = labels == c
        out.append(float(hit[mine].mean()) if bool(mine.any()) else None)
    return out


def outcome(wl: Workload, log: StepLog) -> tuple[Outcome, dict]:
    """The fingerprints of what training produced, and the arrays for the sidecar."""
    losses = log.losses.cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    wl.model.eval()
    with torch.no_grad():
        ex, ey = wl.eval_batch
        logits = wl.model(ex)
    preds = logits.argmax(1)
    result = Outcome(
        final_loss=float(losses[-1]),
        first_nonfinite_step=int(bad[0]) + 1 if len(bad) else None,
        eval_accuracy=float((preds == ey).float().mean()),
        params_sha256=tensors_sha256(log.sampler.params),
        logits_sha256=tensors_sha256([logits]),
        data_order_sha256=order_sha256(wl.batches),
        class_accuracy=class_accuracy(preds, ey, logits.shape[1]),
    )
    arrays = {
        "checkpoints": np.asarray(log.checkpoints),
        "param_samples": log.sampler.samples.cpu().numpy(),
        "param_norms": log.sampler.norms.cpu().numpy(),
        "losses": losses.numpy(),
        "eval_logits": logits.float().cpu().numpy(),
        "eval_preds": preds.cpu().numpy(),
    }
    return result, arrays


def _flops(spec: TrialSpec, wl: Workload) -> dict:
    if spec.known_flops:
        return {"flops_per_step": spec.known_flops, "flops_source": "earlier trial"}
    return {
        # on the model as built: a wrapper (torch.compile's) computes what it does
        "flops_per_step": flops_per_step(wl.model_as_built or wl.model, wl.loss_fn, wl.batches[: spec.total_steps]),
        "flops_source": "counted",
    }


def _save_sidecar(spec: TrialSpec, results_dir: Path | None, arrays: dict, log: StepLog) -> str | None:
    if not spec.sidecar or results_dir is None:
        return None
    if spec.keep_params:
        arrays["params"] = torch.cat([p.detach().float().reshape(-1) for p in log.sampler.params]).cpu().numpy()
    path = results_dir / spec.sidecar
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return spec.sidecar


def run(spec: TrialSpec, results_dir: Path | None) -> TrialParts:
    """Build, warm up, time, capture. Runs inside the trial's setting."""
    t_build = time.perf_counter()
    wl = build(spec)
    synchronize(spec.device)
    measured = {"build_s": time.perf_counter() - t_build}
    log = StepLog(wl.model, spec.total_steps, spec.device)
    measured.update(warm_up(spec, wl, log))
    measured.update(timed_region(spec, wl, log))
    result, arrays = outcome(wl, log)
    measured.update(_flops(spec, wl))
    timing = StepTiming(batch_size=spec.batch_size, **measured)
    sidecar = _save_sidecar(spec, results_dir, arrays, log)
    notes = dict(wl.notes) if wl.notes else None
    return TrialParts(timing=timing, outcome=result, workload_notes=notes, sidecar=sidecar, read_back=read_back(wl))
