"""NVML: facts about the GPU that no CUDA call is needed for (its UUID, clocks, power limit
and persistence mode), from the optional `nvidia-ml-py` (the `gpu` extra), for the
machine's fingerprint (`env.fingerprint`) and each CUDA trial's clock as it ends.
"""

from __future__ import annotations

import os

import torch


def _nvml_index(device: str) -> int | None:
    """NVML's index of `device`: NVML numbers every GPU of the machine, CUDA only the
    visible ones (CUDA_VISIBLE_DEVICES, as integers; other forms: None)."""
    index = torch.device(device).index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    return int(ids[index]) if index < len(ids) and ids[index].isdigit() else None


def nvml_facts(device: str, current: bool = False) -> dict:
    """The GPU's UUID, clocks, power limit and persistence mode from NVML (the optional
    `nvidia-ml-py`; `gpu` extra), without a CUDA context; {} where NVML is missing or
    fails. `current`: the SM clock now, as a trial ends (the clocks it ran at)."""
    try:
        import pynvml as nv

        nv.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: the fingerprint goes without these facts
        return {}
    try:
        index = _nvml_index(device)
        return {} if index is None else _nvml_read(nv, nv.nvmlDeviceGetHandleByIndex(index), current)
    except Exception:  # noqa: BLE001 - a GPU or driver that refuses a query
        return {}
    finally:
        nv.nvmlShutdown()


def _nvml_read(nv, handle, current: bool) -> dict:
    def ask(fn, *args):
        try:
            return fn(handle, *args)
        except Exception:  # noqa: BLE001 - one fact a GPU does not report
            return None

    if current:
        return {"gpu_sm_clock_mhz": ask(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)}
    limit = ask(nv.nvmlDeviceGetEnforcedPowerLimit)
    persistence = ask(nv.nvmlDeviceGetPersistenceMode)
    name = ask(nv.nvmlDeviceGetName)
    return {
        "gpu": name.decode() if isinstance(name, bytes) else name,
        "gpu_uuid": ask(nv.nvmlDeviceGetUUID),
        "gpu_sm_clock_max_mhz": ask(nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_SM),
        "gpu_sm_clock_app_mhz": ask(nv.nvmlDeviceGetApplicationsClock, nv.NVML_CLOCK_SM),
        "gpu_mem_clock_max_mhz": ask(nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_MEM),
        "gpu_power_limit_w": None if limit is None else limit / 1000,
        "gpu_persistence_mode": None if persistence is None else bool(persistence == nv.NVML_FEATURE_ENABLED),
    }
