"""What only a GPU can show. Skipped without CUDA; on a GPU box they check the CUDA
paths the CPU tests cannot reach: events, peak memory, CUBLAS_WORKSPACE_CONFIG, strict's
failures, the cuDNN plan record."""

import os

import pytest
import torch

from detcost import results
from detcost.train import TrainStep
from detcost.trial import run_trial
from tests.conftest import make_spec, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_sweep(tmp_path_factory):
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


def test_train_step_under_strict_sets_the_cublas_workspace_and_restores_it(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with TrainStep(make_spec(device="cuda:0", setting="strict")) as step:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        step()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_a_bare_cuda_device_string_means_cuda_0():
    record = run_trial(make_spec(device="cuda"))
    assert record.ok, record.error
