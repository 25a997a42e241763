import pytest
import torch

from detcost.errors import UsageError
from detcost.settings import (
    CANONICAL,
    CUBLAS_WORKSPACE_CONFIG,
    SETTINGS,
    applied,
    apply_env,
    get_setting,
    parse_settings,
    read_flags,
    snippet,
)

# The settings table of DESIGN.md, column by column:
# cudnn.enabled, cudnn.benchmark, cudnn.deterministic, use_deterministic_algorithms, fill
TABLE = {
    "default": (True, False, False, False, True),
    "benchmark": (True, True, False, False, True),
    "deterministic": (True, False, True, False, True),
    "benchmark_deterministic": (True, True, True, False, True),
    "strict": (True, False, True, True, True),
    "no_cudnn": (False, False, False, False, True),
    "strict_nofill": (True, False, True, True, False),
}


def test_the_canonical_six_are_named_as_in_the_design():
    assert CANONICAL == ("default", "benchmark", "deterministic", "benchmark_deterministic", "strict", "no_cudnn")
    assert set(SETTINGS) == set(TABLE)


@pytest.mark.parametrize("name", list(TABLE))
def test_each_setting_sets_exactly_its_flags_and_restores_them(name):
    before = read_flags()
    with applied(get_setting(name)):
        flags = read_flags()
    enabled, benchmark, deterministic, algorithms, fill = TABLE[name]
    assert flags["cudnn_enabled"] is enabled
    assert flags["cudnn_benchmark"] is benchmark
    assert flags["cudnn_deterministic"] is deterministic
    assert flags["deterministic_algorithms"] is algorithms
    assert flags["fill_uninitialized_memory"] is fill
    assert read_flags() == before


def test_flags_are_restored_when_the_block_raises():
    before = read_flags()
    with pytest.raises(RuntimeError), applied(get_setting("strict")):
        raise RuntimeError("boom")
    assert read_flags() == before
    assert not torch.are_deterministic_algorithms_enabled()


def test_strict_settings_need_the_cublas_workspace_and_others_unset_it():
    environ = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    apply_env(get_setting("strict"), environ)
    assert environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
    apply_env(get_setting("default"), environ)
    assert "CUBLAS_WORKSPACE_CONFIG" not in environ
    assert get_setting("strict_nofill").expected_flags()["cublas_workspace_config"] == CUBLAS_WORKSPACE_CONFIG


def test_unknown_setting_names_the_valid_ones():
    with pytest.raises(UsageError, match="valid settings: default, benchmark"):
        parse_settings("default,nope")


def test_snippet_is_python_that_applies_the_setting(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = read_flags()
    with applied(get_setting("default")):  # restores whatever the snippet changes
        exec(compile(snippet(get_setting("strict_nofill"), seed=3), "<snippet>", "exec"), {})
        flags = read_flags()
    assert flags == get_setting("strict_nofill").expected_flags()
    after = read_flags()
    assert {k: after[k] for k in before if k != "cublas_workspace_config"} == {
        k: before[k] for k in before if k != "cublas_workspace_config"
    }


def test_nested_settings_restore_the_enclosing_setting_not_the_defaults():
    with applied(get_setting("strict")):
        with applied(get_setting("benchmark")):
            assert read_flags()["cudnn_benchmark"] and not read_flags()["deterministic_algorithms"]
        flags = read_flags()
    assert flags["deterministic_algorithms"] and flags["cudnn_deterministic"] and not flags["cudnn_benchmark"]
