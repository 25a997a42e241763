"""Trials in fresh processes: same seed -> same bits; forkserver == spawn."""

import pytest

from detcost.isolation import run_isolated
from detcost.measure import checkpoint_steps
from detcost.trial import run_trial
from tests.conftest import make_spec

spec = make_spec


@pytest.fixture(scope="module")
def forked_pair():
    return [run_isolated(spec(repeat=r), method="forkserver").to_json() for r in (0, 1)]


def test_two_repeats_in_fresh_processes_give_the_same_parameter_hash(forked_pair):
    a, b = forked_pair
    assert a["status"] == b["status"] == "ok"
    assert a["params_sha256"] == b["params_sha256"]
    assert a["logits_sha256"] == b["logits_sha256"]
    assert a["final_loss"] == b["final_loss"]


def test_a_different_seed_gives_a_different_hash(forked_pair):
    other = run_isolated(spec(seed=1), method="forkserver").to_json()
    assert other["params_sha256"] != forked_pair[0]["params_sha256"]


def test_forkserver_trials_match_spawned_interpreters(forked_pair):
    """The forkserver is a fresh process in the sense that matters: same bits, same flags."""
    spawned = run_isolated(spec(setting="strict"), method="spawn").to_json()
    forked = run_isolated(spec(setting="strict"), method="forkserver").to_json()
    assert spawned["status"] == forked["status"] == "ok"
    assert spawned["params_sha256"] == forked["params_sha256"]
    assert (
        spawned["flags"]
        == forked["flags"]
        == {
            "cudnn_enabled": True,
            "cudnn_benchmark": False,
            "cudnn_deterministic": True,
            "deterministic_algorithms": True,
            "fill_uninitialized_memory": True,
            "cublas_workspace_config": ":4096:8",
            "cuda_launch_blocking": None,
            "warn_only": False,
        }
    )
    # strict changes which kernels run, not what a CPU conv net computes
    assert forked["params_sha256"] == forked_pair[0]["params_sha256"]


def test_the_record_has_the_fields_other_tools_rely_on(forked_pair):
    record = forked_pair[0]
    for field in (
        "schema_version",
        "run_id",
        "trial_id",
        "workload",
        "setting",
        "repeat",
        "seed",
        "device",
        "status",
        "error",
        "samples_per_s",
        "params_sha256",
        "logits_sha256",
        "final_loss",
        "flags",
        "step_times_s",
        "step_time_median_s",
        "step_time_iqr_s",
        "cold_start_s",
        "peak_memory_bytes",
        "flops_per_step",
        "achieved_flops",
        "env",
        "busy",
    ):
        assert field in record, field
    assert len(record["step_times_s"]) >= 1 and all(t > 0 for t in record["step_times_s"])
    assert record["flops_per_step"] > 0 and record["peak_memory_bytes"] > 0
    assert record["env"]["torch"] and record["env"]["cpu"]


def test_checkpoints_double_and_end_at_the_last_step():
    assert checkpoint_steps(10) == [1, 2, 4, 8, 10]
    assert checkpoint_steps(8) == [1, 2, 4, 8]
    assert checkpoint_steps(1) == [1]


def test_a_raising_workload_becomes_an_error_record_in_process():
    record = run_trial(spec(workload="diag_raise", steps=4))
    assert record.status == "error"
    assert "injected failure" in record.error
    assert "\n" not in record.error


def test_a_failing_fingerprint_is_an_error_record_not_a_crash(monkeypatch):
    from detcost import env

    def broken(machine, device, threads=None):
        raise RuntimeError("NVML went away")

    monkeypatch.setattr(env, "for_trial", broken)
    record = run_trial(spec(steps=2), machine={"torch": "x"})
    assert record.status == "error" and record.error == "fingerprint: RuntimeError: NVML went away"
    assert record.env == {"torch": "x"} and record.timing is not None  # what it measured is kept


def _ticking(step: float):
    """A clock that advances `step` seconds a reading: the warm-up's rounds are counted,
    not timed."""
    from types import SimpleNamespace

    readings = iter(range(1_000_000))
    return SimpleNamespace(perf_counter=lambda: next(readings) * step)


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_the_clock_warm_up_loads_the_device_and_leaves_the_trials_bits_alone(amp, monkeypatch):
    """On CUDA the warm-up lasts at least 0.5 s; the extra time goes to a load of its own
    (matmuls on buffers of its own), so the trial's parameters, generators and fp16's
    GradScaler are those of a warm-up of its step count alone (run on the CPU)."""
    import torch

    from detcost import measure, train
    from detcost.train import build, trial_state

    spec = make_spec(steps=2, warmup=2, axes={"threads": 2, "amp": amp})

    def trained(extra_seconds: float):
        with trial_state(spec):
            wl = build(spec)
            log = measure.StepLog(wl.model, spec.total_steps, spec.device)
            measure.warm_up(spec, wl, log)  # on the CPU: the step count alone
            with monkeypatch.context() as m:
                m.setattr(train, "time", _ticking(0.1))
                out = train.keep_warm(spec, extra_seconds)
            measure.run_steps(wl, wl.batches[spec.warmup : spec.total_steps])
            scaler = getattr(wl.step, "scaler", None)
            assert (scaler is not None) == (amp == "fp16")
            scale = scaler.get_scale() if scaler else None
            return out, [p.detach().clone() for p in wl.model.parameters()], torch.random.get_rng_state(), scale

    plain, params, rng, scale = trained(0.0)
    warmed, warmed_params, warmed_rng, warmed_scale = trained(0.25)
    assert plain == {"clock_warmup_steps": 0}
    # readings 0.0 (keep_warm starts), 0.1 (the load starts), 0.2 and 0.3 (a round each),
    # 0.4 (done), 0.5 (the time it took)
    assert warmed == {"clock_warmup_steps": 2, "clock_warmup_s": pytest.approx(0.5)}
    assert all(torch.equal(a, b) for a, b in zip(params, warmed_params))
    assert torch.equal(rng, warmed_rng) and scale == warmed_scale


@pytest.mark.parametrize("wrap", ["compiled", "ddp"])
def test_a_model_an_axis_wrapped_gets_the_same_clock_warm_up_as_a_plain_one(wrap, monkeypatch):
    """Every label is timed after the same warm-up: a model that --compile or --nproc
    wrapped (an OptimizedModule, a DistributedDataParallel) is warmed by the same load as
    a plain one, where a copy of it could not be made (it would be compiled again)."""
    import torch

    from detcost import measure, train
    from detcost.train import build, trial_state

    monkeypatch.setattr(train, "min_warmup_s", lambda device: 0.25)
    spec = make_spec(steps=2, warmup=1)
    outs = {}
    for label in ("plain", wrap):
        with trial_state(spec):
            wl = build(spec)
            if label != "plain":
                wl.model = torch.nn.Sequential(wl.model)  # wrapped, as an axis's wrap_model does
            log = measure.StepLog(wl.model, spec.total_steps, spec.device)
            with monkeypatch.context() as m:
                m.setattr(train, "time", _ticking(0.05))
                m.setattr(measure, "time", _ticking(0.05))
                out = measure.warm_up(spec, wl, log)
        outs[label] = {k: v for k, v in out.items() if k.startswith("clock_warmup")}
    assert outs["plain"] == outs[wrap] and outs[wrap]["clock_warmup_steps"] > 0
    assert "clock_warmup_note" not in outs[wrap]


def test_no_room_for_the_warm_up_load_is_a_note_and_other_errors_still_raise(monkeypatch):
    import torch

    from detcost import train

    spec = make_spec(steps=2, warmup=1)

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "warm_load", no_room)
    out = train.keep_warm(spec, 0.5)
    assert out == {"clock_warmup_steps": 0, "clock_warmup_note": "no room for the warm-up load: OutOfMemoryError"}

    def broken(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(train, "warm_load", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        train.keep_warm(spec, 0.5)


def test_a_profiled_trial_warms_the_clocks_as_a_timed_one_does_before_the_profiler_starts(monkeypatch):
    """On CUDA a profiled trial's warm-up lasts the timed trials' minimum too (faked on the
    CPU: a minimum of 0.5 s, and a clock that advances 0.125 s a reading), with the same
    load, before the profiled steps: their kernels run at working clocks, not idle ones."""
    from detcost import profile, train
    from detcost.train import trial_state

    clock = _ticking(0.125)
    monkeypatch.setattr(train, "min_warmup_s", lambda device: 0.5)
    monkeypatch.setattr(train, "time", clock)
    monkeypatch.setattr(profile, "time", clock)
    order = []
    load, profiled = train.warm_load, profile._profile
    monkeypatch.setattr(train, "warm_load", lambda *a, **k: order.append("clock warm-up") or load(*a, **k))
    monkeypatch.setattr(profile, "_profile", lambda *a: order.append("profiled") or profiled(*a))
    spec = make_spec(kind="profiled", steps=2, warmup=1)
    with trial_state(spec):
        parts = profile.run(spec, None)
    assert order == ["clock warm-up", "profiled"]
    # readings 0 (the warm-up starts), 0.125 (0.375 s to go), 0.25 (keep_warm starts),
    # 0.375 (the load starts), then 0.5 and 0.625 (a round each), 0.75 (done)
    assert parts.profile.to_json()["profiled_clock_warmup_steps"] == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_a_profiled_trial_reads_a_dataloaders_warm_up_batches_once(workers):
    """--data loader: a DataLoader's batches are read once, in order; the profiled trial's
    warm-up reads each once and its profiled steps the ones after (it used to read the last
    warm-up batch again for the clock warm-up, and failed with an IndexError)."""
    from detcost import profile
    from detcost.train import trial_state

    spec = make_spec(kind="profiled", steps=2, warmup=2, axes={"threads": 2, "data": "loader", "workers": workers})
    with trial_state(spec):
        parts = profile.run(spec, None)
    assert parts.profile.profiled_steps == 2


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies waiting for a reaper aside)."""
    from pathlib import Path

    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_a_killed_trial_takes_its_dataloader_workers_with_it(tmp_path):
    """A trial killed (past its --timeout, or by Ctrl-C) goes with its process group: its
    DataLoader workers too, not left running until a watchdog notices."""
    import time

    from detcost import isolation
    from detcost.trial import child_main, trial_environ
    from tests.probes import HANG_MARK_ENV

    mark = tmp_path / "pgid"
    axes = {"threads": 1, "data": "loader", "workers": 2}
    hanging = spec(workload="tests.probes:hang_after_loading", steps=2, axes=axes)
    environ = {**trial_environ(hanging), HANG_MARK_ENV: str(mark)}  # set in the trial, as a setting's are
    ctx = isolation.process_context("forkserver")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(hanging.to_dict(), environ, None, None, sender))
    proc.start()
    try:
        deadline = time.monotonic() + 300  # however slow the machine: until the workers run
        while not mark.exists() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert mark.exists(), "the trial never reached its first loss"
        pgid = int(mark.read_text())
        # the trial, its 2 workers (and the process that started them, on a forkserver)
        assert pgid == proc.pid and len(_alive_in_group(pgid)) >= 3
    finally:
        isolation.kill(proc)
        proc.join()
    deadline = time.monotonic() + 30
    while _alive_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_in_group(pgid) == []


def test_a_trials_process_state_is_restored_when_it_ends():
    """Threads and TF32 are process-wide: a process that runs trials in-process (the tests,
    asv) gets its own state back, or the next sweep would plan with the trial's threads."""
    import torch

    from detcost import compat
    from detcost.train import trial_state

    threads = torch.get_num_threads()
    tf32 = compat.get_tf32()
    other = 1 if threads != 1 else 2
    with trial_state(spec(axes={"threads": other, "tf32": "on"})):
        assert torch.get_num_threads() == other and compat.get_tf32() == ("tf32", "tf32")
    assert torch.get_num_threads() == threads and compat.get_tf32() == tf32
