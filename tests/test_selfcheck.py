"""The selfcheck: what builds a workload runs in a child process, a child's failure is a
failed line (never a traceback), `--device cuda` without CUDA is one line and exit 2, and
the judgements of the CUDA acceptance suite, fed synthetic figures (CPU only)."""

import math
from functools import partial

import pytest
import torch

from detcost import selfcheck
from detcost.cli import main
from detcost.cli.output import EXIT_CHECKS_FAILED
from detcost.payloads import HOST_BOUND_BELOW
from detcost.record import Profile, Status, TrialParts, TrialRecord
from detcost.selfcheck import Check, ChildResult
from detcost.trial import run_trial
from detcost.workloads import BUILTIN, get_workload
from tests.conftest import make_spec


def record(workload="resnet18", setting="default", status="ok", error=None, kind="profiled", flags=None, **payload):
    spec = make_spec(workload=workload, setting=setting, kind=kind)
    parts = TrialParts(profile=Profile.from_json(payload))  # as a stored record's fields load
    return TrialRecord(spec, status=Status(status), error=error, flags=flags, parts=parts)


def deciding(checks):
    """A stand-in for `selfcheck.run_all`: hands each check to `on_check`, as the real one
    does when a check is decided, and returns them all."""

    def run_all(*args, on_check=None, **kwargs):
        for check in checks:
            if on_check:
                on_check(check)
        return checks

    return run_all


def plans(*tags, chosen=()):
    """A parsed `cudnn_plans` field as detcost.profile writes it."""
    return {"status": "ok", "log": "x.log", "plans": {t: 1 for t in tags}, "chosen": {t: 1 for t in chosen}}


# ---- the in-process parts run in a child process ------------------------------------------


def test_a_check_that_builds_a_workload_runs_in_a_child_process(monkeypatch):
    def in_the_parent(spec):
        raise AssertionError("TrainStep ran in the selfcheck's own process")

    monkeypatch.setattr(selfcheck.timing_checks, "TrainStep", in_the_parent)  # the child imports its own
    started = torch.cuda.is_initialized()  # on a GPU box an earlier test may have started CUDA
    check = selfcheck.isolated(selfcheck.OVERHEAD, selfcheck.harness_overhead, make_spec(), 2, device="cpu")
    assert check.name == selfcheck.OVERHEAD and check.figure != "failed", check
    assert math.isfinite(check.value) and "median of 2 alternating rounds" in check.detail
    assert torch.cuda.is_initialized() == started


def test_an_exception_in_the_child_is_a_failed_check_with_its_error():
    # diag_raise fails on its third forward pass: the first step after the two warm-up steps
    spec = make_spec(workload="diag_raise", warmup=2, steps=3)
    check = selfcheck.isolated(selfcheck.OVERHEAD, selfcheck.harness_overhead, spec, 2, device="cpu")
    assert check.ok is False and math.isnan(check.value)
    assert "diag_raise: injected failure" in check.detail
    assert check.line().startswith("FAIL  harness overhead: failed") and "\n" not in check.line()


def test_a_crash_in_the_child_is_a_failed_check_with_its_exit_code():
    spec = make_spec(workload="diag_exit", warmup=2, steps=3)
    check = selfcheck.isolated(selfcheck.AGREEMENT, selfcheck.timer_agreement, spec, device="cpu")
    assert check.ok is False and "exited with code 3" in check.detail


def test_a_step_that_raises_in_the_selfcheck_process_gives_failed_lines_not_a_traceback():
    def boom():
        raise KeyError("samples_per_s")

    step = selfcheck.Step("two checks", (selfcheck.PLAN_LOG, selfcheck.HOST_BOUND), boom)
    checks = selfcheck.guarded(step)
    assert [c.name for c in checks] == [selfcheck.PLAN_LOG, selfcheck.HOST_BOUND]
    assert all(c.ok is False and "KeyError" in c.detail for c in checks)


def test_repeatability_with_failed_trials_is_a_failed_check_not_a_key_error():
    records = [record(kind="timed", status="crash", error="the trial process exited with code 3")] * 3
    check = selfcheck.judge_repeatability(records)
    assert check.ok is False and "0 of 3 trials" in check.detail and "exited with code 3" in check.detail


# ---- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_selfcheck_on_cuda_without_cuda_exits_2_with_one_line(capsys, monkeypatch, device):
    from detcost import env

    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 0)  # no GPU, on a GPU box too
    assert main(["selfcheck", "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"detcost: error: --device {device}: CUDA is not available")


def test_selfcheck_on_a_gpu_index_past_the_count_exits_2_with_one_line(capsys, monkeypatch):
    from detcost import env

    monkeypatch.setattr(env, "cuda_available", lambda: True)
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 1)  # one GPU, on a box with more too
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["selfcheck", "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such GPU" in err[0]


def test_selfcheck_prints_one_line_per_check_pass_or_fail_with_the_figure(capsys, monkeypatch):
    shown = [
        Check(selfcheck.OVERHEAD, 1.004, "<= 1.05", True, "median of 7 rounds", figure="1.004"),
        selfcheck.failed(selfcheck.EVENTS, "RuntimeError: CUDA error: an illegal memory access"),
    ]
    monkeypatch.setattr(selfcheck, "run_all", deciding(shown))
    assert main(["selfcheck", "--device", "cpu"]) == 4  # a check failed
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  pass  harness overhead: 1.004 (target: <= 1.05); median of 7 rounds"
    assert lines[2].startswith(f"  FAIL  {selfcheck.EVENTS}: failed") and "illegal memory access" in lines[2]
    assert lines[-1] == "1 of 2 checks failed"


def test_the_acceptance_suite_yields_every_check_of_the_cuda_path(tmp_path):
    steps = selfcheck.Acceptance(make_spec(device="cuda:0"), tmp_path).steps()
    names = [name for step in steps for name in step.names]
    expected = ["EVENTS", "CUBLAS", "STRICT", "OOM", "DEVICE_INDEX", "PLAN_LOG", "ALGORITHMS", "HOST_BOUND", "CONTEXTS"]
    assert names == [getattr(selfcheck, n) for n in expected]
    assert names[-1] == selfcheck.CONTEXTS  # judged after every other process has run


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_the_overhead_check_reports_its_median_ratio_and_fails_past_the_devices_target(device):
    target = selfcheck.overhead_target(device)
    within = selfcheck.judge_overhead([target * 0.99, target * 0.999, target * 1.5], device, steps=20)
    assert within.ok and within.value == pytest.approx(target * 0.999) and math.isfinite(within.value)
    assert within.figure == f"{target * 0.999:.3f}" and "median of 3 alternating rounds of 20 steps" in within.detail
    beyond = selfcheck.judge_overhead([target * 1.001] * 3, device, steps=20)
    assert beyond.ok is False and beyond.value == pytest.approx(target * 1.001)
    assert beyond.target == f"<= {target}"
    assert selfcheck.judge_overhead([], device, steps=20).ok is False
    assert selfcheck.judge_overhead([math.inf, math.nan], device, steps=20).figure == "failed"


def test_the_overhead_of_a_cuda_step_is_judged_by_the_gpu_target_on_every_index():
    """A GPU step's harness cost hides behind asynchronous kernels, so its target is the
    tighter: a ratio between the two targets passes on the CPU and fails on cuda:N."""
    between = (selfcheck.overhead_target("cuda") + selfcheck.overhead_target("cpu")) / 2
    assert selfcheck.judge_overhead([between], "cpu", steps=10).ok
    assert selfcheck.judge_overhead([between], "cuda:1", steps=10).ok is False


@pytest.mark.parametrize(
    ("oks", "code"),
    [((True, True), 0), ((True, None), 0), ((None,), 0), ((True, False), EXIT_CHECKS_FAILED), ((False,), 4)],
)
def test_the_selfcheck_exits_nonzero_exactly_when_a_check_failed(capsys, monkeypatch, oks, code):
    """A reported figure (`ok` None, e.g. repeatability) is no failure; one failed check is."""
    shown = [Check(f"check {i}", 1.0, "t", ok, "d") for i, ok in enumerate(oks)]
    monkeypatch.setattr(selfcheck, "run_all", deciding(shown))
    assert main(["selfcheck", "--device", "cpu"]) == code
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (f"all {len(oks)} checks passed or reported" if code == 0 else f"1 of {len(oks)} checks failed")


def test_an_overhead_fed_past_its_target_fails_the_selfcheck(monkeypatch):
    over = selfcheck.judge_overhead([selfcheck.overhead_target("cpu") * 1.01] * 3, "cpu", steps=10)
    fine = selfcheck.judge_overhead([1.0] * 3, "cpu", steps=10)
    monkeypatch.setattr(selfcheck, "run_all", deciding([over]))
    assert main(["selfcheck", "--device", "cpu"]) == EXIT_CHECKS_FAILED
    monkeypatch.setattr(selfcheck, "run_all", deciding([fine]))
    assert main(["selfcheck", "--device", "cpu"]) == 0


# ---- diag_oom ------------------------------------------------------------------------------------


def test_diag_oom_is_diagnostic_and_its_gpu_batch_is_recorded_as_oom():
    assert "diag_oom" not in BUILTIN and get_workload("diag_oom").diagnostic
    size = get_workload("diag_oom").size("gpu")
    assert size.batch * 3 * size.image**2 * 4 > 2**40  # its input alone: more than a TiB
    spec = make_spec(workload="diag_oom", batch_size=size.batch, image_size=size.image, steps=2, warmup=1)
    oversized = run_trial(spec)
    assert oversized.status == Status.OOM, oversized.error
    assert run_trial(make_spec(workload="diag_oom")).ok  # at the cpu sizes it trains


# ---- judging synthetic figures ------------------------------------------------------------------


def test_events_that_agree_with_perf_counter_pass_and_ones_that_do_not_fail():
    agree = selfcheck.events_agreement([0.199, 0.200, 0.201], [0.200, 0.2015, 0.202], steps=40)
    assert agree.ok and abs(agree.value) < 0.01 and "40 steps" in agree.detail
    apart = selfcheck.events_agreement([0.150, 0.151, 0.149], [0.200, 0.200, 0.200])
    assert apart.ok is False and apart.value == pytest.approx(-0.25)
    assert selfcheck.events_agreement([], []).ok is False


def test_benchmark_choosing_other_plans_on_one_workload_passes():
    records = [
        record("resnet18", "default", cudnn_plans=plans("eng0", "eng1", chosen=["eng0"])),
        record("resnet18", "benchmark", cudnn_plans=plans("eng0", "eng7_k2=1", chosen=["eng7_k2=1"])),
        record("dilated", "default", cudnn_plans=plans("eng3", chosen=["eng3"])),
        record("dilated", "benchmark", cudnn_plans=plans("eng3", chosen=["eng3"])),
    ]
    check = selfcheck.algorithms_check(records)
    assert check.ok and check.value == 1 and check.figure == "differ on 1"
    assert "resnet18" in check.detail and "same plans: dilated" in check.detail


def test_logs_that_only_name_candidates_cannot_tell_which_plan_ran():
    """Autotuning names many more candidates than the heuristics: different lists of names
    are no evidence that different plans ran."""
    records = [
        record("resnet18", "default", cudnn_plans=plans("eng0", "eng1")),
        record("resnet18", "benchmark", cudnn_plans=plans("eng0", "eng1", "eng7_k2=1", "eng28")),
    ]
    check = selfcheck.algorithms_check(records)
    assert check.ok is False and check.figure == "cannot tell"


def test_logs_that_agree_everywhere_answer_the_question_and_unparsed_logs_do_not():
    same = [record("resnet18", s, cudnn_plans=plans("eng0", chosen=["eng0"])) for s in ("default", "benchmark")]
    assert selfcheck.algorithms_check(same).ok and selfcheck.algorithms_check(same).figure == "the logs agree"
    empty = {"status": "not parsed", "reason": "cuDNN frontend log x.log is empty: this build wrote nothing to it"}
    unparsed = [record("resnet18", s, cudnn_plans=empty) for s in ("default", "benchmark")]
    check = selfcheck.algorithms_check(unparsed)
    assert check.ok is False and check.figure == "cannot tell" and "wrote nothing" in check.detail


def test_a_plan_benchmark_ran_that_default_never_built_is_a_difference_and_one_it_did_is_open():
    default = record("resnet18", "default", cudnn_plans=plans("ConvFwd_eng0", "ConvFwd_eng1"))  # candidates only
    other = record(
        "resnet18", "benchmark", cudnn_plans=plans("ConvFwd_eng0", "ConvFwd_eng28", chosen=["ConvFwd_eng28"])
    )
    assert selfcheck.algorithms_check([default, other]).ok
    among = record("resnet18", "benchmark", cudnn_plans=plans("ConvFwd_eng0", chosen=["ConvFwd_eng1"]))
    check = selfcheck.algorithms_check([default, among])
    assert check.ok is False and "names candidates only" in check.detail


def test_the_plan_log_check_gives_the_reason_a_log_was_not_parsed():
    missing = {"status": "skipped", "reason": "CUDNN_FRONTEND_LOG_FILE was not set for this trial"}
    none = selfcheck.plan_log_check([record(cudnn_plans=missing), record(setting="benchmark", cudnn_plans=missing)])
    assert none.ok is False and none.figure == "0 of 2" and "not set for this trial (2 trials)" in none.detail
    some = selfcheck.plan_log_check(
        [record(cudnn_plans=plans("eng0")), record(status="oom", error="CUDA out of memory")]
    )
    assert some.ok and some.figure == "1 of 2" and "the trial failed: oom" in some.detail
    assert selfcheck.plan_log_check([record()]).ok is False  # no cudnn_plans field at all


def test_the_plan_log_check_says_which_log_each_trial_was_read_from():
    """The frontend log, or cuDNN's API log (which a trial gets only if it started with its
    variables set): a GPU user's pasted line shows which one worked."""
    frontend, api = {**plans("eng0"), "source": "frontend"}, {**plans("eng1", chosen=("eng1",)), "source": "backend"}
    check = selfcheck.plan_log_check(
        [record(cudnn_plans=frontend), record(setting="benchmark", cudnn_plans=api), record("unet", cudnn_plans=api)]
    )
    assert check.ok and check.figure == "3 of 3"
    assert "read 2 from cuDNN's API log, 1 from the cuDNN frontend log" in check.detail, check.detail


def test_host_bound_is_not_measured_without_the_field_and_judged_with_it():
    absent = selfcheck.host_bound_check([record("simple_cnn"), record("resnet18")])
    assert absent.ok is None and absent.figure == "not measured"
    kernel_bound = selfcheck.host_bound_check([record("simple_cnn", host_bound=False), record(host_bound=False)])
    assert kernel_bound.ok and kernel_bound.figure == "0 of 2"
    mixed = [
        record("simple_cnn", host_bound={"host_bound": True, "kernel_busy_fraction": 0.35}),
        record("resnet18", host_bound=False),
        record("unet"),
    ]
    check = selfcheck.host_bound_check(mixed)
    assert check.ok is False and check.figure == "1 of 2"
    assert "simple_cnn (kernels busy 35% of the step)" in check.detail and "1 not measured" in check.detail


def test_host_bound_is_judged_against_the_timed_step_not_the_profiled_one():
    """The profiler slows the host: a profiled step of 25 ms with 9 ms of kernels looks
    host-bound, but the timed trial's 10 ms step shows the kernels kept the GPU busy."""
    from detcost.record import StepTiming

    profiled = record("simple_cnn", host_bound={"kernel_busy_s": 0.009, "kernel_busy_fraction": 0.36,
                                                "host_bound": True, "threshold": HOST_BOUND_BELOW})  # fmt: skip
    timed = record("simple_cnn", kind="timed")
    timed.parts = TrialParts(timing=StepTiming(step_times_s=[0.010] * 5, batch_size=8))
    judged = selfcheck.host_bound_check([profiled], [timed])
    assert judged.ok and judged.figure == "0 of 1" and "profiled steps alone" not in judged.detail
    alone = selfcheck.host_bound_check([profiled])
    assert alone.ok is False and "profiled steps alone, which err towards host-bound: simple_cnn" in alone.detail


def test_strict_judgement_wants_unet_unsupported_and_the_workaround_ok():
    unet = record("unet", "strict", "unsupported", "RuntimeError: nll_loss2d_forward_out_cuda_template does not ...")
    fixed = record("unet_lossfix", "strict")
    assert selfcheck.strict_check(unet, fixed).ok
    both_ok = selfcheck.strict_check(record("unet", "strict"), fixed)
    assert both_ok.ok is False and both_ok.figure == "unet ok, unet_lossfix ok"
    assert selfcheck.strict_check(None, None).figure == "unet no record, unet_lossfix no record"


def test_cublas_judgement_wants_the_config_read_back_and_the_trial_ok():
    flags = {"cublas_workspace_config": ":4096:8"}
    assert selfcheck.cublas_check(record("simple_cnn", "strict", flags=flags)).ok
    raised = record("simple_cnn", "strict", "error", "RuntimeError: Deterministic behavior was enabled ...", flags={})
    assert (
        selfcheck.cublas_check(raised).ok is False and "Deterministic behavior" in selfcheck.cublas_check(raised).detail
    )
    assert selfcheck.cublas_check(None).ok is False


def test_oom_judgement_wants_oom_and_every_later_trial_recorded():
    oom = record("diag_oom", "strict", "oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate 12.00 TiB")
    later = [record(w, "strict", kind="timed") for w in ("unet", "unet_lossfix", "simple_cnn")]
    judge = partial(selfcheck.oom_check, workload="diag_oom", preset="gpu")
    assert judge([oom, *later], planned=4).ok
    assert judge([oom, *later[:1]], planned=4).ok is False  # the sweep stopped
    crashed = record("diag_oom", "strict", "crash", "the trial process was killed by SIGKILL")
    assert judge([crashed, *later], planned=4).ok is False
    missing = judge(later, planned=4)
    assert missing.ok is False and f"a batch of {get_workload('diag_oom').size('gpu').batch:,}" in missing.detail


def test_device_index_judgement_wants_exit_2_and_one_error_line():
    said = "detcost: error: --device cuda:1: no such GPU; this machine has cuda:0 to cuda:0\n"
    assert selfcheck.device_index_judge("cuda:1", 2, said).ok
    assert selfcheck.device_index_judge("cuda:1", 1, "Traceback (most recent call last):\n  ...\n").ok is False
    assert selfcheck.device_index_judge("cuda:1", 0, "").ok is False


def test_context_judgement_finds_cuda_in_the_parent_at_a_trial_start_or_in_a_forked_child():
    clean = selfcheck.context_check(False, ChildResult(value=(False, None)), "forkserver", [record()])
    assert clean.ok and clean.figure == "none"
    assert selfcheck.context_check(True, ChildResult(value=(False, None)), "forkserver", []).ok is False
    forked = ChildResult(value=(False, "RuntimeError: Cannot re-initialize CUDA in forked subprocess."))
    assert selfcheck.context_check(False, forked, "forkserver", []).ok is False
    tainted = record(status="error", error="CUDA was initialised before the trial process started")
    check = selfcheck.context_check(False, ChildResult(value=(False, None)), "forkserver", [tainted])
    assert check.ok is False and "1 trials found CUDA in use" in check.detail
    assert selfcheck.context_check(False, ChildResult(error="crashed"), "spawn", []).ok is False


def test_the_acceptance_suite_runs_its_trials_and_judges_them_on_the_cpu_too(tmp_path, monkeypatch):
    """The CUDA suite's plumbing, run on the CPU at quick sizes and on fewer workloads:
    every step starts its processes, every check gives one line, and this process never
    initialises CUDA. (Its verdicts are the GPU's to give: no cuDNN log exists on the CPU.)"""
    monkeypatch.setattr(selfcheck.cuda, "ACCEPTANCE_PRESET", "quick")
    monkeypatch.setattr(selfcheck.cuda, "BUILTIN", ("simple_cnn",))
    monkeypatch.setattr(selfcheck.cuda, "ALGORITHM_WORKLOADS", ("simple_cnn",))
    monkeypatch.setattr(selfcheck.cuda, "SWEPT_WORKLOADS", ("diag_oom", "simple_cnn"))
    acceptance = selfcheck.Acceptance(make_spec(), tmp_path)
    started = torch.cuda.is_initialized()  # on a GPU box an earlier test may have started CUDA
    checks = {c.name: c for step in acceptance.steps() for c in selfcheck.guarded(step)}
    assert list(checks) == [n for step in acceptance.steps() for n in step.names]
    assert all("\n" not in c.line() for c in checks.values())
    assert checks[selfcheck.EVENTS].ok  # on the CPU both clocks are perf_counter
    assert checks[selfcheck.CUBLAS].ok, checks[selfcheck.CUBLAS].line()
    assert checks[selfcheck.DEVICE_INDEX].ok, checks[selfcheck.DEVICE_INDEX].line()
    assert checks[selfcheck.STRICT].figure == "unet no record, unet_lossfix no record"  # not swept here
    assert checks[selfcheck.OOM].figure == "ok, 1 later trials ran"  # oversized only at its gpu size
    assert "CUDA only" in checks[selfcheck.PLAN_LOG].detail
    assert checks[selfcheck.HOST_BOUND].figure == "not measured"
    assert len(acceptance.records) == 2 + 2 + 1  # the swept trials, the profiled ones, the timed one
    assert torch.cuda.is_initialized() == started
