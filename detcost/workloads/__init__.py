"""The workload registry: built-in nets, diagnostic ones, and user factories by import path."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from detcost.errors import UsageError
from detcost.workloads import (
    diagnostic,
    digits,
    dilated,
    mobilenet,
    model,
    multiscale,
    resnet18,
    scatter,
    simple_cnn,
    transposed,
    unet,
)
from detcost.workloads.base import Batch, Factory, Size, Workload, WorkloadConfig

__all__ = [
    "ALL",
    "BUILTIN",
    "DEFAULT_WORKLOADS",
    "REGISTRY",
    "SIZE_PRESETS",
    "Batch",
    "Factory",
    "Size",
    "Workload",
    "WorkloadConfig",
    "WorkloadSpec",
    "get_workload",
    "parse_workloads",
]

# The size presets every workload declares in its SIZES: a GPU's, a CPU's, and --quick's.
SIZE_PRESETS = ("gpu", "cpu", "quick")


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    factory: Factory
    sizes: dict[str, Size]
    description: str
    diagnostic: bool = False
    requires: tuple[str, str] | None = None  # (module, extra): an optional dependency it needs
    input_size_varies: bool = False  # a new input size every step (no DataLoader can batch it)

    def size(self, preset: str) -> Size:
        return self.sizes[preset]


REGISTRY: dict[str, WorkloadSpec] = {
    spec.name: spec
    for spec in (
        WorkloadSpec("simple_cnn", simple_cnn.build, simple_cnn.SIZES, simple_cnn.DESCRIPTION),
        WorkloadSpec("resnet18", resnet18.build, resnet18.SIZES, resnet18.DESCRIPTION),
        WorkloadSpec("mobilenet", mobilenet.build, mobilenet.SIZES, mobilenet.DESCRIPTION),
        WorkloadSpec("unet", unet.build, unet.SIZES, unet.DESCRIPTION),
        WorkloadSpec(
            "unet_lossfix",
            unet.build_lossfix,
            unet.SIZES,
            "unet with cross_entropy(reduction='none').mean(), the strict-mode workaround",
        ),
        WorkloadSpec("multiscale", multiscale.build, multiscale.SIZES, multiscale.DESCRIPTION, input_size_varies=True),
        WorkloadSpec("dilated", dilated.build, dilated.SIZES, dilated.DESCRIPTION),
        WorkloadSpec("transposed", transposed.build, transposed.SIZES, transposed.DESCRIPTION),
        WorkloadSpec("scatter", scatter.build, scatter.SIZES, scatter.DESCRIPTION),
    )
}
BUILTIN = tuple(REGISTRY)  # every built-in workload of the sweep: `--workloads all`
# The default run's workloads, on a GPU and on the CPU alike: a classifier, per-pixel labels
# (which strict cannot run on CUDA) and the dilated convolutions cudnn.deterministic slows
# most. On a 2-core CPU they are also the three of the nine whose steps were steadiest from
# one fresh process to the next (per-trial noise 0.9-4.3%, against 5-12% for simple_cnn,
# mobilenet, transposed and scatter), so a few rounds resolve the budget there
# (docs/statistics.md, "The default run"). `--workloads all` runs the nine.
DEFAULT_WORKLOADS = ("resnet18", "unet", "dilated")
ALL = "all"  # --workloads all: every built-in workload


# Built in, not in the default sweep: they need an optional extra.
REGISTRY["digits"] = WorkloadSpec(
    "digits", digits.build, digits.SIZES, digits.DESCRIPTION, requires=(digits.REQUIRES, digits.EXTRA)
)
REGISTRY.update(
    {
        name: WorkloadSpec(
            name, factory, diagnostic.OWN_SIZES.get(name, diagnostic.SIZES), description, diagnostic=True
        )
        for name, (factory, description) in diagnostic.DIAGNOSTICS.items()
    }
)


def _from_import_path(path: str) -> WorkloadSpec:
    """`package.module:factory`: a user's factory; sizes from its SIZES (or its module's)."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load workload {path!r}: {exc}") from None
    sizes = getattr(factory, "SIZES", None) or getattr(module, "SIZES", None) or simple_cnn.SIZES
    missing = [p for p in SIZE_PRESETS if p not in sizes]
    if missing:
        raise UsageError(f"workload {path!r}: SIZES lacks the size presets {', '.join(missing)}")
    doc = (factory.__doc__ or "").strip().splitlines()
    return WorkloadSpec(path, factory, dict(sizes), doc[0] if doc else "user workload")


def _available(spec: WorkloadSpec) -> WorkloadSpec:
    """The spec, or a one-line UsageError naming the extra its optional dependency is in."""
    if spec.requires:
        module, extra = spec.requires
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(f"workload {spec.name} needs {module}: pip install 'detcost[{extra}]'") from None
    return spec


def get_workload(name: str) -> WorkloadSpec:
    if name in REGISTRY:
        return _available(REGISTRY[name])
    if model.is_model_name(name):  # --model: `<target>@CxHxW/classes`
        spec = model.from_name(name)
        return WorkloadSpec(name, spec.build, spec.sizes(), f"user model {spec.target}")
    if ":" in name:
        return _from_import_path(name)
    raise UsageError(
        f"unknown workload {name!r}; valid workloads: {', '.join(REGISTRY)}, {ALL} (the built-in ones) "
        "(or package.module:factory)"
    )


def parse_workloads(text: str) -> list[WorkloadSpec]:
    names = [m for n in text.split(",") if n.strip() for m in (BUILTIN if n.strip() == ALL else (n.strip(),))]
    if not names:
        raise UsageError(f"no workloads given; valid workloads: {', '.join(REGISTRY)}")
    return [get_workload(n) for n in dict.fromkeys(names)]
