"""The axis registry: the dimensions a trial varies along besides its workload and setting.

An axis is one `Axis` subclass here (or in a user's module), registered once, and
everything that needs to know the axes iterates over the registry: the CLI flag, the
sweep's plan, a trial's identity (`trial_id`), how the trial process applies the value
and reads it back, resume and compare matching, the FLOP cache key, the dry run's
estimate, the tables' group keys and the snippet. Adding an axis edits nothing else.

Every hook has one signature, the axis's value first, then what the hook acts on, then
the trial's spec where it needs one:

- in the trial process: `apply(value, spec)` (process state; returns what restores it),
  `wrap_model(value, model, spec)`, `wrap_step(value, step, spec)` (a `StepWrapper`),
  `batches(value, batches, spec)`, and `read_back(workload)`: what torch says is in force,
  stored as `<name>_read_back` (None: nothing to read), given no value so that it cannot
  echo the one asked for;
- in the parent: `id_part(value)`, `estimate(value, spec)` (a `Cost`, for the dry run),
  `describe(value)` (a table's words), `snippet(values, cpu)` (the recommendation's
  lines), `check(value, device)` and `check_workload(value, workload)` (why a value
  cannot run, one line), `applies(others)` (whether the axis matters, given the other
  axes' values), `varies_seed(value, purpose)`, `host_threads(value, device)` (for the
  busy guard) and `defaults_for(device)` (a sweep's values when none are given).

The hooks import torch in the trial process, not here: this module sits below the record
and loads without the training stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from detcost.errors import UsageError


@dataclass(frozen=True)
class Cost:
    """What one axis value adds to a trial, for the dry run's estimate: seconds once per
    build of the workload (cold start), seconds per step, and where the figures come from."""

    cold_start_s: float = 0.0
    step_s: float = 0.0
    basis: tuple[str, ...] = ()

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.cold_start_s + other.cold_start_s, self.step_s + other.step_s, self.basis + other.basis)


class StepWrapper:
    """A training step around another (what `wrap_step` returns): each part runs the inner
    step's unless a subclass overrides it. The parts: `forward(wl, x, y)` (model and
    loss, returns the loss) and `update(wl, loss)` (backward, the optimizer's step). Its
    state lives on the wrapper, so a copy of the workload's step copies it too."""

    def __init__(self, inner):
        self.inner = inner

    def forward(self, wl, x, y):
        return self.inner.forward(wl, x, y)

    def update(self, wl, loss) -> None:
        self.inner.update(wl, loss)


def wrapper_of(step, cls: type) -> Any:
    """The wrapper of type `cls` in a chain of steps, or None (for a read-back)."""
    while step is not None and not isinstance(step, cls):
        step = getattr(step, "inner", None)
    return step


@dataclass(frozen=True)
class Axis:
    """One axis. `name` is the record field, the table column and (with `-` for `_`) the
    CLI flag; `values` the allowed values (None: `parse` decides). The hooks (see the
    module's notes) do nothing unless a subclass overrides them."""

    name: str
    default: Any
    help: str
    values: tuple | None = None
    parse: Callable[[str], Any] = str
    affects_flops: bool = False  # part of the FLOP cache key (the model's layout, not the machine's)
    compare_across: bool = False  # the variance table compares one seed across this axis's values

    # ---- in the trial process
    def apply(self, value, spec) -> Callable[[], None] | None:
        return None

    def wrap_model(self, value, model, spec):
        return model

    def wrap_step(self, value, step, spec):
        return step

    def batches(self, value, batches, spec):
        return batches

    def read_back(self, workload) -> Any:
        return None

    # ---- in the parent
    def id_part(self, value) -> str | None:
        return None

    def estimate(self, value, spec) -> Cost:
        return Cost()

    def describe(self, value) -> str:
        return f"{self.name} {value}"

    def snippet(self, values: list, cpu: bool) -> list[str]:
        return []

    def check(self, value, device: str) -> str | None:
        return None

    def check_workload(self, value, workload) -> str | None:
        return None

    def applies(self, others: Mapping[str, Any]) -> bool:
        return True

    def varies_seed(self, value, purpose: str) -> bool:
        return False

    def host_threads(self, value, device: str) -> int | None:
        return None

    def defaults_for(self, device: str) -> list:
        return [self.default]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_list(self, text: str) -> list:
        """A comma list of values, order kept, duplicates dropped; bad input is a UsageError."""
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise UsageError(f"{self.flag}: give at least one value")
        return list(dict.fromkeys(self._parse_one(t) for t in items))

    def _parse_one(self, text: str):
        try:
            value = self.parse(text)
        except ValueError as exc:
            raise UsageError(f"{self.flag}: {exc}") from None
        if self.values is not None and value not in self.values:
            raise UsageError(f"{self.flag}: unknown value {text!r}; valid: {', '.join(map(str, self.values))}")
        return value


REGISTRY: dict[str, Axis] = {}
# Names an axis may not take, with what holds them: the record's fields and the derived
# tables' columns (their owners reserve them), where an axis's value would be overwritten.
RESERVED: dict[str, str] = {}


def _clash(name: str) -> str | None:
    for taken in (name, f"{name}_read_back"):
        if taken in RESERVED:
            return f"axis {name!r} clashes with {taken!r}, {RESERVED[taken]}; choose another name"
    return None


def reserve(names: Iterable[str], what: str) -> None:
    """Keep `names` from the axes; a registered axis that already holds one is a ValueError."""
    for name in names:
        RESERVED.setdefault(name, what)
    problem = next(filter(None, map(_clash, REGISTRY)), None)
    if problem:
        raise ValueError(problem)


def register(axis: Axis) -> Axis:
    """Add an axis; a name the record or a derived table already uses is a ValueError."""
    problem = _clash(axis.name)
    if problem:
        raise ValueError(problem)
    REGISTRY[axis.name] = axis
    return axis


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(REGISTRY)


def each(values: Mapping[str, Any]) -> Iterator[tuple[Axis, Any]]:
    """(axis, value) for every registered axis, in registry order."""
    for name, axis in REGISTRY.items():
        yield axis, values.get(name, axis.default)


def complete(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every registered axis with its value: the given one, else the axis's default.
    A name that is not an axis is a ValueError (a typo would otherwise vanish)."""
    values = dict(values or {})
    unknown = set(values) - set(REGISTRY)
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)}; registered: {names()}")
    return {axis.name: value for axis, value in each(values)}


def first_defaults(device: str) -> dict[str, Any]:
    """Each axis at the first of its sweep defaults on `device` (one trial outside a sweep)."""
    return {axis.name: axis.defaults_for(device)[0] for axis, _ in each({})}


def combinations(values: Mapping[str, list]) -> list[dict]:
    """Every combination of the given axes' values, where an axis that does not apply
    to a combination takes its default (and the duplicates that makes are dropped)."""
    out: dict[tuple, dict] = {}
    for combo in itertools.product(*values.values()):
        combo = dict(zip(values, combo))
        for name in combo:
            axis = REGISTRY.get(name)
            if axis and not axis.applies({k: v for k, v in combo.items() if k != name}):
                combo[name] = axis.default
        out.setdefault(tuple(combo.items()), combo)
    return list(out.values())


def first_problem(values: Mapping[str, list], device: str, workloads: list) -> str | None:
    """Why some axis value cannot run on `device` or one of `workloads` (WorkloadSpecs), one line."""
    for axis, _ in each({}):
        for value in values.get(axis.name, []):
            problems = [axis.check(value, device), *(axis.check_workload(value, w) for w in workloads)]
            if any(problems):
                return next(p for p in problems if p)
    return None


def host_threads(values: Mapping[str, list], device: str) -> int:
    """The host threads a trial of these axes' values keeps busy, at most (at least 1)."""
    counts = [axis.host_threads(v, device) for axis, _ in each({}) for v in values.get(axis.name, [])]
    return max([n for n in counts if n] or [1])


def cost(spec) -> Cost:
    """What every axis's value adds to the trial of `spec`, for the dry run's estimate."""
    total = Cost()
    for axis, value in each(spec.axes):
        total = total + axis.estimate(value, spec)
    return total


def compares_across(name: str) -> bool:
    """Whether the variance table compares one seed across the values of this column."""
    return name in REGISTRY and REGISTRY[name].compare_across


def id_parts(values: Mapping[str, Any]) -> list[str]:
    parts = [axis.id_part(value) for axis, value in each(values)]
    return [p for p in parts if p]


# ---- the axes ---------------------------------------------------------------------


def int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return int_at_least(text, 1)


class Threads(Axis):
    """torch's CPU thread count, set for the trial's process."""

    def apply(self, value, spec):
        import torch

        if not value:
            return None
        before = torch.get_num_threads()
        torch.set_num_threads(value)
        return lambda: torch.set_num_threads(before)

    def read_back(self, workload) -> int:
        import torch

        return torch.get_num_threads()

    def id_part(self, value) -> str:
        return f"t{value}"

    def snippet(self, values, cpu):
        if not cpu:
            return []
        n = values[0] if len(values) == 1 else "N"
        return [f"torch.set_num_threads({n})  # on the CPU, results depend on the thread count: fix it"]

    def host_threads(self, value, device):
        from detcost.timing import trial_threads

        return trial_threads(device, [value])

    def defaults_for(self, device):
        import torch

        return [torch.get_num_threads()]


register(
    Threads(
        name="threads",
        default=None,
        help="CPU thread counts, comma list; each trial runs at each (default: torch's default)",
        parse=_positive_int,
        compare_across=True,
    )
)

VARY_MODES = ("impl", "init", "data", "all")


class Vary(Axis):
    """What differs between repeats: a new seed per repeat for the purposes it names."""

    def id_part(self, value):
        return None if value == "impl" else f"vary-{value}"

    def varies_seed(self, value, purpose):
        return value in ("all", purpose)


register(
    Vary(
        name="vary",
        default="impl",
        values=VARY_MODES,
        help="what differs between repeats, comma list: impl (only the kernels: same seed, fresh processes; "
        "default), init (initialisation), data (data order and samples), all",
    )
)

# Where a step's batch comes from: batches staged on the device before timing (the
# default: the price of the kernels alone), or a real DataLoader that shuffles, with
# `workers` worker processes, seeded as PyTorch's notes say or not seeded at all (the
# common mistake). A loader's batches are read inside the timed step. See detcost.loader.
DATA_MODES = ("staged", "loader", "loader-unseeded")
# What reading a loader's batch adds to a step, for the dry run. Measured on a 2-core CPU
# (torch 2.13, simple_cnn and resnet18 at their cpu and quick sizes, LoaderBatches): read in
# the trial's own process, 6-7 us a sample (the flip, the collate); with worker processes
# the samples are read beside the step and a batch costs 0.6-0.9 ms to hand over; a
# worker's start, 0.01-0.02 s. The copy to a GPU (pinned memory) is not in these figures.
LOADER_SAMPLE_S = 7e-6
LOADER_WORKER_BATCH_S = 0.9e-3
LOADER_WORKER_START_S = 0.02


class Data(Axis):
    """A shuffling DataLoader in place of the staged batches (see detcost.loader)."""

    def batches(self, value, batches, spec):
        if value == "staged":
            return batches
        from detcost.loader import loader_batches

        workers = spec.axes.get("workers", 0)
        return loader_batches(batches, value, workers, spec.data_seed, spec.total_steps, spec.device)

    def read_back(self, workload) -> str:
        loader = getattr(workload.batches, "loader", None)
        if loader is None:
            return "staged"
        seeded = "seeded" if loader.generator is not None else "unseeded"
        return f"DataLoader ({seeded}, {loader.num_workers} workers)"

    def id_part(self, value):
        return None if value == "staged" else value

    def estimate(self, value, spec) -> Cost:
        if value == "staged":
            return Cost()
        workers = spec.axes.get("workers", 0)
        step = LOADER_WORKER_BATCH_S if workers else spec.batch_size * LOADER_SAMPLE_S
        basis = (
            f"--data {value}: {LOADER_SAMPLE_S * 1e6:g} us a sample read in the trial's process, "
            f"{LOADER_WORKER_BATCH_S * 1e3:g} ms a batch from workers, {LOADER_WORKER_START_S:g} s a worker's "
            "start (measured on a 2-core CPU; the copy to a GPU is not in them)"
        )
        return Cost(cold_start_s=workers * LOADER_WORKER_START_S, step_s=step, basis=(basis,))

    def snippet(self, values, cpu):
        if values != ["loader"]:
            return []
        return [
            "# a seeded DataLoader, as priced: g = torch.Generator().manual_seed(seed)",
            "# def seed_worker(_): s = torch.initial_seed() % 2**32; numpy.random.seed(s); random.seed(s)",
            "# DataLoader(dataset, shuffle=True, generator=g, worker_init_fn=seed_worker, num_workers=...)",
        ]

    def check_workload(self, value, workload):
        if value == "staged" or not workload.input_size_varies:
            return None
        return (
            f"--data {value}: {workload.name} changes its input size every step, and a DataLoader batches one "
            "size; leave it out of --workloads (the default workloads include it)"
        )


register(
    Data(
        name="data",
        default="staged",
        values=DATA_MODES,
        help="comma list of staged (batches on the device before timing; default), loader (a shuffling "
        "DataLoader, seeded: generator + worker_init_fn), loader-unseeded (the same, seeded by nobody)",
    )
)


class Workers(Axis):
    """DataLoader worker processes: the data axis reads them; they matter only with a loader."""

    def id_part(self, value):
        return f"w{value}" if value else None

    def applies(self, others):
        return others.get("data", "staged") != "staged"


register(
    Workers(
        name="workers",
        default=0,
        help="DataLoader worker processes for --data loader modes, comma list (default: 0, the trial's own "
        "process reads the data)",
        parse=lambda text: int_at_least(text, 0),
    )
)

MEMORY_FORMATS = ("contiguous", "channels_last")


def _channels_last_pair(pair):
    import torch

    x, y = pair
    return x.contiguous(memory_format=torch.channels_last), y


class MemoryFormat(Axis):
    """channels_last: the model's weights and every input batch."""

    def wrap_model(self, value, model, spec):
        import torch

        return model.to(memory_format=torch.channels_last) if value == "channels_last" else model

    def batches(self, value, batches, spec):
        from detcost.loader import map_batches

        return map_batches(batches, _channels_last_pair) if value == "channels_last" else batches

    def read_back(self, workload) -> str:
        import torch

        for p in workload.model.parameters():
            if p.dim() == 4:
                last = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                return "channels_last" if last else "contiguous"
        return "contiguous"

    def id_part(self, value):
        return None if value == "contiguous" else value

    def snippet(self, values, cpu):
        if values != ["channels_last"]:
            return []
        return [
            "# channels_last: the model and every input batch",
            "# model = model.to(memory_format=torch.channels_last); "
            "x = x.contiguous(memory_format=torch.channels_last)",
        ]


register(
    MemoryFormat(
        name="memory_format",
        default="contiguous",
        values=MEMORY_FORMATS,
        help="comma list of contiguous, channels_last: each trial runs in each (default: contiguous)",
        affects_flops=True,
    )
)

# TF32 for convolutions and matmul together, through the fp32_precision API of torch 2.9+
# (never the legacy allow_tf32 setters: mixing the two makes the legacy getters raise).
# "torch" leaves torch's defaults (TF32 for cuDNN convolutions, IEEE for matmul).
TF32_MODES = ("torch", "on", "off")
_FP32_PRECISION = {"on": "tf32", "off": "ieee"}


class Tf32(Axis):
    """TF32 for convolutions and matmul, set for the trial's process."""

    def apply(self, value, spec):
        import torch

        if value not in _FP32_PRECISION:
            return None
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        before = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision = matmul.fp32_precision = _FP32_PRECISION[value]

        def restore() -> None:
            conv.fp32_precision, matmul.fp32_precision = before

        return restore

    def read_back(self, workload) -> str:
        import torch

        return f"conv={torch.backends.cudnn.conv.fp32_precision},matmul={torch.backends.cuda.matmul.fp32_precision}"

    def id_part(self, value):
        return None if value == "torch" else f"tf32-{value}"

    def snippet(self, values, cpu):
        if values not in (["on"], ["off"]):
            return []
        p = _FP32_PRECISION[values[0]]
        note = "  # TF32 changes nothing on the CPU" if cpu else ""
        return [
            f'torch.backends.cudnn.conv.fp32_precision = "{p}"{note}',
            f'torch.backends.cuda.matmul.fp32_precision = "{p}"',
        ]


register(
    Tf32(
        name="tf32",
        default="torch",
        values=TF32_MODES,
        help="comma list of torch (its defaults: TF32 convolutions, IEEE matmul), on, off: TF32 for "
        "convolutions and matmul together; each trial runs at each (default: torch)",
    )
)

# torch.compile (default mode). Compiling happens on the first step, inside the warm-up,
# so its time is cold start, never step time. Under use_deterministic_algorithms Inductor
# turns deterministic too (torch._inductor.config.deterministic follows it) and skips
# autotuning, so determinism's price differs with compile; the read-back shows both.
COMPILE_MODES = ("off", "on")
# What compiling adds to a trial's cold start, for the dry run. On the CPU, measured on a
# 2-core CPU (torch 2.13, Inductor's C++ backend, quick sizes): 13 s for simple_cnn, 22 s
# for resnet18, a trial's process wall time compiled less uncompiled. On CUDA an
# assumption, not a measurement (no GPU was at hand): Inductor compiles the forward and
# backward graphs and its Triton kernels, tens of seconds for a small net on a cold cache.
COMPILE_CPU_S = 15.0
COMPILE_CUDA_S = 40.0


class Compile(Axis):
    """torch.compile of the model, after the build: the first warm-up step compiles."""

    def wrap_model(self, value, model, spec):
        import torch

        return torch.compile(model) if value == "on" else model

    def read_back(self, workload) -> str:
        if not hasattr(workload.model, "_orig_mod"):  # torch.compile's OptimizedModule
            return "off"
        import torch._inductor.config as inductor

        return f"on (inductor deterministic={bool(inductor.deterministic)})"

    def id_part(self, value):
        return None if value == "off" else "compiled"

    def estimate(self, value, spec) -> Cost:
        if value != "on":
            return Cost()
        if spec.device.startswith("cuda"):
            basis = f"--compile on: {COMPILE_CUDA_S:g} s compiling a trial on CUDA (an assumption: no GPU measured it)"
            return Cost(cold_start_s=COMPILE_CUDA_S, basis=(basis,))
        basis = f"--compile on: {COMPILE_CPU_S:g} s compiling a trial on the CPU (13-22 s measured on 2 cores)"
        return Cost(cold_start_s=COMPILE_CPU_S, basis=(basis,))

    def snippet(self, values, cpu):
        return ["model = torch.compile(model)  # compiled, as priced"] if values == ["on"] else []


register(
    Compile(
        name="compile",
        default="off",
        values=COMPILE_MODES,
        help="comma list of off, on: torch.compile the model (default mode); compile time goes into the "
        "cold start (default: off)",
    )
)

# Mixed precision: autocast on the forward pass; float16 adds a GradScaler, as training
# with it needs. The read-back is the dtype a conv actually produced under the trial's
# autocast, so a dtype the device does not support shows as what ran instead.
AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


class Autocast(StepWrapper):
    """The forward pass under autocast at `dtype`; with a GradScaler, the update goes
    through it (it owns backward and the optimizer's step: the inner update is not run)."""

    def __init__(self, inner, dtype, scaler=None):
        super().__init__(inner)
        self.dtype, self.scaler = dtype, scaler

    def forward(self, wl, x, y):
        import torch

        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.inner.forward(wl, x, y)

    def update(self, wl, loss) -> None:
        if self.scaler is None:
            self.inner.update(wl, loss)
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(wl.optimizer)
        self.scaler.update()


class Amp(Axis):
    """Mixed precision: the training step's forward pass under autocast (fp16 with a GradScaler)."""

    def wrap_step(self, value, step, spec):
        import torch

        if value == "off":
            return step
        scaler = torch.amp.GradScaler(torch.device(spec.device).type) if value == "fp16" else None
        return Autocast(step, getattr(torch, _AMP_DTYPE[value]), scaler)

    def read_back(self, workload) -> str:
        amp = wrapper_of(workload.step, Autocast)
        if amp is None:
            return "off"
        import torch

        x = workload.eval_batch[0][:1]
        conv = torch.nn.Conv2d(x.shape[1], 1, 1).to(x.device)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp.dtype):
            produced = conv(x).dtype
        return str(produced).removeprefix("torch.") + (" + GradScaler" if amp.scaler is not None else "")

    def id_part(self, value):
        return None if value == "off" else f"amp-{value}"

    def snippet(self, values, cpu):
        if values not in (["bf16"], ["fp16"]):
            return []
        dtype = _AMP_DTYPE[values[0]]
        lines = [f"# mixed precision, as priced: with torch.autocast(device.type, dtype=torch.{dtype}): forward"]
        if values == ["fp16"]:
            lines.append(
                "# scaler = torch.amp.GradScaler(device.type); scaler.scale(loss).backward(); scaler.step(opt)"
            )
        return lines

    def check(self, value, device):
        """On the CPU, a dtype torch's CPU autocast refuses. On CUDA nothing is asked here:
        asking would initialise CUDA in the sweep's parent (a GPU without bf16 shows in the
        trials' read-back instead)."""
        if value == "off" or not device.startswith("cpu"):
            return None
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns, and disables autocast, for a dtype it cannot use
            try:
                with torch.autocast(torch.device(device).type, dtype=getattr(torch, _AMP_DTYPE[value])):
                    pass
            except Exception as exc:  # noqa: BLE001 - any refusal is the user's one-line answer
                return f"--amp {value} is not supported on {device}: {str(exc).splitlines()[0]}"
        return None


register(
    Amp(
        name="amp",
        default="off",
        values=AMP_MODES,
        help="comma list of off, bf16, fp16: autocast the forward pass (fp16 with a GradScaler); each trial "
        "runs at each (default: off)",
    )
)
