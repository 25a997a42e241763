"""What only a GPU can show. Skipped without CUDA; on a GPU box they check the CUDA
paths the CPU tests cannot reach: events, peak memory, CUBLAS_WORKSPACE_CONFIG, strict's
failures, the cuDNN plan record.

The CUDA work runs in other processes, as in a sweep: its trials, and a spawned
interpreter for what runs a step here. The pytest process never starts CUDA itself, so
the tests after these (that it has not started, that a process forks usable children)
hold on a GPU box too."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from detcost import results
from detcost.train import TrainStep
from detcost.trial import run_trial
from tests.conftest import make_spec, run_cli

# A torch built without CUDA has none, whatever `is_available` is made to say.
pytestmark = pytest.mark.skipif(
    not (torch.backends.cuda.is_built() and torch.cuda.is_available()), reason="needs a CUDA GPU"
)
CHILD_TIMEOUT_S = 300


def in_a_fresh_process(fn, *args):
    """fn(*args) in a spawned interpreter (fn at this module's top level), its answer or
    its exception: CUDA starts there, not in the pytest process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=CHILD_TIMEOUT_S)


@pytest.fixture(scope="module")
def cuda_sweep(tmp_path_factory):
    """The sweep's parent is this process: its trials start CUDA, it never does."""
    started = torch.cuda.is_initialized()
    path = tmp_path_factory.mktemp("cuda") / "c.jsonl"
    assert (
        run_cli(
            "--device",
            "cuda",
            "--workloads",
            "simple_cnn,unet,unet_lossfix,scatter",
            "--settings",
            "default,strict",
            "--repeats",
            "2",
            "--seeds",
            "0",
            "--no-aa",
            "--results",
            str(path),
        )
        == 0
    )
    assert torch.cuda.is_initialized() == started, "the sweep's parent started CUDA"
    return results.read_records(path)


def test_cuda_trials_time_with_events_and_read_back_the_strict_environment(cuda_sweep):
    timed = [r for r in cuda_sweep if r["kind"] == "timed"]
    assert {r["status"] for r in timed} <= {"ok", "unsupported"}
    for r in timed:
        assert r["device"] == "cuda:0"
        if r["setting"] == "strict":
            assert r["flags"]["cublas_workspace_config"] == ":4096:8"
        if r["status"] == "ok":
            assert r["memory_metric"] == "cuda_max_allocated" and r["peak_memory_bytes"] > 0
            assert all(t > 0 for t in r["step_times_s"])
    fixed = [r for r in timed if r["workload"] == "unet_lossfix" and r["setting"] == "strict"]
    assert fixed and all(r["status"] == "ok" for r in fixed)  # the workaround runs under strict


def test_strict_repeats_on_cuda_are_bitwise_identical(cuda_sweep):
    strict = [r for r in cuda_sweep if r["kind"] == "timed" and r["setting"] == "strict" and r["status"] == "ok"]
    by_workload: dict = {}
    for r in strict:
        by_workload.setdefault(r["workload"], set()).add(r["params_sha256"])
    assert by_workload and all(len(h) == 1 for h in by_workload.values())


def test_profiled_trials_record_what_the_cudnn_log_says(cuda_sweep):
    profiled = [r for r in cuda_sweep if r["kind"] == "profiled" and r["status"] == "ok"]
    assert profiled
    assert all(r["cudnn_plans"]["status"] in ("ok", "not parsed") for r in profiled)


def _strict_step_sets_and_restores_the_cublas_workspace() -> tuple:
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    with TrainStep(make_spec(device="cuda:0", setting="strict")) as step:
        during = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        step()
    return during, os.environ.get("CUBLAS_WORKSPACE_CONFIG")


def test_train_step_under_strict_sets_the_cublas_workspace_and_restores_it():
    assert in_a_fresh_process(_strict_step_sets_and_restores_the_cublas_workspace) == (":4096:8", None)


def _trial_on(device: str) -> tuple:
    record = run_trial(make_spec(device=device))
    return record.ok, record.error


def test_a_bare_cuda_device_string_means_cuda_0():
    ok, error = in_a_fresh_process(_trial_on, "cuda")
    assert ok, error
