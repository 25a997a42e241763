"""The GPU facts the fingerprint takes from NVML (no CUDA context), on a fake NVML:
what a GPU reports, a fact it refuses, and NVML missing altogether."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from detcost import env


def fake_nvml(refuse=(), init_fails=False):
    nv = types.SimpleNamespace(NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_FEATURE_ENABLED=1, asked=[])

    def answer(name, value):
        def fn(handle, *args):
            if name in refuse:
                raise RuntimeError("Not Supported")
            return value[args[0]] if isinstance(value, dict) else value

        return fn

    def init():
        if init_fails:
            raise RuntimeError("NVML Shared Library Not Found")

    nv.nvmlInit, nv.nvmlShutdown = init, lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: nv.asked.append(i) or f"gpu{i}"
    nv.nvmlDeviceGetUUID = answer("uuid", "GPU-1234")
    nv.nvmlDeviceGetMaxClockInfo = answer("max", {1: 1980, 2: 2619})
    nv.nvmlDeviceGetApplicationsClock = answer("app", {1: 1755})
    nv.nvmlDeviceGetClockInfo = answer("now", {1: 1410})
    nv.nvmlDeviceGetEnforcedPowerLimit = answer("power", 700000)
    nv.nvmlDeviceGetPersistenceMode = answer("persistence", 1)
    return nv


@pytest.fixture
def nvml(monkeypatch):
    def install(**kw):
        nv = fake_nvml(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return nv

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


def test_the_fingerprint_takes_uuid_clocks_power_and_persistence_from_nvml(nvml):
    nvml()
    assert env.nvml_facts("cuda:0") == {
        "gpu_uuid": "GPU-1234",
        "gpu_sm_clock_max_mhz": 1980,
        "gpu_sm_clock_app_mhz": 1755,
        "gpu_mem_clock_max_mhz": 2619,
        "gpu_power_limit_w": 700.0,
        "gpu_persistence_mode": True,
    }
    assert env.nvml_facts("cuda:0", current=True) == {"gpu_sm_clock_mhz": 1410}


def test_a_fact_the_gpu_refuses_is_none_and_a_missing_nvml_is_no_facts(nvml):
    nvml(refuse=("app", "persistence"))
    facts = env.nvml_facts("cuda")
    assert facts["gpu_sm_clock_app_mhz"] is None and facts["gpu_persistence_mode"] is None
    assert facts["gpu_uuid"] == "GPU-1234"
    nvml(init_fails=True)
    assert env.nvml_facts("cuda") == {}


def test_nvml_counts_all_gpus_and_cuda_only_the_visible_ones(nvml, monkeypatch):
    nv = nvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    env.nvml_facts("cuda:1")
    assert nv.asked == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abcd")  # by UUID: not mapped, no facts
    assert env.nvml_facts("cuda:0") == {}


def test_nvidia_smi_answers_name_driver_and_other_processes_without_cuda(tmp_path, monkeypatch):
    """The fallbacks that ask `nvidia-smi` (a separate process), on a fake one."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=name) echo "NVIDIA H100 80GB HBM3";;\n'
        "  --query-gpu=driver_version) echo 570.86;;\n"
        '  *) echo "123, 100 MiB, GPU-ab"; echo "456, 9 MiB, GPU-cd";;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    # the sweep's parent: no CUDA here (on a GPU box an earlier test may have started it),
    # so every GPU's processes count
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert env.gpu_names() == ["NVIDIA H100 80GB HBM3"] and env._nvidia_driver() == "570.86"
    assert env._nvidia_smi_processes(0, own="456") == "process 123 uses 100 MiB on GPU GPU-ab"
    # a trial, whose CUDA names its GPU: only that GPU's processes count
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid="cd"))
    assert env._nvidia_smi_processes(0, own="456") is None
    assert env._nvidia_smi_processes(0, own="1") == "process 456 uses 9 MiB"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert env.gpu_names() == [] and env._nvidia_driver() is None and env._nvidia_smi_processes(0, "1") is None
