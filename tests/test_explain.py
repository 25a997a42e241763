"""Explain the price: the NaN fill found by profiling, strict_nofill, the costly-op
workloads and the memory layout axis (the busy-machine guard: test_busy.py)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from detcost import results
from detcost.cli import main
from detcost.derive import attribution
from detcost.isolation import run_isolated
from detcost.settings import DEFAULT_SETTINGS
from detcost.trial import run_trial
from tests.conftest import TIMED_ONLY, analysis_of, make_spec, run_cli, variance_of


def test_profiling_attributes_strict_to_the_nan_fill_and_not_strict_nofill(explain_sweep):
    attr = analysis_of(explain_sweep).attribution
    strict = attr[attr["setting"] == "strict"].set_index("op")
    assert (attr["reference"] == "default").all()
    assert strict.loc["aten::fill_", "delta_calls"] > 10  # hundreds of NaN fills per step
    assert strict.index[0] == "aten::fill_"  # ranked first by the change in calls
    # strict_nofill adds no fill: the op may still be listed for its self time (which a busy
    # machine moves), never for a change in how often it is called
    nofill = attr[(attr["setting"] == "strict_nofill") & (attr["op"] == "aten::fill_")]
    assert (nofill["delta_calls"].abs() < 1).all(), nofill


def test_explain_command_prints_the_attribution(explain_sweep, capsys):
    assert main(["explain", str(explain_sweep)]) == 0
    out = capsys.readouterr().out
    assert "strict vs default on simple_cnn:" in out and "aten::fill_ calls/step" in out
    assert "self times of single ops are unreliable" in out


def test_strict_nofill_reads_back_no_fill_and_its_repeats_are_bitwise_identical(explain_sweep):
    df = results.load(explain_sweep)
    nofill = df[(df["kind"] == "timed") & (df["setting"] == "strict_nofill")]
    assert len(nofill) == 2
    assert not nofill["flags.fill_uninitialized_memory"].any() and nofill["flags.deterministic_algorithms"].all()
    assert nofill["params_sha256"].nunique() == 1
    row = variance_of(explain_sweep).set_index("setting").loc["strict_nofill"]
    assert row["n_identical"] == 2 and row["rel_l2"] == 0


def test_the_cudnn_plan_record_is_skipped_with_a_reason_on_cpu(explain_sweep):
    profiled = [r for r in results.read_records(explain_sweep) if r["kind"] == "profiled"]
    assert len(profiled) == 3
    for r in profiled:
        assert r["cudnn_plans"]["status"] == "skipped" and "CUDA only" in r["cudnn_plans"]["reason"]


def test_the_report_has_an_explanation_section(explain_sweep, tmp_path):
    assert main(["report", str(explain_sweep), "--out", str(tmp_path)]) == 0
    html = (tmp_path / "index.html").read_text()
    assert 'id="explanation"' in html and "aten::fill_" in html and "strict_nofill on simple_cnn: " in html


@pytest.fixture(scope="module")
def new_workloads(tmp_path_factory):
    path = tmp_path_factory.mktemp("new") / "n.jsonl"
    assert (
        run_cli(
            "--workloads",
            "dilated,transposed,scatter,unet_lossfix",
            "--repeats",
            "1",
            *TIMED_ONLY,
            "--results",
            str(path),
        )
        == 0
    )
    return results.load(path)


def test_each_new_workload_trains_under_every_setting(new_workloads):
    assert len(new_workloads) == 4 * len(DEFAULT_SETTINGS)
    assert (new_workloads["status"] == "ok").all(), new_workloads[["trial_id", "error"]]
    assert np.isfinite(new_workloads["final_loss"]).all()


def test_channels_last_is_applied_and_read_back():
    spec = make_spec(run_id="m", axes={"threads": 1, "memory_format": "channels_last"}, steps=2, batch_size=4)
    record = run_trial(spec).to_json()
    assert record["status"] == "ok" and record["memory_format_read_back"] == "channels_last"
    assert record["trial_id"].endswith("/channels_last")


def test_tf32_is_applied_and_read_back_on_the_torch_installed():
    """On the CPU TF32 changes nothing (same bits), but the state is recorded per trial."""
    on = run_trial(make_spec(run_id="f", steps=2, axes={"threads": 1, "tf32": "on"})).to_json()
    off = run_trial(make_spec(run_id="f", steps=2, axes={"threads": 1, "tf32": "off"})).to_json()
    assert on["tf32_read_back"] == "conv=tf32,matmul=tf32" and on["trial_id"].endswith("/tf32-on")
    assert off["tf32_read_back"] == "conv=ieee,matmul=ieee"
    assert on["params_sha256"] == off["params_sha256"]


def test_tf32_before_torch_2_9_is_set_and_read_back_through_allow_tf32(monkeypatch):
    """torch < 2.9 has no fp32_precision: TF32 goes through the legacy allow_tf32 booleans,
    reads back in the same words, is restored, and the snippet writes what that torch takes."""
    from types import SimpleNamespace

    from detcost import axes, compat

    cudnn, matmul = SimpleNamespace(allow_tf32=True), SimpleNamespace(allow_tf32=False)  # torch's defaults
    monkeypatch.setattr(compat, "_tf32_holders", lambda: (cudnn, matmul))
    tf32 = axes.REGISTRY["tf32"]
    assert tf32.read_back(None) == "conv=tf32,matmul=ieee"
    restore = tf32.apply("on", None)
    assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True) and tf32.read_back(None) == "conv=tf32,matmul=tf32"
    restore()
    assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)
    restore = tf32.apply("off", None)
    assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False) and tf32.read_back(None) == "conv=ieee,matmul=ieee"
    restore()
    assert tf32.read_back(None) == "conv=tf32,matmul=ieee" and tf32.apply("torch", None) is None
    assert tf32.snippet(["off"], cpu=False) == [
        "torch.backends.cudnn.allow_tf32 = False",
        "torch.backends.cuda.matmul.allow_tf32 = False",
    ]
    record = run_trial(make_spec(run_id="f", steps=2, axes={"threads": 1, "tf32": "on"})).to_json()
    assert record["status"] == "ok" and record["tf32_read_back"] == "conv=tf32,matmul=tf32"
    assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)


def test_amp_is_applied_and_read_back_with_a_grad_scaler_for_float16():
    bf16, fp16 = (
        run_trial(make_spec(run_id="a", steps=2, axes={"threads": 1, "amp": amp})).to_json() for amp in ("bf16", "fp16")
    )
    assert bf16["status"] == fp16["status"] == "ok"
    assert bf16["amp_read_back"] == "bfloat16" and bf16["trial_id"].endswith("/amp-bf16")
    assert fp16["amp_read_back"] == "float16 + GradScaler"
    assert bf16["params_sha256"] != fp16["params_sha256"]


def test_an_axis_value_the_device_cannot_run_is_one_line_and_exit_2(capsys, monkeypatch):
    from detcost import axes
    from detcost.cli import main

    monkeypatch.setattr(type(axes.REGISTRY["amp"]), "check", lambda self, v, d: f"--amp {v}: not on {d}")
    assert main(["run", "--quick", "--device", "cpu", "--amp", "fp16", "--dry-run"]) == 2
    assert capsys.readouterr().err == "detcost: error: --amp fp16: not on cpu\n"


def test_cuda_changes_are_ranked_once_each_and_small_ones_dropped():
    """An op row's self device time holds its kernels' time, which have rows of their own:
    kernels rank by device time, ops by host time, and changes under 1% of the step go."""
    index = pd.MultiIndex.from_tuples(
        [
            ("aten::cudnn_convolution", "op"),  # launches the kernel below: +2 ms device, +0.01 ms host
            ("sm90_xmma_fprop_implicit_gemm", "kernel"),  # the real change: +2 ms on the device
            ("aten::index_add_", "op"),  # 40 more calls per step: kept whatever its time
            ("void at::native::tiny_kernel", "kernel"),  # +0.01 ms: under 1% of a 10 ms step
        ],
        names=["name", "kind"],
    )
    diff = pd.DataFrame(
        {
            "calls": [0, 0, 40, 0],
            "self_cpu_ms": [0.01, 0.0, 0.3, 0.0],
            "self_device_ms": [2.0, 2.0, 0.5, 0.01],
            "cpu_memory_bytes": [0, 0, 0, 0],
        },
        index=index,
    )
    ranked = attribution.rank_changes(diff, cuda=True, ref_step_ms=10.0)
    assert list(ranked.index.get_level_values("name")) == ["sm90_xmma_fprop_implicit_gemm", "aten::index_add_"]
    assert ranked["ms"].tolist() == [2.0, 0.3]  # device time for the kernel, host time for the op
    assert ranked["ms"].sum() == pytest.approx(2.3)  # the conv counted once, not twice


def test_a_compiled_cpu_trial_is_bitwise_reproducible_and_compiles_in_the_cold_start():
    """torch.compile as an axis: two fresh processes at fixed threads end bitwise equal,
    and the read-back says so (where it compiles: the test below)."""
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    records = [
        run_isolated(make_spec(repeat=r, steps=3, axes={"threads": 1, "compile": "on"}), method="forkserver").to_json()
        for r in (0, 1)
    ]
    assert [r["status"] for r in records] == ["ok", "ok"], [r["error"] for r in records]
    assert records[0]["params_sha256"] == records[1]["params_sha256"]
    assert all(r["compile_read_back"].startswith("on") and r["trial_id"].endswith("/compiled") for r in records)


@pytest.mark.dynamo_in_process
def test_the_compile_axis_compiles_in_the_warm_up_and_never_in_a_timed_step(monkeypatch):
    """Which steps compile, counted rather than timed: torch.compile (with a backend that
    records each graph it is handed, and runs it eagerly) compiles on the first warm-up
    step, and the timed steps after it compile nothing, so compile time is cold start."""
    import torch

    from detcost import measure
    from detcost.train import build, trial_state

    graphs = []

    def recording(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module  # run as captured: eager, no compiler needed

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real(model, backend=recording))
    spec = make_spec(steps=3, warmup=2, axes={"threads": 1, "compile": "on"})
    try:
        with trial_state(spec):
            wl = build(spec)
            log = measure.StepLog(wl.model, spec.total_steps, spec.device)
            assert not graphs  # nothing compiles when the model is wrapped
            measure.warm_up(spec, wl, log)
            after_warm_up = len(graphs)
            measure.timed_region(spec, wl, log)
            assert measure.read_back(wl)["compile"].startswith("on")
    finally:
        torch._dynamo.reset()
    assert after_warm_up >= 1 and len(graphs) == after_warm_up


def test_the_compile_read_back_follows_strict_on_a_torch_without_inductors_deterministic_config(monkeypatch):
    """Before torch 2.10 Inductor had no `deterministic` config and read
    use_deterministic_algorithms itself: the read-back says what that flag says."""
    from types import SimpleNamespace

    import torch

    from detcost import compat

    monkeypatch.setattr(compat, "_inductor_config", SimpleNamespace)  # a config without `deterministic`
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert compat.inductor_deterministic() is True
        torch.use_deterministic_algorithms(False)
        assert compat.inductor_deterministic() is False
    finally:
        torch.use_deterministic_algorithms(before)
