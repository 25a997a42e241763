"""Bad input: one line on stderr, exit code 2, nothing lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detcost import results
from detcost.cli import main
from tests.conftest import QUICK, TIMED_ONLY, run_cli


def one_line_error(capsys, argv) -> str:
    """`detcost <argv>` refused in one line, exit 2. A `run` is pinned to the CPU and never
    waits on a busy machine (unless argv names a device): were the refusal ever lost, the
    sweep it started would still be the CPU suite's, on a GPU box too."""
    if argv[:1] == ["run"] and "--device" not in argv:
        argv = ["run", "--device", "cpu", "--allow-busy", *argv[1:]]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("detcost: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--settings", "nope"], "valid settings: default, benchmark, deterministic"),
        (["run", "--workloads", "resnet19"], "valid workloads: simple_cnn, resnet18"),
        (["run", "--repeats", "0"], "must be at least 1"),
        (["run", "--steps", "0"], "must be at least 1"),
        (["run", "--threads", "0"], "must be at least 1"),
        (["run", "--timeout", "-3"], "must be positive"),
        (["run", "--device", "tpu"], "use auto, cpu, cuda or cuda:N"),
        (["run", "--seed", "-1"], "at least 0"),
        (["run", "--frobnicate"], "unrecognized arguments"),
        (["run", "--workloads", "nosuchpackage.mod:factory"], "cannot load workload"),
        (["run", "--precision", "150%"], "fraction below 1"),
        (["run", "--precision", "abc"], "is not a number"),
        (["run", "--wait-quiet", "-1"], "must be positive"),
        (["run", "--model", "nosuchpackage.nets:build"], "cannot import 'nosuchpackage.nets'"),
        (["run", "--model", "tests.probes:nope"], "has no 'nope'"),
        (["run", "--model", "tests.probes:not_a_module"], "returned str, not a torch.nn.Module"),
        (["run", "--model", "tests.probes:raises"], "raised ValueError: the config file is missing"),
        (["run", "--model", "no/such/file.py:build"], "does not exist"),
        (["run", "--model", "examples/tiny_net.py:build", "--input", "3x32"], "channels x height x width"),
        (["run", "--input", "3x32x32"], "give --model too"),
        (["run", "--data", "stream"], "unknown value 'stream'; valid: staged, loader, loader-unseeded"),
        (["run", "--workers", "-1"], "must be at least 0"),
        (["run", "--workloads", "all", "--data", "loader"], "multiscale changes its input size every step"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, expected):
    assert expected in one_line_error(capsys, argv)


def test_cuda_without_cuda_is_a_usage_error(capsys, monkeypatch):
    from detcost import env

    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 0)  # no GPU, on a GPU box too
    assert "CUDA is not available" in one_line_error(capsys, ["run", "--device", "cuda"])


def test_unwritable_results_path_is_a_usage_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = one_line_error(capsys, ["run", "--quick", "--results", str(blocker / "r.jsonl")])
    assert "cannot write results file" in err


def test_an_existing_results_file_is_never_overwritten(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"kept": true}\n')
    assert "--resume" in one_line_error(capsys, ["run", "--quick", "--results", str(path)])
    assert path.read_text() == '{"kept": true}\n'


def test_a_results_file_that_is_not_detcosts_is_refused(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("hello, world\n")
    err = one_line_error(capsys, ["run", "--quick", "--resume", "--results", str(path)])
    assert "not a detcost results file" in err
    assert path.read_text() == "hello, world\n"


def test_the_installed_command_exits_2_on_an_unknown_setting():
    exe = shutil.which("detcost") or str(Path(sys.executable).parent / "detcost")
    argv = [exe, "run", "--device", "cpu", "--allow-busy", "--settings", "nope"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "valid settings" in proc.stderr


def test_dry_run_lists_the_plan_and_runs_nothing(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    assert main(["run", *QUICK, "--workloads", "simple_cnn", "--dry-run", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "timed/simple_cnn/strict/r1/s0" in out and "trials planned" in out
    assert not path.exists()


def test_resume_dry_run_lists_only_what_remains(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    argv = ["run", *QUICK, "--workloads", "simple_cnn", "--settings", "default", *TIMED_ONLY, "--results", str(path)]
    assert main([*argv, "--repeats", "1", "--no-report"]) == 0
    capsys.readouterr()
    assert main([*argv, "--repeats", "2", "--resume", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "timed/simple_cnn/default/r1/s0" in out and "timed/simple_cnn/default/r0/s0" not in out
    assert "1 trials planned" in out


def test_a_results_folder_that_does_not_exist_is_created_and_said(capsys, tmp_path):
    path = tmp_path / "new" / "deeper" / "r.jsonl"
    argv = ["run", *QUICK, "--workloads", "simple_cnn", "--settings", "default", *TIMED_ONLY, "--repeats", "1"]
    assert main([*argv, "--no-report", "--results", str(path)]) == 0
    assert f"created the folder {path.parent}" in capsys.readouterr().err and path.exists()


# `detcost run` whose wait for its second trial's record (`isolation.receive`) first sends
# Ctrl-C as a terminal does, to the whole process group: this process and the forkserver
# (the trial leads a group of its own once it has set Ctrl-C aside, which it is let do first).
CTRL_C_IN_THE_SECOND_TRIAL = """
import os, signal, sys, time
from detcost import isolation
from detcost.cli import main

real, started = isolation.receive, []

class CtrlC:
    def __init__(self, conn, proc):
        self.conn, self.proc = conn, proc

    def poll(self, timeout):
        while self.proc.is_alive() and os.getpgid(self.proc.pid) == os.getpgrp():
            time.sleep(0.01)
        os.killpg(os.getpgrp(), signal.SIGINT)
        return self.conn.poll(timeout)

    def __getattr__(self, name):
        return getattr(self.conn, name)

def receive(receiver, proc, timeout):
    started.append(proc.pid)
    return real(CtrlC(receiver, proc) if len(started) == 2 else receiver, proc, timeout)

isolation.receive = receive
sys.exit(main(sys.argv[1:]))
"""


def test_an_interrupted_command_that_keeps_no_results_does_not_speak_of_resuming(monkeypatch, capsys):
    """A selfcheck stopped by a timeout's SIGTERM (the first GPU run's share) has no results
    file to resume: its line says only that it was interrupted."""
    from detcost.cli import args as cli_args

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_args, "cmd_selfcheck", interrupted)
    assert main(["selfcheck", "--device", "cpu"]) == 130
    assert capsys.readouterr().err.splitlines() == ["detcost: interrupted"]


def test_ctrl_c_stops_the_sweep_quietly_and_keeps_finished_trials(tmp_path):
    """Ctrl-C at a terminal signals the whole process group: the sweep, the forkserver and
    the trial running now. The user sees one line, no child's traceback; the trial that
    finished is kept, the one interrupted is not written."""
    path = tmp_path / "r.jsonl"
    argv = ["run", *QUICK, "--workloads", "simple_cnn", "--settings", "default", *TIMED_ONLY, "--repeats", "3"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_IN_THE_SECOND_TRIAL, *argv, "--no-report", "--results", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as a terminal delivers it: a shell may have started this test with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # the interrupt never came: end the session it started
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err
    assert err.splitlines() == ["detcost: interrupted; finished trials are kept (rerun with --resume)"], err
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["kind"], r["repeat"], r["status"]) for r in kept] == [("timed", 0, "ok")]  # the first trial's


def test_the_test_suite_stays_on_the_cpu_where_cuda_is_present(monkeypatch):
    """On a GPU box `auto` picks cuda:0; the suite's sweeps pin the CPU (QUICK)."""
    from detcost import env
    from detcost.cli import build_parser
    from detcost.cli.run import sweep_options

    monkeypatch.setattr(env, "cuda_available", lambda: True)
    assert env.resolve_device("auto") == "cuda:0"  # the fake is in force
    assert sweep_options(build_parser().parse_args(["run", *QUICK])).device == "cpu"


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ],
)
def test_allocation_failures_of_cuda_cudnn_and_cublas_are_out_of_memory(message):
    from detcost.record import Status
    from detcost.trial import failure_kind

    assert failure_kind(RuntimeError(message)) == Status.OOM


def test_model_prices_a_plain_module_with_its_shape_and_classes_found(tmp_path):
    """--model with a module in a package and with a file path: channels from the first
    conv, classes from the output width, trained and read back like a built-in net."""
    path = tmp_path / "m.jsonl"
    argv = ["run", *QUICK, *TIMED_ONLY, "--settings", "default", "--repeats", "2", "--no-report"]
    assert main([*argv, "--model", "tests.probes:four_layer_net", "--results", str(path)]) == 0
    assert (
        main([*argv, "--model", "examples/tiny_net.py:build", "--input", "3x16x16", "--results", str(path), "--resume"])
        == 0
    )
    df = results.load(path)
    assert set(df["workload"]) == {"tests.probes:four_layer_net@1x32x32/5", "examples/tiny_net.py:build@3x16x16/10"}
    assert (df["status"] == "ok").all()
    for _, g in df.groupby("workload"):
        assert g["params_sha256"].nunique() == 1  # repeats bitwise identical, as for the built-in nets


def test_model_takes_a_torchvision_model(tmp_path):
    try:
        import torchvision.models  # noqa: F401
    except Exception as exc:  # absent, or built for another torch (its C++ ops then fail to load)
        pytest.skip(f"torchvision is an optional extra and does not load here: {type(exc).__name__}")
    path = tmp_path / "tv.jsonl"
    argv = ["run", *QUICK, *TIMED_ONLY, "--settings", "default", "--repeats", "1", "--no-report"]
    assert main([*argv, "--model", "torchvision.models:resnet18", "--input", "3x32x32", "--results", str(path)]) == 0
    assert results.load(path)["workload"].iloc[0] == "torchvision.models:resnet18@3x32x32/1000"


def test_env_prints_the_fingerprint(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"torch: {torch.__version__}" in out and "cpu:" in out


def test_resume_with_other_options_is_refused_and_the_file_kept(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    args = ["run", *QUICK, "--workloads", "simple_cnn", "--settings", "default", "--repeats", "1", *TIMED_ONLY]
    args += ["--no-report", "--results", str(path)]
    assert main([*args, "--steps", "3"]) == 0
    before = path.read_text()
    capsys.readouterr()
    err = one_line_error(capsys, [*args, "--steps", "5", "--resume"])
    assert "made with other options" in err
    assert path.read_text() == before


def test_sigterm_stops_detcost_as_ctrl_c_does_and_the_handler_is_restored():
    import signal

    from detcost import cli

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), cli._terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_trial_that_starts_with_cuda_in_use_stops_the_sweep_in_one_line(capsys, monkeypatch, tmp_path):
    from detcost import executors
    from detcost.record import Status
    from detcost.trial import CUDA_AT_START, failure_record

    ran = []

    def tainted(opts, spec, machine, layout):
        ran.append(spec.trial_id)
        return failure_record(spec, Status.ERROR, CUDA_AT_START, machine)

    monkeypatch.setattr(executors, "_run_one", tainted)
    assert run_cli("--workloads", "simple_cnn", "--results", str(tmp_path / "r.jsonl")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and CUDA_AT_START in err and "the sweep stopped" in err
    assert len(ran) == 1


@pytest.mark.parametrize("where", ["report", "results-under-a-file", "dry-run"])
def test_an_unwritable_output_path_is_refused_before_the_first_trial(tmp_path, capsys, where):
    """Every path a run will write is checked first: one line, exit 2, no trial run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = {
        "report": ["--results", str(tmp_path / "r.jsonl"), "--report", str(blocker / "rep")],
        "results-under-a-file": ["--results", str(blocker / "r.jsonl")],
        "dry-run": ["--dry-run", "--results", str(blocker / "r.jsonl")],
    }[where]
    assert main(["run", "--quick", "--device", "cpu", "--workloads", "simple_cnn", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file, not a folder" in err
    assert not (tmp_path / "r.jsonl").exists()


def test_batch_sets_every_workloads_batch_and_the_tables_show_it(tmp_path):
    from detcost.plan import SweepOptions, plan
    from detcost.report.keys_text import models_rows, workload_text

    opts = SweepOptions(workloads=["simple_cnn"], settings=["default"], repeats=1, seed=0, device="cpu",
                        size_preset="quick", results=tmp_path / "r.jsonl", run_id="b", batch=6)  # fmt: skip
    assert {s.batch_size for s in plan(opts)} == {6}
    name = "tests/models.py:TinyNet@3x32x32/10"  # a --model's workload name carries its whole description
    assert workload_text(name) == "TinyNet" and workload_text("simple_cnn") == "simple_cnn"
    assert models_rows([name, "simple_cnn"]) == [("model TinyNet", name)]
