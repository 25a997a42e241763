"""One trial, run in this process: build a workload from its seeds under one setting,
warm up, time the steps, capture the outcome, and return one record (a dict).

`child_main` is what the sweep starts in a fresh process; `run_trial` is the same work
in the current process (tests and benchmarks call it directly).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from detcost import env as envmod
from detcost.seeding import derive_seed, seed_everything
from detcost.settings import applied, apply_env, get_setting, read_flags, set_environ
from detcost.timing import (
    StepTimer,
    busy_report,
    cpu_sample,
    kept_steps,
    peak_memory,
    reset_peak_memory,
    summarize,
    synchronize,
    use_device,
)
from detcost.workloads import Workload, WorkloadConfig, get_workload

SCHEMA_VERSION = 1
KINDS = ("timed", "aa", "seed", "audit", "profiled")
VARY_MODES = ("impl", "init", "data", "all")
MEMORY_FORMATS = ("contiguous", "channels_last")
SAMPLE_SIZE = 4096  # parameter coordinates kept at each checkpoint
SAMPLE_SEED = 20240601  # fixed: the same coordinates in every trial of a workload
ERROR_CHARS = 300


@dataclass(frozen=True)
class TrialSpec:
    """What identifies and configures one trial; decided by the parent, sent to the child."""

    run_id: str
    kind: str
    workload: str
    setting: str
    repeat: int
    seed: int
    device: str
    threads: int
    steps: int
    warmup: int
    batch: int
    image: int
    vary: str = "impl"
    memory_format: str = "contiguous"
    sidecar: str | None = None  # path relative to the results file's directory
    keep_params: bool = False
    # FLOPs per step already counted by an earlier trial of the same workload and sizes
    # (they do not depend on the setting): saves ~0.2 s of counting per trial.
    known_flops: float | None = None

    @property
    def trial_id(self) -> str:
        parts = [self.kind, self.workload, self.setting, f"r{self.repeat}", f"s{self.seed}", f"t{self.threads}"]
        if self.vary != "impl":
            parts.append(f"vary-{self.vary}")
        if self.memory_format != "contiguous":
            parts.append(self.memory_format)
        return "/".join(parts)

    @property
    def init_seed(self) -> int:
        varies = self.vary in ("init", "all")
        return derive_seed(self.seed, "init", self.repeat if varies else 0)

    @property
    def data_seed(self) -> int:
        varies = self.vary in ("data", "all")
        return derive_seed(self.seed, "data", self.repeat if varies else 0)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def at_profile(cls, workload: str, setting: str, device: str, profile: str, **fields) -> TrialSpec:
        """A trial of `workload` under `setting` at the sizes its `profile` declares; other
        fields (kind, repeat, seed, threads, steps, ...) default to one timed trial."""
        size = get_workload(workload).size(profile)
        base = {
            "run_id": "adhoc",
            "kind": "timed",
            "repeat": 0,
            "seed": 0,
            "threads": torch.get_num_threads(),
            "steps": size.steps,
            "warmup": size.warmup,
            "batch": size.batch,
            "image": size.image,
        }
        return cls(workload=workload, setting=setting, device=device, **{**base, **fields})

    @classmethod
    def from_dict(cls, d: dict) -> TrialSpec:
        return cls(**d)


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
        shapes = Counter((tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) for x, y in batches)
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


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    # strict mode's message goes on with advice every user has seen; the op is the finding
    first = first.split(", but you set 'torch.use_deterministic_algorithms(True)'")[0]
    text = f"{type(exc).__name__}: {first}".strip()
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def failure_kind(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in msg.lower():
        return "oom"
    if "does not have a deterministic implementation" in msg:
        return "unsupported"
    return "error"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_record(spec: TrialSpec) -> dict:
    """The fields every record has, whatever happened to the trial."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "trial_id": spec.trial_id,
        "kind": spec.kind,
        "workload": spec.workload,
        "setting": spec.setting,
        "repeat": spec.repeat,
        "seed": spec.seed,
        "init_seed": spec.init_seed,
        "data_seed": spec.data_seed,
        "vary": spec.vary,
        "threads": spec.threads,
        "device": spec.device,
        "memory_format": spec.memory_format,
        "steps": spec.steps,
        "warmup": spec.warmup,
        "batch_size": spec.batch,
        "image_size": spec.image,
        "status": None,
        "error": None,
        "started_at": _now(),
    }


def failure_record(spec: TrialSpec, status: str, error: str, environment: dict | None = None) -> dict:
    """A record the parent writes for a trial whose process produced none (crash, timeout)."""
    return {**base_record(spec), "status": status, "error": error, "env": environment}


def _train_step(wl: Workload, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    wl.optimizer.zero_grad(set_to_none=True)
    loss = wl.loss_fn(wl.model(x), y)
    loss.backward()
    wl.optimizer.step()
    return loss


def timed_steps(wl: Workload, batches, device: str, after_step=None) -> list[float]:
    """The timed region: one training step per batch, each between a start and a stop
    mark, and `after_step(j, loss)` outside the marks. Returns seconds per step; on CUDA
    the only synchronisation is in `StepTimer.times()`, after the last step."""
    timer = StepTimer(device, len(batches))
    for j, (x, y) in enumerate(batches):
        timer.start(j)
        loss = _train_step(wl, x, y)
        timer.stop(j)
        if after_step is not None:
            after_step(j, loss)
    return timer.times()


class TrainStep:
    """A built, warmed-up workload under its setting, for timers outside a trial (asv's
    time_* benchmark, the selfcheck). The setting stays applied until `close()`; each
    call runs one training step and synchronises on CUDA, as an external timer needs."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec
        setting = get_setting(spec.setting)
        # The setting's environment (CUBLAS_WORKSPACE_CONFIG) must be in place before the
        # first cuBLAS call of this process: a trial process gets it from the parent.
        self._saved_env = {key: os.environ.get(key) for key, _ in setting.env}
        apply_env(setting)
        use_device(spec.device)
        self._setting = applied(setting)
        self._setting.__enter__()
        try:
            self.wl = _build(spec)
            self.wl.model.train()
            self.batches = self.wl.batches[spec.warmup : spec.total_steps]  # the steps a trial would time
            self.i = 0
            for x, y in self.wl.batches[: spec.warmup]:
                _train_step(self.wl, x, y)
            synchronize(spec.device)
        except BaseException:
            self.close()
            raise

    def __call__(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        _train_step(self.wl, x, y)
        synchronize(self.spec.device)

    def close(self) -> None:
        self._setting.__exit__(None, None, None)
        set_environ(self._saved_env.items())

    def __enter__(self) -> TrainStep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _build(spec: TrialSpec) -> Workload:
    seed_everything(spec.init_seed)  # module initialisers draw from the global generators
    wl = get_workload(spec.workload).factory(
        WorkloadConfig(spec.device, spec.init_seed, spec.data_seed, spec.batch, spec.image, spec.total_steps)
    )
    if len(wl.batches) < spec.total_steps:
        raise ValueError(f"workload gave {len(wl.batches)} batches for {spec.total_steps} steps")
    if spec.memory_format == "channels_last":
        wl.model.to(memory_format=torch.channels_last)
        wl.batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in wl.batches]
    return wl


def _memory_format_of(model: torch.nn.Module) -> str:
    for p in model.parameters():
        if p.dim() == 4:
            return (
                "channels_last"
                if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                else "contiguous"
            )
    return "contiguous"


def _strata(wl: Workload, spec: TrialSpec) -> list[int] | None:
    """Index of the input shape of each timed step, when shapes vary (else None)."""
    shapes = [tuple(wl.batches[spec.warmup + j][0].shape) for j in range(spec.steps)]
    if len(set(shapes)) < 2:
        return None
    index = {s: k for k, s in enumerate(sorted(set(shapes)))}
    return [index[s] for s in shapes]


class _StepLog:
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


def _warm_up(spec: TrialSpec, wl: Workload, log: _StepLog) -> dict:
    """The cold start: the first steps, where cuDNN autotunes (synchronising here is
    outside the timed region)."""
    out, t0 = {}, time.perf_counter()
    for i in range(spec.warmup):
        x, y = wl.batches[i]
        log.record(i, _train_step(wl, x, y))
        if i == 0:
            synchronize(spec.device)
            out["first_step_s"] = time.perf_counter() - t0
    synchronize(spec.device)
    out["cold_start_s"] = time.perf_counter() - t0 if spec.warmup else None
    return out


def _timing(spec: TrialSpec, wl: Workload, log: _StepLog) -> dict:
    """The timed region and its statistics; peak memory and the busy guard around it."""
    out, cpu_start = {}, cpu_sample()
    reset_peak_memory(spec.device)
    t0 = time.perf_counter()
    times = timed_steps(
        wl, wl.batches[spec.warmup : spec.total_steps], spec.device, lambda j, loss: log.record(spec.warmup + j, loss)
    )
    out["region_s"] = time.perf_counter() - t0
    out["peak_memory_bytes"], out["memory_metric"] = peak_memory(spec.device)
    out["busy"] = busy_report(cpu_start, cpu_sample(), torch.get_num_threads())
    # All step times are kept raw; steps that took a snapshot are left out of the
    # statistics (unless every timed step took one, as in a run of a step or two).
    snapped = [j for j in range(spec.steps) if spec.warmup + j + 1 in log.snap_at]
    out["step_times_s"] = times
    out["excluded_steps"] = snapped if len(snapped) < len(times) else []
    out["step_strata"] = _strata(wl, spec)
    out.update(summarize(*kept_steps(out), batch=spec.batch))
    return out


def _outcome(wl: Workload, log: _StepLog) -> tuple[dict, dict]:
    """The fingerprints of what training produced, and the arrays for the sidecar."""
    losses = log.losses.cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    wl.model.eval()
    with torch.no_grad():
        ex, ey = wl.eval_batch
        logits = wl.model(ex)
    preds = logits.argmax(1)
    out = {
        "final_loss": float(losses[-1]),
        "first_nonfinite_step": int(bad[0]) + 1 if len(bad) else None,
        "eval_accuracy": float((preds == ey).float().mean()),
        "params_sha256": tensors_sha256(log.sampler.params),
        "logits_sha256": tensors_sha256([logits]),
    }
    arrays = {
        "checkpoints": np.asarray(log.checkpoints),
        "param_samples": log.sampler.samples.cpu().numpy(),
        "param_norms": log.sampler.norms.cpu().numpy(),
        "losses": losses.numpy(),
        "eval_logits": logits.float().cpu().numpy(),
        "eval_preds": preds.cpu().numpy(),
    }
    return out, arrays


def _flops(spec: TrialSpec, wl: Workload, median_step_s: float) -> dict:
    if spec.known_flops:
        flops, source = spec.known_flops, "earlier trial"
    else:
        flops, source = flops_per_step(wl.model, wl.loss_fn, wl.batches[: spec.total_steps]), "counted"
    return {"flops_per_step": flops, "flops_source": source, "achieved_flops": flops / median_step_s if flops else None}


def _measure(spec: TrialSpec, results_dir: Path | None) -> dict:
    """Build, warm up, time, capture. Runs inside `applied(setting)`."""
    t_build = time.perf_counter()
    wl = _build(spec)
    synchronize(spec.device)
    out = {"build_s": time.perf_counter() - t_build, "memory_format_read_back": _memory_format_of(wl.model)}
    log = _StepLog(wl.model, spec.total_steps, spec.device)
    wl.model.train()
    out.update(_warm_up(spec, wl, log))
    out.update(_timing(spec, wl, log))
    outcome, arrays = _outcome(wl, log)
    out.update(outcome)
    out.update(_flops(spec, wl, out["step_time_median_s"]))
    if spec.sidecar and results_dir is not None:
        if spec.keep_params:
            arrays["params"] = torch.cat([p.detach().float().reshape(-1) for p in log.sampler.params]).cpu().numpy()
        path = results_dir / spec.sidecar
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        out["sidecar"] = spec.sidecar
    return out


def run_trial(spec: TrialSpec, results_dir: Path | str | None = None) -> dict:
    """Run one trial in this process and return its record; failures become a status."""
    record = base_record(spec)
    t0 = time.perf_counter()
    results_dir = Path(results_dir) if results_dir is not None else None
    if spec.threads:
        torch.set_num_threads(spec.threads)
    setting = get_setting(spec.setting)
    try:
        use_device(spec.device)
        with applied(setting):
            record["flags"] = read_flags()
            record.update(_RUNNERS[spec.kind](spec, results_dir))
        if record.get("first_nonfinite_step"):
            record["status"] = "nan"
            record["error"] = f"loss became non-finite at step {record['first_nonfinite_step']}"
        elif record.get("final_loss") is not None and not math.isfinite(record["final_loss"]):
            record["status"] = "nan"
            record["error"] = "final loss is not finite"
        else:
            record["status"] = "ok"
    except Exception as exc:  # recorded as a finding; the sweep goes on
        record["status"] = failure_kind(exc)
        record["error"] = one_line(exc)
    record["threads_read_back"] = torch.get_num_threads()
    record["wall_s"] = time.perf_counter() - t0
    record["finished_at"] = _now()
    record["env"] = envmod.fingerprint(spec.device)
    return record


def _audit(spec: TrialSpec, results_dir: Path | None) -> dict:
    from detcost import audit

    return audit.run_audit(spec)


def _profiled(spec: TrialSpec, results_dir: Path | None) -> dict:
    from detcost import explain

    return explain.run_profiled(spec, results_dir)


_RUNNERS = {"timed": _measure, "aa": _measure, "seed": _measure, "audit": _audit, "profiled": _profiled}


def child_main(spec_dict: dict, environ: dict, results_dir: str | None, conn) -> None:
    """Entry point of a trial process: set the environment the parent chose (before
    anything touches CUDA), run the trial, send the record back."""
    set_environ(environ.items())
    spec = TrialSpec.from_dict(spec_dict)
    record = run_trial(spec, results_dir)
    conn.send(record)
    conn.close()


def trial_environ(spec: TrialSpec, results_dir: Path | None = None) -> dict:
    """The environment variables the parent sets for this trial's process: the setting's
    (CUBLAS_WORKSPACE_CONFIG) and, for a profiled trial on CUDA, the cuDNN log's."""
    from detcost.explain import cudnn_log_environ

    return {**dict(get_setting(spec.setting).env), **cudnn_log_environ(spec, results_dir)}


__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "VARY_MODES",
    "TrialSpec",
    "checkpoint_steps",
    "child_main",
    "failure_record",
    "run_trial",
    "trial_environ",
]
