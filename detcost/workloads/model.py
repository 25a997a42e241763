"""`--model`: a user's plain `nn.Module`, trained the way the built-in nets are.

The user names a callable that returns the module: `package.module:callable` (the working
directory is importable, as for `python -m`) or `path/to/file.py:callable` (no
PYTHONPATH needed), with the input shape and the class count. detcost wraps it in the
seeded synthetic data, SGD and cross-entropy of every built-in classifier. The whole
description travels in the workload's name, `<target>@<C>x<H>x<W>/<classes>`, so a trial
process rebuilds the same workload from its spec alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from detcost.errors import UsageError
from detcost.workloads.base import Size, Workload, WorkloadConfig
from detcost.workloads.common import classification

# Batch and step counts per size preset; the image size is the model's own (--input).
BATCH = {"gpu": 64, "cpu": 8, "quick": 4}
STEPS = {"gpu": (50, 10), "cpu": (12, 3), "quick": (4, 1)}
_NAME = re.compile(r"^(?P<target>.+:[A-Za-z_]\w*)@(?P<c>\d+)x(?P<h>\d+)x(?P<w>\d+)/(?P<classes>\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    target: str  # package.module:callable or path/to/file.py:callable
    channels: int
    image: int
    classes: int

    @property
    def name(self) -> str:
        return f"{self.target}@{self.channels}x{self.image}x{self.image}/{self.classes}"

    def sizes(self) -> dict[str, Size]:
        return {p: Size(batch=BATCH[p], image=self.image, steps=STEPS[p][0], warmup=STEPS[p][1]) for p in BATCH}

    def build(self, cfg: WorkloadConfig) -> Workload:
        return classification(make_module(self.target), cfg, channels=self.channels, classes=self.classes)


def is_model_name(name: str) -> bool:
    return bool(_NAME.match(name))


def from_name(name: str) -> ModelSpec:
    m = _NAME.match(name)
    if not m:
        raise UsageError(f"{name!r} is not a model workload name")
    return ModelSpec(m["target"], int(m["c"]), int(m["h"]), int(m["classes"]))


def parse_input(text: str) -> tuple[int, int]:
    """`3x224x224` -> (channels, image); inputs are square (the synthetic images are)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--input {text!r}: give channels x height x width, e.g. 3x224x224")
    c, h, w = map(int, parts)
    if h != w:
        raise UsageError(f"--input {text}: detcost's synthetic images are square; give equal height and width")
    return c, h


def load_callable(target: str):
    """The callable `package.module:name` or `path/to/file.py:name` names; UsageError if not."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise UsageError(f"--model {target!r}: give package.module:callable or path/to/file.py:callable")
    try:
        module = _load_file(where) if where.endswith(".py") else _import(where)
        return getattr(module, attr)
    except UsageError:
        raise
    except AttributeError:
        raise UsageError(f"--model {target}: {where} has no {attr!r}") from None
    except Exception as exc:  # the user's module failed while importing
        raise UsageError(f"--model {target}: importing {where} failed: {type(exc).__name__}: {exc}") from None


def _import(module: str):
    if os.getcwd() not in sys.path:  # as `python -m` does: the working directory is importable
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UsageError(f"--model: cannot import {module!r} ({exc}); run from the folder that holds it") from None


def _load_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--model: {path} does not exist (relative to {os.getcwd()})")
    spec = importlib.util.spec_from_file_location(f"detcost_user_model_{abs(hash(str(file.resolve())))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_module(target: str):
    """Call the user's callable and check that it gave an nn.Module."""
    from torch import nn

    fn = load_callable(target)
    if not callable(fn):
        raise UsageError(f"--model {target}: {type(fn).__name__} is not callable")
    try:
        module = fn()
    except Exception as exc:
        raise UsageError(f"--model {target}: calling it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise UsageError(f"--model {target}: returned {type(module).__name__}, not a torch.nn.Module")
    return module


def resolve(target: str, input_text: str | None, classes: int | None) -> ModelSpec:
    """The model workload of `--model/--input/--classes`, checked before any trial: the
    callable imports, runs and gives a module; channels default to its first conv's; the
    class count to what a forward pass on the meta device puts out."""
    import torch

    module = make_module(target)
    if input_text:
        channels, image = parse_input(input_text)
    else:
        conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
        if conv is None:
            raise UsageError(f"--model {target}: no Conv2d to take the input channels from; give --input CxHxW")
        channels, image = conv.in_channels, 32
    if classes is None:
        classes = _output_classes(module, channels, image, target)
    return ModelSpec(target, channels, image, classes)


def _output_classes(module, channels: int, image: int, target: str) -> int:
    import copy

    import torch

    try:
        out = copy.deepcopy(module).to("meta").eval()(torch.zeros(2, channels, image, image, device="meta"))
    except Exception as exc:
        raise UsageError(
            f"--model {target}: a {channels}x{image}x{image} input failed ({type(exc).__name__}); "
            "give --input CxHxW and --classes N"
        ) from None
    if out.dim() != 2:
        raise UsageError(f"--model {target}: its output has shape {tuple(out.shape)}, not (batch, classes)")
    return int(out.shape[1])
