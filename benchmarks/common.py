"""What the asv suite measures, by profile. The logic lives in detcost; these files
only declare parameters and read figures.

DETCOST_ASV_PROFILE picks the profile: `smoke` (CI: one workload, two settings, tiny
sizes), `cpu` (two workloads, every setting), `gpu` (every built-in workload and
setting at GPU sizes). Default: `gpu` where torch sees CUDA, else `cpu`. `smoke` and
`cpu` run on the CPU, as their names say, on a GPU box too; `gpu` on cuda:0 where torch
sees CUDA.
"""

import os

# Ask NVML, not the CUDA driver, whether a GPU is there: this process must stay able to
# start CUDA-using children (a CUDA call in a parent "poisons fork").
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402

from detcost.settings import CANONICAL  # noqa: E402
from detcost.workloads import BUILTIN  # noqa: E402

PROFILES = {
    "smoke": {
        "workloads": ("simple_cnn",),
        "settings": ("default", "strict"),
        "repeats": 2,
        "size": "quick",
        "steps": 4,
        "allow_busy": True,  # CI checks the suite runs, not the machine's quiet
        "device": "cpu",
    },
    "cpu": {
        "workloads": ("simple_cnn", "resnet18"),
        "settings": CANONICAL,
        "repeats": 2,
        "size": "cpu",
        "steps": None,
        "device": "cpu",
    },
    "gpu": {"workloads": BUILTIN, "settings": CANONICAL, "repeats": 3, "size": "gpu", "steps": None},
}
CUDA = torch.cuda.is_available()
PROFILE_NAME = os.environ.get("DETCOST_ASV_PROFILE") or ("gpu" if CUDA else "cpu")
PROFILE = PROFILES[PROFILE_NAME]
DEVICE = PROFILE.get("device") or ("cuda:0" if CUDA else "cpu")
PARAMS = (list(PROFILE["workloads"]), list(PROFILE["settings"]))
PARAM_NAMES = ("workload", "setting")
