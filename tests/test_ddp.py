"""DDP trials (`--nproc`) on the CPU, through torch's elastic launcher with gloo: a job of
two ranks records ok with its world size, its repeats agree bitwise and so do its ranks; a
rank that raises or hangs ends the trial with a recorded failure and leaves no process;
a run without --nproc is the one-process trial it always was."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import psutil
import pytest

from detcost import axes, results
from detcost.cli import main
from detcost.isolation import run_isolated
from detcost.record import Status, TrialRecord
from detcost.trial import trial_environ
from tests import ddp_faulty
from tests.conftest import TIMED_ONLY, V1_SAMPLE, make_spec, run_cli

RAISING = "tests.ddp_faulty:raising"


@pytest.fixture(scope="session")
def ddp_sweep(tmp_path_factory, monkeypatch_session):
    """simple_cnn and a workload whose rank 1 raises, at two ranks, two repeats."""
    folder = tmp_path_factory.mktemp("ddp")
    pids = folder / "pids"
    pids.mkdir()
    monkeypatch_session.setenv(ddp_faulty.PIDS_VAR, str(pids))
    path = folder / "d.jsonl"
    code = run_cli(
        "--workloads", f"simple_cnn,{RAISING}", "--settings", "default", "--nproc", "2", "--threads", "1",
        "--repeats", "2", *TIMED_ONLY, "--timeout", "120", "--results", str(path),
    )  # fmt: skip
    assert code == 0
    return path, pids


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def records_of(path, workload):
    return [r for r in results.load_records(path) if r.spec.workload == workload]


def test_two_ranks_record_ok_with_world_size_and_agree(ddp_sweep):
    recs = records_of(ddp_sweep[0], "simple_cnn")
    assert len(recs) == 2 and all(r.ok for r in recs), [r.error for r in recs]
    for r in recs:
        assert r.trial_id.endswith("/t1/np2")
        assert r.timing.world_size == 2 and r.timing.step_samples == 2 * r.spec.batch_size
        job = r.distributed
        assert job.backend == "gloo" and job.nccl_version is None and job.nccl_env == {}
        assert len(job.rank_params_sha256) == 2 and job.ranks_agree
        assert job.rank_params_sha256[0] == r.outcome.params_sha256  # rank 0's fingerprints are the record's
        assert r.parts.read_back["nproc"] == 2
    assert recs[0].outcome.params_sha256 == recs[1].outcome.params_sha256  # repeats bitwise identical


def test_a_rank_that_raises_ends_the_trial_naming_it_and_leaves_no_process(ddp_sweep):
    path, pids = ddp_sweep
    recs = records_of(path, RAISING)
    assert len(recs) == 2
    for r in recs:
        assert r.status == Status.ERROR
        assert r.error.startswith("RankFailed: rank 1: ValueError: injected on rank 1"), r.error
    _assert_gone(pids, expected=4)  # 2 trials x 2 ranks wrote theirs


def test_the_variance_table_shows_rank_agreement(ddp_sweep, capsys):
    assert main(["variance", str(ddp_sweep[0])]) == 0
    out = capsys.readouterr().out
    assert "DDP ranks" in out and "agree" in out and "DISAGREE" not in out


def test_a_rank_that_hangs_ends_within_the_timeout_and_leaves_no_process(tmp_path):
    spec = make_spec(workload="tests.ddp_faulty:hanging", axes={"threads": 1, "nproc": 2})
    record = run_isolated(spec, timeout=40, environ={**trial_environ(spec), ddp_faulty.PIDS_VAR: str(tmp_path)})
    assert record.status == Status.TIMEOUT
    _assert_gone(tmp_path, expected=2)


def _assert_gone(folder, expected: int) -> None:
    """Every rank that wrote its pid, and the launcher (its trial process) it named, has
    ended: killed processes get a moment to die, and a zombie (dead, not yet reaped by the
    init process it was handed to) counts as gone."""
    written = list(folder.iterdir())
    assert len(written) >= expected
    pids = {pid for f in written for pid in (int(f.name), int(f.read_text()))}
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=10)
    alive = [p for p in alive if _status(p) not in (None, psutil.STATUS_ZOMBIE)]
    assert not alive, f"processes outlived their trial: {[p.pid for p in alive]}"


def _status(p: psutil.Process) -> str | None:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return None


def test_without_nproc_a_trial_is_the_one_process_trial_with_its_old_id():
    spec = make_spec()
    assert spec.axes["nproc"] is None and spec.trial_id == "timed/simple_cnn/default/r0/s0/t2"
    first = json.loads(V1_SAMPLE.read_text().splitlines()[0])
    old = TrialRecord.from_json(first)
    assert "nproc" not in first and old.spec.axes["nproc"] is None and old.distributed is None
    assert old.trial_id == first["trial_id"]
    assert axes.host_threads({"threads": [2], "nproc": [None]}, "cpu") == 2
    assert axes.host_threads({"threads": [1], "nproc": [1, 3]}, "cpu") == 3


def test_more_ranks_than_gpus_is_refused_in_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 1)
    assert axes.NPROC.check(2, "cuda") == "--nproc 2: one process per GPU, and this machine has 1"
    assert axes.NPROC.check(1, "cuda") is None and axes.NPROC.check(4, "cpu") is None


def test_ranks_counted_from_a_later_gpu_must_fit_on_the_box(monkeypatch, capsys, tmp_path):
    """Rank r of a --device cuda:N trial takes cuda:N+r: on 8 GPUs, cuda:4 holds 4 ranks,
    not 8 (the ranks would ask for cuda:8 to cuda:11, and fail inside the trial)."""
    import torch

    from detcost import env
    from detcost.cli import main

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 8)
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 8)
    monkeypatch.setattr(env, "gpu_names", lambda: ["NVIDIA H100 80GB HBM3"] * 8)
    assert axes.NPROC.check(4, "cuda:4") is None
    want = "--nproc 8: one process per GPU from cuda:4 (cuda:4 to cuda:11), and this machine has 8"
    assert axes.NPROC.check(8, "cuda:4") == want
    argv = ["run", "--device", "cuda:4", "--nproc", "8", "--dry-run", "--workloads", "simple_cnn", "--allow-busy"]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert want in err and err.count("\n") == 0


def test_the_launcher_asks_nvml_not_the_cuda_driver_whatever_started_the_trial(monkeypatch):
    """torch's LaunchConfig calls torch.cuda.is_available() in the trial's process before
    it forks the ranks; without PYTORCH_NVML_BASED_CUDA_CHECK=1 that call starts the CUDA
    driver and poisons fork for every rank. `ddp.launch` sets it itself: a --ray worker or a
    library caller does not inherit it from detcost's CLI."""
    from torch.distributed.launcher import api

    from detcost import ddp

    seen = []

    class Stop(Exception):
        pass

    def config(**kwargs):
        seen.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))
        raise Stop

    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    monkeypatch.setattr(api, "LaunchConfig", config)
    monkeypatch.setattr(ddp.compat, "launch_shutdown", lambda seconds: {})  # the stand-in is no dataclass
    with pytest.raises(Stop):
        ddp.launch(make_spec(axes={"threads": 1, "nproc": 2}), None, lambda spec: None, lambda spec, d: None)
    assert seen == ["1"]


def test_nccl_algo_is_refused_on_the_cpu_and_bucket_size_runs_with_gloo():
    assert axes.NCCL_ALGO.check("Ring", "cpu") == (
        "--nccl-algo Ring: NCCL's algorithms are CUDA's; on the CPU DDP reduces with gloo"
    )
    assert axes.NCCL_ALGO.check("Ring", "cuda") is None and axes.NCCL_ALGO.check("default", "cpu") is None
    assert main(["run", "--dry-run", "--device", "cpu", "--nproc", "2", "--nccl-algo", "Ring"]) == 2
    # both matter only with --nproc: without it a sweep runs each trial once, as before
    combos = axes.combinations({"nproc": [None], "nccl_algo": ["default", "Ring"], "bucket_mb": [None, 1.0]})
    assert combos == [{"nproc": None, "nccl_algo": "default", "bucket_mb": None}]
    spec = make_spec(axes={"threads": 1, "nproc": 2, "bucket_mb": 0.25})
    assert spec.trial_id.endswith("/t1/np2/bucket0.25")
    record = run_isolated(spec, timeout=120)
    assert record.ok, record.error
    assert record.parts.read_back["bucket_mb"] == 0.25 and record.distributed.ranks_agree


def test_torchrun_runs_one_trial_as_detcost_rank_with_the_bits_of_the_sweeps_launch(tmp_path):
    """`torchrun ... -m detcost rank` (here --standalone; --nnodes and --rdzv-endpoint span
    machines) writes rank 0's record, with the same final parameters as the sweep's own
    launch of the same trial."""
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "detcost", "rank", "--quick", "--device", "cpu", "--threads", "1", "--results", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (stored,) = results.load_records(out)
    assert stored.ok and stored.timing.world_size == 2 and stored.distributed.ranks_agree
    ours = run_isolated(stored.spec, timeout=120)
    assert ours.ok and ours.outcome.params_sha256 == stored.outcome.params_sha256


SPEEDS = {  # (threads, setting): samples/s at nproc 1 and at nproc 2
    (1, "default"): (1000.0, 2000.0),  # 2.00
    (1, "strict"): (500.0, 400.0),  # 0.80: the pairing must keep each setting's own trials
    (2, "default"): (3000.0, 3000.0),  # 1.00: and each axis value's
}


def _crafted(speeds=SPEEDS, nprocs=(1, 2), rounds: int = 3, busy=()):
    """Records of simple_cnn with known global samples/s per (threads, setting, nproc), each
    round a little off the last, the ratio within a round a little off its own; `busy`: (round, nproc) whose
    trials the guard flagged, 10x slow."""
    from detcost.payloads import BusyReport
    from detcost.record import Kind, Outcome, StepTiming, TrialParts, TrialSpec

    out = []
    for r in range(rounds):
        for (threads, setting), by_n in speeds.items():
            for n, sps in zip((1, 2), by_n):
                if n not in nprocs:
                    continue
                axes_ = {"threads": threads, "nproc": n}
                spec = TrialSpec("t", Kind.TIMED, "simple_cnn", setting, r, 0, "cpu", 6, 2, 16, 8, axes=axes_)
                slow = 10.0 if (r, n) in busy else 1.0
                drift = (1 + 0.02 * r) * (1 + 0.01 * (r - 1) if n == 2 else 1)  # the ratio wobbles around sps's
                step = n * 16 * slow * drift / sps  # global samples/s = ranks x batch / step time
                timing = StepTiming(step_times_s=[step] * 4, batch_size=16, busy=BusyReport(cpu_busy=slow > 1),
                                    world_size=n)  # fmt: skip
                outcome = Outcome(final_loss=1.0, eval_accuracy=0.5, params_sha256="p", logits_sha256="l")
                parts = TrialParts(timing=timing, outcome=outcome)
                out.append(TrialRecord(spec, Status.OK, parts=parts, env={"hostname": "h", "cpu": "c"}))
    return out


def _one_process(records):
    """The same records as one-process trials of a run without --nproc."""
    import dataclasses

    out = []
    for r in records:
        if r.spec.axes["nproc"] != 1:
            continue
        spec = dataclasses.replace(r.spec, axes={**r.spec.axes, "nproc": None})
        timing = dataclasses.replace(r.timing, world_size=None)
        out.append(dataclasses.replace(r, spec=spec, parts=dataclasses.replace(r.parts, timing=timing)))
    return out


def test_ddp_is_priced_against_one_process_as_a_speed_up_of_global_samples_per_s(tmp_path):
    from detcost.derive.analysis import analyse
    from detcost.report.build import build_report
    from detcost.report.scaling_text import TITLE, scaling_json, scaling_text

    analysis = analyse(_crafted())
    m = analysis.machines[0]
    rows = {(s.key.as_dict()["threads"], s.setting): s for s in m.scaling}
    assert set(rows) == set(SPEEDS) and all(s.nproc == 2 and s.speedup.rounds == 3 for s in m.scaling)
    for k, want in {(1, "default"): 2.0, (1, "strict"): 0.8, (2, "default"): 1.0}.items():
        s = rows[k]
        assert s.speedup.ratio == pytest.approx(want, rel=1e-3) and s.speedup.lo < want < s.speedup.hi
        assert s.efficiency == pytest.approx(want / 2, rel=1e-3) and s.reproducible and s.ranks_agree is None
    text = "\n".join(scaling_text(m))
    assert TITLE in text and "2.00 [" in text and "0.80 [" in text and "share this machine's cores" in text
    (row,) = [j for j in scaling_json(m) if j["setting"] == "strict"]
    assert row["nproc"] == 2 and row["speedup"] == pytest.approx(0.8, rel=1e-3) and row["speedup_lo"] <= 0.8
    paths = build_report(analysis, tmp_path, [])
    for page in (paths.markdown, paths.html):
        assert TITLE in page.read_text() and "2.00 [" in page.read_text()


def test_busy_trials_are_left_out_of_the_speed_up():
    from detcost.derive.analysis import analyse

    (row,) = analyse(_crafted({(1, "default"): (1000.0, 2000.0)}, busy={(0, 2)})).machines[0].scaling
    assert row.speedup.rounds == 2 and row.speedup.ratio == pytest.approx(2 / 1.01**0.5)  # rounds 1 and 2
    # a world size busy in every round but one: no round in common, so unpaired, as prices do
    (row,) = analyse(_crafted({(1, "default"): (1000.0, 2000.0)}, busy={(0, 2), (1, 2), (2, 1)})).machines[0].scaling
    assert row.speedup.rounds == 1 and row.speedup.ratio == pytest.approx(2 * 1.02**0.5 / (1.04 * 1.01))


def test_no_ddp_comparison_without_a_one_process_group_beside_it(ddp_sweep):
    from detcost.derive.analysis import analyse
    from detcost.report.scaling_text import scaling_text

    m = analyse(_crafted(nprocs=(2,))).machines[0]
    assert m.scaling == [] and scaling_text(m) == []
    m = analyse(results.load_records(ddp_sweep[0])).machines[0]  # --nproc 2 alone, really run
    assert m.scaling == [] and scaling_text(m) == []


def test_a_run_without_nproc_has_no_ddp_section(tmp_path):
    from detcost.derive.analysis import analyse
    from detcost.report.build import build_report
    from detcost.report.scaling_text import TITLE

    analysis = analyse(_one_process(_crafted()))
    assert analysis.machines[0].scaling == []
    assert TITLE not in build_report(analysis, tmp_path, []).markdown.read_text()


def test_the_launcher_gets_its_shutdown_grace_on_the_torch_installed(monkeypatch):
    """torch 2.12 added LaunchConfig's shutdown_timeout; an older torch has a fixed grace,
    and the keyword must not reach it (a TypeError failed every DDP trial there)."""
    import dataclasses

    from torch.distributed.launcher import api

    from detcost import compat

    config = api.LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, **compat.launch_shutdown(5))
    assert getattr(config, "shutdown_timeout", 5) == 5

    @dataclasses.dataclass
    class LaunchConfigBefore212:
        min_nodes: int
        max_nodes: int
        nproc_per_node: int

    monkeypatch.setattr(api, "LaunchConfig", LaunchConfigBefore212)
    assert compat.launch_shutdown(5) == {}


@pytest.mark.dynamo_in_process
def test_a_compiled_ddp_trial_reads_back_compile_on():
    """--nproc wraps the model --compile compiled (the axes' order): the read-back looks
    inside DDP's wrapper, where it used to find no OptimizedModule and say "off"."""
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.compile(torch.nn.Linear(2, 2)))
        assert axes.COMPILE.read_back(SimpleNamespace(model=model)).startswith("on (inductor deterministic=")
        plain = DistributedDataParallel(torch.nn.Linear(2, 2))
        assert axes.COMPILE.read_back(SimpleNamespace(model=plain)) == "off"
    finally:
        dist.destroy_process_group()
