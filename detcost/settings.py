"""Settings: the process-wide reproducibility flags detcost prices, as immutable values.

A `Setting` is applied and restored as a unit by `applied()`. Environment variables that
must be in place before CUDA initialises (`CUBLAS_WORKSPACE_CONFIG`, `CUDA_LAUNCH_BLOCKING`)
are not set here: the sweep puts `Setting.env` into the trial process's environment before
torch touches CUDA, and the trial reads everything back with `read_flags()` so a record
proves what was in force.

Besides detcost's seven, the frameworks' own determinism switches are settings too
(`FRAMEWORKS`): each replicates what that switch sets, read from the framework's source
(`Setting.source` names the version), without importing the framework. They are priced
only when asked for by name or with a group name (`frameworks`, `all`).
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
# Hugging Face's choice; the other value cuBLAS documents (a smaller workspace).
CUBLAS_WORKSPACE_SMALL = ":16:8"


def _env(cublas: str | None = None, launch_blocking: str | None = None) -> tuple[tuple[str, str | None], ...]:
    return (("CUBLAS_WORKSPACE_CONFIG", cublas), ("CUDA_LAUNCH_BLOCKING", launch_blocking))


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
    # Only meaningful with deterministic_algorithms: an op with no deterministic
    # implementation warns instead of raising (Lightning's deterministic="warn").
    warn_only: bool = False
    # Environment the trial process must start with; None means "unset". Every setting
    # names both variables, so a variable left in the parent's environment never leaks in.
    env: tuple[tuple[str, str | None], ...] = field(default=_env())
    summary: str = ""
    # For a framework's switch: the call it replicates, and the source (version, file) read.
    framework: str = ""
    source: str = ""

    @property
    def is_framework(self) -> bool:
        return bool(self.framework)

    @property
    def cudnn_only(self) -> bool:
        """True when the setting differs from `default` only in what the CPU ignores: cuDNN
        flags and CUDA's environment (CUBLAS_WORKSPACE_CONFIG, CUDA_LAUNCH_BLOCKING). The
        fill and warn_only act only through use_deterministic_algorithms, which the CPU honours."""
        return not self.deterministic_algorithms

    @property
    def launch_blocking(self) -> bool:
        return dict(self.env).get("CUDA_LAUNCH_BLOCKING") == "1"

    def expected_flags(self) -> dict[str, object]:
        """The flags `read_flags()` must report while this setting is applied."""
        env = dict(self.env)
        return {
            "cudnn_enabled": self.cudnn_enabled,
            "cudnn_benchmark": self.cudnn_benchmark,
            "cudnn_deterministic": self.cudnn_deterministic,
            "deterministic_algorithms": self.deterministic_algorithms,
            "warn_only": self.deterministic_algorithms and self.warn_only,
            "fill_uninitialized_memory": self.fill_uninitialized_memory,
            "cublas_workspace_config": env.get("CUBLAS_WORKSPACE_CONFIG"),
            "cuda_launch_blocking": env.get("CUDA_LAUNCH_BLOCKING"),
        }


_STRICT_ENV = _env(CUBLAS_WORKSPACE_CONFIG)

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

# The frameworks' switches, each as its source (cited in `source`) sets it. Seeding is
# detcost's own in every trial, so a switch is its flags and environment. None of them
# touches fill_uninitialized_memory (torch's default, on).
FRAMEWORKS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "lightning",
            deterministic_algorithms=True,
            env=_env(CUBLAS_WORKSPACE_CONFIG),
            summary="Lightning's Trainer(deterministic=True)",
            framework="lightning.Trainer(deterministic=True)",
            source="Lightning 2.x: accelerator_connector._set_torch_flags (benchmark False unless asked, "
            "use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=:4096:8; never cudnn.deterministic)",
        ),
        Setting(
            "lightning_warn",
            deterministic_algorithms=True,
            warn_only=True,
            env=_env(CUBLAS_WORKSPACE_CONFIG),
            summary='Lightning\'s Trainer(deterministic="warn")',
            framework='lightning.Trainer(deterministic="warn")',
            source="Lightning 2.x: accelerator_connector._set_torch_flags (as lightning, with warn_only=True)",
        ),
        Setting(
            "hf_full",
            cudnn_deterministic=True,
            deterministic_algorithms=True,
            env=_env(CUBLAS_WORKSPACE_SMALL, "1"),
            summary="Hugging Face's enable_full_determinism(seed)",
            framework="transformers.enable_full_determinism(seed)",
            source="transformers 4.4x: trainer_utils.enable_full_determinism (set_seed, CUDA_LAUNCH_BLOCKING=1, "
            "CUBLAS_WORKSPACE_CONFIG=:16:8, use_deterministic_algorithms(True), cudnn.deterministic, no benchmark)",
        ),
        Setting(
            "hf_set_seed",
            deterministic_algorithms=True,
            summary="Hugging Face's set_seed(seed, deterministic=True)",
            framework="transformers.set_seed(seed, deterministic=True)",
            source="transformers 4.4x: trainer_utils.set_seed (use_deterministic_algorithms(True) only, "
            "no cuBLAS variable)",
        ),
        Setting(
            "composer",
            cudnn_deterministic=True,
            deterministic_algorithms=True,
            env=_env(CUBLAS_WORKSPACE_CONFIG),
            summary="Composer's configure_deterministic_mode()",
            framework="composer.utils.reproducibility.configure_deterministic_mode()",
            source="Composer 0.x: utils/reproducibility.configure_deterministic_mode (use_deterministic_algorithms"
            "(True), cudnn.benchmark False, cudnn.deterministic True, CUBLAS_WORKSPACE_CONFIG=:4096:8)",
        ),
        Setting(
            "fastai",
            cudnn_deterministic=True,
            summary="fastai's set_seed(s, reproducible=True)",
            framework="fastai.torch_core.set_seed(seed, reproducible=True)",
            source="fastai 2.x: torch_core.set_seed (seeds, cudnn.deterministic True, cudnn.benchmark False)",
        ),
        Setting(
            "monai",
            cudnn_deterministic=True,
            summary="MONAI's set_determinism(seed)",
            framework="monai.utils.set_determinism(seed)",
            source="MONAI 1.x: utils/misc.set_determinism (seeds, cudnn.deterministic True, cudnn.benchmark False; "
            "use_deterministic_algorithms only when passed)",
        ),
    )
}

# The setting a team has today: the A/A control and the seed yardstick run under it, and
# every table shows each setting's ratio to it.
REFERENCE = "default"

# The six settings of the canonical matrix; `strict_nofill` extends it (explain issue).
CANONICAL = ("default", "benchmark", "deterministic", "benchmark_deterministic", "strict", "no_cudnn")
# The sweep's default: detcost's seven (the frameworks' switches only when asked for).
DEFAULT_SETTINGS = tuple(SETTINGS)
SETTINGS.update(FRAMEWORKS)

# Names `--settings` expands: `frameworks` (every switch), `all` (the seven and the switches).
GROUPS: dict[str, tuple[str, ...]] = {"frameworks": tuple(FRAMEWORKS), "all": tuple(SETTINGS)}


def _valid() -> str:
    return f"valid settings: {', '.join(SETTINGS)}; groups: {', '.join(GROUPS)}"


def get_setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise UsageError(f"unknown setting {name!r}; {_valid()}") from None


def parse_settings(text: str) -> list[Setting]:
    """Parse a comma list of setting names and group names (order kept, duplicates dropped)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"no settings given; {_valid()}")
    expanded = [m for n in names for m in GROUPS.get(n, (n,))]
    return [get_setting(n) for n in dict.fromkeys(expanded)]


def read_flags() -> dict[str, object]:
    """Read the flags back from torch and the environment, as a record stores them."""
    import torch.utils.deterministic

    return {
        "cudnn_enabled": bool(torch.backends.cudnn.enabled),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cuda_launch_blocking": os.environ.get("CUDA_LAUNCH_BLOCKING"),
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

    `warn_only` (or the setting's own) turns deterministic-algorithm errors into warnings
    (the audit uses it). Environment variables in `setting.env` are the caller's job: they must be set before
    CUDA initialises, which a context manager inside a running process cannot promise.
    """
    saved = _torch_state()
    try:
        _set_torch_state(
            setting.cudnn_enabled,
            setting.cudnn_benchmark,
            setting.cudnn_deterministic,
            setting.deterministic_algorithms,
            warn_only or setting.warn_only,
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
