"""Shared fixtures: one small real sweep per test session, reused by many tests."""

from __future__ import annotations

import os
from pathlib import Path

# Ask NVML, not the CUDA driver, whether a GPU is there: the test process must stay able
# to fork trial processes (a CUDA call in a parent "poisons fork").
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import pytest  # noqa: E402

from detcost import results  # noqa: E402
from detcost.cli import main  # noqa: E402
from detcost.record import TrialSpec  # noqa: E402
from detcost.settings import SETTINGS, applied, get_setting  # noqa: E402

V1_SAMPLE = Path(__file__).parent / "data" / "v1-sample.jsonl"  # written by the released detcost
# --allow-busy: a test never waits on, or depends on, how quiet the machine is.
# --device cpu: the CPU suite stays on the CPU on a GPU box too (auto would pick cuda:0).
# --repeats 2: two rounds are enough for what a test checks (the default run's rounds are
# tested in test_default_run.py); a later --repeats wins.
QUICK = ["--quick", "--steps", "4", "--warmup", "1", "-q", "--allow-busy", "--device", "cpu", "--repeats", "2"]
# Only the timed trials: no seed yardstick, A/A control, audit or profiled trials.
TIMED_ONLY = ["--seeds", "0", "--no-aa", "--no-audit", "--no-explain"]


def make_spec(**overrides) -> TrialSpec:
    """A small CPU trial of simple_cnn under default; tests override what they vary."""
    base = {
        "run_id": "t",
        "kind": "timed",
        "workload": "simple_cnn",
        "setting": "default",
        "repeat": 0,
        "seed": 0,
        "device": "cpu",
        "axes": {"threads": 2},
        "steps": 3,
        "warmup": 1,
        "batch_size": 8,
        "image_size": 16,
    }
    return TrialSpec(**{**base, **overrides})


def run_cli(*args: str) -> int:
    """`detcost run` on quick sizes; no report unless the test names a --report folder."""
    report = [] if "--report" in args else ["--no-report"]
    return main(["run", *QUICK, *report, *args])


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """simple_cnn and resnet18 under the six settings, 2 repeats, A/A, audit, 2 seeds."""
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "r.jsonl"
    code = run_cli(
        "--workloads",
        "simple_cnn,resnet18",
        "--repeats",
        "2",
        "--seeds",
        "2",
        "--results",
        str(path),
        "--report",
        str(folder / "report"),
    )
    assert code == 0
    return path


@pytest.fixture(scope="session")
def small_sweep_df(small_sweep):
    return results.load(small_sweep)


@pytest.fixture(scope="session")
def failing_sweep(tmp_path_factory):
    """One trial of each fault next to one healthy workload, in a single sweep."""
    path = tmp_path_factory.mktemp("failing") / "f.jsonl"
    code = run_cli(
        "--workloads",
        "diag_raise,diag_exit,diag_nan,diag_hang,simple_cnn",
        "--settings",
        "default",
        "--repeats",
        "1",
        *TIMED_ONLY,
        "--timeout",
        "8",
        "--results",
        str(path),
    )
    assert code == 0
    return path


@pytest.fixture(scope="session")
def variance_sweep(tmp_path_factory):
    """Injected noise next to simple_cnn, at 1 and 2 threads, with a seed yardstick."""
    path = tmp_path_factory.mktemp("variance") / "v.jsonl"
    code = run_cli(
        "--workloads",
        "diag_noise,simple_cnn",
        "--settings",
        "default,strict",
        "--threads",
        "1,2",
        "--repeats",
        "3",
        "--seeds",
        "2",
        "--no-aa",
        "--no-explain",
        "--no-audit",
        "--results",
        str(path),
    )
    assert code == 0
    return path


# ---- micro-benchmarks: one setting per pytest process -------------------------------


def pytest_addoption(parser):
    parser.addoption(
        "--setting",
        default="default",
        choices=list(SETTINGS),
        help="detcost setting applied while micro-benchmarks run (one per process)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "microbench: layer micro-benchmarks, run with pytest --benchmark-only")
    config.addinivalue_line(
        "markers", "dynamo_in_process: runs torch.compile in the pytest process (tests.fake_cuda_available skips it)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="micro-benchmark: run with pytest --benchmark-only [--setting NAME]")
    for item in items:
        if "microbench" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def detcost_setting(request):
    """The --setting of this pytest process, applied as a trial process gets it: its
    environment first (CUBLAS_WORKSPACE_CONFIG, before any cuBLAS call), then its flags."""
    name = request.config.getoption("setting")
    setting = get_setting(name)
    mp = pytest.MonkeyPatch()
    for key, value in setting.env:
        if value is None:
            mp.delenv(key, raising=False)
        else:
            mp.setenv(key, value)
    with applied(setting):
        yield name
    mp.undo()


@pytest.fixture(scope="session")
def explain_sweep(tmp_path_factory):
    """simple_cnn under default, strict and strict_nofill, with its profiled trials."""
    path = tmp_path_factory.mktemp("explain") / "x.jsonl"
    code = run_cli(
        "--workloads",
        "simple_cnn",
        "--settings",
        "default,strict,strict_nofill",
        "--repeats",
        "2",
        "--seeds",
        "0",
        "--no-aa",
        "--no-audit",
        "--results",
        str(path),
    )
    assert code == 0
    return path


def analysis_of(path, max_slowdown: float = 0.10):
    """The one analysis of a results file (its only machine's)."""
    from detcost.derive.analysis import analyse

    return analyse(results.load_records(path), max_slowdown).only


def speed_of(path):
    """The price table of a results file, as the JSON and the figures read it."""
    m = analysis_of(path)
    import pandas as pd

    return m.price_frame() if m else pd.DataFrame()


def variance_of(path):
    """The variance table of a results file, as the JSON reads it."""
    m = analysis_of(path)
    import pandas as pd

    return m.spread_frame() if m else pd.DataFrame()
