"""The profiled trial's cuDNN plan log: the environment the parent sets, and the parsers
tried on lines in the formats NVIDIA documents (no GPU needed: the logs are text).

Sources of the sample lines:
- frontend: cudnn-frontend's `ExecutionPlan_v8::describe()` ("CUDNN_BACKEND_EXECUTION_PLAN_
  DESCRIPTOR : <tag>, numeric_notes:[..] behavior_notes:[..] workSpaceSize: N", the tag
  "<operation>_eng<global index>_k<knob type>=<choice>..." from `buildTag`) and
  `time_sorted_plan` in cudnn_frontend_find_plan.h ("[cudnn_frontend] Plan <tag> took <ms>",
  "... failed with <status>", "Auto-tuning returns N plans.");
- cuDNN 8 API log: NVIDIA/cudnn-frontend issue #39 (cudnnBackendGetAttribute and
  cudnnBackendSetAttribute blocks, "I! CuDNN (v8204)", "i!" lines) and the v7-era
  cudnnFindConvolutionForwardAlgorithm excerpt whose argument lines the legacy calls share;
- cuDNN 9 API log: the cuDNN 9 troubleshooting page ("cuDNN (v90000) function
  cudnnSetActivationDescriptor() called:") and a cuDNN 9.3 log's "I! CuDNN (v90300 75)".
The execute blocks are those documented lines under an execute call's header: the layout
of the descriptor dump is the one cuDNN prints for the same descriptor in the other calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from detcost import cudnn_log
from detcost.cudnn_log import (
    CUDNN_BACKEND_LOG_ENV,
    CUDNN_LOG_ENV,
    cudnn_log_environ,
    cudnn_plans,
    parse_cudnn_api_log,
    parse_cudnn_log,
    read_cudnn_log,
)
from tests.conftest import make_spec

FRONTEND_AUTOTUNED = """\
[cudnn_frontend] CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR : ConvFwd_eng0_k2=1_k3=0, numeric_notes:[CUDNN_NUMERICAL_NOTE_TENSOR_CORE,] behavior_notes:[] workSpaceSize: 0
[cudnn_frontend] CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR : ConvFwd_eng28_k2=2_k3=0_k4=4, numeric_notes:[CUDNN_NUMERICAL_NOTE_TENSOR_CORE,CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS,] behavior_notes:[CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION,] workSpaceSize: 4194304
[cudnn_frontend] Plan ConvFwd_eng0_k2=1_k3=0 took     0.0421
[cudnn_frontend] Plan ConvFwd_eng1_k2=0 failed with CUDNN_STATUS_NOT_SUPPORTED
[cudnn_frontend] Plan ConvFwd_eng28_k2=2_k3=0_k4=4 took     0.0185
[cudnn_frontend] Auto-tuning returns 2 plans.
[cudnn_frontend] Plan ConvBwdFilter_eng0_k2=0 took      0.210
[cudnn_frontend] Plan ConvBwdFilter_eng34_k2=1 took      0.090
[cudnn_frontend] Auto-tuning returns 2 plans.
"""  # noqa: E501 (log lines, verbatim)

FRONTEND_HEURISTICS = """\
[cudnn_frontend] CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR : ConvFwd_eng0_k2=1_k3=0, numeric_notes:[] behavior_notes:[] workSpaceSize: 0
[cudnn_frontend] CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR : ConvBwdData_eng1_k2=3, numeric_notes:[] behavior_notes:[] workSpaceSize: 1024
"""  # noqa: E501 (log lines, verbatim)

API_LOG_CUDNN8 = """\
I! CuDNN (v8204) function cudnnBackendGetAttribute() called:
i!     descriptor: type=CUDNN_BACKEND_ENGINE_DESCRIPTOR:
i!         opGraph: type=CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
i!         engine_id: type=int; val=0;
i!         knobDesc: type=cudnnBackendDescriptor_t:
i!             CUDNN_KNOB_TYPE_KERNEL_CFG: type=int; val=27;
i!         numericalNotes: type=cudnnBackendDescriptor_t:
i!             CUDNN_NUMERICAL_NOTE_TENSOR_CORE: type=bool; val=true;
i!         behaviorNotes: type=cudnnBackendDescriptor_t:
i!             CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION: type=bool; val=true;
i!     attributeName: type=cudnnBackendAttributeName_t; val=CUDNN_ATTR_ENGINE_GLOBAL_INDEX (1301);
i!     attributeType: type=cudnnBackendAttributeType_t; val=CUDNN_TYPE_INT64 (3);
i! Time: 2022-11-25T08:47:48.178800 (0d+0h+0m+2s since start)
i! Process=391; Thread=391; GPU=NULL; Handle=NULL; StreamId=NULL.

I! CuDNN (v8204) function cudnnBackendSetAttribute() called:
i!     descriptor: type=CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
i!         engcfg: type=CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
i!             engine: type=CUDNN_BACKEND_ENGINE_DESCRIPTOR:
i!                 opGraph: type=void*; val=NULL_PTR;
i!                 engine_id: type=int; val=-1;
i!                 knobDesc: type=cudnnBackendDescriptor_t; val=NULL_PTR;
i!     attributeName: type=cudnnBackendAttributeName_t; val=CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG (401);
i!     attributeType: type=cudnnBackendAttributeType_t; val=CUDNN_TYPE_BACKEND_DESCRIPTOR (15);
i!     elementCount: type=int64_t; val=1;
i! Time: 2022-11-25T08:47:46.579193 (0d+0h+0m+0s since start)
i! Process=391; Thread=391; GPU=NULL; Handle=NULL; StreamId=NULL.

I! CuDNN (v8204) function cudnnBackendExecute() called:
i!     handle: type=cudnnHandle_t; streamId=0x7fa5880083d0;
i!     executionPlan: type=CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
i!         engcfg: type=CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
i!             engine: type=CUDNN_BACKEND_ENGINE_DESCRIPTOR:
i!                 opGraph: type=CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
i!                 engine_id: type=int; val=0;
i!                 knobDesc: type=cudnnBackendDescriptor_t:
i!                     CUDNN_KNOB_TYPE_KERNEL_CFG: type=int; val=27;
i!                 numericalNotes: type=cudnnBackendDescriptor_t:
i!                     CUDNN_NUMERICAL_NOTE_TENSOR_CORE: type=bool; val=true;
i! Time: 2022-11-25T08:47:48.201117 (0d+0h+0m+2s since start)
i! Process=391; Thread=391; GPU=0; Handle=0x55d77e0e8a10; StreamId=0x7fa5880083d0.

I! CuDNN (v8204) function cudnnConvolutionForward() called:
i!     handle: type=cudnnHandle_t; streamId=0x7fa5880083d0;
i!     xDesc: type=cudnnTensorDescriptor_t:
i!         dataType: type=cudnnDataType_t; val=CUDNN_DATA_FLOAT (0);
i!         nbDims: type=int; val=4;
i!         dimA: type=int; val=[1,3,224,224];
i!     algo: type=cudnnConvolutionFwdAlgo_t; val=CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM (1);
i!     workSpaceSizeInBytes: type=size_t; val=0;
i! Time: 2022-11-25T08:47:48.301117 (0d+0h+0m+2s since start)
i! Process=391; Thread=391; GPU=0; Handle=0x55d77e0e8a10; StreamId=0x7fa5880083d0.
"""

API_LOG_CUDNN9 = """\
I! CuDNN (v90300 75) function cudnnCreate() called:
i!     handle: location=host; addr=0x7ffde85442a0;
i! Time: 2024-08-27T18:17:08.746876 (0d+0h+0m+0s since start)
i! Process=4782; Thread=4782; GPU=NULL; Handle=NULL; StreamId=NULL.

I! CuDNN (v90300 75) function cudnnBackendExecute() called:
i!     handle: type=cudnnHandle_t; streamId=0x5574a8c3e0d0;
i!     executionPlan: type=CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
i!         engcfg: type=CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
i!             engine: type=CUDNN_BACKEND_ENGINE_DESCRIPTOR:
i!                 engine_id: type=int; val=42;
i!                 knobDesc: type=cudnnBackendDescriptor_t:
i!                     CUDNN_KNOB_TYPE_TILE_SIZE: type=int; val=3;
i!                     CUDNN_KNOB_TYPE_SPLIT_K: type=int; val=1;
i! Time: 2024-08-27T18:17:09.102334 (0d+0h+0m+1s since start)
i! Process=4782; Thread=4782; GPU=0; Handle=0x5574a8d1c2a0; StreamId=0x5574a8c3e0d0.
"""


def _execute_cudnn9(operation: str, dims: tuple[str, str], engine: int, tile: int) -> str:
    """One cudnnBackendExecute block of a cuDNN 9 API log, its plan's operation graph
    dumped as the other calls dump the same descriptors: the operation, its tensors."""
    x, w = dims
    return f"""\
I! CuDNN (v90300 75) function cudnnBackendExecute() called:
i!     handle: type=cudnnHandle_t; streamId=0x5574a8c3e0d0;
i!     executionPlan: type=CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
i!         engcfg: type=CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
i!             engine: type=CUDNN_BACKEND_ENGINE_DESCRIPTOR:
i!                 opGraph: type=CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
i!                     ops: type=CUDNN_BACKEND_OPERATION_{operation}_DESCRIPTOR:
i!                         xDesc: type=CUDNN_BACKEND_TENSOR_DESCRIPTOR:
i!                             dataType: type=cudnnDataType_t; val=CUDNN_DATA_FLOAT (0);
i!                             dimA: type=int; val={x};
i!                         wDesc: type=CUDNN_BACKEND_TENSOR_DESCRIPTOR:
i!                             dataType: type=cudnnDataType_t; val=CUDNN_DATA_FLOAT (0);
i!                             dimA: type=int; val={w};
i!                 engine_id: type=int; val={engine};
i!                 knobDesc: type=cudnnBackendDescriptor_t:
i!                     CUDNN_KNOB_TYPE_TILE_SIZE: type=int; val={tile};
i!     variantPack: type=CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR:
i!         workspace: type=void*; val=0x7f3c2a000000;
i! Time: 2024-08-27T18:17:09.102334 (0d+0h+0m+1s since start)
i! Process=4782; Thread=4782; GPU=0; Handle=0x5574a8d1c2a0; StreamId=0x5574a8c3e0d0.

"""


CONV = ("[8,3,32,32]", "[16,3,3,3]")
FWD, BWD_FILTER = ("CONVOLUTION_FORWARD", CONV), ("CONVOLUTION_BACKWARD_FILTER", CONV)
STEPS = 5  # the profiled trial's steps, its warm-up included: the log covers them all


def api_log_cudnn9(benchmark: bool, backward_kept: int = 0) -> str:
    """A trial's cuDNN 9 API log over STEPS steps of one convolution. Default: each operation
    runs the heuristics' plan (forward eng28, backward-filter eng34) in every step. Under
    cudnn.benchmark the first step autotunes each operation first, executing every candidate
    three times (a median of three), the one it keeps among them; every step then runs the
    kept plan: default's forward plan, and the backward-filter engine `backward_kept` (eng0,
    also a forward candidate, or default's eng34)."""
    fwd_kept, bwd_kept = _execute_cudnn9(*FWD, 28, 2), _execute_cudnn9(*BWD_FILTER, backward_kept, 1)
    bwd_default = _execute_cudnn9(*BWD_FILTER, 34, 1)
    first_step = ""
    if benchmark:
        fwd_candidates = [(0, 1), (28, 2), (42, 3)]
        first_step += "".join(_execute_cudnn9(*FWD, e, t) * 3 for e, t in fwd_candidates) + fwd_kept
        bwd_candidates = [(34, 1), (0, 1)]
        first_step += "".join(_execute_cudnn9(*BWD_FILTER, e, t) * 3 for e, t in bwd_candidates) + bwd_kept
        return first_step + (fwd_kept + bwd_kept) * (STEPS - 1)
    return (fwd_kept + bwd_default) * STEPS


# Documented cuDNN 9 output that names no plan: a log of the wrong calls.
API_LOG_UNRELATED = """\
cuDNN (v90000) function cudnnSetActivationDescriptor() called:
    mode: type=cudnnActivationMode_t; val=CUDNN_ACTIVATION_RELU (1);
    reluNanOpt: type=cudnnNanPropagation_t; val=CUDNN_NOT_PROPAGATE_NAN (0);
    coef: type=double; val=1000.000000;
Time: 2024-01-21T14:14:21.366171 (0d+0h+1m+5s since start)
"""


def cuda_profiled(**overrides):
    """A profiled spec on CUDA: nothing here touches CUDA, the device is only a name."""
    base = {"kind": "profiled", "device": "cuda:0", "sidecar": "r/simple_cnn__default.json"}
    return make_spec(**{**base, **overrides})


# ---- the environment the parent sets --------------------------------------------------


def test_the_parent_asks_for_both_logs_each_in_its_own_file_and_makes_the_folder(tmp_path):
    env = cudnn_log_environ(cuda_profiled(), tmp_path)
    assert env["CUDNN_FRONTEND_LOG_INFO"] == "1"
    assert env["CUDNN_LOGLEVEL_DBG"] == "3" and env["CUDNN_LOGINFO_DBG"] == "1"  # cuDNN 9 and cuDNN 8
    frontend, backend = Path(env[CUDNN_LOG_ENV]), Path(env[CUDNN_BACKEND_LOG_ENV])
    assert frontend != backend and frontend.parent == backend.parent == tmp_path / "r"
    assert frontend.parent.is_dir()  # cuDNN opens the files but makes no folder


def test_no_cudnn_log_is_asked_for_on_the_cpu_or_for_other_kinds(tmp_path):
    assert cudnn_log_environ(make_spec(kind="profiled", sidecar="r/x.json"), tmp_path) == {}
    assert cudnn_log_environ(cuda_profiled(kind="timed"), tmp_path) == {}
    assert cudnn_log_environ(cuda_profiled(), None) == {}


class _StartSpy:
    """A multiprocessing context whose processes only note how they were started and with
    which environment (os.environ at start(), which a spawned process is exec'd with)."""

    def __init__(self, method):
        self.method, self.started = method, []
        spy = self

        class Process:
            pid, exitcode = None, 1

            def __init__(self, **kw):
                self.kw = kw

            def start(self):
                spy.started.append((spy.method, dict(os.environ)))

        self.Process = Process

    def Pipe(self, duplex):  # noqa: N802 - multiprocessing's name
        return _Conn(), _Conn()


class _Conn:
    def close(self):
        pass


def _started(monkeypatch, spec, results_dir):
    """How `run_isolated` starts `spec`'s process: (method, its starting environment)."""
    from detcost import isolation

    spies = []
    monkeypatch.setattr(isolation, "process_context", lambda method: spies.append(_StartSpy(method)) or spies[-1])
    monkeypatch.setattr(isolation, "receive", lambda receiver, proc, timeout: (None, False))
    record = isolation.run_isolated(spec, method="forkserver", results_dir=results_dir)
    assert record.status.value == "crash"  # the spy's process sent nothing
    (spy,) = spies
    (started,) = spy.started
    return started


def test_a_profiled_cuda_trial_is_spawned_with_the_api_log_in_its_starting_environment(tmp_path, monkeypatch):
    """cuDNN reads CUDNN_LOGLEVEL_DBG / CUDNN_LOGDEST_DBG when `import torch` loads it: a
    trial forked from the forkserver (which imported torch) that sets them gets no API log
    (pytorch#58670). So the trial is spawned with them in the environment it is exec'd
    with, and the parent's own environment is as it was after."""
    for name in cudnn_log._LOG_VARS:
        monkeypatch.delenv(name, raising=False)
    method, environ = _started(monkeypatch, cuda_profiled(), tmp_path)
    asked = cudnn_log_environ(cuda_profiled(), tmp_path)
    assert method == "spawn"
    assert environ["CUDNN_LOGLEVEL_DBG"] == "3" and environ["CUDNN_LOGINFO_DBG"] == "1"
    assert environ[CUDNN_BACKEND_LOG_ENV] == asked[CUDNN_BACKEND_LOG_ENV]
    assert environ[CUDNN_LOG_ENV] == asked[CUDNN_LOG_ENV]
    assert not any(name in os.environ for name in cudnn_log._LOG_VARS)  # the parent's is unchanged


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/self/environ")
def test_a_spawned_process_holds_the_variables_from_its_exec(monkeypatch):
    """The real start, not a spy: what `in_fresh_process` is given as `environ` is in the
    environment the spawned process was exec'd with, not set after its start."""
    from detcost.isolation import in_fresh_process
    from tests.probes import environ_at_exec

    monkeypatch.delenv("CUDNN_LOGLEVEL_DBG", raising=False)
    asked = {"CUDNN_LOGLEVEL_DBG": "3"}
    probe = (environ_at_exec, (list(asked),))
    sent, why = in_fresh_process(*probe, method="spawn", timeout=300, name="probe", environ=asked)
    assert why is None and sent == asked
    assert "CUDNN_LOGLEVEL_DBG" not in os.environ


def test_cpu_and_unlogged_trials_still_fork_from_the_forkserver_with_no_cudnn_variables(tmp_path, monkeypatch):
    for name in cudnn_log._LOG_VARS:
        monkeypatch.delenv(name, raising=False)
    for spec in (make_spec(kind="profiled", sidecar="r/x.json"), cuda_profiled(kind="timed")):
        method, environ = _started(monkeypatch, spec, tmp_path)
        assert method == "forkserver" and not any(name in environ for name in cudnn_log._LOG_VARS), spec
    assert cudnn_log.start_environ({"CUDNN_FRONTEND_LOG_INFO": "1", CUDNN_LOG_ENV: "f.log"}) == {}  # read at first use


# ---- the frontend log ------------------------------------------------------------------


def test_an_autotuned_frontend_log_names_the_fastest_plan_of_each_round():
    found = parse_cudnn_log(FRONTEND_AUTOTUNED)
    assert found["chosen"] == {"ConvFwd_eng28_k2=2_k3=0_k4=4": 1, "ConvBwdFilter_eng34_k2=1": 1}
    assert found["plans"]["ConvFwd_eng0_k2=1_k3=0"] == 2  # built, then timed
    assert found["engines"] == {"eng0": 3, "eng28": 2, "eng1": 1, "eng34": 1}
    assert found["notes"]["CUDNN_NUMERICAL_NOTE_TENSOR_CORE"] == 2
    assert found["max_workspace_bytes"] == 4194304 and found["failed_plans"] == 1
    assert ("ConvFwd_eng28_k2=2_k3=0_k4=4", 0.0185) in found["timings_ms"]


def test_a_frontend_log_without_autotuning_names_plans_but_claims_no_choice():
    found = parse_cudnn_log(FRONTEND_HEURISTICS)
    assert found["plans"] == {"ConvFwd_eng0_k2=1_k3=0": 1, "ConvBwdData_eng1_k2=3": 1}
    assert found["chosen"] == {} and found["chosen_by"] is None


# ---- cuDNN's API log (the fallback) ------------------------------------------------------


def test_a_cudnn8_api_log_names_what_the_execute_calls_ran():
    found = parse_cudnn_api_log(API_LOG_CUDNN8.splitlines())
    assert found["cudnn_version"] == "8204" and found["calls"] == 4
    # the executed plan with its knob, and the legacy call's algorithm; not the unset engine (-1)
    assert found["chosen"] == {"eng0_KERNEL_CFG=27": 1, "CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM": 1}
    assert found["plans"]["eng0_KERNEL_CFG=27"] == 2  # also named by a query that ran nothing
    assert found["engines"] == {"eng0": 2}
    assert found["notes"]["CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION"] == 1


def test_a_cudnn9_api_log_is_read_with_its_build_number_in_the_header():
    found = parse_cudnn_api_log(API_LOG_CUDNN9.splitlines())
    assert found["cudnn_version"] == "90300" and found["calls"] == 2
    assert found["chosen"] == {"eng42_TILE_SIZE=3_SPLIT_K=1": 1}


def test_under_benchmark_each_operation_keeps_the_plan_it_ran_after_autotuning_not_the_candidates():
    """cuDNN executes every candidate while it autotunes; the plan it kept is executed in
    every step after, so it is each operation's most executed one."""
    from detcost.selfcheck.judge import Plans, plans_differ

    tuned = parse_cudnn_api_log(api_log_cudnn9(benchmark=True).splitlines())
    # eng0 ran 3 times as a forward candidate and is counted for backward-filter alone
    assert tuned["chosen"] == {"eng28_TILE_SIZE=2": 3 + STEPS, "eng0_TILE_SIZE=1": 3 + STEPS}
    assert {"eng42_TILE_SIZE=3", "eng34_TILE_SIZE=1", "eng0_TILE_SIZE=1"} <= set(tuned["plans"])  # named, not kept
    assert "each operation executed most" in tuned["chosen_by"]
    plain = parse_cudnn_api_log(api_log_cudnn9(benchmark=False).splitlines())
    assert plain["chosen"] == {"eng28_TILE_SIZE=2": STEPS, "eng34_TILE_SIZE=1": STEPS}

    def ran(found):
        return Plans(frozenset(found["plans"]), frozenset(found["chosen"]))

    assert plans_differ(ran(plain), ran(tuned)) is True  # backward-filter: eng34, then eng0
    kept_default = parse_cudnn_api_log(api_log_cudnn9(benchmark=True, backward_kept=34).splitlines())
    assert kept_default["chosen"] == {"eng28_TILE_SIZE=2": 3 + STEPS, "eng34_TILE_SIZE=1": 3 + STEPS}
    assert plans_differ(ran(plain), ran(kept_default)) is False  # the candidates it tried are no difference


# ---- reading the files, and what a trial records ----------------------------------------


def test_an_empty_or_unrelated_log_is_not_parsed_with_a_reason(tmp_path):
    empty, unrelated, garbage = tmp_path / "empty.log", tmp_path / "unrelated.log", tmp_path / "garbage.log"
    empty.write_text("")
    unrelated.write_text(API_LOG_UNRELATED)
    garbage.write_bytes(b"\xff\xfe\x00 not a log at all \x00\n" * 10)
    for source, path, why in [
        ("frontend", empty, "is empty"),
        ("backend", unrelated, "(1 API calls) names no cuDNN engine or algorithm"),
        ("frontend", garbage, "names no cuDNN engine or algorithm"),
        ("backend", tmp_path / "missing.log", "unreadable"),
        ("backend", None, "no cuDNN API log was asked for"),
        ("frontend", "stderr", "went to stderr"),
    ]:
        found = read_cudnn_log(source, None if path is None else str(path))
        assert found.status == "not parsed" and why in found.reason, (source, path, found)


def test_the_frontend_log_is_used_when_it_names_the_plans(tmp_path, monkeypatch):
    env = cudnn_log_environ(cuda_profiled(), tmp_path)
    Path(env[CUDNN_LOG_ENV]).write_text(FRONTEND_AUTOTUNED)
    Path(env[CUDNN_BACKEND_LOG_ENV]).write_text(API_LOG_CUDNN8)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plans = cudnn_plans(cuda_profiled())
    assert plans.status == "ok" and plans.source == "frontend"
    assert plans.log == Path(env[CUDNN_LOG_ENV]).name
    cudnn_log.drop_api_log()  # it repeats the plans at far greater size
    assert not Path(env[CUDNN_BACKEND_LOG_ENV]).exists() and Path(env[CUDNN_LOG_ENV]).exists()


def test_the_api_log_is_the_fallback_when_the_frontend_wrote_nothing(tmp_path, monkeypatch):
    env = cudnn_log_environ(cuda_profiled(), tmp_path)
    Path(env[CUDNN_LOG_ENV]).write_text("")
    Path(env[CUDNN_BACKEND_LOG_ENV]).write_text(API_LOG_CUDNN9)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plans = cudnn_plans(cuda_profiled())
    assert plans.status == "ok" and plans.source == "backend"
    assert plans.log == Path(env[CUDNN_BACKEND_LOG_ENV]).name and plans.chosen
    monkeypatch.setenv("RANK", "1")  # a DDP rank other than 0: its ranks share the one file
    cudnn_log.drop_api_log()
    assert Path(env[CUDNN_BACKEND_LOG_ENV]).exists()
    monkeypatch.setenv("RANK", "0")
    cudnn_log.drop_api_log()  # parsed into the record: megabytes a step are not kept
    assert not Path(env[CUDNN_BACKEND_LOG_ENV]).exists()


def test_when_neither_log_names_a_plan_the_trial_says_why_for_each(tmp_path, monkeypatch):
    env = cudnn_log_environ(cuda_profiled(), tmp_path)
    Path(env[CUDNN_BACKEND_LOG_ENV]).write_text(API_LOG_UNRELATED)  # and no frontend file at all
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plans = cudnn_plans(cuda_profiled())
    assert plans.status == "not parsed"
    assert "cuDNN frontend log" in plans.reason and "cuDNN API log" in plans.reason


@pytest.mark.parametrize("device, why", [("cpu", "CUDA only"), ("cuda:0", "was set")])
def test_no_log_to_read_is_skipped_with_a_reason(monkeypatch, device, why):
    monkeypatch.delenv(CUDNN_LOG_ENV, raising=False)
    monkeypatch.delenv(CUDNN_BACKEND_LOG_ENV, raising=False)
    plans = cudnn_plans(make_spec(kind="profiled", device=device))
    assert plans.status == "skipped" and why in plans.reason


def test_a_setting_without_cudnn_asks_for_no_log_and_forks_as_before(tmp_path, monkeypatch):
    """no_cudnn runs no cuDNN call: no log to ask for, so no spawned process to pay for."""
    from detcost.trial import trial_environ

    for name in cudnn_log._LOG_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not any(name in trial_environ(cuda_profiled(setting="no_cudnn"), tmp_path) for name in cudnn_log._LOG_VARS)
    assert CUDNN_BACKEND_LOG_ENV in trial_environ(cuda_profiled(), tmp_path)
    method, environ = _started(monkeypatch, cuda_profiled(setting="no_cudnn"), tmp_path)
    assert method == "forkserver" and not any(name in environ for name in cudnn_log._LOG_VARS)
    monkeypatch.setattr(torch.backends.cudnn, "enabled", False)
    plans = cudnn_plans(cuda_profiled(setting="no_cudnn"))
    assert plans.status == "skipped" and "cuDNN is disabled" in plans.reason


# ---- DDP ranks and long logs ------------------------------------------------------------


def test_each_rank_of_a_ddp_trial_writes_its_own_frontend_log(tmp_path):
    env = cudnn_log_environ(cuda_profiled(), tmp_path)
    names = {cudnn_log.rank_environ(r, env)[CUDNN_LOG_ENV] for r in range(2)}
    assert len(names) == 2 and all(
        n.endswith(".cudnn_frontend.log") and Path(n).parent == tmp_path / "r" for n in names
    )
    assert cudnn_log.rank_environ(1, env)[CUDNN_LOG_ENV].endswith("simple_cnn__default.rank1.cudnn_frontend.log")
    assert cudnn_log.rank_environ(1, {CUDNN_LOG_ENV: "stderr"}) == {} and cudnn_log.rank_environ(1, {}) == {}


def test_a_rank_names_its_frontend_log_before_its_setting_and_cuda_start(tmp_path, monkeypatch):
    from detcost import ddp

    env = cudnn_log_environ(cuda_profiled(), tmp_path)
    for key, value in {**env, "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    seen = []

    def prepare(spec):  # the first thing a rank runs of the trial's own (the setting's environment)
        seen.append(os.environ[CUDNN_LOG_ENV])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ddp._rank(make_spec(axes={"threads": 1, "nproc": 2}).to_dict(), None, prepare, None)
    assert seen == [cudnn_log.rank_environ(1, env)[CUDNN_LOG_ENV]]


def test_the_ranks_share_the_api_log_and_each_reads_its_own_calls():
    """cuDNN opened the API log as it loaded, before the launcher forked the ranks: both
    write into one file, each call's block closed by its process id."""
    mine = api_log_cudnn9(benchmark=False)
    theirs = _execute_cudnn9(*FWD, 42, 3).replace("Process=4782", "Process=4783") * (STEPS + 1)
    lines = (mine + theirs).splitlines()
    assert "eng42_TILE_SIZE=3" in parse_cudnn_api_log(lines)["chosen"]  # the other rank's, read as this one's
    found = parse_cudnn_api_log(lines, pid=4782)
    assert found["chosen"] == {"eng28_TILE_SIZE=2": STEPS, "eng34_TILE_SIZE=1": STEPS}
    assert found["calls"] == 2 * STEPS


def test_a_rank_reads_its_own_calls_from_the_shared_api_log_file(tmp_path, monkeypatch):
    log = tmp_path / "api.log"
    theirs = _execute_cudnn9(*FWD, 42, 3).replace("Process=4782", "Process=4783") * (STEPS + 1)
    log.write_text(api_log_cudnn9(benchmark=False) + theirs)
    monkeypatch.setattr(os, "getpid", lambda: 4782)
    monkeypatch.delenv("RANK", raising=False)  # one process: every call in its log is its own
    assert "eng42_TILE_SIZE=3" in read_cudnn_log("backend", str(log)).chosen
    monkeypatch.setenv("RANK", "0")
    assert read_cudnn_log("backend", str(log)).chosen == {"eng28_TILE_SIZE=2": STEPS, "eng34_TILE_SIZE=1": STEPS}


def test_a_log_longer_than_the_cap_is_read_at_both_ends_so_the_kept_plan_is_not_a_candidate(tmp_path, monkeypatch):
    """Under cudnn.benchmark the first step executes every candidate; a read of the first
    part alone can stop there, where a candidate ran as often as the plan kept. The log's
    end holds the steps after autotuning, each running the kept plan."""
    log = tmp_path / "api.log"
    tuning = "".join(_execute_cudnn9(*FWD, e, t) * 3 for e, t in [(0, 1), (42, 3)])
    steps = _execute_cudnn9(*FWD, 28, 2) * 40
    log.write_text(tuning + steps)
    monkeypatch.setattr(cudnn_log, "_LOG_CAP_CHARS", 2 * len(tuning.encode()))  # the head ends in the tuning
    head_only = parse_cudnn_api_log(log.read_text()[: len(tuning)].splitlines())
    assert "eng28_TILE_SIZE=2" not in head_only["chosen"]  # what the first part alone would say
    found = read_cudnn_log("backend", str(log))
    assert found.status == "ok" and found.truncated is True
    assert max(found.chosen, key=found.chosen.get) == "eng28_TILE_SIZE=2"
    assert {"eng0_TILE_SIZE=1", "eng42_TILE_SIZE=3"} <= set(found.plans)  # the candidates, named early
    small = tmp_path / "small.log"
    small.write_text(API_LOG_CUDNN9)
    assert read_cudnn_log("backend", str(small)).truncated is False
