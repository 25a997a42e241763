"""The dry run learns from an earlier run on this machine: `--estimate-from RESULTS.jsonl`
(or, under --resume, the --results file) puts each trial's measured process_wall_s in
place of the assumed figures, scales the figure of a trial of a kind it measured, says
which is which, and leaves out what another machine or another device measured (a trial
flagged busy counts, and is counted). A sweep's summary prints its measured time per
trial beside the assumed one. All on crafted records: the CUDA build is faked where the dry run would ask for a GPU."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from detcost import cuda_figures, env, estimate, plan
from detcost.cli import main
from detcost.parts import StepTiming, TrialParts
from detcost.payloads import BusyReport
from detcost.record import Kind, Status, TrialRecord
from detcost.report.sweep_text import per_trial_text, plan_text
from detcost.workloads import data
from tests.test_dry_run import _options as dry_run_options
from tests.test_gpu_sizes import _meta_batch

H100 = "NVIDIA H100 80GB HBM3"
HOST = socket.gethostname()


@pytest.fixture
def fake_h100(monkeypatch):
    """One H100 as NVML and nvidia-smi report it (torch is never asked), and the FLOP
    counts' data made as meta tensors (nothing drawn on the host)."""
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 1)
    monkeypatch.setattr(env, "gpu_names", lambda: [H100])
    monkeypatch.setattr(data, "make_batch", _meta_batch)


def _options(device: str, **overrides) -> plan.SweepOptions:
    """test_dry_run's options, over two workloads unless told otherwise."""
    return dry_run_options(device, **{"workloads": ["resnet18", "simple_cnn"], **overrides})


def _record(spec, wall: float, host: str = HOST, gpu: str | None = H100, busy: bool = False) -> TrialRecord:
    timing = (
        StepTiming(step_times_s=[0.01], batch_size=spec.batch_size, busy=BusyReport(cpu_busy=True)) if busy else None
    )
    return TrialRecord(
        spec,
        Status.OK,
        parts=TrialParts(timing=timing),
        env={"hostname": host, "gpu": gpu if spec.device != "cpu" else None, "cpu": "a CPU"},
        process_wall_s=wall,
    )


def _earlier_run(device: str = "cuda:0") -> list[TrialRecord]:
    """An earlier run of resnet18 alone under default and benchmark, timed trials only, on
    this machine: default 4 s a trial, benchmark 6 s (three repeats each)."""
    opts = _options(device, workloads=["resnet18"], settings=["default", "benchmark"], aa=False, explain=False)
    opts = replace(opts, audit=False, seeds=0)
    walls = {"default": 4.0, "benchmark": 6.0}
    return [_record(s, walls[s.setting]) for s in plan.plan(opts)]


def _write(path: Path, records: list[TrialRecord]) -> Path:
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return path


def test_a_measured_trial_takes_its_measured_time_and_one_of_a_measured_kind_the_scaled_figure(fake_h100):
    records = _earlier_run()
    learned = estimate.learn(records, "earlier.jsonl", "cuda:0", H100)
    assert learned.records == len(records) and learned.left_out == 0
    specs = plan.plan(_options("cuda:0"))
    est = estimate.estimate(specs, "gpu", plan.new_servers(_options("cuda:0"), specs), learned)
    for spec in specs:
        seconds, source = learned.trial_s(spec, estimate._model_s(spec, "gpu"))
        if spec.kind == Kind.TIMED and spec.workload == "resnet18" and spec.setting in ("default", "benchmark"):
            assert source == estimate.MEASURED_HERE and seconds == (4.0 if spec.setting == "default" else 6.0)
        elif spec.kind == Kind.TIMED:  # resnet18's other settings and simple_cnn: the timed ratio
            ratio = learned.ratios[("timed", "resnet18")] if spec.workload == "resnet18" else learned.ratios[("timed",)]
            assert source == estimate.SCALED
            assert seconds == pytest.approx(estimate._model_s(spec, "gpu") * ratio)
        else:  # no A/A, seed, audit or profiled trial was measured: their figures stay assumed
            assert source == estimate.ASSUMED and seconds == estimate._model_s(spec, "gpu")
    assert est.sources["timed"] == {"measured": 6, "scaled": 36, "assumed": 0}
    assert est.sources["aa"] == {"measured": 0, "scaled": 0, "assumed": 6}
    # the ratio is the measured time over the assumed one, a median over the trials of its kind
    default = next(s for s in specs if s.kind == Kind.TIMED and s.setting == "default" and s.workload == "resnet18")
    bench = next(s for s in specs if s.kind == Kind.TIMED and s.setting == "benchmark" and s.workload == "resnet18")
    ratios = sorted([4.0 / estimate._model_s(default, "gpu")] * 3 + [6.0 / estimate._model_s(bench, "gpu")] * 3)
    assert learned.ratios[("timed",)] == pytest.approx((ratios[2] + ratios[3]) / 2)


def test_the_dry_run_says_which_figures_are_measured_and_which_assumed(fake_h100, capsys, tmp_path):
    earlier = _write(tmp_path / "earlier.jsonl", _earlier_run())
    argv = ["run", "--device", "cuda", "--workloads", "resnet18,simple_cnn", "--repeats", "3", "--dry-run"]
    argv += ["--allow-busy", "--results", str(tmp_path / "r.jsonl")]
    assert main([*argv, "--estimate-from", str(earlier)]) == 0
    out = capsys.readouterr().out
    assert f"learned from {earlier}: 6 record(s) of this machine\n" in out
    assert "  measured here (the same trial's median process_wall_s): timed 6\n" in out
    assert re.search(r"  scaled \(.*\): timed 36 \(x[\d.]+\)\n", out)
    assert "  assumed (nothing of its kind measured): audit 2, aa 6, profiled 12, seed 6\n" in out
    assert "a trial this machine measured takes its measured time" in out
    assert "no GPU was available to measure these figures" not in out
    assert main([*argv, "--estimate-from", str(earlier), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["estimate"]
    assert got["learned"]["from"] == str(earlier) and got["learned"]["records"] == 6
    assert got["sources"]["timed"] == {"measured": 6, "scaled": 36, "assumed": 0}
    assert main(argv) == 0  # without one: every figure assumed, as before
    plain = capsys.readouterr().out
    assert "learned from" not in plain and "no GPU was available to measure these figures" in plain


def test_another_machine_or_device_teaches_nothing_and_a_busy_trial_is_counted(fake_h100):
    records = _earlier_run()
    other_host = [_record(r.spec, 1.0, host="elsewhere") for r in records]
    other_gpu = [_record(r.spec, 1.0, gpu="NVIDIA A10G") for r in records]
    cpu = [_record(replace(r.spec, device="cpu"), 1.0) for r in records]
    no_wall = [replace(r, process_wall_s=None) for r in records]
    for others in (other_host, other_gpu, cpu, no_wall):
        learned = estimate.learn(others, "x.jsonl", "cuda:0", H100)
        assert learned.records == 0 and learned.left_out == len(others) and not learned.walls
    # flagged busy (on a GPU whose process list names the trial itself, every trial is): still its time
    busy = [_record(r.spec, 1.0, busy=True) for r in records[:2]] + records[2:]
    learned = estimate.learn(busy, "x.jsonl", "cuda:0", H100)
    assert learned.records == len(records) and learned.busy == 2
    text = plan_text([], estimate.estimate([], "gpu", 0, learned))
    assert f"learned from x.jsonl: {len(records)} record(s) of this machine (2 flagged busy: their times" in text
    # the GPU's name as torch gives it in the record and as nvidia-smi gives it here may differ in detail
    assert estimate.learn(records, "x.jsonl", "cuda:1", "H100 80GB HBM3").records == len(records)
    text = plan_text([], estimate.estimate([], "gpu", 0, estimate.learn(cpu, "x.jsonl", "cuda:0", H100)))
    assert f"learned from x.jsonl: 0 record(s) of this machine ({len(cpu)} left out" in text
    assert "every figure below is assumed" in text


def test_under_resume_the_results_file_teaches_the_estimate(capsys, tmp_path):
    """On the CPU: a resumed dry run learns from its own results file; a CPU trial of the
    quick sizes is scaled against the quick figure per trial."""
    opts = _options("cpu", workloads=["simple_cnn"], settings=["default"], repeats=1, size_preset="quick")
    done = [_record(s, 0.7) for s in plan.plan(opts) if s.kind == Kind.TIMED]
    path = _write(tmp_path / "r.jsonl", [replace(r, status=Status.ERROR) for r in done])  # to do again
    argv = ["run", "--device", "cpu", "--quick", "--workloads", "simple_cnn", "--settings", "default"]
    argv += ["--repeats", "1", "--dry-run", "--allow-busy", "--results", str(path), "--json"]
    assert main([*argv, "--resume"]) == 0
    got = json.loads(capsys.readouterr().out)["estimate"]
    assert got["learned"]["from"] == str(path) and got["sources"]["timed"]["measured"] == 1
    assert got["by_kind"]["timed"][1] == pytest.approx(0.7)  # the failed trial's time: it will fail again
    assert got["learned"]["ratios"] == {}  # a failed trial says nothing of the others
    assert main(argv) == 0  # without --resume the file is the one to write, not a teacher
    assert json.loads(capsys.readouterr().out)["estimate"]["learned"] is None


def test_estimate_from_is_for_the_dry_run_and_an_existing_file(tmp_path, capsys):
    argv = ["run", "--device", "cpu", "--workloads", "simple_cnn", "--allow-busy"]
    argv += ["--results", str(tmp_path / "r.jsonl"), "--no-report"]
    assert main([*argv, "--estimate-from", str(tmp_path / "r.jsonl")]) == 2
    assert "--estimate-from is for --dry-run" in capsys.readouterr().err
    assert main([*argv, "--dry-run", "--estimate-from", str(tmp_path / "none.jsonl")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_the_revised_cuda_figures_are_in_the_model(fake_h100, monkeypatch):
    """Each figure issue 21 added or raised moves the trial it concerns: teardown every
    trial, runtime compiles under benchmark, nvidia-smi per measured trial only without
    nvidia-ml-py, the profiler on profiled trials."""
    specs = plan.plan(_options("cuda:0", workloads=["resnet18"], settings=["default", "benchmark"]))
    timed = next(s for s in specs if s.kind == Kind.TIMED and s.setting == "default")
    bench = next(s for s in specs if s.kind == Kind.TIMED and s.setting == "benchmark")
    profiled = next(s for s in specs if s.kind == Kind.PROFILED and s.setting == "default")
    figures = cuda_figures.CUDA_FIGURES

    def moved(name: str, spec, value: float = 10.0) -> float:
        before = cuda_figures.cuda_trial_s(spec)
        monkeypatch.setitem(figures, name, replace(figures[name], value=figures[name].value + value))
        after = cuda_figures.cuda_trial_s(spec)
        monkeypatch.setitem(figures, name, replace(figures[name], value=figures[name].value - value))
        return after - before

    assert figures["libraries_s"].value >= 1.0 and figures["profiler_s"].value > 1.0
    assert moved("teardown_s", timed) == pytest.approx(10.0) and moved("teardown_s", profiled) == pytest.approx(10.0)
    assert moved("runtime_compile_s", timed) == 0 and moved("runtime_compile_s", bench) == pytest.approx(10.0)
    assert moved("profiler_s", timed) == 0 and moved("profiler_s", profiled) == pytest.approx(10.0)
    for has_nvml, added in ((True, 0.0), (False, 10.0)):
        monkeypatch.setattr(cuda_figures, "_has_nvml", lambda has_nvml=has_nvml: has_nvml)
        assert moved("nvidia_smi_s", timed) == pytest.approx(added) and moved("nvidia_smi_s", profiled) == 0


def test_a_sweep_prints_its_measured_time_per_trial_beside_the_assumed(fake_h100):
    records = _earlier_run() + [
        _record(s, 9.0) for s in plan.plan(_options("cuda:0", workloads=["resnet18"])) if s.kind == Kind.PROFILED
    ]
    figures = estimate.per_trial(records)
    assert [(p.kind, p.trials, p.measured_s) for p in figures] == [("timed", 6, 5.0), ("profiled", 6, 9.0)]
    timed = [r.spec for r in records if r.spec.kind == Kind.TIMED]
    assert figures[0].assumed_total_s == pytest.approx(sum(estimate._model_s(s, "gpu") for s in timed))
    assert figures[0].measured_total_s == 30.0
    text = per_trial_text(figures, Path("r.jsonl"))
    assert text.startswith(
        f"time per trial, measured here (and as --dry-run assumes it), medians: timed 5.00 s "
        f"({figures[0].assumed_s:.2f} s), profiled 9.00 s ({figures[1].assumed_s:.2f} s); all 12 trials 1.4 min"
    )
    assert "`detcost run --dry-run --estimate-from r.jsonl` estimates from these" in text


def test_the_run_summary_carries_the_per_trial_figures_in_text_and_json():
    """On the committed golden results (CPU trials, each with its process_wall_s): the text
    summary's line sits before the trial count, the JSON has one entry per kind."""
    from types import SimpleNamespace

    from detcost import results
    from detcost.derive.analysis import analyse
    from detcost.report import text

    golden = Path(__file__).parent / "data" / "golden.jsonl"
    records = results.load_records(golden)
    outcome = SimpleNamespace(events=[], precision=None, decide=None, stopped_early=False, results="RESULTS",
                              planned=records, ran=len(records), skipped=0, reruns=0)  # fmt: skip
    analysis = analyse(records, 0.10)
    figures = estimate.per_trial(records)
    assert figures and {p.kind for p in figures} == {str(r.spec.kind) for r in records if r.process_wall_s is not None}
    plain = text.run_summary(analysis, outcome, 0.0, None)
    summary = text.run_summary(analysis, outcome, 0.0, None, per_trial=figures)
    line = per_trial_text(figures, "RESULTS")
    assert line not in plain and summary == plain.replace("\n\n" + plain.split("\n\n")[-1], "") + (
        "\n\n" + line + "\n\n" + plain.split("\n\n")[-1]
    )
    as_json = text.run_summary_json(analysis, outcome, 0.0, None, figures)
    assert as_json["per_trial"] == [p.to_json() for p in figures]
    assert "per_trial" not in text.run_summary_json(analysis, outcome, 0.0, None)


def test_a_profiled_cuda_trial_spawned_for_cudnn_s_api_log_is_estimated_the_interpreter_s_start(tmp_path, monkeypatch):
    from detcost.cudnn_log import start_environ
    from detcost.trial import spawned_for_cudnn_log, trial_environ
    from tests.conftest import make_spec

    profiled = make_spec(kind="profiled", device="cuda:0", sidecar="t/p.json")
    for spec in (profiled, replace(profiled, setting="no_cudnn"), replace(profiled, kind=Kind.TIMED),
                 replace(profiled, device="cpu")):  # fmt: skip
        # the estimate's rule is the one run_isolated spawns by
        assert spawned_for_cudnn_log(spec) == bool(start_environ(trial_environ(spec, tmp_path)))
    assert spawned_for_cudnn_log(profiled) and not spawned_for_cudnn_log(replace(profiled, setting="no_cudnn"))
    spawned = cuda_figures.cuda_trial_s(profiled)
    monkeypatch.setattr(cuda_figures, "spawned_for_cudnn_log", lambda spec: False)
    assert spawned - cuda_figures.cuda_trial_s(profiled) == pytest.approx(cuda_figures.CUDA_FIGURES["spawn_s"].value)
