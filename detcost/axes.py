"""The axis registry: the dimensions a trial varies along besides its workload and setting.

An axis is one entry here, and everything that needs to know the axes iterates over the
registry: the CLI flag, the sweep's plan, a trial's identity (`trial_id`), how the trial
process applies the value and reads it back, resume and compare matching, the FLOP cache
key, the table's group keys and the snippet. Adding an axis means adding one `Axis` below
(and its test); nothing else is edited.

The hooks run in the trial process and import torch there, not here: this module is part
of the record's bottom layer and loads without the training stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from detcost.errors import UsageError


@dataclass(frozen=True)
class Axis:
    """One axis. `name` is the record field, the table column and (with `-` for `_`) the
    CLI flag; `values` the allowed values (None: `parse` decides)."""

    name: str
    default: Any
    help: str
    values: tuple | None = None
    parse: Callable[[str], Any] = str
    # How the value shows in the trial id; None leaves it out (the default value, usually).
    id_part: Callable[[Any], str | None] = lambda v: None
    # In the trial process: before the workload is built (process state; it may return a
    # callable that restores the state, run when the trial's state is left), after it is built.
    before_build: Callable[[Any], Callable[[], None] | None] | None = None
    on_workload: Callable[[Any, Any, Any], None] | None = None  # (workload, value, spec)
    # What torch says is in force, stored as `<name>_read_back`.
    read_back: Callable[[Any], Any] | None = None  # (workload) -> value
    # Lines of the recommendation's snippet for the values a run used, on the CPU or not.
    snippet: Callable[[list, bool], list[str]] | None = None
    # Whether repeats under this value draw a new seed for a purpose ("init", "data").
    varies_seed: Callable[[Any, str], bool] | None = None
    affects_flops: bool = False  # part of the FLOP cache key (the model's layout, not the machine's)
    compare_across: bool = False  # the variance table compares one seed across this axis's values
    sweep_default: Callable[[str], list] | None = None  # a sweep's values when none are given (by device)
    # Why a value cannot run on a device (one line), or None: checked before any trial.
    check: Callable[[Any, str], str | None] | None = None
    # Why a value cannot run on a workload (given its WorkloadSpec), one line, or None.
    check_workload: Callable[[Any, Any], str | None] | None = None
    # Whether the value matters, given the other axes' values (a combination); where it
    # does not, a sweep runs the default only (no duplicate trials).
    applies: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_list(self, text: str) -> list:
        """A comma list of values, order kept, duplicates dropped; bad input is a UsageError."""
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise UsageError(f"{self.flag}: give at least one value")
        values = [self._parse_one(t) for t in items]
        return list(dict.fromkeys(values))

    def _parse_one(self, text: str):
        try:
            value = self.parse(text)
        except ValueError as exc:
            raise UsageError(f"{self.flag}: {exc}") from None
        if self.values is not None and value not in self.values:
            raise UsageError(f"{self.flag}: unknown value {text!r}; valid: {', '.join(map(str, self.values))}")
        return value

    def defaults_for(self, device: str) -> list:
        return self.sweep_default(device) if self.sweep_default else [self.default]


REGISTRY: dict[str, Axis] = {}


def register(axis: Axis) -> Axis:
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


def combinations(values: Mapping[str, list]) -> list[dict]:
    """Every combination of the given axes' values, where an axis that does not apply
    to a combination takes its default (and the duplicates that makes are dropped)."""
    out: dict[tuple, dict] = {}
    for combo in itertools.product(*values.values()):
        combo = dict(zip(values, combo))
        for name in combo:
            axis = REGISTRY.get(name)
            if axis and axis.applies and not axis.applies(combo):
                combo[name] = axis.default
        out.setdefault(tuple(combo.items()), combo)
    return list(out.values())


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


def _set_threads(n: int | None) -> Callable[[], None] | None:
    import torch

    if not n:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return lambda: torch.set_num_threads(before)


def _threads_read_back(_workload) -> int:
    import torch

    return torch.get_num_threads()


def _threads_snippet(values: list, cpu: bool) -> list[str]:
    if not cpu:
        return []
    n = values[0] if len(values) == 1 else "N"
    return [f"torch.set_num_threads({n})  # on the CPU, results depend on the thread count: fix it"]


def _torch_threads(device: str) -> list[int]:
    import torch

    return [torch.get_num_threads()]


register(
    Axis(
        name="threads",
        default=None,
        help="CPU thread counts, comma list; each trial runs at each (default: torch's default)",
        parse=_positive_int,
        id_part=lambda n: f"t{n}",
        before_build=_set_threads,
        read_back=_threads_read_back,
        snippet=_threads_snippet,
        compare_across=True,
        sweep_default=_torch_threads,
    )
)

VARY_MODES = ("impl", "init", "data", "all")

register(
    Axis(
        name="vary",
        default="impl",
        values=VARY_MODES,
        help="what differs between repeats, comma list: impl (only the kernels: same seed, fresh processes; "
        "default), init (initialisation), data (data order and samples), all",
        id_part=lambda v: None if v == "impl" else f"vary-{v}",
        varies_seed=lambda v, purpose: v in ("all", purpose),
    )
)

# Where a step's batch comes from: batches staged on the device before timing (the
# default: the price of the kernels alone), or a real DataLoader that shuffles, with
# `workers` worker processes, seeded as PyTorch's notes say or not seeded at all (the
# common mistake). A loader's batches are read inside the timed step. See detcost.loader.
DATA_MODES = ("staged", "loader", "loader-unseeded")


def _use_loader(workload, value: str, spec) -> None:
    if value != "staged":
        from detcost.loader import use_loader

        workers = spec.axes.get("workers", 0)
        use_loader(
            workload, value, workers=workers, data_seed=spec.data_seed, steps=spec.total_steps, device=spec.device
        )


def _data_check_workload(value: str, workload) -> str | None:
    if value == "staged" or not workload.input_size_varies:
        return None
    return (
        f"--data {value}: {workload.name} changes its input size every step, and a DataLoader batches one "
        "size; leave it out of --workloads (the default workloads include it)"
    )


def _data_read_back(workload) -> str:
    loader = getattr(workload.batches, "loader", None)
    if loader is None:
        return "staged"
    seeded = "seeded" if loader.generator is not None else "unseeded"
    return f"DataLoader ({seeded}, {loader.num_workers} workers)"


def _data_snippet(values: list, cpu: bool) -> list[str]:
    if values != ["loader"]:
        return []
    return [
        "# a seeded DataLoader, as priced: g = torch.Generator().manual_seed(seed)",
        "# def seed_worker(_): s = torch.initial_seed() % 2**32; numpy.random.seed(s); random.seed(s)",
        "# DataLoader(dataset, shuffle=True, generator=g, worker_init_fn=seed_worker, num_workers=...)",
    ]


register(
    Axis(
        name="data",
        default="staged",
        values=DATA_MODES,
        help="comma list of staged (batches on the device before timing; default), loader (a shuffling "
        "DataLoader, seeded: generator + worker_init_fn), loader-unseeded (the same, seeded by nobody)",
        id_part=lambda v: None if v == "staged" else v,
        check_workload=_data_check_workload,
        on_workload=_use_loader,
        read_back=_data_read_back,
        snippet=_data_snippet,
    )
)


register(
    Axis(
        name="workers",
        default=0,
        help="DataLoader worker processes for --data loader modes, comma list (default: 0, the trial's own "
        "process reads the data)",
        parse=lambda text: int_at_least(text, 0),
        id_part=lambda n: f"w{n}" if n else None,
        applies=lambda combo: combo.get("data", "staged") != "staged",
    )
)

MEMORY_FORMATS = ("contiguous", "channels_last")


def _to_channels_last(workload, value: str, _spec) -> None:
    import torch

    from detcost.loader import map_batches

    if value == "channels_last":
        workload.model.to(memory_format=torch.channels_last)
        workload.batches = map_batches(workload.batches, _channels_last_pair)


def _channels_last_pair(pair):
    import torch

    x, y = pair
    return x.contiguous(memory_format=torch.channels_last), y


def _memory_format_of(workload) -> str:
    import torch

    for p in workload.model.parameters():
        if p.dim() == 4:
            last = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return "channels_last" if last else "contiguous"
    return "contiguous"


def _memory_format_snippet(values: list, cpu: bool) -> list[str]:
    if values != ["channels_last"]:
        return []
    return [
        "# channels_last: the model and every input batch",
        "# model = model.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)",
    ]


register(
    Axis(
        name="memory_format",
        default="contiguous",
        values=MEMORY_FORMATS,
        help="comma list of contiguous, channels_last: each trial runs in each (default: contiguous)",
        id_part=lambda v: None if v == "contiguous" else v,
        on_workload=_to_channels_last,
        read_back=_memory_format_of,
        snippet=_memory_format_snippet,
        affects_flops=True,
    )
)

# TF32 for convolutions and matmul together, through the fp32_precision API of torch 2.9+
# (never the legacy allow_tf32 setters: mixing the two makes the legacy getters raise).
# "torch" leaves torch's defaults (TF32 for cuDNN convolutions, IEEE for matmul).
TF32_MODES = ("torch", "on", "off")
_FP32_PRECISION = {"on": "tf32", "off": "ieee"}


def _set_tf32(value: str) -> Callable[[], None] | None:
    import torch

    if value not in _FP32_PRECISION:
        return None
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = matmul.fp32_precision = _FP32_PRECISION[value]

    def restore() -> None:
        conv.fp32_precision, matmul.fp32_precision = before

    return restore


def _tf32_read_back(_workload) -> str:
    import torch

    return f"conv={torch.backends.cudnn.conv.fp32_precision},matmul={torch.backends.cuda.matmul.fp32_precision}"


def _tf32_snippet(values: list, cpu: bool) -> list[str]:
    if values not in (["on"], ["off"]):
        return []
    p = _FP32_PRECISION[values[0]]
    note = "  # TF32 changes nothing on the CPU" if cpu else ""
    return [
        f'torch.backends.cudnn.conv.fp32_precision = "{p}"{note}',
        f'torch.backends.cuda.matmul.fp32_precision = "{p}"',
    ]


register(
    Axis(
        name="tf32",
        default="torch",
        values=TF32_MODES,
        help="comma list of torch (its defaults: TF32 convolutions, IEEE matmul), on, off: TF32 for "
        "convolutions and matmul together; each trial runs at each (default: torch)",
        id_part=lambda v: None if v == "torch" else f"tf32-{v}",
        before_build=_set_tf32,
        read_back=_tf32_read_back,
        snippet=_tf32_snippet,
    )
)

# torch.compile (default mode). Compiling happens on the first step, inside the warm-up,
# so its time is cold start, never step time. Under use_deterministic_algorithms Inductor
# turns deterministic too (torch._inductor.config.deterministic follows it) and skips
# autotuning, so determinism's price differs with compile; the read-back shows both.
COMPILE_MODES = ("off", "on")


def _compile_model(workload, value: str, _spec) -> None:
    import torch

    if value == "on":
        workload.model = torch.compile(workload.model)


def _compile_read_back(workload) -> str:
    if not hasattr(workload.model, "_orig_mod"):  # torch.compile's OptimizedModule
        return "off"
    import torch._inductor.config as inductor

    return f"on (inductor deterministic={bool(inductor.deterministic)})"


def _compile_snippet(values: list, cpu: bool) -> list[str]:
    return ["model = torch.compile(model)  # compiled, as priced"] if values == ["on"] else []


register(
    Axis(
        name="compile",
        default="off",
        values=COMPILE_MODES,
        help="comma list of off, on: torch.compile the model (default mode); compile time goes into the "
        "cold start (default: off)",
        id_part=lambda v: None if v == "off" else "compiled",
        on_workload=_compile_model,
        read_back=_compile_read_back,
        snippet=_compile_snippet,
    )
)

# Mixed precision: autocast on the forward pass; float16 adds a GradScaler, as training
# with it needs. The read-back is the dtype a conv actually produced under the trial's
# autocast, so a dtype the device does not support shows as what ran instead.
AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


def _amp_check(value: str, device: str) -> str | None:
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


def _set_amp(workload, value: str, _spec) -> None:
    import torch

    if value != "off":
        workload.autocast = getattr(torch, _AMP_DTYPE[value])
        if value == "fp16":
            workload.scaler = torch.amp.GradScaler(workload.eval_batch[0].device.type)


def _amp_read_back(workload) -> str:
    if workload.autocast is None:
        return "off"
    import torch

    x = workload.eval_batch[0][:1]
    conv = torch.nn.Conv2d(x.shape[1], 1, 1).to(x.device)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=workload.autocast):
        produced = conv(x).dtype
    return str(produced).removeprefix("torch.") + (" + GradScaler" if workload.scaler is not None else "")


def _amp_snippet(values: list, cpu: bool) -> list[str]:
    if values not in (["bf16"], ["fp16"]):
        return []
    dtype = _AMP_DTYPE[values[0]]
    lines = [f"# mixed precision, as priced: with torch.autocast(device.type, dtype=torch.{dtype}): forward"]
    if values == ["fp16"]:
        lines.append("# scaler = torch.amp.GradScaler(device.type); scaler.scale(loss).backward(); scaler.step(opt)")
    return lines


register(
    Axis(
        name="amp",
        default="off",
        values=AMP_MODES,
        help="comma list of off, bf16, fp16: autocast the forward pass (fp16 with a GradScaler); each trial "
        "runs at each (default: off)",
        id_part=lambda v: None if v == "off" else f"amp-{v}",
        on_workload=_set_amp,
        read_back=_amp_read_back,
        snippet=_amp_snippet,
        check=_amp_check,
    )
)
