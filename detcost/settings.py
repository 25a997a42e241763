"""Settings: the process-wide reproducibility flags detcost prices, as immutable values.

A `Setting` is applied and restored as a unit by `applied()`. Environment variables that
must be in place before CUDA initialises (`CUBLAS_WORKSPACE_CONFIG`) are not set here:
the sweep puts `Setting.env` into the trial process's environment before torch touches
CUDA, and the trial reads everything back with `read_flags()` so a record proves what
was in force.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from detcost.errors import UsageError

# cuBLAS needs a fixed workspace configuration to be deterministic on CUDA >= 10.2
# (PyTorch reproducibility notes); ":4096:8" is the documented choice.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


@dataclass(frozen=True)
class Setting:
    """One combination of process-wide flags (a row of the settings matrix)."""

    name: str
    cudnn_enabled: bool = True
    cudnn_benchmark: bool = False
    cudnn_deterministic: bool = False
    deterministic_algorithms: bool = False
    # Only meaningful with deterministic_algorithms: torch then NaN-fills every `empty`.
    fill_uninitialized_memory: bool = True
    # Environment the trial process must start with; None means "unset".
    env: tuple[tuple[str, str | None], ...] = field(default=(("CUBLAS_WORKSPACE_CONFIG", None),))
    summary: str = ""

    @property
    def cudnn_only(self) -> bool:
        """True when the setting differs from `default` only in cuDNN flags (no effect on CPU)."""
        return not self.deterministic_algorithms

    def expected_flags(self) -> dict[str, object]:
        """The flags `read_flags()` must report while this setting is applied."""
        env = dict(self.env)
        return {
            "cudnn_enabled": self.cudnn_enabled,
            "cudnn_benchmark": self.cudnn_benchmark,
            "cudnn_deterministic": self.cudnn_deterministic,
            "deterministic_algorithms": self.deterministic_algorithms,
            "fill_uninitialized_memory": self.fill_uninitialized_memory,
            "cublas_workspace_config": env.get("CUBLAS_WORKSPACE_CONFIG"),
        }


_STRICT_ENV = (("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG),)

SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("default", summary="PyTorch's defaults"),
        Setting("benchmark", cudnn_benchmark=True, summary="cuDNN autotuning"),
        Setting("deterministic", cudnn_deterministic=True, summary="deterministic cuDNN algorithms"),
        Setting(
            "benchmark_deterministic",
            cudnn_benchmark=True,
            cudnn_deterministic=True,
            summary="autotune among deterministic cuDNN algorithms",
        ),
        Setting(
            "strict",
            cudnn_deterministic=True,
            deterministic_algorithms=True,
            env=_STRICT_ENV,
            summary="torch.use_deterministic_algorithms(True)",
        ),
        Setting("no_cudnn", cudnn_enabled=False, summary="cuDNN disabled"),
        Setting(
            "strict_nofill",
            cudnn_deterministic=True,
            deterministic_algorithms=True,
            fill_uninitialized_memory=False,
            env=_STRICT_ENV,
            summary="strict without NaN-filling uninitialised memory",
        ),
    )
}

# The setting a team has today: the A/A control and the seed yardstick run under it, and
# every table shows each setting's ratio to it.
REFERENCE = "default"

# The six settings of the canonical matrix; `strict_nofill` extends it (explain issue).
CANONICAL = ("default", "benchmark", "deterministic", "benchmark_deterministic", "strict", "no_cudnn")
DEFAULT_SETTINGS = tuple(SETTINGS)


def get_setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise UsageError(f"unknown setting {name!r}; valid settings: {', '.join(SETTINGS)}") from None


def parse_settings(text: str) -> list[Setting]:
    """Parse a comma list of setting names (order kept, duplicates dropped)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"no settings given; valid settings: {', '.join(SETTINGS)}")
    return [get_setting(n) for n in dict.fromkeys(names)]


def read_flags() -> dict[str, object]:
    """Read the flags back from torch and the environment, as a record stores them."""
    import torch.utils.deterministic

    return {
        "cudnn_enabled": bool(torch.backends.cudnn.enabled),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _torch_state() -> tuple:
    import torch.utils.deterministic

    return (
        torch.backends.cudnn.enabled,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )


def _set_torch_state(enabled, benchmark, deterministic, algorithms, warn_only, fill) -> None:
    import torch.utils.deterministic

    torch.backends.cudnn.enabled = enabled
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


@contextlib.contextmanager
def applied(setting: Setting, *, warn_only: bool = False) -> Iterator[Setting]:
    """Apply a setting's torch flags for the duration of the block, then restore them.

    `warn_only` turns deterministic-algorithm errors into warnings (the audit uses it).
    Environment variables in `setting.env` are the caller's job: they must be set before
    CUDA initialises, which a context manager inside a running process cannot promise.
    """
    saved = _torch_state()
    try:
        _set_torch_state(
            setting.cudnn_enabled,
            setting.cudnn_benchmark,
            setting.cudnn_deterministic,
            setting.deterministic_algorithms,
            warn_only,
            setting.fill_uninitialized_memory,
        )
        yield setting
    finally:
        _set_torch_state(*saved)


def set_environ(pairs, environ: dict | None = None) -> None:
    """Set each (key, value) in `environ` (default os.environ); a None value unsets the key."""
    environ = os.environ if environ is None else environ
    for key, value in pairs:
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value


def apply_env(setting: Setting, environ: dict | None = None) -> None:
    """Put the setting's environment into `environ` (the trial process's os.environ)."""
    set_environ(setting.env, environ)


def snippet(setting: Setting, seed: int = 0) -> str:
    """The lines of Python a user pastes at the top of a training script to get this setting."""
    env = dict(setting.env).get("CUBLAS_WORKSPACE_CONFIG")
    lines = [*(["import os"] if env else []), "import random", "", "import numpy as np", "import torch", ""]
    if env:
        lines.append(f'os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", "{env}")  # before CUDA starts')
    lines += [
        f"random.seed({seed})",
        f"np.random.seed({seed})",
        f"torch.manual_seed({seed})  # seeds the CPU and every CUDA device",
        f"torch.backends.cudnn.enabled = {setting.cudnn_enabled}",
        f"torch.backends.cudnn.benchmark = {setting.cudnn_benchmark}",
        f"torch.backends.cudnn.deterministic = {setting.cudnn_deterministic}",
        f"torch.use_deterministic_algorithms({setting.deterministic_algorithms})",
    ]
    if setting.deterministic_algorithms and not setting.fill_uninitialized_memory:
        lines += [
            "# Safe only if the program never reads memory it did not write first",
            "# (torch.empty without a later fill); otherwise leave it True.",
            "torch.utils.deterministic.fill_uninitialized_memory = False",
        ]
    lines += [
        f"# DataLoader: pass generator=torch.Generator().manual_seed({seed}) and a",
        "# worker_init_fn that seeds random and numpy from torch.initial_seed().",
    ]
    return "\n".join(lines)
