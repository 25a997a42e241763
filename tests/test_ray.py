"""--ray: a sweep's rounds as Ray tasks, in parallel, on a local Ray cluster of this machine.

The real-Ray tests start a local cluster (two CPUs, so two rounds at one thread run at once)
and skip where Ray is not installed; the parent's loop on CUDA (a GPU per task) and the
task's checks run against fakes of what Ray and a GPU box give."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from detcost import cluster, placement
from detcost.cli import main
from detcost.errors import HarnessError, UsageError
from detcost.plan import SweepOptions, plan
from detcost.record import ROUND_KINDS, Kind, TrialRecord
from tests.conftest import QUICK, TIMED_ONLY, make_spec

ROOT = Path(__file__).resolve().parent.parent
# two settings and the A/A control, two rounds, one thread each: two tasks of three trials
RAY_RUN = [*QUICK, "--no-report", "--workloads", "simple_cnn", "--settings", "default,strict", "--threads", "1"]
RAY_RUN += ["--seeds", "0", "--no-audit", "--no-explain", "--repeats", "2"]


def _records(path: Path) -> list[TrialRecord]:
    return [TrialRecord.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _latest(path: Path) -> dict[str, TrialRecord]:
    return {r.trial_id: r for r in _records(path)}


def _planned_ids(path: Path) -> set[str]:
    """The trial ids a serial run of RAY_RUN plans (the run id is the file's)."""
    first = _records(path)[0]
    opts = SweepOptions(
        workloads=["simple_cnn"], settings=["default", "strict"], repeats=2, seed=0, device="cpu",
        size_preset="quick", results=path, run_id=first.spec.run_id, axes={"threads": [1]}, steps=4, warmup=1,
        seeds=0, audit=False, explain=False,
    )  # fmt: skip
    return {s.trial_id for s in plan(opts)}


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory):
    pytest.importorskip("ray")
    path = tmp_path_factory.mktemp("ray") / "r.jsonl"
    assert main(["run", *RAY_RUN, "--ray", "--results", str(path)]) == 0
    return path


def test_ray_rounds_run_in_parallel_tasks_with_the_serial_runs_trials(ray_sweep):
    latest = _latest(ray_sweep)
    assert set(latest) == _planned_ids(ray_sweep)  # the same trials as a serial run
    assert all(r.ok for r in latest.values()), {t: r.error for t, r in latest.items() if not r.ok}
    rounds: dict[int, set] = {}
    for r in latest.values():
        assert r.spec.kind in ROUND_KINDS and r.placement is not None
        rounds.setdefault(r.spec.repeat, set()).add((r.placement["ray_task"], tuple(r.placement["cores"])))
    # each round's trials on one task, pinned to one core; the two rounds on two tasks, two cores
    assert all(len(v) == 1 for v in rounds.values()), rounds
    (task0, cores0), (task1, cores1) = rounds[0].pop(), rounds[1].pop()
    assert task0 != task1 and len(cores0) == len(cores1) == 1 and cores0 != cores1
    # a round's labels forked from one forkserver, the task's own
    servers = {rep: {r.layout["server"] for r in latest.values() if r.spec.repeat == rep} for rep in rounds}
    assert all(len(s) == 1 for s in servers.values()) and servers[0] != servers[1]


def test_a_task_that_dies_records_its_remaining_trials_and_the_sweep_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray

    def dies_in_round_1(task):  # the real task, but round 1's worker dies before its first trial
        import os

        from detcost.cluster import run_task

        if task["specs"][0]["repeat"] == 1:
            os._exit(1)
        yield from run_task(task)

    connect = cluster.Cluster.connect.__func__

    def connect_with_a_dying_task(cls, address, device):
        c = connect(cls, address, device)
        c.remote = ray.remote(max_retries=0)(dies_in_round_1)
        return c

    monkeypatch.setattr(cluster.Cluster, "connect", classmethod(connect_with_a_dying_task))
    path = tmp_path / "r.jsonl"
    assert main(["run", *RAY_RUN, "--ray", "--results", str(path)]) == 0
    latest = _latest(path)
    assert set(latest) == _planned_ids(path)
    lost = [r for r in latest.values() if not r.ok]
    assert len(lost) == 3 and {r.spec.repeat for r in lost} == {1}  # every trial of round 1
    assert all(r.status == "crash" and "Ray task running it was lost" in r.error for r in lost)
    assert all(r.ok for r in latest.values() if r.spec.repeat == 0)


def test_resume_after_the_parent_is_killed_mid_sweep_loses_nothing(tmp_path):
    pytest.importorskip("ray")
    path = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "detcost", "run", *RAY_RUN, "--ray", "--results", str(path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not (path.exists() and path.read_text().count("\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before its first record"
            tree |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            time.sleep(0.2)
        tree |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        _kill_all(proc, tree)
    before = path.read_text().splitlines()
    assert 1 <= len(before) < 6  # killed mid-sweep, every record it had appended kept
    assert main(["run", *RAY_RUN, "--ray", "--results", str(path), "--resume"]) == 0
    after = path.read_text().splitlines()
    assert after[: len(before)] == before  # nothing lost, nothing rewritten
    latest = _latest(path)
    assert set(latest) == _planned_ids(path) and all(r.ok for r in latest.values())
    kept_ok = {json.loads(line)["trial_id"] for line in before if json.loads(line)["status"] == "ok"}
    rerun = {r.trial_id for r in _records(path)[len(before) :]}
    assert not kept_ok & rerun  # resume ran only what the killed sweep had not finished


def _kill_all(proc, pids: set[int]) -> None:
    """The killed sweep's Ray cluster and anything it left (trials lead groups of their own)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# ---- without Ray: the one-line refusals, the task's checks, the parent's loop on CUDA ----


def test_ray_refusals_are_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(cluster.importlib.util, "find_spec", lambda name: None)
    assert main(["run", *QUICK, *TIMED_ONLY, "--workloads", "simple_cnn", "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'detcost[ray]'" in err
    monkeypatch.undo()
    with pytest.raises(UsageError, match="--nproc's DDP trials need a box each"):
        cluster.check_options("cpu", [1, 2])
    with pytest.raises(UsageError, match="use --device cuda, not cuda:1"):
        cluster.check_options("cuda:1", [1])


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_ray_on_a_gpu_box_plans_with_device_cuda_or_auto(device, monkeypatch, capsys, tmp_path):
    """auto and cuda resolve to cuda:0 on a GPU box; the check judges what the user asked
    for, so --ray is not refused for a device it was never given."""
    pytest.importorskip("ray")
    from detcost import env

    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 2)
    monkeypatch.setattr(env, "gpu_names", lambda: ["NVIDIA H100 80GB HBM3"] * 2)
    argv = ["run", "--device", device, "--ray", "--dry-run", "--allow-busy", "--workloads", "simple_cnn"]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 0, capsys.readouterr().err
    assert main([*argv[:2], "cuda:1", *argv[3:], "--results", str(tmp_path / "s.jsonl")]) == 2
    assert "use --device cuda, not cuda:1" in capsys.readouterr().err


def test_slots_are_the_gpus_or_each_nodes_cores_over_a_rounds_threads():
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 3.0}}]
    nodes.append({"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}})
    assert cluster.slots(nodes, "cuda", 1) == 4
    assert cluster.slots(nodes, "cpu", 2) == 8 + 1  # a round's cores never span two nodes
    with pytest.raises(UsageError, match="needs 32 cores of its own.*more than 16"):
        cluster.slots(nodes, "cpu", 32)
    with pytest.raises(UsageError, match="no GPU"):
        cluster.slots(nodes[1:2], "cuda", 1)
    # a GPU round's cores: the fewest per GPU of any node with GPUs (so each holds its GPUs')
    assert cluster.gpu_share(nodes) == 4  # the dead node's 64 / 8 does not count
    mixed = [{"Resources": {"CPU": 64.0, "GPU": 8.0}}, {"Resources": {"CPU": 16.0, "GPU": 1.0}}]
    assert cluster.gpu_share(mixed) == 8
    assert cluster.gpu_share([{"Resources": {"CPU": 2.0, "GPU": 8.0}}]) == 1


def test_rounds_hold_cores_apart_and_a_round_with_none_left_is_refused(tmp_path):
    locks = tmp_path / "locks"
    cores = sorted(placement.usable_cpus())
    with placement.hold_cores(1, lock_dir=locks) as first:
        if len(cores) > 1:
            with placement.hold_cores(len(cores) - 1, lock_dir=locks) as rest:
                assert not first & rest and first | rest == set(cores)
        refused = pytest.raises(HarnessError, match="other rounds hold the rest")
        with refused, placement.hold_cores(len(cores), wait_s=0.2, lock_dir=locks):
            pass
    with placement.hold_cores(len(cores), lock_dir=locks) as everything:  # released when a round ends
        assert everything == set(cores)


def test_a_gpu_round_takes_the_cores_of_its_gpus_numa_node_first(tmp_path, monkeypatch):
    cores = sorted(placement.usable_cpus())
    with placement.hold_cores(1, lock_dir=tmp_path / "locks", prefer={cores[-1]}) as held:
        assert held == {cores[-1]}  # not the first core by index
    monkeypatch.setattr(placement.envmod, "gpu_local_cpus", lambda device: {cores[-1]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # restored after: the task sets the GPU Ray gave it
    before = os.sched_getaffinity(0)
    try:
        with placement.place("cuda", 1, {"gpu_ids": [0]}) as placed:
            assert placed["cores"] == [cores[-1]]
    finally:
        os.sched_setaffinity(0, before)


def test_a_stale_cuda_visible_devices_is_replaced_by_the_gpu_ray_assigned(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    placed = placement.check_gpu([3])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert placed == {"ray_gpu": "3", "stale_visible_devices": "0", "cuda_visible_devices": "3"}
    with pytest.raises(HarnessError, match="2 GPUs"):
        placement.check_gpu([1, 2])


def test_tasks_are_rounds_of_one_group_and_a_task_per_kind_otherwise():
    specs = [make_spec(repeat=r, setting=s) for r in (0, 1) for s in ("default", "strict")]
    specs += [make_spec(repeat=0, workload="resnet18")]
    specs += [make_spec(kind=Kind.SEED, seed=k) for k in (1, 2)]
    tasks = cluster.tasks_of(specs)
    assert [[(s.workload, s.repeat, s.setting) for s in t] for t in tasks[:3]] == [
        [("simple_cnn", 0, "default"), ("simple_cnn", 0, "strict")],
        [("simple_cnn", 1, "default"), ("simple_cnn", 1, "strict")],
        [("resnet18", 0, "default")],
    ]
    assert [s.seed for s in tasks[3]] == [1, 2] and len(tasks) == 4
    task = cluster.Task(specs[:2], [None, None], "x", "cpu", "auto", 60.0, "/tmp", 5.0, 1)
    assert cluster.Task.from_json(task.to_json()) == task


class FakeRay:
    """What the parent's loop asks of Ray, on a GPU box: each submitted task's options,
    and its records streamed back (one generator per task, as Ray's streaming ones)."""

    def __init__(self, gpus: int):
        self.gpus, self.submitted, self.in_flight, self.most_in_flight = gpus, [], 0, 0

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 32.0, "GPU": float(self.gpus)}}]

    def remote(self, **opts):
        ray = self

        def wrap(fn):
            class Remote:
                def options(self, **options):
                    return SimpleNamespace(remote=lambda task: ray._start(fn, task, {**opts, **options}))

            return Remote()

        return wrap

    def _start(self, fn, task, options):
        self.submitted.append(options)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        ray = self

        def stream():
            for spec in task["specs"]:
                yield {**TrialRecord(spec=make_spec(**spec), status="ok").to_json()}
            ray.in_flight -= 1

        return iter(stream())

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]

    def get(self, value):
        return value

    def cancel(self, ref):
        pass


def test_on_cuda_each_round_asks_ray_for_one_gpu_and_rounds_fill_the_gpus(monkeypatch):
    fake = FakeRay(gpus=2)
    monkeypatch.setitem(sys.modules, "ray", fake)
    specs = [make_spec(repeat=r, setting=s, device="cuda", axes={}) for r in range(3) for s in ("default", "strict")]
    c = cluster.Cluster("local", "cuda")
    got = []

    def prepare(task_specs):
        return cluster.Task(task_specs, [None] * len(task_specs), None, "cuda", "auto", 60.0, "/tmp", None, 1)

    assert c.run(cluster.tasks_of(specs), prepare, got.append, lambda: False) is False
    # a GPU each, pinned to that GPU's share of the node's 32 cores
    assert fake.submitted == [{"max_retries": 0, "num_gpus": 1, "num_cpus": 16}] * 3
    assert fake.most_in_flight == 2  # two GPUs: two rounds at once, the third when one ends
    assert sorted(r.trial_id for r in got) == sorted(s.trial_id for s in specs)


def test_the_dry_run_counts_the_ray_tasks_without_starting_ray(capsys, monkeypatch):
    monkeypatch.setattr(cluster.importlib.util, "find_spec", lambda name: object())  # as if Ray were installed
    args = [*QUICK, "--workloads", "simple_cnn,resnet18", "--settings", "default,strict", "--threads", "1"]
    assert main(["run", *args, "--repeats", "2", "--ray", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    # 2 repeats x 2 workloads of rounds, and per workload its audit, profiled and seed trials
    assert dry["ray_tasks"] == 2 * 2 + 3 * 2
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_an_address_where_no_cluster_answers_is_one_line_before_any_trial(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setattr(cluster.importlib.util, "find_spec", lambda name: object())  # as if Ray were installed
    with socket.socket() as s:  # a port that takes no connection: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        results = tmp_path / "r.jsonl"
        code = main(["run", *QUICK, *TIMED_ONLY, "--ray", f"127.0.0.1:{port}", "--results", str(results)])
    assert code == 2 and not results.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--ray 127.0.0.1:{port}: no Ray cluster answers there" in err[0]


def test_a_gpu_round_is_given_its_gpu_and_pinned_to_its_share_of_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # what a reused worker may still carry
    before = os.sched_getaffinity(0)
    try:
        with placement.place("cuda", 1, {"ray_node": "n1", "ray_task": "t1", "gpu_ids": [2]}) as placed:
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "2" and len(os.sched_getaffinity(0)) == 1
            assert placed["ray_gpu"] == "2" and placed["stale_visible_devices"] == "0,1,2,3"
            assert placed["cores"] == sorted(os.sched_getaffinity(0)) and placed["ray_node"] == "n1"
    finally:
        os.sched_setaffinity(0, before)


def test_precision_adds_as_many_rounds_as_run_at_once(tmp_path, monkeypatch):
    """--precision on Ray: each step adds a round per slot of the cluster (here two), never
    past --max-repeats; synthetic trials, the serial runner told it holds two."""
    from detcost import executors, guard, sweep
    from detcost.payloads import BusyReport
    from tests.test_trust import SyntheticTrials, options

    trials = SyntheticTrials(noise=0.3)
    monkeypatch.setattr(executors, "_run_one", trials)
    monkeypatch.setattr(guard, "sample", lambda device, threads: BusyReport(0.0, 0.25))
    monkeypatch.setattr(executors.Serial, "rounds_at_once", lambda self: 2)
    steps = []
    monkeypatch.setattr(executors.Progress, "note_widest", lambda self, *widest: steps.append(len(trials.attempts)))
    out = sweep.run_sweep(options(tmp_path, precision=0.0001, max_repeats=7), progress=False)
    assert out.precision.rounds == 7 and not out.precision.reached
    # 2 rounds asked, then 2 more, 2 more and the last 1 (3 labels a round)
    assert steps == [6, 12, 18, 21]


def test_resuming_a_finished_sweep_on_ray_runs_nothing_and_starts_no_cluster(tmp_path, monkeypatch):
    """Every trial already ok: --resume --ray has no round to give Ray, so it neither
    starts a local cluster (seconds) nor joins a remote one."""
    path = tmp_path / "r.jsonl"
    argv = [*QUICK, *TIMED_ONLY, "--no-report", "--workloads", "simple_cnn", "--settings", "default"]
    argv += ["--repeats", "1", "--threads", "1", "--results", str(path)]
    assert main(["run", *argv]) == 0
    before = path.read_text()

    def connect(cls, address, device):
        raise AssertionError("a Ray cluster was started with no trial to run")

    monkeypatch.setattr(cluster.importlib.util, "find_spec", lambda name: object())  # as if Ray were installed
    monkeypatch.setattr(cluster.Cluster, "connect", classmethod(connect))
    assert main(["run", *argv, "--ray", "--resume"]) == 0
    assert path.read_text() == before
