"""The GPU facts the fingerprint takes from NVML (no CUDA context), on a fake NVML:
what a GPU reports, a fact it refuses, and NVML missing altogether."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from detcost import env
from detcost.nvml import nvml_facts


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
    nv.nvmlDeviceGetName = answer("name", "NVIDIA H100 80GB HBM3")
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
    assert nvml_facts("cuda:0") == {
        "gpu": "NVIDIA H100 80GB HBM3",
        "gpu_uuid": "GPU-1234",
        "gpu_sm_clock_max_mhz": 1980,
        "gpu_sm_clock_app_mhz": 1755,
        "gpu_mem_clock_max_mhz": 2619,
        "gpu_power_limit_w": 700.0,
        "gpu_persistence_mode": True,
    }
    assert nvml_facts("cuda:0", current=True) == {"gpu_sm_clock_mhz": 1410}


def test_a_fact_the_gpu_refuses_is_none_and_a_missing_nvml_is_no_facts(nvml):
    nvml(refuse=("app", "persistence"))
    facts = nvml_facts("cuda")
    assert facts["gpu_sm_clock_app_mhz"] is None and facts["gpu_persistence_mode"] is None
    assert facts["gpu_uuid"] == "GPU-1234"
    nvml(init_fails=True)
    assert nvml_facts("cuda") == {}


def test_nvml_counts_all_gpus_and_cuda_only_the_visible_ones(nvml, monkeypatch):
    nv = nvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    nvml_facts("cuda:1")
    assert nv.asked == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abcd")  # by UUID: not mapped, no facts
    assert nvml_facts("cuda:0") == {}


def fake_nvidia_smi(tmp_path, monkeypatch) -> None:
    """An `nvidia-smi` on PATH that answers as a box of two H100s does."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=name) echo "NVIDIA H100 80GB HBM3"; echo "NVIDIA H100 80GB HBM3";;\n'
        '  --query-gpu=index,name,uuid,pci.bus_id) echo "0, NVIDIA H100 80GB HBM3, GPU-ab, 00000000:18:00.0";\n'
        '    echo "1, NVIDIA H100 80GB HBM3, GPU-cd, 00000000:9A:00.0";;\n'
        "  --query-gpu=driver_version) echo 570.86;;\n"
        '  *) echo "123, 100 MiB, GPU-ab"; echo "456, 9 MiB, GPU-cd";;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_nvidia_smi_answers_name_driver_and_other_processes_without_cuda(tmp_path, monkeypatch):
    """The fallbacks that ask `nvidia-smi` (a separate process), on a fake one."""
    fake_nvidia_smi(tmp_path, monkeypatch)
    # the sweep's parent: no CUDA here (on a GPU box an earlier test may have started it);
    # nvidia-smi says which UUID its device is, so only that GPU's processes count
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert env.gpu_names() == ["NVIDIA H100 80GB HBM3"] * 2 and env._nvidia_driver() == "570.86"
    assert env._nvidia_smi_rows(0) == [("123", "process 123 uses 100 MiB")]
    for visible in ("1", "GPU-cd", "GPU-c"):  # an index, a UUID, a UUID's prefix, as CUDA reads them
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert env._nvidia_smi_rows(0) == [("456", "process 456 uses 9 MiB")], visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-9a1b")  # not mapped: every GPU's processes count
    assert len(env._nvidia_smi_rows(0)) == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    # a trial, whose CUDA names its GPU: only that GPU's processes count
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid="cd"))
    assert env._nvidia_smi_rows(0) == [("456", "process 456 uses 9 MiB")]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert env.gpu_names() == [] and env._nvidia_driver() is None and env._nvidia_smi_rows(0) == []


@pytest.mark.parametrize("source", ["nvml", "nvidia-smi"])
def test_ddp_and_crashed_cuda_trials_are_of_the_machine_kind_of_the_trials_they_pair_with(
    source, nvml, tmp_path, monkeypatch
):
    """The sweep's parent names the GPU from NVML, else nvidia-smi (no CUDA there). So a
    DDP trial's record (its launcher's process never starts CUDA: its ranks do) and a
    crashed trial's (written by the parent) name the GPU, and pool with the one-process
    trials of the same sweep instead of landing under a made-up "?" kind."""
    from detcost import trial
    from detcost.record import Status, TrialRecord
    from tests.conftest import make_spec

    if source == "nvml":
        nvml()
    else:
        monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setattr(env, "cudnn_version", lambda: 91002)
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    machine = env.fingerprint("cuda:0", gpu_properties=False)
    assert machine["gpu"] == "NVIDIA H100 80GB HBM3"
    ddp_env = env.for_trial(machine, "cuda:0", threads=1)  # the launcher's process: no CUDA
    crash = trial.failure_record(make_spec(device="cuda:0"), Status.CRASH, "killed", machine)
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80, major=9, minor=0, uuid="ab")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    one_env = env.for_trial(machine, "cuda:0", threads=1)  # a one-process trial, CUDA started
    assert one_env["gpu_capability"] == "9.0" and one_env["gpu_uuid"] == machine["gpu_uuid"]
    kinds = {
        TrialRecord(make_spec(device="cuda:0"), env=one_env).machine_kind,
        TrialRecord(make_spec(device="cuda:0", axes={"nproc": 2}), env=ddp_env).machine_kind,
        crash.machine_kind,
    }
    assert kinds == {f"NVIDIA H100 80GB HBM3, driver 570.86, torch {torch.__version__}, cuDNN 91002"}


# ---- the GPU's other processes, as a trial's busy guard sees them ----------------------


class FakeGpu:
    """What NVML lists on GPU 0 through `torch.cuda.list_gpu_processes` (pids as it gives
    them: host pids in a PID-namespaced container), and whether this process has started CUDA."""

    def __init__(self, monkeypatch):
        self.pids, self.cuda, self.asked = [], False, 0
        monkeypatch.setattr(env.torch.cuda, "list_gpu_processes", self.listing)
        monkeypatch.setattr(env.torch.cuda, "is_initialized", lambda: self.cuda)
        monkeypatch.setattr(env, "_BEFORE_CUDA", {})

    def listing(self, index):
        self.asked += 1
        rows = [f"process {pid:>10d} uses {100.0:>12.3f} MB GPU memory" for pid in self.pids]
        return "\n".join([f"GPU:{index}", *(rows or ["no processes are running"])])


HOST_PID = 2_000_001  # this trial under its host pid: no pid of its namespace maps to it
NEIGHBOUR, NEWCOMER = 2_000_002, 2_000_003


def test_a_trial_in_a_pid_namespace_is_not_its_own_gpu_neighbour(monkeypatch):
    """NVML lists the trial under a host pid, not os.getpid(): judged against the list
    taken before the trial started CUDA, the one process new since is the trial itself."""
    gpu = FakeGpu(monkeypatch)
    env.remember_gpu_processes("cuda:0")  # before CUDA: nobody on the GPU
    gpu.cuda, gpu.pids = True, [HOST_PID]
    assert env.gpu_processes("cuda:0") is None  # on today's main: the trial itself, so busy


def test_processes_there_before_the_trial_and_several_new_ones_are_others(monkeypatch):
    gpu = FakeGpu(monkeypatch)
    gpu.pids = [NEIGHBOUR]
    env.remember_gpu_processes("cuda:0")
    gpu.cuda, gpu.pids = True, [NEIGHBOUR, HOST_PID]
    assert env.gpu_processes("cuda:0") == f"process {NEIGHBOUR:>10d} uses      100.000 MB GPU memory"
    gpu.pids = [NEIGHBOUR, HOST_PID, NEWCOMER]  # two new ones: one of them is the trial, the other is not
    seen = env.gpu_processes("cuda:0")
    assert str(NEIGHBOUR) in seen and "2 processes new on the GPU since this one started, itself among them" in seen
    assert str(HOST_PID) in seen and str(NEWCOMER) in seen


def test_where_nvml_lists_the_trial_by_its_own_pid_every_other_process_counts(monkeypatch):
    gpu = FakeGpu(monkeypatch)
    env.remember_gpu_processes("cuda:0")
    gpu.cuda, gpu.pids = True, [os.getpid(), NEWCOMER]
    assert str(NEWCOMER) in env.gpu_processes("cuda:0") and str(os.getpid()) not in env.gpu_processes("cuda:0")
    monkeypatch.setattr(env, "_BEFORE_CUDA", {})  # no list taken before CUDA (a trial run in-process)
    gpu.pids = [HOST_PID]
    assert str(HOST_PID) in env.gpu_processes("cuda:0")  # no list to judge against: as before
    asked = gpu.asked
    env.remember_gpu_processes("cuda:0")  # CUDA already started here: too late to take one
    assert env._BEFORE_CUDA == {} and gpu.asked == asked


def test_the_trial_s_own_children_are_its_own_tree():
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert {str(os.getpid()), str(child.pid)} <= env.own_pids()
    finally:
        child.kill()
        child.wait()


def test_only_a_timed_cuda_trial_lists_the_gpu_before_cuda_starts(monkeypatch):
    from detcost import trial
    from tests.conftest import make_spec

    asked = []
    monkeypatch.setattr(trial.envmod, "remember_gpu_processes", asked.append)
    for spec in (make_spec(device="cuda:1"), make_spec(), make_spec(device="cuda:0", kind="audit")):
        trial.before_cuda(spec)
    assert asked == ["cuda:1"]


def test_a_cuda_trial_names_its_gpu_by_uuid_without_nvml_and_keeps_nvmls_where_given(monkeypatch):
    """Which GPU of a box a trial ran on (the report's unit): from torch's properties in the
    trial, as NVML writes it, where the parent's fingerprint had no NVML UUID."""
    props = types.SimpleNamespace(name="NVIDIA H100", total_memory=80, major=9, minor=0, uuid="8f6e-11")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(env, "nvml_facts", lambda device, current=False: {})
    assert env.for_trial({"gpu": None}, "cuda:0", threads=1)["gpu_uuid"] == "GPU-8f6e-11"
    assert env.for_trial({"gpu": None, "gpu_uuid": "GPU-from-nvml"}, "cuda:0", threads=1)["gpu_uuid"] == "GPU-from-nvml"


# ---- a DDP trial's ranks on the GPU list ---------------------------------------------------


def test_a_ddp_ranks_siblings_are_its_own_on_the_gpu_list(monkeypatch):
    """NCCL's peers appear in each other's GPU's process list (pytorch#64130): a rank counts
    its launcher's whole tree, every rank of the job, as the trial's own, not only its own
    tree (which would take its sibling rank for another job)."""
    import time

    import psutil

    from detcost import measure
    from tests.conftest import make_spec

    gpu = FakeGpu(monkeypatch)
    # a launcher with its other rank, outside this process's tree (the shell that starts it exits)
    started = subprocess.run(["sh", "-c", "sh -c 'sleep 60 & wait' >/dev/null 2>&1 & echo $!"], capture_output=True)
    launcher = psutil.Process(int(started.stdout))
    try:
        deadline = time.monotonic() + 10
        while not launcher.children() and time.monotonic() < deadline:
            time.sleep(0.01)
        (sibling,) = launcher.children()
        gpu.cuda, gpu.pids = True, [sibling.pid]
        monkeypatch.setattr(measure, "_launcher", lambda: launcher)
        spec = make_spec(device="cuda:0", axes={"nproc": 2})
        busy = measure._busy(spec, measure.cpu_sample(measure._own_tree(spec)))
        assert busy.gpu_others is None
        assert str(sibling.pid) in env.gpu_processes("cuda:0")  # this process's tree alone
    finally:
        for process in [*launcher.children(), launcher]:
            process.kill()


def test_in_a_pid_namespace_a_ddp_jobs_ranks_may_all_be_new_on_the_gpu(monkeypatch):
    """NVML lists host pids: the job's N ranks are N processes new since the list was
    taken, none of them another job's; one more is."""
    gpu = FakeGpu(monkeypatch)
    env.remember_gpu_processes("cuda:0")
    gpu.cuda, gpu.pids = True, [HOST_PID, NEWCOMER]
    assert env.gpu_processes("cuda:0", processes=2) is None
    assert "2 processes new on the GPU since this one started, itself among them" in env.gpu_processes("cuda:0")
    gpu.pids = [HOST_PID, NEWCOMER, NEIGHBOUR]
    assert "3 processes new on the GPU since this one started, its 2 processes among them" in env.gpu_processes(
        "cuda:0", processes=2
    )


def test_a_ddp_trial_lists_every_ranks_gpu_before_forking_them_and_the_ranks_keep_it(monkeypatch):
    """Listed in a rank, a sibling rank that started CUDA first would be on the list, as
    another job; the trial's process lists each rank's GPU before the launcher forks the
    ranks, and a rank's own listing keeps the list it inherited."""
    from detcost import trial
    from tests.conftest import make_spec

    gpu = FakeGpu(monkeypatch)
    asked = []
    monkeypatch.setattr(env, "_gpu_rows", lambda index: asked.append(index) or [])
    trial.job_before_cuda(make_spec(device="cuda:1", axes={"nproc": 2}))
    assert asked == [1, 2] and set(env._BEFORE_CUDA) == {1, 2}
    trial.before_cuda(make_spec(device="cuda:2", axes={"nproc": 2}))  # rank 1, forked with the list
    assert asked == [1, 2]
    assert gpu.asked == 0


def test_a_gpus_numa_node_cores_are_read_from_its_pci_device_without_cuda(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch)
    devices = tmp_path / "devices"
    for bus, cpus in (("0000:18:00.0", "0-3,8-11"), ("0000:9a:00.0", "4-7,12-15")):
        (devices / bus).mkdir(parents=True)
        (devices / bus / "local_cpulist").write_text(cpus + "\n")
    assert env.gpu_local_cpus("cuda:0", str(devices)) == {0, 1, 2, 3, 8, 9, 10, 11}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # a Ray round's one GPU, seen as cuda:0
    assert env.gpu_local_cpus("cuda:0", str(devices)) == {4, 5, 6, 7, 12, 13, 14, 15}
    assert env.gpu_local_cpus("cuda:0", str(tmp_path / "no-sysfs")) is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert env.gpu_local_cpus("cuda:0", str(devices)) is None


def test_a_cuda_trials_threads_are_capped_at_the_cores_it_may_run_on(monkeypatch):
    """A --ray round on CUDA is pinned to its GPU's share of the node (14 of 112 cores, say)
    while its planned thread count is the parent's whole box: its trials run at most one
    thread a core they hold. On the CPU the thread count is the axis measured: never capped."""
    from detcost import axes, timing
    from tests.conftest import make_spec

    before = torch.get_num_threads()
    monkeypatch.setattr(timing, "usable_cpus", lambda: {0})
    restore = axes.THREADS.apply(2, make_spec(device="cuda:0", axes={"threads": 2}))
    try:
        assert torch.get_num_threads() == 1
    finally:
        restore()
    restore = axes.THREADS.apply(2, make_spec(axes={"threads": 2}))
    try:
        assert torch.get_num_threads() == 2
    finally:
        restore()
    assert torch.get_num_threads() == before
