"""scripts/first_gpu_run.sh, the one command for a first run on a GPU, run here on the CPU
at quick sizes (--device cpu --quick) with a small plan: every step runs (the selfcheck,
the default sweep's dry run, a small real sweep with its profiled trials, the dry run
again learning from that sweep) and everything lands in the one $OUT folder, with a
summary.txt to paste into a bug report, written as the steps end. It installs nothing,
checks that the Python has what pyproject.toml declares for it (naming what is missing in
one line, with the command that installs it), and runs detcost from the checkout
(PYTHONPATH). Stand-ins for Python (a PYTHONPATH folder that hides or fakes a module, a
shell script that fakes detcost) show the cases a CPU box cannot: Python 3.10 without
tomli, a selfcheck stopped at its share of the budget."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "first_gpu_run.sh"
STEPS = ["python", "env", "selfcheck", "dryrun-default", "dryrun-small", "sweep", "dryrun-learned"]
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _run(
    out: Path, *args: str, python: str = sys.executable, timeout: float = 900, pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(out), "PYTHON": python}
    environ.pop("PYTHONPATH", None)  # the script puts the checkout on it itself, before this
    if pythonpath:
        environ["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=timeout, cwd=out.parent
    )


def _wanted(name: str) -> str:
    """The requirement pyproject.toml declares for `name`, less its marker ('scipy>=1.10')."""
    return next(r.split(";")[0].strip() for r in DECLARED if re.match(rf"{name}\b", r))


def _hiding(folder: Path, *names: str) -> Path:
    """A PYTHONPATH folder in which `import NAME` fails as it does where NAME is not installed."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.py").write_text(f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n')
    return folder


def test_on_the_cpu_every_step_runs_and_one_folder_holds_its_outputs_and_the_summary(tmp_path):
    out = tmp_path / "first-run"
    small = ["--workloads", "simple_cnn,unet", "--settings", "default,strict", "--repeats", "1"]
    # the selfcheck's share (the budget less the sweep's half and the dry runs' half minute)
    # leaves it several times the two minutes it takes on a quiet 2-core CPU
    proc = _run(out, "--device", "cpu", "--quick", "--allow-busy", "--budget", "800", *small, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"writing everything to {out}" in proc.stderr
    assert f"paste {out}/summary.txt into a bug report" in proc.stderr
    for name in STEPS:
        assert (out / f"{name}.txt").is_file() and (out / f"{name}.err").is_file(), name
    assert (out / "results.jsonl").is_file() and (out / "report" / "index.html").is_file()
    assert not (out / "default-sweep.jsonl").exists()  # the dry runs' results path: never written
    steps = [line for line in (out / "steps.txt").read_text().splitlines() if not line.startswith("nvidia-smi")]
    assert [line.split()[0] for line in steps] == STEPS
    codes = {line.split()[0]: int(line.split()[2]) for line in steps}
    assert codes["selfcheck"] in (0, 4) and codes["sweep"] in (0, 3)  # a failed check or the budget: findings
    assert all(codes[name] == 0 for name in ("python", "env", "dryrun-default", "dryrun-small", "dryrun-learned"))
    sweep = next(line for line in steps if line.startswith("sweep"))
    assert "--max-time" in sweep and "--repeats 1" in sweep and "--workloads simple_cnn,unet" in sweep
    assert "--quick --steps 4 --warmup 1" in sweep and f"--results {out}/results.jsonl" in sweep

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"timed", "aa", "audit", "profiled"}  # no seed yardstick
    assert {r["workload"] for r in records} == {"simple_cnn", "unet"}
    assert {r["setting"] for r in records if r["kind"] == "timed"} == {"default", "strict"}
    assert all(r.get("process_wall_s") for r in records)

    summary = (out / "summary.txt").read_text()
    assert summary.startswith("detcost first GPU run: paste this file into a bug report")
    assert "\n== steps: exit code, seconds, command\n" in summary
    assert "\n== detcost selfcheck --device cpu (its share: " in summary and "selfcheck on cpu" in summary
    assert (out / "selfcheck.txt").read_text() in summary
    assert "time per trial, measured here (and as --dry-run assumes it)" in summary
    assert f"results: {out}/results.jsonl" in summary
    assert summary.count("trials planned; rough estimate") == 3  # the default sweep twice, the small one
    small = next(line for line in summary.splitlines() if line.startswith("12 trials planned; rough estimate"))
    assert small in (out / "dryrun-small.txt").read_text()  # 2 x (2 settings + A/A) + 2 audits + 4 profiled
    assert f"learned from {out}/results.jsonl: " in summary
    assert "timed/dilated/" in (out / "dryrun-default.txt").read_text()  # the default sweep's trial ids ...
    assert "timed/dilated/" not in summary  # ... are left in their file
    assert "\ntorch: " in summary and "\n== python and packages\n" in summary
    # the sections in the order the steps ran, the steps and the wall time at the end
    order = ["== python and packages", "== detcost env", "== detcost selfcheck", "== the default sweep's --dry-run",
             "== the small sweep's --dry-run", "== the small sweep (", "== the default sweep's --dry-run, learnt",
             "== steps: exit code"]  # fmt: skip
    assert [summary.index(title) for title in order] == sorted(summary.index(title) for title in order)
    assert summary.splitlines()[-1].startswith("wall ")


def test_a_python_without_torch_or_detcost_dependencies_stops_before_detcost_runs(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'python 3.11, torch 2.1.0 (CUDA 12.1)'\nexit 3\n")
    fake.chmod(0o755)
    out = tmp_path / "first-run"
    proc = _run(out, "--device", "cpu", "--quick", python=str(fake), timeout=120)
    assert proc.returncode == 1
    steps = (out / "steps.txt").read_text()
    assert steps.startswith("python         rc 3") and "selfcheck" not in steps
    summary = (out / "summary.txt").read_text()
    assert "torch 2.1.0" in summary and "== python and packages" in summary
    assert not (out / "selfcheck.txt").exists()


def test_its_options_are_checked_and_explained(tmp_path):
    out = tmp_path / "first-run"
    assert _run(out, "--bogus", timeout=60).returncode == 2
    assert _run(out, "--budget", "soon", timeout=60).returncode == 2
    assert _run(out, "--selfcheck-s", "0", timeout=60).returncode == 2  # timeout 0 would be no limit at all
    helped = _run(out, "--help", timeout=60)
    assert helped.returncode == 0
    assert "detcost selfcheck --device cuda" in helped.stdout and "--estimate-from" in helped.stdout
    assert not out.exists()  # an option error and --help write nothing


# ---- (a) what the Python needs is what pyproject.toml declares for it -----------------------------


def _python310() -> str | None:
    """A Python 3.10 on this machine (on PATH, or pyenv's), where there is one."""
    candidates = ["python3.10", *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None:
            continue
        probe = [path, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"]
        try:
            if subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
                return path
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _faking(folder: Path, *names: str) -> Path:
    """A PYTHONPATH folder in which every name imports as a stand-in module (torch 2.13)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        fake = (
            "__version__ = '2.13.0'\n\nclass version:\n    cuda = None\n" if name == "torch" else "__version__ = '99'\n"
        )
        (folder / f"{name}.py").write_text(fake)
    return folder


@pytest.mark.parametrize("packaging", ["pip's packaging", "no packaging"])
def test_on_python_3_10_tomli_is_needed_and_named_where_it_is_missing(tmp_path, packaging):
    """Python 3.10 has no tomllib: detcost.config imports tomli there, in every trial. The
    check reads the requirement and its marker from pyproject.toml, so it asks for tomli on
    3.10 (with or without a packaging library to read the marker) and is satisfied by it."""
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 on this machine")
    names = [re.match(r"[A-Za-z0-9_.-]+", r)[0].lower().replace("-", "_") for r in DECLARED]
    shim = _faking(tmp_path / "shim", *(n for n in names if n != "tomli"))
    if packaging == "no packaging":
        _hiding(shim, "packaging", "pip")
    out = tmp_path / "first-run"
    proc = _run(out, "--device", "cpu", "--budget", "0", python=python, pythonpath=shim, timeout=300)
    assert proc.returncode == 1
    assert (out / "steps.txt").read_text().startswith("python         rc 3")
    summary = (out / "summary.txt").read_text()
    missing = [line for line in summary.splitlines() if line.startswith("missing: ")]
    assert len(missing) == 1 and missing[0].startswith(f"missing: {_wanted('tomli')} (not installed); install them")

    if packaging == "pip's packaging":  # pip vendors a tomli: a stand-in for the installed one
        (shim / "tomli.py").write_text("from pip._vendor.tomli import *  # noqa: F403\n__version__ = '2.0.1'\n")
        out = tmp_path / "with-tomli"
        _run(out, "--device", "cpu", "--budget", "0", python=python, pythonpath=shim, timeout=300)
        assert (out / "steps.txt").read_text().startswith("python         rc 0")
        assert "tomli 2.0.1" in (out / "python.txt").read_text()


# ---- (b) what is missing: one line, with the command that installs it, online and offline ---------


def test_a_missing_dependency_is_named_in_one_line_with_the_commands_that_install_it(tmp_path):
    shim = _hiding(tmp_path / "shim", "tqdm", "psutil")  # two that no other dependency imports
    out = tmp_path / "first-run"
    proc = _run(out, "--device", "cpu", "--quick", pythonpath=shim, timeout=300)
    assert proc.returncode == 1
    steps = (out / "steps.txt").read_text()
    assert steps.startswith("python         rc 3") and "selfcheck" not in steps
    lines = (out / "summary.txt").read_text().splitlines()
    tqdm, psutil = _wanted("tqdm"), _wanted("psutil")
    missing = [line for line in lines if line.startswith("missing: ")]
    assert len(missing) == 1  # in pyproject.toml's order, with the range it declares
    assert missing[0].startswith(f"missing: {tqdm} (not installed); {psutil} (not installed); install them with: ")
    assert missing[0].endswith(f" -m pip install '{tqdm}' '{psutil}'")
    offline = next(line for line in lines if line.startswith("no network here? "))
    assert f"python -m pip download -d detcost-wheels '{tqdm}' '{psutil}'; copy detcost-wheels here" in offline
    assert offline.endswith(f" -m pip install --no-index --find-links detcost-wheels '{tqdm}' '{psutil}'")
    assert not any(line.startswith("detcost's dependencies") and "torch" not in line for line in lines)


# ---- (c) the selfcheck's lines as they are decided, and the sweep's share of the budget ------------


def test_a_selfcheck_prints_each_check_as_it_is_decided_so_a_stopped_one_keeps_its_lines():
    """Stopped after its first check (as `timeout` stops it: its whole process group), the
    selfcheck has already written that check's line into a pipe: nothing waits for the end."""
    command = [sys.executable, "-m", "detcost", "selfcheck", "--device", "cpu", "--quick"]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        head, first = proc.stdout.readline(), proc.stdout.readline()
        with contextlib.suppress(ProcessLookupError):  # else it had ended: every line came at once
            os.killpg(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "selfcheck on cpu" in head
    assert re.match(r"  (pass|FAIL|note)  harness overhead: ", first), first
    assert "checks passed" not in rest and "checks failed" not in rest, rest  # stopped before its end


STAND_IN = """#!/bin/bash
# A Python that runs nothing: its selfcheck prints one check, looks for that line in
# summary.txt (it runs in $OUT) and hangs; everything else prints what it was asked.
case "$*" in
    "-m detcost selfcheck"*)
        echo "detcost selfcheck on cpu (a stand-in):"
        echo "  pass  harness overhead: 1.00 (target: <= 1.05); a stand-in"
        sleep 1
        grep -q "harness overhead: 1.00" summary.txt && echo "  note  summary.txt held the line above already"
        exec sleep 600 ;;
    *) echo "stand-in: $*" ;;
esac
"""


def test_a_selfcheck_stopped_at_its_share_leaves_its_lines_in_the_summary_and_the_sweep_its_half(tmp_path):
    """The selfcheck's lines reach summary.txt as they come; stopped at its share (here the
    half-minute floor), it leaves them there and the sweep keeps half the budget."""
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    out = tmp_path / "first-run"
    budget = 100
    proc = _run(out, "--device", "cpu", "--quick", "--budget", str(budget), python=str(python), timeout=300)
    steps = (out / "steps.txt").read_text()
    sweep = next(line for line in steps.splitlines() if line.startswith("sweep"))
    assert int(re.search(r"--max-time (\d+)", sweep)[1]) >= budget // 2, steps
    summary = (out / "summary.txt").read_text()
    assert "  pass  harness overhead: 1.00 (target: <= 1.05); a stand-in\n" in summary
    assert "  note  summary.txt held the line above already\n" in summary  # streamed, not copied at the end
    assert "-- stopped at its limit of 30 s (rc 124)" in summary
    selfcheck = next(line for line in steps.splitlines() if line.startswith("selfcheck"))
    assert selfcheck.split()[2] == "124" and "(its share: 30 s)" in selfcheck, steps
    assert proc.returncode == 1  # a step that did not run to its end


# ---- (e) bash before 4.4 and empty arrays -----------------------------------------------------------


def test_no_array_the_script_expands_can_be_empty():
    """bash before 4.4 (Ubuntu 16.04's, CentOS 7's) takes "${a[@]}" of an empty array for
    an unbound variable under `set -u` and stops the script. Every array the script expands
    is either assigned only non-empty or expanded as ${a[@]+"${a[@]}"}."""
    code = "\n".join(line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#"))
    code = re.sub(r"<<'PY'.*?\nPY\n", "\n", code, flags=re.S)  # less the Python of the check
    unguarded = re.sub(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', "", code)
    expanded = set(re.findall(r"\$\{!?(\w+)\[[@*]\]", unguarded))
    assert expanded, "no array found: the test no longer reads the script"
    for name in sorted(expanded):
        assigned = re.findall(rf"(?<![\w$]){name}\+?=\(([^)]*)\)", code)
        assert assigned, f"{name} is expanded as an array but never assigned one"
        assert all(value.strip() for value in assigned), f"{name} may be empty: {name}=()"
        assert not re.search(rf"\b(unset|declare -a|local -a|read -a|mapfile|readarray)\b[^\n]*\b{name}\b", code)
