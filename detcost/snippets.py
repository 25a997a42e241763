"""The setting as the lines a user pastes: plain PyTorch (`snippet`), and all its forms
(`snippets`): the `detcost.apply(...)` call, the plain lines, the nearest framework switch
with what to add to it, and TensorFlow 2's lines as text only (not measured). The
recommendation carries them; the report and the terminal show them."""

from __future__ import annotations

from detcost.settings import FRAMEWORKS, Setting


def snippet(setting: Setting, seed: int = 0) -> str:
    """The lines of Python a user pastes at the top of a training script to get this setting."""
    env = [(k, v) for k, v in setting.env if v is not None]
    lines = [*(["import os"] if env else []), "import random", "", "import numpy as np", "import torch", ""]
    lines += [f'os.environ.setdefault("{k}", "{v}")  # {_ENV_WHY.get(k, "")}before CUDA starts' for k, v in env]
    lines += [
        f"random.seed({seed})",
        f"np.random.seed({seed})",
        f"torch.manual_seed({seed})  # seeds the CPU and every CUDA device",
        f"torch.backends.cudnn.enabled = {setting.cudnn_enabled}",
        f"torch.backends.cudnn.benchmark = {setting.cudnn_benchmark}",
        f"torch.backends.cudnn.deterministic = {setting.cudnn_deterministic}",
        _algorithms_line(setting.deterministic_algorithms, setting.warn_only),
    ]
    if setting.deterministic_algorithms and not setting.fill_uninitialized_memory:
        lines += _NOFILL_LINES
    lines += [
        f"# DataLoader: pass generator=torch.Generator().manual_seed({seed}) and a",
        "# worker_init_fn that seeds random and numpy from torch.initial_seed().",
    ]
    return "\n".join(lines)


_ENV_WHY = {"CUDA_LAUNCH_BLOCKING": "serialises every kernel launch; "}
_NOFILL_LINES = [
    "# Safe only if the program never reads memory it did not write first",
    "# (torch.empty without a later fill); otherwise leave it True.",
    "torch.utils.deterministic.fill_uninitialized_memory = False",
]


def _algorithms_line(on: bool, warn_only: bool) -> str:
    return f"torch.use_deterministic_algorithms({on}{', warn_only=True' if on and warn_only else ''})"


# ---- the snippet's other forms: detcost.apply(), a framework's switch, TensorFlow ----------

# What each framework needs beside its switch so that a run is seeded as detcost seeds it
# (the switches of Lightning and Composer set flags only).
_FRAMEWORK_SEEDING = {
    "lightning": "lightning.seed_everything(seed, workers=True)",
    "composer": "composer.utils.reproducibility.seed_all(seed)",
}


def _family(s: Setting) -> str:
    return s.framework.split(".")[0]


def determinism_flags(setting: Setting) -> dict[str, object]:
    """The flags that decide what a setting does; either documented cuBLAS workspace is
    deterministic, so only whether one is set counts."""
    flags = setting.expected_flags()
    flags["cublas_workspace_config"] = flags["cublas_workspace_config"] is not None
    return flags


def _additions(switch: Setting, setting: Setting) -> list[str]:
    """The lines that turn `switch`'s flags into `setting`'s, after the switch's call."""
    want, have = setting.expected_flags(), switch.expected_flags()
    differs = {k for k, v in determinism_flags(setting).items() if determinism_flags(switch)[k] != v}
    lines = []
    for name in ("cudnn_enabled", "cudnn_benchmark", "cudnn_deterministic"):
        if name in differs:
            lines.append(f"torch.backends.cudnn.{name.removeprefix('cudnn_')} = {want[name]}")
    if differs & {"deterministic_algorithms", "warn_only"}:
        lines.append(_algorithms_line(setting.deterministic_algorithms, setting.warn_only))
    if "fill_uninitialized_memory" in differs:
        lines += (
            _NOFILL_LINES
            if not want["fill_uninitialized_memory"]
            else ["torch.utils.deterministic.fill_uninitialized_memory = True"]
        )
    for key, flag, why in (
        ("CUBLAS_WORKSPACE_CONFIG", "cublas_workspace_config", ""),
        ("CUDA_LAUNCH_BLOCKING", "cuda_launch_blocking", " (it serialises kernel launches; no determinism needs it)"),
    ):
        if flag in differs:
            value = want[flag]
            lines.append(
                f'os.environ["{key}"] = "{value}"  # before CUDA starts'
                if value is not None
                else f'os.environ.pop("{key}", None)  # undo the switch\'s {key}={have[flag]}{why}, before CUDA starts'
            )
    return lines


def nearest_switches(setting: Setting) -> list[tuple[Setting, list[str]]]:
    """Per framework, its switch nearest to `setting` (fewest lines to add) and those lines;
    nearest first. Empty for a setting that turns no determinism on (no switch is near it)."""
    if not (setting.cudnn_deterministic or setting.deterministic_algorithms):
        return []
    best: dict[str, tuple[Setting, list[str]]] = {}
    for switch in FRAMEWORKS.values():
        add = _additions(switch, setting)
        family = _family(switch)
        if family not in best or len(add) < len(best[family][1]):
            best[family] = (switch, add)
    return sorted(best.values(), key=lambda sa: len(sa[1]))


def _framework_form(setting: Setting, seed: int) -> str:
    near = nearest_switches(setting)
    if not near:
        return (
            "# No framework switch is near this setting: every switch turns determinism on, and this one does not.\n"
            "# Seed with your framework's own call (lightning.seed_everything, transformers.set_seed, ...)\n"
            "# and set the flags as in the PyTorch lines."
        )
    lines = [f"seed = {seed}"]
    for switch, add in near:
        seeding = _FRAMEWORK_SEEDING.get(_family(switch))
        lines += ["", f"# {switch.source.split(':')[0]}:" + (" sets exactly these flags" if not add else "")]
        lines += [*([seeding] if seeding else []), switch.framework]
        if add:
            lines += ["# then add:", *add]
    return "\n".join(lines)


def _tensorflow_form(setting: Setting, seed: int) -> str:
    lines = [
        "# TensorFlow 2, as text only: not measured by detcost",
        "import tensorflow as tf",
        "",
        f"tf.keras.utils.set_random_seed({seed})  # seeds Python, NumPy and TensorFlow",
    ]
    if setting.cudnn_deterministic or setting.deterministic_algorithms:
        lines.append("tf.config.experimental.enable_op_determinism()  # TensorFlow's use_deterministic_algorithms")
    return "\n".join(lines)


SNIPPET_FORMS = {
    "apply": "as one call, with detcost installed",
    "pytorch": "in plain PyTorch",
    "framework": "through your framework's switch, and what to add",
    "tensorflow": "in TensorFlow 2 (text only, not measured by detcost)",
}


def apply_call(setting: Setting, seed: int = 0, threads: int | None = None) -> str:
    """The `detcost.apply(...)` call that does what the plain lines do, a fixed CPU thread
    count included where the run fixed one (`threads`)."""
    return f'detcost.apply("{setting.name}", seed={seed}' + (f", threads={threads})" if threads else ")")


def snippets(setting: Setting, seed: int = 0, threads: int | None = None) -> dict[str, str]:
    """The setting in each form a user may apply it (keys as in `SNIPPET_FORMS`); `threads`:
    the CPU thread count the run fixed, which the `detcost.apply` form passes on (the plain
    lines get theirs from the threads axis's snippet)."""
    call = apply_call(setting, seed, threads)
    return {
        "apply": f"import detcost\n\n{call}  # returns what it applied, read back from torch",
        "pytorch": snippet(setting, seed),
        "framework": _framework_form(setting, seed),
        "tensorflow": _tensorflow_form(setting, seed),
    }
