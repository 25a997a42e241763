"""scripts/first_gpu_run.sh, the one command for a first run on a GPU, run here on the CPU
at quick sizes (--device cpu --quick) with a small plan: every step runs (the selfcheck,
the default sweep's dry run, a small real sweep with its profiled trials, the dry run
again learning from that sweep) and everything lands in the one $OUT folder, with a
summary.txt to paste into a bug report. It installs nothing and runs detcost from the
checkout (PYTHONPATH)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "first_gpu_run.sh"
STEPS = ["python", "env", "selfcheck", "dryrun-default", "dryrun-small", "sweep", "dryrun-learned"]


def _run(out: Path, *args: str, python: str = sys.executable, timeout: float = 900) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(out), "PYTHON": python}
    environ.pop("PYTHONPATH", None)  # the script puts the checkout on it itself
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=timeout, cwd=out.parent
    )


def test_on_the_cpu_every_step_runs_and_one_folder_holds_its_outputs_and_the_summary(tmp_path):
    out = tmp_path / "first-run"
    small = ["--workloads", "simple_cnn,unet", "--settings", "default,strict", "--repeats", "1"]
    proc = _run(out, "--device", "cpu", "--quick", "--allow-busy", "--budget", "600", *small)
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
    assert "\n== detcost selfcheck --device cpu\n" in summary and "selfcheck on cpu" in summary
    assert (out / "selfcheck.txt").read_text() in summary
    assert "time per trial, measured here (and as --dry-run assumes it)" in summary
    assert f"results: {out}/results.jsonl" in summary
    assert summary.count("trials planned; rough estimate") == 3  # the default sweep twice, the small one
    small = next(line for line in summary.splitlines() if line.startswith("12 trials planned; rough estimate"))
    assert small in (out / "dryrun-small.txt").read_text()  # 2 x (2 settings + A/A) + 2 audits + 4 profiled
    assert f"learned from {out}/results.jsonl: " in summary
    assert "timed/scatter/" in (out / "dryrun-default.txt").read_text()  # the default sweep's trial ids ...
    assert "timed/scatter/" not in summary  # ... are left in their file
    assert "\ntorch: " in summary and "\n== python and packages\n" in summary


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
    helped = _run(out, "--help", timeout=60)
    assert helped.returncode == 0
    assert "detcost selfcheck --device cuda" in helped.stdout and "--estimate-from" in helped.stdout
    assert not out.exists()  # an option error and --help write nothing


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
