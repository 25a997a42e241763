"""A setting in training code, as detcost measured it: `detcost.apply(setting, seed=...)`.

One call puts a named setting in force in the user's own process: its torch flags and
`torch.utils.deterministic.fill_uninitialized_memory` (through `settings.applied`, the
same code a trial runs under), the environment variables that must precede CUDA
(`Setting.env`, set in `os.environ`), and the seeds of `random`, NumPy and torch
(`seeding.seed_everything`). It returns an `Applied`: what is in force, read back from
torch with `settings.read_flags()` (the read-back a trial records), and the two pieces a
`DataLoader` needs for a repeatable order (`loader_kwargs()`).

With no argument it applies the team's default (`[tool.detcost]` in the project's
`pyproject.toml` or a `detcost.toml`, found from the working directory upward), else
`default` with seed 0.

(The module is not called `apply`: importing a submodule `detcost.apply` would replace
the function `detcost.apply` with the module.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from detcost import config
from detcost.env import DRIVER_READS, cuda_driver_loaded
from detcost.errors import UsageError
from detcost.seeding import data_generator, seed_everything, worker_init_fn
from detcost.settings import REFERENCE, Setting, applied, get_setting, read_flags, set_environ

__all__ = ["Applied", "apply", "in_force"]

DEFAULT_SEED = 0  # without a team config, as `detcost run`'s first seed

# Plain calls (no `with`) keep their setting for the rest of the process: the block that
# restores it must not be collected, since a collected generator runs its `finally`; at
# exit it is closed while the interpreter can still run it, latest first.
_KEPT: list[contextlib.ExitStack] = []


@atexit.register
def _release_at_exit() -> None:
    while _KEPT:
        _KEPT.pop().close()


def _check_env(setting: Setting) -> None:
    """Once CUDA has started, its environment is fixed: a variable the setting needs that
    differs from os.environ's value cannot be set in time, and is one line saying so."""
    if not torch.cuda.is_initialized():
        return
    for key, value in setting.env:
        if os.environ.get(key) != value:
            need = f"{key} unset" if value is None else f"{key}={value}"
            now = "unset" if os.environ.get(key) is None else repr(os.environ[key])
            raise UsageError(
                f"setting {setting.name!r} needs {need} (it is {now}), but CUDA has already started: "
                f"{'unset' if value is None else 'set'} {key} before anything touches CUDA, "
                "e.g. at the top of the script or in the shell"
            )


def _unconfirmed(changed: list[str]) -> tuple[str, ...]:
    """The variables `apply()` changed that the CUDA driver reads as it initialises, where
    the driver may have started already (a `torch.cuda.is_available()` before `apply()`
    starts it without starting torch's CUDA): in os.environ, and perhaps in force, but
    nothing can confirm it. Nothing on a torch built without CUDA."""
    if torch.version.cuda is None:
        return ()
    late = [key for key in changed if key in DRIVER_READS]
    return tuple(late) if late and cuda_driver_loaded() is not False else ()


def _set_env(setting: Setting) -> dict[str, str | None]:
    """Put the setting's environment in os.environ; the previous values of what changed."""
    _check_env(setting)
    saved = {key: os.environ.get(key) for key, value in setting.env if os.environ.get(key) != value}
    set_environ(setting.env)
    return saved


@contextlib.contextmanager
def in_force(setting: Setting, *, seed: int | None = None, environ: bool = True) -> Iterator[None]:
    """The one way detcost puts a setting in force, in a trial and in `apply()`: the
    environment (`environ`; a trial process already started with it, from its parent),
    the torch flags and the fill, then the seeds (`seed`; a trial seeds when it builds).
    On exit the flags, the fill and the environment variables it changed are restored;
    the random states are not."""
    saved = _set_env(setting) if environ else {}
    try:
        with applied(setting):
            if seed is not None:
                seed_everything(seed)
            yield
    finally:
        set_environ(saved.items())


@dataclass(frozen=True)
class Applied:
    """What `apply()` put in force. `flags` is read back from torch and the environment,
    as a trial's record stores them. As a context manager, leaving the block restores the
    flags, the fill and the environment variables that `apply()` changed, not the random
    states (re-seed, or call `apply()` again, to start a stream over)."""

    setting: str
    seed: int
    threads: int  # torch's CPU thread count, read back after applying
    flags: dict[str, object]
    # Variables set, and read back in `flags`, that the CUDA driver may have read before
    # they were set (see `apply`): their effect is unconfirmed.
    unconfirmed: tuple[str, ...] = field(compare=False)
    generator: torch.Generator = field(repr=False, compare=False)
    worker_init_fn: Callable[[int], None] = field(repr=False, compare=False)
    _stack: contextlib.ExitStack = field(repr=False, compare=False)

    def loader_kwargs(self) -> dict[str, object]:
        """`DataLoader(dataset, shuffle=True, num_workers=2, **applied.loader_kwargs())`."""
        return {"generator": self.generator, "worker_init_fn": self.worker_init_fn}

    def restore(self) -> None:
        """Restore what was in force before `apply()` (once; later calls do nothing)."""
        self._stack.close()
        if self._stack in _KEPT:
            _KEPT.remove(self._stack)

    def __enter__(self) -> Applied:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _team_choice(setting: str | Setting | None, seed: int | None) -> tuple[Setting, int, int | None]:
    """The setting and seed to apply: the arguments, else the team config's, else
    `default` and seed 0; and, with no setting given, the team config's CPU thread count.
    The config is read only when something is left to it."""
    team = config.find() if setting is None or seed is None else None
    threads = team.threads if team is not None and setting is None else None
    if setting is None:
        setting = team.setting if team is not None and team.setting else REFERENCE
    if seed is None:
        seed = team.seed if team is not None and team.seed is not None else DEFAULT_SEED
    return (setting if isinstance(setting, Setting) else get_setting(setting)), seed, threads


def _threads(count: int | None) -> contextlib.AbstractContextManager:
    """torch's CPU thread count at `count` (None: left alone), restored on exit."""
    stack = contextlib.ExitStack()
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UsageError(f"threads must be a whole number of 1 or more, got {count!r}")
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(count)
    return stack


def apply(setting: str | Setting | None = None, *, seed: int | None = None, threads: int | None = None) -> Applied:
    """Apply `setting` (a name or a `Setting`; None: the team config's, else `default`)
    and seed random, NumPy and torch with `seed` (None: the team config's, else 0); with
    `threads`, fix torch's CPU thread count too (None: the team config's where no setting
    is given, else left alone), as the snippet a CPU run prints does: on the CPU the
    results depend on it.

    Call it at the top of a training script, before any `torch.cuda` call, even
    `torch.cuda.is_available()`: a variable the setting needs (CUBLAS_WORKSPACE_CONFIG)
    cannot take effect once CUDA has started, and is then a `UsageError` naming it; one
    the CUDA driver reads as it loads (CUDA_LAUNCH_BLOCKING), which a bare
    `torch.cuda.is_available()` already does, is set but unconfirmed: listed in
    `Applied.unconfirmed`, with a warning. A plain call leaves the setting in force for the
    rest of the process; `with detcost.apply("strict"):` restores it on leaving the block.
    """
    chosen, seed, team_threads = _team_choice(setting, seed)
    changed = [key for key, value in chosen.env if os.environ.get(key) != value]
    stack = contextlib.ExitStack()
    stack.enter_context(_threads(threads if threads is not None else team_threads))
    stack.enter_context(in_force(chosen, seed=seed))
    _KEPT.append(stack)
    late = _unconfirmed(changed)
    if late:
        warnings.warn(
            f"detcost.apply({chosen.name!r}) set {', '.join(late)}, but the CUDA driver was already loaded "
            "(a torch.cuda call came first) and reads it only as it starts: unconfirmed; call apply() before "
            "any torch.cuda call, or set it in the shell",
            stacklevel=2,
        )
    return Applied(
        setting=chosen.name,
        seed=seed,
        threads=torch.get_num_threads(),
        flags=read_flags(),
        unconfirmed=late,
        generator=data_generator(seed),
        worker_init_fn=worker_init_fn,
        _stack=stack,
    )
