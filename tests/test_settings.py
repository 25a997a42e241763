import os

import pytest
import torch

from detcost.cli import main
from detcost.errors import UsageError
from detcost.settings import (
    CANONICAL,
    CUBLAS_WORKSPACE_CONFIG,
    DEFAULT_SETTINGS,
    FRAMEWORKS,
    SETTINGS,
    applied,
    apply_env,
    get_setting,
    parse_settings,
    read_flags,
)
from detcost.snippets import nearest_switches, snippet, snippets

CUDA_VARS = ("CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING")


@pytest.fixture
def clean_env():
    """CUDA's variables unset for the test and put back as they were after it (a snippet
    run with exec sets them in os.environ, where monkeypatch.delenv would not undo it)."""
    saved = {k: os.environ.pop(k) for k in CUDA_VARS if k in os.environ}
    yield
    for k in CUDA_VARS:
        os.environ.pop(k, None)
    os.environ.update(saved)


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

# The frameworks' switches as their sources set them (docs/settings.md, "The frameworks'
# switches"), a line each:
# cudnn.benchmark, cudnn.deterministic, use_deterministic_algorithms, warn_only,
# CUBLAS_WORKSPACE_CONFIG, CUDA_LAUNCH_BLOCKING (cudnn.enabled and the fill: torch's defaults)
SWITCHES = {
    "lightning": (False, False, True, False, ":4096:8", None),
    "lightning_warn": (False, False, True, True, ":4096:8", None),
    "hf_full": (False, True, True, False, ":16:8", "1"),
    "hf_set_seed": (False, False, True, False, None, None),
    "composer": (False, True, True, False, ":4096:8", None),
    "fastai": (False, True, False, False, None, None),
    "monai": (False, True, False, False, None, None),
}


def test_the_canonical_six_are_named_as_in_the_design():
    assert CANONICAL == ("default", "benchmark", "deterministic", "benchmark_deterministic", "strict", "no_cudnn")
    assert set(DEFAULT_SETTINGS) == set(TABLE)  # the sweep's default stays the seven
    assert set(SETTINGS) == set(TABLE) | set(SWITCHES) and set(FRAMEWORKS) == set(SWITCHES)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_framework_switch_sets_what_its_source_sets_read_back(name, clean_env):
    benchmark, deterministic, algorithms, warn_only, cublas, blocking = SWITCHES[name]
    setting = get_setting(name)
    before = read_flags()
    apply_env(setting)  # as the sweep does in the trial process
    with applied(setting):
        flags = read_flags()
    assert flags == {
        "cudnn_enabled": True, "cudnn_benchmark": benchmark, "cudnn_deterministic": deterministic,
        "deterministic_algorithms": algorithms, "warn_only": warn_only, "fill_uninitialized_memory": True,
        "cublas_workspace_config": cublas, "cuda_launch_blocking": blocking,
    }  # fmt: skip
    assert flags == setting.expected_flags() and setting.source and setting.framework
    assert {k: v for k, v in read_flags().items() if k not in ("cublas_workspace_config", "cuda_launch_blocking")} == {
        k: v for k, v in before.items() if k not in ("cublas_workspace_config", "cuda_launch_blocking")
    }


def test_on_the_cpu_only_the_switches_without_deterministic_algorithms_pool_with_default():
    """cuDNN flags and CUDA's variables (CUDA_LAUNCH_BLOCKING too) change no CPU kernel."""
    assert {n for n, s in FRAMEWORKS.items() if s.cudnn_only} == {"fastai", "monai"}
    from detcost.derive.keys import cudnn_only

    assert cudnn_only("fastai") and cudnn_only("monai") and not cudnn_only("hf_full") and not cudnn_only("lightning")


def test_group_names_expand_and_the_default_sweep_stays_the_seven():
    assert [s.name for s in parse_settings("frameworks")] == list(SWITCHES)
    assert [s.name for s in parse_settings("all")] == [*TABLE, *SWITCHES]
    assert [s.name for s in parse_settings("default,strict,lightning,hf_full")] == [
        "default", "strict", "lightning", "hf_full"
    ]  # fmt: skip
    assert [s.name for s in parse_settings("strict,frameworks,strict")][:2] == ["strict", "lightning"]


def test_a_bad_group_name_is_one_line_and_exit_2(capsys):
    assert main(["run", "--settings", "default,framework", "--dry-run", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'framework'" in err and "groups: frameworks, all" in err


def test_old_records_without_the_new_flags_still_load():
    from pathlib import Path

    from detcost import results

    sample = Path(__file__).parent / "data" / "v1-sample.jsonl"
    records = results.load_records(sample)
    assert records and all("warn_only" not in (r.flags or {}) for r in records)


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


@pytest.mark.parametrize("name", ["strict_nofill", "hf_full", "lightning_warn", "monai"])
def test_the_plain_pytorch_form_really_produces_the_settings_flags(name, clean_env):
    """Run with exec on the CPU: the snippet's lines, read back, are the setting's flags."""
    setting = get_setting(name)
    forms = snippets(setting, seed=3)
    with applied(get_setting("default")):  # restores whatever the snippet changes
        exec(compile(forms["pytorch"], "<snippet>", "exec"), {})
        flags = read_flags()
    assert flags == setting.expected_flags()
    assert forms["apply"].splitlines()[-1].startswith(f'detcost.apply("{name}", seed=3)')


def test_the_framework_form_names_the_nearest_switch_and_what_to_add():
    forms = snippets(get_setting("strict_nofill"))
    near = {s.name: add for s, add in nearest_switches(get_setting("strict_nofill"))}
    assert near["lightning"] == [
        "torch.backends.cudnn.deterministic = True",
        "# Safe only if the program never reads memory it did not write first",
        "# (torch.empty without a later fill); otherwise leave it True.",
        "torch.utils.deterministic.fill_uninitialized_memory = False",
    ]
    assert "lightning.Trainer(deterministic=True)" in forms["framework"]
    # strict is Composer's switch exactly; from Hugging Face's, only CUDA_LAUNCH_BLOCKING is to undo
    strict = {s.name: add for s, add in nearest_switches(get_setting("strict"))}
    assert strict["composer"] == [] and len(strict["hf_full"]) == 1 and "CUDA_LAUNCH_BLOCKING" in strict["hf_full"][0]
    assert (
        nearest_switches(get_setting("default")) == []
        and "No framework switch" in snippets(get_setting("default"))["framework"]
    )
    tf = forms["tensorflow"]
    assert "not measured by detcost" in tf and "tf.keras.utils.set_random_seed(0)" in tf
    assert "tf.config.experimental.enable_op_determinism()" in tf


def test_the_framework_form_with_its_additions_gives_the_settings_flags(clean_env):
    """Apply each nearest switch's flags, then its added lines: the result is the setting."""
    for name in ("strict", "strict_nofill", "deterministic", "lightning_warn"):
        target = get_setting(name)
        for switch, add in nearest_switches(target):
            apply_env(switch)
            with applied(get_setting("default")), applied(switch):
                exec(compile("import os\nimport torch\n" + "\n".join(add), "<add>", "exec"), {})
                flags = read_flags()
            want = target.expected_flags()
            # either documented cuBLAS workspace is deterministic: a switch's own value may stay
            assert (flags["cublas_workspace_config"] is None) == (want["cublas_workspace_config"] is None)
            flags["cublas_workspace_config"] = want["cublas_workspace_config"]
            assert flags == want, (name, switch.name)


def test_snippet_is_python_that_applies_the_setting(clean_env):
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
