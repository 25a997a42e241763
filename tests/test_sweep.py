"""A sweep: one ok record per planned trial, flags as the table says, failures recorded."""

import json
from pathlib import Path

from detcost import results
from detcost.plan import SweepOptions, plan
from detcost.settings import CANONICAL, DEFAULT_SETTINGS, get_setting
from tests.conftest import TIMED_ONLY, run_cli


def test_the_small_sweep_has_one_ok_record_per_workload_setting_repeat(small_sweep_df):
    timed = small_sweep_df[small_sweep_df["kind"] == "timed"]
    assert len(timed) == 2 * 7 * 2  # all seven settings by default
    assert (timed["status"] == "ok").all()
    assert set(timed["setting"]) == set(DEFAULT_SETTINGS)
    assert not timed.duplicated(["workload", "setting", "repeat"]).any()


def test_every_record_reads_back_the_flags_of_its_setting(small_sweep):
    for record in results.read_records(small_sweep):
        if record["status"] == "ok" and record["kind"] != "audit":
            assert record["flags"] == get_setting(record["setting"]).expected_flags(), record["trial_id"]


def test_repeats_of_each_cpu_trial_are_bitwise_identical(small_sweep_df):
    timed = small_sweep_df[small_sweep_df["kind"] == "timed"]
    for (workload, setting), group in timed.groupby(["workload", "setting"]):
        assert group["params_sha256"].nunique() == 1, (workload, setting)


def test_the_aa_control_and_seed_yardstick_are_in_the_sweep(small_sweep_df):
    kinds = small_sweep_df["kind"].value_counts().to_dict()
    assert kinds == {"timed": 28, "aa": 4, "seed": 4, "audit": 2, "profiled": 14}
    seeds = small_sweep_df[small_sweep_df["kind"] == "seed"]
    assert seeds.groupby("workload")["params_sha256"].nunique().eq(2).all()


def _plan(**overrides):
    base = {
        "workloads": ["simple_cnn"],
        "settings": list(CANONICAL),
        "repeats": 2,
        "seed": 0,
        "device": "cpu",
        "axes": {"threads": [2]},
        "size_preset": "quick",
        "results": Path("x.jsonl"),
        "run_id": "x",
        "audit": False,
        "seeds": 0,
        "explain": False,
    }
    return plan(SweepOptions(**{**base, **overrides}))


def test_settings_are_interleaved_and_no_label_keeps_its_place_or_its_predecessor():
    order = [(s.kind, s.setting) for s in _plan()]
    first, second = order[:7], order[7:]  # six settings and the A/A label per repeat
    assert sorted(first) == sorted(second) and ("aa", "default") in first
    assert sum(first.index(label) == second.index(label) for label in first) <= 1
    pairs = {(a, b) for a, b in zip(first, first[1:])}
    assert len(pairs & {(a, b) for a, b in zip(second, second[1:])}) <= 1  # not a cyclic shift


def test_the_aa_control_and_seed_yardstick_bring_default_into_the_sweep():
    kinds = {(s.kind, s.setting) for s in _plan(settings=["strict"], repeats=1, seeds=2)}
    assert kinds == {("timed", "default"), ("timed", "strict"), ("aa", "default"), ("seed", "default")}


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(failing_sweep):
    by_workload = {r["workload"]: r for r in results.read_records(failing_sweep)}
    assert by_workload["diag_raise"]["status"] == "error"
    assert "injected failure" in by_workload["diag_raise"]["error"]
    assert by_workload["diag_exit"]["status"] == "crash"
    assert "exited with code 3" in by_workload["diag_exit"]["error"]
    assert by_workload["diag_nan"]["status"] == "nan"
    assert by_workload["diag_hang"]["status"] == "timeout"
    assert by_workload["simple_cnn"]["status"] == "ok"


def test_each_record_is_written_as_one_json_line(failing_sweep):
    lines = failing_sweep.read_text().splitlines()
    assert len(lines) == 5
    assert all(json.loads(line)["schema_version"] == 1 for line in lines)


def test_resume_runs_only_the_missing_trials_and_leaves_no_duplicates(tmp_path, small_sweep):
    # An interrupted sweep: the first 10 records of the small sweep, and a failed one.
    lines = small_sweep.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    broken = json.loads(lines[10])
    broken.update(status="crash", error="interrupted")
    partial.write_text("\n".join(lines[:10] + [json.dumps(broken)]) + "\n")
    args = ["--workloads", "simple_cnn,resnet18", "--repeats", "2", "--seeds", "2", "--results", str(partial)]
    assert run_cli(*args, "--resume") == 0
    records = [json.loads(x) for x in partial.read_text().splitlines()]
    assert len(records) == len(lines) + 1  # the failed trial ran again; the rest ran once
    latest = results.load(partial)
    assert len(latest) == len(lines)
    assert (latest["status"] == "ok").all()
    assert latest["trial_id"].is_unique
    before = {json.loads(x)["trial_id"] for x in lines[:10]}
    rerun = [r["trial_id"] for r in records[11:]]
    assert not before & set(rerun)


def test_max_time_stops_cleanly_and_resume_finishes(tmp_path):
    path = tmp_path / "m.jsonl"
    args = [
        "--workloads",
        "simple_cnn",
        "--settings",
        "default,strict",
        "--repeats",
        "1",
        *TIMED_ONLY,
        "--results",
        str(path),
    ]
    assert run_cli(*args, "--max-time", "0.001") == 3  # stopped early: --resume goes on
    assert len(path.read_text().splitlines()) == 1  # the first trial ran, then the clock stopped it
    assert run_cli(*args, "--resume") == 0
    assert sorted(results.load(path)["setting"]) == ["default", "strict"]
