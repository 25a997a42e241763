"""The GPU sweep's time: an honest estimate in `detcost run --dry-run`, trials started from
a forkserver that never touches CUDA, a parent that asks NVML rather than CUDA whether a
GPU is there, and one machine fingerprint per sweep. All on the CPU: CUDA is faked where
the device check asks for it, and counted wherever torch could be asked for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detcost import axes, env, estimate, isolation, plan, results
from detcost.cli import main
from detcost.settings import DEFAULT_SETTINGS
from detcost.workloads import BUILTIN, DEFAULT_WORKLOADS, data
from tests.conftest import run_cli
from tests.test_gpu_sizes import _meta_batch

H100 = "NVIDIA H100 80GB HBM3"
TARGET_MIN = 15.0
# torch's ways into the CUDA runtime from Python: none may be called where CUDA must stay
# untouched (the `torch._C` ones exist only in a CUDA build).
CUDA_ENTRY_POINTS = {
    torch.cuda: ("is_available", "device_count", "init", "_lazy_init", "get_device_properties", "current_device"),
    torch._C: ("_cuda_init", "_cuda_getDeviceCount"),
}


@pytest.fixture
def cuda_calls(monkeypatch) -> Counter:
    """Counts every call into CUDA's entry points in this process made while CUDA has not
    started here (each still answers): those are the calls that would start it. Once an
    earlier test of this process has started CUDA (a GPU box), asking which GPU this is
    starts nothing, and the tests judge only what they change."""
    calls: Counter = Counter()
    started = torch.cuda.is_initialized

    def counted(name, real):
        def call(*args, **kwargs):
            if not started():
                calls[name] += 1
            return real(*args, **kwargs)

        return call

    for owner, names in CUDA_ENTRY_POINTS.items():
        for name in names:
            if hasattr(owner, name):
                monkeypatch.setattr(owner, name, counted(name, getattr(owner, name)))
    return calls


@pytest.fixture
def fake_h100(monkeypatch):
    """One H100 as NVML and nvidia-smi would report it; torch is never asked. The
    estimate's FLOP counts build each workload on the meta device at batch 1: its data is
    made as meta tensors too, so the test draws nothing on the host."""
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 1)
    monkeypatch.setattr(env, "gpu_names", lambda: [H100])
    monkeypatch.setattr(data, "make_batch", _meta_batch)


def test_the_default_gpu_sweep_is_estimated_within_15_minutes_with_its_assumptions(
    fake_h100, cuda_calls, capsys, tmp_path
):
    started = torch.cuda.is_initialized()  # on a GPU box an earlier test may have started CUDA
    path = tmp_path / "r.jsonl"
    assert main(["run", "--device", "cuda", "--dry-run", "--allow-busy", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    planned = int(re.search(r"(\d+) trials planned", out)[1])
    minutes = float(re.search(r"rough estimate ([\d.]+) min", out)[1])
    if minutes > TARGET_MIN:  # the goal stands: the dry run names the flags that meet it, and they do
        trim = re.search(r"over the 15-minute goal .*; with (.+): about ([\d.]+) min", out)
        assert trim, out[-3000:]
        assert main(["run", "--device", "cuda", "--dry-run", "--allow-busy", "--results", str(path)]
                    + trim[1].split()) == 0  # fmt: skip
        trimmed = float(re.search(r"rough estimate ([\d.]+) min", capsys.readouterr().out)[1])
        assert trimmed <= TARGET_MIN and trimmed == pytest.approx(float(trim[2]), abs=0.3)
    default = _options("cuda:0", workloads=list(DEFAULT_WORKLOADS), repeats=plan.DEFAULT_ROUNDS["cuda"])
    assert planned == len(plan.plan(default))
    assert "no GPU was available to measure these figures" in out
    for figure in estimate.CUDA_FIGURES.values():  # each assumed figure, with where it comes from
        assert figure.basis in out
    assert f"GPU: {H100}\n" in out
    assert not path.exists()
    assert not cuda_calls and torch.cuda.is_initialized() == started


def test_the_json_dry_run_gives_the_estimate_and_its_assumptions(fake_h100, cuda_calls, capsys, tmp_path):
    argv = ["run", "--device", "cuda:0", "--workloads", "resnet18", "--dry-run", "--allow-busy", "--json"]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimated_s"] == pytest.approx(
        out["estimate"]["once_s"] + sum(t for _, t in out["estimate"]["by_kind"].values())
    )
    assert len(out["estimate"]["assumptions"]) == len(estimate.CUDA_FIGURES) and out["gpu"] == H100
    assert not cuda_calls


@pytest.fixture
def cuda_started_earlier(monkeypatch):
    """This process as a GPU box's pytest process may be: an earlier test started CUDA, and
    `nvidia-ml-py` (only in the `gpu` extra) is absent, so the busy look asks `nvidia-smi`
    and, CUDA being up, which GPU this is. Asked before `cuda_calls`, which counts its calls."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: types.SimpleNamespace(uuid="ab"))


def test_after_cuda_started_in_this_process_asking_which_gpu_it_is_is_no_cuda_call(
    fake_h100, cuda_started_earlier, cuda_calls, capsys, tmp_path
):
    argv = ["run", "--device", "cuda:0", "--workloads", "resnet18", "--dry-run", "--allow-busy", "--json"]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["gpu"] == H100
    assert not cuda_calls


def test_on_the_cpu_the_estimate_is_per_trial_as_measured_and_assumes_nothing_of_a_gpu(capsys, tmp_path):
    argv = ["run", "--device", "cpu", "--workloads", "simple_cnn", "--dry-run", "--allow-busy"]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    planned = int(re.search(r"(\d+) trials planned", out)[1])
    minutes = float(re.search(r"rough estimate ([\d.]+) min", out)[1])
    servers = (plan.DEFAULT_ROUNDS["cpu"] - 1) * estimate.CPU_SERVER_S  # a new forkserver each later round
    assert minutes == pytest.approx((planned * estimate.ESTIMATED_TRIAL_S["cpu"] + servers) / 60, abs=0.05)
    assert "no GPU was available" not in out and "GPU:" not in out


def test_a_slower_setting_or_a_bigger_step_makes_a_longer_estimate():
    opts = _options("cuda:0", workloads=["resnet18"], settings=["default", "deterministic", "no_cudnn"])
    timed = {s.setting: estimate.estimate([s], "gpu").seconds for s in plan.plan(opts) if s.kind == "timed"}
    assert timed["default"] < timed["deterministic"] < timed["no_cudnn"]
    one = [s for s in plan.plan(opts) if s.kind == "timed" and s.setting == "default"][:1]
    more = [replace(s, steps=s.steps * 4) for s in one]
    assert estimate.estimate(more, "gpu").seconds > estimate.estimate(one, "gpu").seconds


@pytest.mark.parametrize(("device", "figure"), [("cpu", axes.COMPILE_CPU_S), ("cuda:0", axes.COMPILE_CUDA_S)])
def test_a_compiled_sweep_is_estimated_with_its_compile_time_and_says_where_it_comes_from(fake_h100, device, figure):
    """--compile on adds its compile time to each build of a workload (the audit builds
    twice), and the figure's basis is among the estimate's assumptions; off adds nothing."""
    one = {"workloads": ["simple_cnn"], "settings": ["default"], "repeats": 1}
    off = plan.plan(_options(device, **one))
    on = plan.plan(_options(device, **one, axes={"compile": ["on"]}))
    preset = "cpu" if device == "cpu" else "gpu"
    plain, compiled = estimate.estimate(off, preset), estimate.estimate(on, preset)
    builds = sum(2 if s.kind == "audit" else 1 for s in on)
    assert compiled.seconds - plain.seconds == pytest.approx(builds * figure)
    assert [a for a in compiled.assumptions() if a not in plain.assumptions()] == [
        next(iter(axes.REGISTRY["compile"].estimate("on", on[0]).basis))
    ]


def test_a_dry_run_with_a_loader_prices_its_reads_and_prints_the_figures(capsys, tmp_path):
    argv = ["run", "--device", "cpu", "--workloads", "simple_cnn", "--dry-run", "--allow-busy"]
    argv += ["--results", str(tmp_path / "r.jsonl")]
    loader = ["--data", "loader", "--workers", "2"]
    seconds = []
    for extra in ([], loader):
        assert main([*argv, *extra, "--json"]) == 0
        seconds.append(json.loads(capsys.readouterr().out)["estimated_s"])
    assert seconds[1] > seconds[0]
    assert main([*argv, *loader]) == 0
    assert "the axes add: --data loader:" in capsys.readouterr().out


@pytest.mark.parametrize("busy", [False, True])
def test_the_dry_run_is_a_library_call_that_the_cli_prints(monkeypatch, capsys, tmp_path, busy):
    """`dryrun.dry_run` plans, estimates and looks at the machine (faked here, busy or not);
    the CLI prints its rendering, in text or JSON, and nothing else."""
    from detcost import dryrun, guard
    from detcost.payloads import BusyReport
    from detcost.report.sweep_text import dry_run_json, dry_run_text

    load = BusyReport(others_cpu_cores=1.5 if busy else 0.0, cpu_busy=busy)
    monkeypatch.setattr(guard, "sample", lambda device, threads: load)
    opts = _options("cpu", workloads=["simple_cnn"], settings=["default"], repeats=1, results=tmp_path / "r.jsonl")
    dry = dryrun.dry_run(replace(opts, wait_quiet=30.0))
    assert dry.trial_ids == [s.trial_id for s in plan.plan(opts)] and dry.load is load and dry.gpu is None
    assert dry.estimate.seconds == estimate.estimate(dry.specs, "cpu", plan.new_servers(opts, dry.specs)).seconds
    text = dry_run_text(dry)
    if busy:
        wait = "a run would wait up to 30 s for it to go quiet"
        assert text.endswith(f"the machine is busy now: {load.describe()}; {wait}") and "1.5 CPU cores" in text
    else:
        assert text.endswith("the machine is quiet now (no other process competes for its CPUs or GPU)")
    argv = ["run", "--device", "cpu", "--workloads", "simple_cnn", "--settings", "default", "--repeats", "1"]
    argv += ["--dry-run", "--wait-quiet", "30", "--results", str(tmp_path / "r.jsonl")]
    assert main(argv) == 0
    assert capsys.readouterr().out == text + "\n"
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(dry_run_json(dry)))
    assert out["busy_now"] == (load.describe() if busy else None)


def _options(device: str, **overrides) -> plan.SweepOptions:
    base = {
        "workloads": list(BUILTIN),
        "settings": list(DEFAULT_SETTINGS),
        "repeats": 3,
        "seed": 0,
        "device": device,
        "size_preset": "gpu" if device != "cpu" else "cpu",
        "results": Path("r.jsonl"),
        "run_id": "t",
    }
    return plan.SweepOptions(**{**base, **overrides})


def test_on_cuda_the_plan_leaves_out_profiled_trials_and_audits_another_trial_already_shows():
    on_cuda = plan.plan(_options("cuda:0"))
    profiled = {(s.workload, s.setting) for s in on_cuda if s.kind == "profiled"}
    audited = {s.workload for s in on_cuda if s.kind == "audit"}
    # strict_nofill runs strict's kernels less the NaN fill, which strict's own table shows
    assert ("resnet18", "strict") in profiled and ("resnet18", "strict_nofill") not in profiled
    # unet_lossfix is unet but for the loss: profiled where unet cannot run, audited never
    assert {s for w, s in profiled if w == "unet_lossfix"} == {"strict"}
    assert "unet" in audited and "unet_lossfix" not in audited
    # the timed trials, the A/A control and the seed yardstick are all still there
    kinds = Counter(s.kind for s in on_cuda)
    assert kinds["timed"] == len(BUILTIN) * len(DEFAULT_SETTINGS) * 3 and kinds["aa"] == len(BUILTIN) * 3
    assert kinds["seed"] == len(BUILTIN) * 3


def test_on_the_cpu_every_setting_is_profiled_and_every_workload_audited():
    on_cpu = plan.plan(_options("cpu", repeats=2))
    assert sum(s.kind == "profiled" for s in on_cpu) == len(BUILTIN) * len(DEFAULT_SETTINGS)
    assert sum(s.kind == "audit" for s in on_cpu) == len(BUILTIN)


def test_cuda_trials_start_from_the_forkserver():
    assert isolation.start_method("auto", "cuda:0") == isolation.start_method("auto", "cpu") == "forkserver"
    assert isolation.start_method("spawn", "cuda:0") == "spawn"


PRELOAD_PROBE = """
import importlib, json, sys
import torch
calls = []
def counted(owner, name):
    real = getattr(owner, name)
    def call(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)
    setattr(owner, name, call)
for owner, names in {entry_points}:
    for name in names:
        if hasattr(owner, name):
            counted(owner, name)
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps({{"calls": calls, "initialized": torch.cuda.is_initialized(),
                  "bad_fork": torch.cuda._is_in_bad_fork()}}))
"""


def test_the_forkserver_preload_never_calls_into_cuda():
    """What the forkserver imports, imported in a fresh interpreter with torch's CUDA entry
    points counting calls: none is called, so every trial forked from it can use CUDA."""
    entry_points = "[(torch.cuda, {!r}), (torch._C, {!r})]".format(*CUDA_ENTRY_POINTS.values())
    probe = PRELOAD_PROBE.format(entry_points=entry_points)
    environ = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    proc = subprocess.run(
        [sys.executable, "-c", probe, *isolation.FORKSERVER_PRELOAD], capture_output=True, text=True, env=environ
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"calls": [], "initialized": False, "bad_fork": False}


def test_the_device_check_asks_nvml_and_never_torch_while_nvml_answers(monkeypatch, cuda_calls):
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 2)
    assert env.cuda_available() and env.gpu_count() == 2
    assert env.resolve_device("auto") == "cuda:0" and env.resolve_device("cuda:1") == "cuda:1"
    assert not cuda_calls


def test_without_nvml_the_device_check_asks_torch_with_its_nvml_based_check(monkeypatch):
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: None)
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    asked = []

    def is_available() -> bool:
        asked.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    assert env.cuda_available() is False
    assert asked == ["1"]  # torch asked once, through NVML where it can


def test_a_torch_without_cuda_is_answered_without_asking_anyone(cuda_calls):
    if torch.backends.cuda.is_built():
        pytest.skip("this torch is built with CUDA")
    assert env.nvml_gpu_count() == 0 and env.cuda_available() is False
    assert not cuda_calls


def test_a_sweep_takes_one_fingerprint_and_never_initialises_cuda_in_its_parent(monkeypatch, cuda_calls, tmp_path):
    """Every kind of trial once. The parent takes the fingerprint once and hands it to each
    trial (a trial that took its own would lack the mark the parent's copy carries), and
    calls none of CUDA's entry points."""
    taken = []
    real = env.fingerprint

    def once(*args, **kwargs):
        taken.append(args)
        return {**real(*args, **kwargs), "taken_by": "parent"}

    monkeypatch.setattr(env, "fingerprint", once)
    started = torch.cuda.is_initialized()  # on a GPU box an earlier test may have started CUDA
    path = tmp_path / "r.jsonl"
    argv = ["--workloads", "simple_cnn", "--settings", "default", "--repeats", "1", "--seeds", "1"]
    assert run_cli(*argv, "--results", str(path)) == 0
    records = results.read_records(path)
    assert {r["kind"] for r in records} == {"timed", "aa", "seed", "audit", "profiled"}
    assert {r["status"] for r in records} == {"ok"}
    assert len(taken) == 1 and all(r["env"]["taken_by"] == "parent" for r in records)
    assert not cuda_calls and torch.cuda.is_initialized() == started


CUDNN_VERSION = 90300


@pytest.fixture
def cuda_build(monkeypatch, fake_h100) -> list[str]:
    """What a CUDA build of torch on one H100 does where the CPU build has nothing: its
    cuDNN bindings (`torch._C._cudnn`) and the `_init()` that `torch.backends.cudnn.version()`
    runs first, taken from torch's own source as a CUDA build executes it. That `_init()`
    checks every GPU's capability whenever CUDA is available: `get_device_properties`, which
    is CUDA's lazy init. Each device query made is listed in the returned list."""
    queried: list[str] = []
    bindings = types.SimpleNamespace(
        getVersionInt=lambda: CUDNN_VERSION,
        getRuntimeVersion=lambda: (9, 3, 0),
        getCompileVersion=lambda: (9, 3, 0),
        is_cuda=True,
    )
    monkeypatch.setattr(torch._C, "_cudnn", bindings, raising=False)
    monkeypatch.setitem(sys.modules, "torch.backends.cudnn", sys.modules["torch.backends.cudnn"])
    source = Path(torch.backends.cudnn.__file__)
    built: dict = {"__name__": "torch.backends.cudnn", "__package__": "torch.backends.cudnn", "__file__": str(source)}
    exec(compile(source.read_text(), str(source), "exec"), built)  # its `_cudnn` is now the bindings

    def device_query(device=None):
        queried.append("get_device_properties")
        return types.SimpleNamespace(name=H100, major=9, minor=0, total_memory=80 * 2**30)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", device_query)
    monkeypatch.setattr(torch.backends.cudnn, "version", built["version"])
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)  # the build has cuDNN
    return queried


@pytest.mark.skipif(
    torch.__version__ < (2, 10), reason="torch < 2.10: cuDNN's _init() checks no GPU's capability, so nothing to fake"
)
def test_the_fake_cuda_build_queries_the_device_for_cudnns_version_as_a_real_one_does(cuda_build):
    assert torch.backends.cudnn.version() == CUDNN_VERSION
    assert cuda_build == ["get_device_properties"]


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_on_a_cuda_build_the_parents_fingerprint_reads_cudnns_version_without_a_device_query(cuda_build, device):
    """The sweep's parent takes the machine's fingerprint: on a CUDA build, cuDNN's version
    through `torch.backends.cudnn.version()` would query every GPU and start CUDA there (and
    the selfcheck's "no CUDA context in the parent" would fail). The library's own version
    number asks no device."""
    info = env.fingerprint(device, gpu_properties=False)
    assert info["cudnn"] == CUDNN_VERSION
    assert cuda_build == []


def test_without_cudnn_the_fingerprint_has_no_cudnn_version(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    assert env.fingerprint("cpu")["cudnn"] is None
