"""Training, once: build a workload for a spec, the process state a trial runs under, and
the one training loop that every trial kind (timed, audited, profiled) and the selfcheck
use, and the clock warm-up (a load of its own) the timed and profiled kinds share.
Nothing here records or measures; the kinds above it do.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from detcost import axes
from detcost.applying import in_force
from detcost.errors import is_out_of_memory
from detcost.record import Kind, TrialSpec
from detcost.seeding import seed_everything
from detcost.settings import apply_env, get_setting, set_environ
from detcost.timing import StepTimer, min_warmup_s, release_cached_memory, synchronize, use_device, warm_load
from detcost.workloads import Batch, Workload, WorkloadConfig, get_workload


def spec_at_preset(workload: str, setting: str, device: str, preset: str, **fields) -> TrialSpec:
    """A trial of `workload` under `setting` at the sizes its size `preset` declares; other
    fields (kind, repeat, seed, axes, steps, ...) default to one timed trial, each axis at
    its first sweep default (threads: this process's thread count)."""
    size = get_workload(workload).size(preset)
    base = {
        "run_id": "adhoc",
        "kind": Kind.TIMED,
        "repeat": 0,
        "seed": 0,
        "steps": size.steps,
        "warmup": size.warmup,
        "batch_size": size.batch,
        "image_size": size.image,
        "axes": axes.first_defaults(device),
    }
    return TrialSpec(workload=workload, setting=setting, device=device, **{**base, **fields})


def build(spec: TrialSpec) -> Workload:
    """The workload of a spec, from its seeds, with every axis applied to it in registry
    order: its model, its batches and its training step, each as the axis wraps them."""
    seed_everything(spec.init_seed)  # module initialisers draw from the global generators
    config = WorkloadConfig(
        spec.device, spec.init_seed, spec.data_seed, spec.batch_size, spec.image_size, spec.total_steps
    )
    wl = get_workload(spec.workload).factory(config)
    if len(wl.batches) < spec.total_steps:
        raise ValueError(f"workload gave {len(wl.batches)} batches for {spec.total_steps} steps")
    wl.model_as_built, wl.step = wl.model, Step()
    for axis, value in axes.each(spec.axes):
        wl.model = axis.wrap_model(value, wl.model, spec)
        wl.batches = axis.batches(value, wl.batches, spec)
        wl.step = axis.wrap_step(value, wl.step, spec)
    return wl


def read_back(wl: Workload) -> dict:
    """Each axis's value as torch reports it inside the trial (axes with nothing to read
    back leave theirs out)."""
    values = {axis.name: axis.read_back(wl) for axis, _ in axes.each({})}
    return {name: value for name, value in values.items() if value is not None}


@contextlib.contextmanager
def trial_state(spec: TrialSpec) -> Iterator[None]:
    """The process state a trial runs under: each axis's process-wide part (threads, TF32),
    the device, and the setting's flags, put in force as `detcost.apply()` does, all
    restored on exit (a process that runs trials in-process, as the tests and asv do,
    keeps its own state)."""
    undo = [axis.apply(value, spec) for axis, value in axes.each(spec.axes)]
    try:
        use_device(spec.device)
        with in_force(get_setting(spec.setting), environ=False):  # the trial's parent set its environment
            yield
    finally:
        for restore in reversed([u for u in undo if u]):
            restore()


class Step:
    """The plain training step, in the two parts an axis's `wrap_step` may wrap (see
    `axes.StepWrapper`): the forward pass (model and loss) and the update (backward, the
    optimizer's step)."""

    def forward(self, wl: Workload, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return wl.loss_fn(wl.model(x), y)

    def update(self, wl: Workload, loss: torch.Tensor) -> None:
        loss.backward()
        wl.optimizer.step()


def train_step(wl: Workload, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One step through the step the axes wrapped (the plain one for a workload that was
    not built here): gradients cleared, forward, update."""
    step = wl.step or Step()
    wl.optimizer.zero_grad(set_to_none=True)
    loss = step.forward(wl, x, y)
    step.update(wl, loss)
    return loss


def run_steps(
    wl: Workload,
    batches: Sequence[Batch],
    *,
    timer: StepTimer | None = None,
    after_step: Callable[[int, torch.Tensor], None] | None = None,
) -> None:
    """The training loop: one step per batch. With a `timer`, each step sits between its
    start and stop marks, reading its batch included (a DataLoader's cost is step time);
    `after_step(j, loss)` runs outside them (snapshots, losses)."""
    wl.model.train()
    reader = iter(batches)
    for j in range(len(batches)):
        if timer is not None:
            timer.start(j)
        x, y = next(reader)
        loss = train_step(wl, x, y)
        if timer is not None:
            timer.stop(j)
        if after_step is not None:
            after_step(j, loss)


# ---- the clock warm-up ------------------------------------------------------------------


def warm_clocks(spec: TrialSpec, started: float, min_seconds: float | None = None) -> dict:
    """After a trial's step-count warm-up (begun at `started`, a `time.perf_counter()`),
    keep the device loaded (`keep_warm`) until the warm-up has lasted `min_seconds`
    (default `timing.min_warmup_s`: on CUDA the GPU's clocks leave idle only under load;
    the CPU needs none). Every kind that reads device time after a warm-up (timed,
    profiled) takes it from here. {} where there is nothing to top up."""
    minimum = min_warmup_s(spec.device) if min_seconds is None else min_seconds
    if minimum <= 0:
        return {}
    return keep_warm(spec, minimum - (time.perf_counter() - started))


def keep_warm(spec: TrialSpec, seconds: float) -> dict:
    """Load the device for `seconds` with a load of its own (`timing.warm_load`), not
    with the trial's model: every label gets the same warm-up, whatever wraps its model
    (a compiled or DDP one could not be copied), and the trial's model, optimizer and
    generators never see it. A device with no room for the load keeps the step-count
    warm-up alone, and the record says why."""
    if seconds <= 0:
        return {"clock_warmup_steps": 0}
    t0 = time.perf_counter()
    try:
        rounds = warm_load(spec.device, seconds, clock=time.perf_counter)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        note = f"no room for the warm-up load: {type(exc).__name__}"
    else:
        return {"clock_warmup_steps": rounds, "clock_warmup_s": time.perf_counter() - t0}
    release_cached_memory(spec.device)  # out of the except block: the buffers went with the traceback
    return {"clock_warmup_steps": 0, "clock_warmup_note": note}


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
        self._state = trial_state(spec)
        self._state.__enter__()
        try:
            self.wl = build(spec)
            if getattr(self.wl.batches, "read_once", False):  # e.g. a DataLoader's; these calls cycle
                raise ValueError(
                    "TrainStep cycles through its batches; these are read once: time them with detcost run"
                )
            self.batches = self.wl.batches[spec.warmup : spec.total_steps]  # the steps a trial would time
            self.i = 0
            run_steps(self.wl, self.wl.batches[: spec.warmup])
            synchronize(spec.device)
        except BaseException:
            self.close()
            raise

    def __call__(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        train_step(self.wl, x, y)
        synchronize(self.spec.device)

    def close(self) -> None:
        self._state.__exit__(None, None, None)
        set_environ(self._saved_env.items())

    def __enter__(self) -> TrainStep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
