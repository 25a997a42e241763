"""`detcost.apply()`: a setting in training code as detcost measured it, the team's
default when no setting is named, a clear line when CUDA started too early, and an
example script whose runs repeat bitwise only because of the call."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import detcost
from detcost import applying, config, seeding
from detcost.errors import UsageError
from detcost.settings import SETTINGS, applied, get_setting, read_flags
from detcost.trial import run_trial
from tests.conftest import make_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_with_team_default.py"
OTHER = "detcost-test-value"  # an environment value no setting needs


def opposite(setting):
    """A setting whose every torch flag and fill differ from `setting`'s."""
    return dataclasses.replace(
        setting,
        name="opposite",
        cudnn_enabled=not setting.cudnn_enabled,
        cudnn_benchmark=not setting.cudnn_benchmark,
        cudnn_deterministic=not setting.cudnn_deterministic,
        deterministic_algorithms=not setting.deterministic_algorithms,
        fill_uninitialized_memory=not setting.fill_uninitialized_memory,
    )


def expected_part(flags: dict, setting) -> dict:
    expected = setting.expected_flags()
    return {key: flags[key] for key in expected}


@pytest.fixture(autouse=True)
def cuda_not_started(monkeypatch):
    """On a GPU machine an earlier test of this process may have started CUDA, after which
    apply() refuses a setting whose variables differ: every test here starts from a process
    whose CUDA has not started, unless it fakes that it has."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)


@pytest.fixture
def no_team_config(tmp_path, monkeypatch):
    """A working directory with no detcost.toml or pyproject.toml above it that names one."""
    monkeypatch.chdir(tmp_path)
    if config.find() is not None:
        pytest.skip("a team config above the temporary folder")
    return tmp_path


@pytest.mark.parametrize("name", list(SETTINGS))
def test_apply_sets_and_reads_back_every_flag_and_the_block_restores_them(name, monkeypatch):
    setting = get_setting(name)
    # Before: every flag the other way, and each variable the setting needs otherwise
    # (set where it needs it unset, unset where it needs a value).
    for key, value in setting.env:
        if value is None:
            monkeypatch.setenv(key, OTHER)
        else:
            monkeypatch.delenv(key, raising=False)
    with applied(opposite(setting)):
        before = read_flags()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        with detcost.apply(name, seed=1) as done:
            assert done.setting == name and done.seed == 1
            assert expected_part(done.flags, setting) == setting.expected_flags()
            assert done.flags == read_flags()  # read back from torch, as a trial records
            assert bool(torch.utils.deterministic.fill_uninitialized_memory) is setting.fill_uninitialized_memory
            for key, value in setting.env:
                assert os.environ.get(key) == value
        assert read_flags() == before
        assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
        for key, value in setting.env:
            assert os.environ.get(key) == (OTHER if value is None else None)


def test_a_variable_set_before_is_restored_to_its_own_value(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with detcost.apply("strict"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_plain_call_stays_in_force_after_its_result_is_dropped(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with applied(get_setting("default")):  # restores the flags for the tests after this one
        done = detcost.apply("strict")
        del done
        gc.collect()
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_apply_seeds_random_numpy_torch_and_hands_the_loader_its_pieces(no_team_config):
    with detcost.apply("default", seed=11) as done:
        drawn = (np.random.rand(), torch.rand(3))
        loader = done.loader_kwargs()
    torch.manual_seed(11)
    np.random.seed(11)
    assert drawn[0] == np.random.rand() and torch.equal(drawn[1], torch.rand(3))
    assert loader == {"generator": done.generator, "worker_init_fn": done.worker_init_fn}
    assert done.generator.initial_seed() == 11
    assert done.worker_init_fn is seeding.worker_init_fn


def test_without_arguments_apply_takes_the_team_configs_setting_and_seed(tmp_path, monkeypatch):
    (tmp_path / "detcost.toml").write_text('setting = "strict_nofill"\nseed = 7\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found from the working directory upward
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with detcost.apply() as done:
        assert (done.setting, done.seed) == ("strict_nofill", 7)
        assert expected_part(done.flags, get_setting("strict_nofill")) == get_setting("strict_nofill").expected_flags()
    with detcost.apply("default") as named:  # a named setting still takes the team's seed
        assert (named.setting, named.seed) == ("default", 7)


def test_without_a_team_config_apply_is_default_with_seed_0(no_team_config):
    with detcost.apply() as done:
        assert (done.setting, done.seed) == ("default", 0)


def test_a_variable_cuda_needed_before_it_started_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = read_flags()
    with pytest.raises(UsageError) as caught:
        detcost.apply("strict")
    message = str(caught.value)
    assert "\n" not in message
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in message
    assert "before anything touches CUDA" in message
    assert read_flags() == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # nothing applied
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # set in time, as the line says
    with detcost.apply("strict") as done:
        assert done.flags["deterministic_algorithms"] is True


def test_a_setting_that_needs_the_variable_unset_says_so_once_cuda_started(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    with pytest.raises(UsageError, match="needs CUBLAS_WORKSPACE_CONFIG unset"):
        detcost.apply("default")


def test_a_variable_the_driver_read_before_apply_is_reported_unconfirmed(monkeypatch):
    """A script that called torch.cuda.is_available() (no NVML check) has loaded the CUDA
    driver without starting torch's CUDA: CUDA_LAUNCH_BLOCKING set after that is in
    os.environ, and `flags` reads it back, but the driver read it already. apply() lists
    it as unconfirmed and warns; before the driver loads, nothing is unconfirmed."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build of torch
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    monkeypatch.setattr(applying, "cuda_driver_loaded", lambda: False)
    with detcost.apply("hf_full") as done:
        assert done.unconfirmed == () and done.flags["cuda_launch_blocking"] == "1"
    monkeypatch.setattr(applying, "cuda_driver_loaded", lambda: True)
    with pytest.warns(UserWarning, match="set CUDA_LAUNCH_BLOCKING, but the CUDA driver was already loaded"):
        done = detcost.apply("hf_full")
    try:
        assert done.unconfirmed == ("CUDA_LAUNCH_BLOCKING",) and done.flags["cuda_launch_blocking"] == "1"
    finally:
        done.restore()
    with detcost.apply("default") as done:  # sets no variable the driver reads
        assert done.unconfirmed == ()


def test_the_driver_is_seen_loaded_from_the_process_memory_map(tmp_path):
    from detcost import env

    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert env.cuda_driver_loaded(str(maps)) is False
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06\n")
    assert env.cuda_driver_loaded(str(maps)) is True
    assert env.cuda_driver_loaded(str(tmp_path / "none")) is None


def test_a_trial_records_the_flags_apply_reads_back(monkeypatch):
    """One way to put a setting in force: a trial (its environment set as a trial's parent
    sets it) reads back what `apply()` reads back."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    record = run_trial(make_spec(setting="strict_nofill", steps=1, warmup=0))
    assert record.ok, record.error
    with detcost.apply("strict_nofill") as done:
        assert record.flags == done.flags


def test_import_detcost_stays_light_and_apply_stays_the_function():
    code = (
        "import sys, detcost; assert 'torch' not in sys.modules, 'torch loaded';"
        "import detcost.applying, detcost.train; assert callable(detcost.apply) and detcost.apply.__module__ == "
        "'detcost.applying'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run_twice(script: Path, cwd: Path) -> list[str]:
    """The script's last line from two runs, started together."""
    runs = [
        subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=_env(), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    lines = []
    for run in runs:
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0
        lines.append(out.strip().splitlines()[-1])
    return lines


def test_the_example_repeats_bitwise_with_apply_and_differs_without(tmp_path):
    (tmp_path / "detcost.toml").write_text('setting = "strict"\nseed = 5\n')
    first, second = _run_twice(EXAMPLE, tmp_path)
    assert first.startswith("strict seed 5: ")
    assert first == second
    # The same script with the call taken out: the loader gets a generator nobody seeded.
    call = "applied = detcost.apply()"
    text = EXAMPLE.read_text()
    assert call in text
    pieces = '"loader_kwargs": lambda: {"generator": torch.Generator()}'
    stub = f'applied = type("Unseeded", (), {{"setting": "none", "seed": None, {pieces}}})'
    unseeded = tmp_path / "train_without_apply.py"
    unseeded.write_text(text.replace(call, stub))
    one, other = _run_twice(unseeded, tmp_path)
    assert one.startswith("none seed None: ")
    assert one != other  # the weights start from torch's unseeded global generator
