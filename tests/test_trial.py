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


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_the_clock_warm_up_trains_a_copy_and_leaves_the_trials_bits_alone(amp, monkeypatch):
    """On CUDA the warm-up lasts at least 0.5 s; the extra steps train a copy, so the
    trial's parameters are those of a warm-up of its step count alone (run on the CPU).
    The copy takes the training step as the axes wrapped it: fp16's GradScaler too. The
    warm-up's clock is one that advances 0.1 s a reading: its steps are counted, not timed."""
    from types import SimpleNamespace

    import torch

    from detcost import measure, train
    from detcost.train import build, trial_state

    spec = make_spec(steps=2, warmup=2, axes={"threads": 2, "amp": amp})

    def ticking_clock():
        readings = iter(range(1_000_000))
        return SimpleNamespace(perf_counter=lambda: next(readings) * 0.1)

    def trained(extra_seconds: float):
        with trial_state(spec):
            wl = build(spec)
            log = measure.StepLog(wl.model, spec.total_steps, spec.device)
            measure.warm_up(spec, wl, log)  # on the CPU: the step count alone
            with monkeypatch.context() as m:
                m.setattr(train, "time", ticking_clock())
                out = train.keep_warm(spec, wl, wl.batches[spec.warmup - 1], extra_seconds)
            measure.run_steps(wl, wl.batches[spec.warmup : spec.total_steps])
            scaler = getattr(wl.step, "scaler", None)
            assert (scaler is not None) == (amp == "fp16")
            scale = scaler.get_scale() if scaler else None
            return out, [p.detach().clone() for p in wl.model.parameters()], torch.random.get_rng_state(), scale

    plain, params, rng, scale = trained(0.0)
    warmed, warmed_params, warmed_rng, warmed_scale = trained(0.25)
    assert plain == {"clock_warmup_steps": 0}
    # readings 0.0 (start), 0.1 and 0.2 (a step each), 0.3 (done), 0.4 (the time it took)
    assert warmed == {"clock_warmup_steps": 2, "clock_warmup_s": pytest.approx(0.4)}
    assert all(torch.equal(a, b) for a, b in zip(params, warmed_params))
    assert torch.equal(rng, warmed_rng) and scale == warmed_scale


def test_a_model_an_axis_wrapped_keeps_the_step_count_warm_up_alone():
    """A wrapped model (torch.compile's OptimizedModule) is not copied for the clock
    warm-up: its copy would be wrapped (compiled) again. The record says so."""
    import torch

    from detcost import train
    from detcost.train import build, trial_state

    spec = make_spec(steps=2, warmup=1)
    with trial_state(spec):
        wl = build(spec)
        wl.model = torch.nn.Sequential(wl.model)  # wrapped, as an axis's wrap_model may
        out = train.keep_warm(spec, wl, wl.batches[0], 0.5)
    note = "not for a model wrapped in a Sequential: the copy would be wrapped again"
    assert out == {"clock_warmup_steps": 0, "clock_warmup_note": note}


def test_no_room_for_the_warm_up_copy_is_a_note_and_other_errors_still_raise(monkeypatch):
    import torch

    from detcost import train
    from detcost.train import build, trial_state

    spec = make_spec(steps=2, warmup=1)
    with trial_state(spec):
        wl = build(spec)
        batch = wl.batches[0]

        def no_room(*args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(train, "_train_twin", no_room)
        out = train.keep_warm(spec, wl, batch, 0.5)
        assert out == {"clock_warmup_steps": 0, "clock_warmup_note": "no room to copy the model: OutOfMemoryError"}

        def broken(*args):
            raise RuntimeError("a real bug")

        monkeypatch.setattr(train, "_train_twin", broken)
        with pytest.raises(RuntimeError, match="a real bug"):
            train.keep_warm(spec, wl, batch, 0.5)


def test_a_profiled_trial_warms_the_clocks_as_a_timed_one_does_before_the_profiler_starts(monkeypatch):
    """On CUDA a profiled trial's warm-up lasts the timed trials' minimum too (faked on the
    CPU: a minimum of 0.5 s, and a clock that advances 0.125 s a reading), on a copy of the
    model, before the profiled steps: their kernels run at working clocks, not idle ones."""
    from types import SimpleNamespace

    from detcost import profile, train
    from detcost.train import trial_state

    readings = iter(range(1_000_000))
    clock = SimpleNamespace(perf_counter=lambda: next(readings) * 0.125)
    monkeypatch.setattr(train, "min_warmup_s", lambda device: 0.5, raising=False)
    monkeypatch.setattr(train, "time", clock, raising=False)
    monkeypatch.setattr(profile, "time", clock)
    order = []
    twin, profiled = getattr(train, "_train_twin", None), profile._profile
    monkeypatch.setattr(train, "_train_twin", lambda *a: order.append("clock warm-up") or twin(*a), raising=False)
    monkeypatch.setattr(profile, "_profile", lambda *a: order.append("profiled") or profiled(*a))
    spec = make_spec(kind="profiled", steps=2, warmup=1)
    with trial_state(spec):
        parts = profile.run(spec, None)
    assert order == ["clock warm-up", "profiled"]
    # readings 0 (the warm-up starts), 0.125 (0.375 s to go), 0.25 (the copy starts), then
    # 0.375 and 0.5 (a step each), 0.625 (done)
    assert parts.profile.to_json()["profiled_clock_warmup_steps"] == 2


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

    from detcost.train import trial_state

    threads = torch.get_num_threads()
    conv = torch.backends.cudnn.conv.fp32_precision
    other = 1 if threads != 1 else 2
    with trial_state(spec(axes={"threads": other, "tf32": "on"})):
        assert torch.get_num_threads() == other and torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.get_num_threads() == threads and torch.backends.cudnn.conv.fp32_precision == conv
