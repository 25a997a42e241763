"""The environment fingerprint: what a result depends on besides the code.

The CUDA queries are in `_gpu_properties` (a trial's, once CUDA is up) and NVML's
(`nvml.nvml_facts`, which need no CUDA call); the sweep's parent never initialises CUDA
(`cudnn_version` asks the library, not a device).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import torch

import detcost
from detcost.errors import UsageError
from detcost.nvml import nvml_facts

# Environment variables that change what a run computes or how fast.
RELEVANT_ENV_PREFIXES = ("CUBLAS_", "CUDNN_", "CUDA_", "PYTORCH_", "TORCH_", "NVIDIA_TF32", "OMP_", "MKL_", "KMP_")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def relevant_env() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(RELEVANT_ENV_PREFIXES)}


def nvidia_smi(query: str) -> list[str]:
    """The CSV lines `nvidia-smi --<query> --format=csv,noheader` prints (a separate
    process: no CUDA in this one), or [] where it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--{query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _nvidia_driver() -> str | None:
    lines = nvidia_smi("query-gpu=driver_version")
    return lines[0] if lines else None


def _visible_entry(device: str) -> str | None:
    """What CUDA_VISIBLE_DEVICES names for `device` (cuda:N: its Nth entry: an index, a
    UUID or a UUID's prefix, a MIG id), or None where it is unset or names fewer GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    index = torch.device(device).index or 0
    if visible is None:
        return str(index)
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    return ids[index] if index < len(ids) else None


def smi_gpu(device: str) -> dict:
    """`device`'s name, UUID and PCI bus id as `nvidia-smi --query-gpu` lists them (a
    separate process: no CUDA in this one), the device mapped through CUDA_VISIBLE_DEVICES
    (an index or a UUID); {} where nvidia-smi is missing or the device cannot be mapped (a
    MIG id). The parent's fingerprint names the GPU from here where NVML is missing, so
    that every record of a sweep, a DDP trial's and a crashed trial's too, names the same GPU."""
    entry = _visible_entry(device)
    if entry is None:
        return {}
    for row in nvidia_smi("query-gpu=index,name,uuid,pci.bus_id"):
        index, name, uuid, bus = ([p.strip() for p in row.split(",")] + ["", "", ""])[:4]
        if entry == index or (entry.upper().startswith("GPU-") and uuid.upper().startswith(entry.upper())):
            return {"gpu": name or None, "gpu_uuid": uuid or None, "pci_bus_id": bus or None}
    return {}


def gpu_local_cpus(device: str, devices: str = "/sys/bus/pci/devices") -> set[int] | None:
    """The CPUs of the GPU's own NUMA node, as the kernel lists them for its PCI device
    (`local_cpulist`), found from its bus id (nvidia-smi's "00000000:18:00.0" is sysfs's
    "0000:18:00.0"); no CUDA call. None where that cannot be read."""
    bus = smi_gpu(device).get("pci_bus_id")
    if not bus:
        return None
    domain, _, rest = bus.partition(":")
    try:
        text = Path(devices, f"{domain[-4:]}:{rest}".lower(), "local_cpulist").read_text().strip()
        return {cpu for part in text.split(",") if part for cpu in _cpu_range(part)}
    except (OSError, ValueError):
        return None


def _cpu_range(part: str) -> range:
    first, _, last = part.partition("-")
    return range(int(first), int(last or first) + 1)


def _gpu_properties(device: str) -> dict:
    """The GPU's name, memory and capability, from torch: this initialises CUDA, so only a
    trial process (or `detcost env`) asks, never the sweep's parent."""
    props = torch.cuda.get_device_properties(torch.device(device).index or 0)
    out = {
        "gpu": props.name,
        "gpu_memory_bytes": int(props.total_memory),
        "gpu_capability": f"{props.major}.{props.minor}",
    }
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:  # as NVML writes it ("GPU-..."): which GPU of a box, whatever CUDA_VISIBLE_DEVICES renumbered
        out["gpu_uuid"] = "GPU-" + uuid.removeprefix("GPU-").removeprefix("gpu-")
    return out


def cudnn_version() -> int | None:
    """cuDNN's version, as `torch.backends.cudnn.version()` gives it, without what that call
    runs first on a CUDA build: cuDNN's `_init()`, which checks every GPU's capability
    (`get_device_properties`, so CUDA's lazy init) whenever CUDA is available, and would
    leave the sweep's parent holding a CUDA context. The library's own version number
    (`cudnnGetVersion`) needs no device. None on a torch without cuDNN; where torch lacks
    that binding, None too, unless this process already uses CUDA (a trial)."""
    if not torch.backends.cudnn.is_available():
        return None
    get_version = getattr(getattr(torch._C, "_cudnn", None), "getVersionInt", None)
    if get_version is not None:
        return int(get_version())
    return torch.backends.cudnn.version() if torch.cuda.is_initialized() else None


def fingerprint(device: str = "cpu", gpu_properties: bool = True) -> dict:
    """Versions, hardware and the environment variables that matter, as a flat dict.
    The sweep's parent passes `gpu_properties=False` (they would initialise CUDA there);
    its trials add them (`for_trial`)."""
    info = {
        "detcost": detcost.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn_version(),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "device": device,
        "gpu": None,
        "driver": None,
        "env": relevant_env(),
    }
    if device.startswith("cuda"):
        # device_count, the driver and the GPU's name come from NVML / nvidia-smi: no CUDA context
        info.update(gpu_count=gpu_count(), driver=_nvidia_driver(), **nvml_facts(device))
        if info.get("gpu") is None:
            named = smi_gpu(device)
            info.update({k: named[k] for k in ("gpu", "gpu_uuid") if named.get(k) and info.get(k) is None})
        if gpu_properties:
            info.update(_gpu_properties(device))
    return info


def for_trial(machine: dict, device: str, threads: int | None = None) -> dict:
    """A trial's fingerprint: the machine's (taken once per sweep, in the parent) with what
    can differ per trial read in the trial process: its thread count and environment
    variables (the setting's CUBLAS_WORKSPACE_CONFIG), and on CUDA the GPU's properties,
    which the parent leaves out so as never to initialise CUDA itself."""
    info = {**machine, "threads": threads or torch.get_num_threads(), "env": relevant_env()}
    if device.startswith("cuda") and info.get("gpu_capability") is None and torch.cuda.is_initialized():
        # the memory and capability; the name and UUID stay the parent's where it had them
        # (NVML's or nvidia-smi's), as in the records of trials that never start CUDA here
        info.update({k: v for k, v in _gpu_properties(device).items() if info.get(k) is None})
    if device.startswith("cuda"):
        info.update(nvml_facts(device, current=True))
    return info


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = __import__(module)
        except ImportError:
            return None
    return getattr(mod, "__version__", None)


def nvml_gpu_count() -> int | None:
    """The GPUs NVML sees (CUDA_VISIBLE_DEVICES applied), or None where NVML is missing or
    fails. NVML is not the CUDA driver: asking it never initialises CUDA, so the process
    that asks can still fork usable children. 0 on a torch built without CUDA."""
    if not torch.backends.cuda.is_built():
        return 0
    # torch's own NVML count, the one behind PYTORCH_NVML_BASED_CUDA_CHECK; -1 when NVML fails
    count = getattr(torch.cuda, "_device_count_nvml", lambda: -1)()
    return count if count >= 0 else None


def cuda_available() -> bool:
    """Whether CUDA can be used, asked of NVML so that the sweep's parent never initialises
    CUDA (DESIGN: Processes on CUDA). Only where NVML is missing does torch answer. Either
    way PYTORCH_NVML_BASED_CUDA_CHECK is set, so that any later check in this process or
    the ones it starts asks NVML first too (torch falls back to the driver without it)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    count = nvml_gpu_count()
    if count is not None:
        return count > 0
    return torch.cuda.is_available()


def gpu_count() -> int:
    """How many GPUs this process may use: NVML's count, else torch's."""
    count = nvml_gpu_count()
    return torch.cuda.device_count() if count is None else count


def gpu_names() -> list[str]:
    """The GPUs' names as `nvidia-smi` lists them (no CUDA here), or []."""
    return nvidia_smi("query-gpu=name")


# Variables the CUDA driver reads once, as it initialises (cuInit): set after that, they
# are in os.environ and do nothing. (cuBLAS reads CUBLAS_WORKSPACE_CONFIG later, at its
# first handle, after torch's CUDA has started.)
DRIVER_READS = ("CUDA_LAUNCH_BLOCKING",)


def cuda_driver_loaded(maps: str = "/proc/self/maps") -> bool | None:
    """Whether this process has loaded the CUDA driver (libcuda), which
    `torch.cuda.is_available()` without PYTORCH_NVML_BASED_CUDA_CHECK, or
    `torch.cuda.device_count()` without NVML, do while `torch.cuda.is_initialized()` stays
    False. Read from the process's memory map: no CUDA call. None where that cannot be
    read (not Linux)."""
    try:
        with open(maps) as f:
            return any("libcuda.so" in line for line in f)
    except OSError:
        return None


def _cuda_build(torch) -> str:
    return f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"


def resolve_device(requested: str) -> str:
    """auto -> cuda:0 when CUDA is usable, else cpu; cuda[:N] must exist."""
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not cuda_available():
            raise UsageError(
                f"--device {requested}: CUDA is not available (torch {torch.__version__}, {_cuda_build(torch)})"
            )
        index = 0 if requested == "cuda" else requested.split(":", 1)[1]
        count = gpu_count()
        if not str(index).isdigit() or int(index) >= count:
            raise UsageError(f"--device {requested}: no such GPU; this machine has cuda:0 to cuda:{count - 1}")
        return f"cuda:{int(index)}"
    raise UsageError(f"--device {requested!r}: use auto, cpu, cuda or cuda:N")


# The compute processes this process's GPUs listed before it started CUDA (GPU index -> pids),
# once `remember_gpu_processes` was called: none of them can be this process.
_BEFORE_CUDA: dict[int, frozenset[str]] = {}


def gpu_processes(device: str, own: frozenset[str] | None = None, processes: int = 1) -> str | None:
    """Other processes on this GPU, one line each, or None: from torch (which needs
    pynvml), else from `nvidia-smi --query-compute-apps`.

    Left out: the trial's own processes (`own`: by default this process's tree, its pid and
    its children's; a DDP rank's is the launcher's tree, its sibling ranks included, which
    NCCL lists on each other's GPUs), and, where NVML lists none of them though they use
    the GPU (a PID-namespaced container, where NVML lists host pids) and
    `remember_gpu_processes` took the list before CUDA started, up to `processes` that
    appeared since: the trial's own (its ranks) under their host pids. Processes listed
    before are others for certain; more new ones than that are named as such."""
    index = torch.device(device).index or 0
    rows = _gpu_rows(index)
    own = own_pids() if own is None else own
    others = [(pid, line) for pid, line in rows if pid not in own]
    before = _BEFORE_CUDA.get(index)
    if before is None or len(others) < len(rows) or not torch.cuda.is_initialized():
        return "\n".join(line for _, line in others) or None
    new = [row for row in others if row[0] not in before]
    others = [row for row in others if row[0] in before]
    lines = [line for _, line in others]
    if len(new) > processes:  # the trial's own are among them, but which are hidden
        named = "; ".join(line for _, line in new)
        mine = "itself" if processes == 1 else f"its {processes} processes"
        lines.append(f"{len(new)} processes new on the GPU since this one started, {mine} among them: {named}")
    return "\n".join(lines) or None


def remember_gpu_processes(device: str) -> None:
    """Take the list `gpu_processes` judges against: the GPU's compute processes now, which
    must be before this process starts CUDA (otherwise it takes none). Taken once: a DDP
    rank keeps the list its launcher took for every rank's GPU before forking them (taken
    in the rank, a sibling rank that started first would be on it)."""
    index = torch.device(device).index or 0
    if torch.cuda.is_initialized() or index in _BEFORE_CUDA:
        return
    _BEFORE_CUDA[index] = frozenset(pid for pid, _ in _gpu_rows(index))


def own_pids(root: psutil.Process | None = None) -> frozenset[str]:
    """The pid of this process (or of `root`) and those of the processes it started
    (DataLoader workers; a DDP launcher's ranks)."""
    root = root or psutil.Process()
    pids = {root.pid}
    with contextlib.suppress(psutil.Error):  # a child that ends while it is read
        pids.update(p.pid for p in root.children(recursive=True))
    return frozenset(map(str, pids))


def _gpu_rows(index: int) -> list[tuple[str, str]]:
    """(pid, line) of each compute process listed on GPU `index`, this process's too:
    NVML's list through torch, else nvidia-smi's; [] where neither answers."""
    try:
        text = torch.cuda.list_gpu_processes(index)
    except Exception:  # NVML unavailable: try nvidia-smi below
        text = ""
    if text and "pynvml" not in text and "not found" not in text:
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip() and "no processes" not in ln]
        return [(next((t for t in ln.split() if t.isdigit()), ""), ln) for ln in lines]
    return _nvidia_smi_rows(index)


def _nvidia_smi_rows(index: int) -> list[tuple[str, str]]:
    try:
        # Only a process that already uses CUDA (a trial) may ask torch which GPU it is: the
        # sweep's parent must not initialise CUDA, and asks nvidia-smi which UUID its device
        # is (through CUDA_VISIBLE_DEVICES). Where neither can tell, every GPU's processes count.
        if torch.cuda.is_initialized():
            uuid = str(torch.cuda.get_device_properties(index).uuid)
        else:
            uuid = smi_gpu(f"cuda:{index}").get("gpu_uuid")
    except (RuntimeError, AttributeError):
        return []
    uuid = uuid.lower().removeprefix("gpu-") if uuid else None
    rows = []
    for row in nvidia_smi("query-compute-apps=pid,used_memory,gpu_uuid"):
        parts = [p.strip() for p in row.split(",")]
        if len(parts) == 3 and uuid in (None, parts[2].lower().removeprefix("gpu-")):
            rows.append((parts[0], f"process {parts[0]} uses {parts[1]}" + ("" if uuid else f" on GPU {parts[2]}")))
    return rows
