"""detcost: what determinism costs in PyTorch training, and what it buys.

`detcost.apply(setting=None, *, seed=None)` puts a setting in force in training code
(see `detcost.applying`). It is loaded on first use, so `import detcost` stays light.
"""

import importlib

__version__ = "0.1.0"

_LAZY = ("apply", "Applied")


def __getattr__(name: str):
    if name in _LAZY:
        # By name, so the package's own module imports nothing of detcost (modules that
        # read __version__ import the package; the layers stay as they are).
        value = getattr(importlib.import_module("detcost.applying"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detcost' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
