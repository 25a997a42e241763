"""A user workload (`tests.probes:layer_probe`) that checks, inside a real trial process,
which modules that process has loaded: a trial must not load tables, figures or the report."""

from __future__ import annotations

import sys

from detcost.workloads import simple_cnn

FORBIDDEN_IN_TRIAL = ("pandas", "matplotlib", "jinja2", "detcost.report", "detcost.derive", "detcost.results")
SIZES = simple_cnn.SIZES


def loaded_forbidden() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN_IN_TRIAL or m.startswith(FORBIDDEN_IN_TRIAL))


def layer_probe(config):
    """simple_cnn, built only where the trial process loaded nothing it must not."""
    loaded = loaded_forbidden()
    if loaded:
        raise RuntimeError(f"the trial process loaded {', '.join(loaded[:8])}")
    return simple_cnn.build(config)


def four_layer_net():
    """A plain nn.Module, as `--model tests.probes:four_layer_net` sees it."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )  # fmt: skip


def not_a_module():
    return "a string"


def raises():
    raise ValueError("the config file is missing")


HANG_MARK_ENV = "DETCOST_TEST_HANG_MARK"


def hang_after_loading(config):
    """simple_cnn whose first loss, read after its DataLoader started its workers, writes
    the trial's process group to the file named by $DETCOST_TEST_HANG_MARK and hangs."""
    import os
    import time
    from pathlib import Path

    wl = simple_cnn.build(config)

    def hang(out, y):
        Path(os.environ[HANG_MARK_ENV]).write_text(str(os.getpgid(0)))
        time.sleep(3600)

    wl.loss_fn = hang
    return wl


def layout_probe(config):
    """simple_cnn whose notes say how long the trial's layout pad variable was when it was
    built: the pad is in place before the workload allocates anything."""
    import os

    from detcost.trial import ENV_PAD_VAR

    wl = simple_cnn.build(config)
    wl.notes["env_pad_seen"] = len(os.environ.get(ENV_PAD_VAR, ""))
    return wl


def environ_at_exec(names, conn):
    """Send which of `names` this process's environment held when it was exec'd
    (/proc/self/environ: what a library that reads its switches at load time sees)."""
    with open("/proc/self/environ", "rb") as f:
        start = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    conn.send({n: start[n.encode()].decode() for n in names if n.encode() in start})
    conn.close()
