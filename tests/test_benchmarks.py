"""The benchmark suites run: asv (CPU smoke profile) and the pytest-benchmark layers;
and detcost's selfcheck reports its four figures. Targets are checked by the suites
themselves, not here."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detcost.cli import main
from detcost.results import load_benchmark_json

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, env, cwd=ROOT, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(
    shutil.which("asv") is None and not (Path(sys.executable).parent / "asv").exists(),
    reason="asv is not installed (pip install -e '.[test]')",
)
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="asv needs the git checkout to name a commit")
def test_asv_smoke_run_has_no_failed_benchmark_and_publishes(tmp_path):
    asv = shutil.which("asv") or str(Path(sys.executable).parent / "asv")
    config = json.loads(
        "\n".join(
            line for line in (ROOT / "asv.conf.json").read_text().splitlines() if not line.strip().startswith("//")
        )
    )
    config.update(
        repo=str(ROOT),
        benchmark_dir=str(ROOT / "benchmarks"),
        env_dir=str(tmp_path / "env"),
        results_dir=str(tmp_path / "results"),
        html_dir=str(tmp_path / "html"),
    )
    conf = tmp_path / "asv.conf.json"
    conf.write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(tmp_path), "DETCOST_ASV_PROFILE": "smoke", "PYTHONPATH": str(ROOT)}
    _run([asv, "machine", "--yes", "--config", str(conf)], env)
    out = _run(
        [
            asv,
            "run",
            "--config",
            str(conf),
            "--python=same",
            "--quick",
            "--show-stderr",
            "--set-commit-hash",
            "HEAD",
            "--launch-method",
            "spawn",
        ],
        env,
    )
    assert "failed" not in out.lower(), out[-3000:]
    saved = [p for p in (tmp_path / "results").rglob("*.json") if p.name not in ("machine.json", "benchmarks.json")]
    assert len(saved) == 1
    data = json.loads(saved[0].read_text())
    results = {name: dict(zip(data["result_columns"], r))["result"] for name, r in data["results"].items()}
    expected = {
        "price.Price.track_samples_per_s",
        "price.Price.track_slowdown_vs_default",
        "price.Price.track_divergence",
        "steps.TrainStep.time_train_step",
        "measurement.Measurement.track_harness_overhead",
        "measurement.Measurement.track_sweep_efficiency",
        "measurement.Measurement.track_missed_checks",
    }
    assert expected <= set(results)
    assert all(value is not None and None not in value for value in results.values()), results
    _run([asv, "publish", "--config", str(conf)], env)
    assert (tmp_path / "html" / "index.html").is_file()


PROFILE_PROBE = """
import importlib, json, os
import torch
torch.cuda.is_available = lambda: {cuda}
seen = {{}}
for name in ("smoke", "cpu", "gpu", ""):
    os.environ["DETCOST_ASV_PROFILE"] = name
    import benchmarks.common as common
    common = importlib.reload(common)
    seen[name or "unset"] = [common.PROFILE_NAME, common.DEVICE]
print(json.dumps(seen))
"""


@pytest.mark.parametrize("cuda", [True, False])
def test_the_asv_profiles_named_for_the_cpu_run_on_it_on_a_gpu_box_too(cuda):
    """On a GPU box (torch's CUDA check faked in a fresh interpreter) the smoke profile stays
    the CPU's quick suite, not the CUDA acceptance suite at GPU sizes; `gpu`, and no profile
    named, take cuda:0; without CUDA everything runs on the CPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen = json.loads(_run([sys.executable, "-c", PROFILE_PROBE.format(cuda=cuda)], env, timeout=300).splitlines()[-1])
    gpu = "cuda:0" if cuda else "cpu"
    assert seen == {
        "smoke": ["smoke", "cpu"],
        "cpu": ["cpu", "cpu"],
        "gpu": ["gpu", gpu],
        "unset": ["gpu", gpu] if cuda else ["cpu", "cpu"],
    }


def test_layer_microbenchmarks_run_under_one_setting_and_load_as_a_table(tmp_path):
    out = tmp_path / "bench.json"
    _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_microbench.py"),
            "--benchmark-only",
            "--setting",
            "strict",
            "-k",
            "conv1x1 or bilinear",
            "--benchmark-max-time=0.05",
            f"--benchmark-json={out}",
        ],
        {**os.environ, "DETCOST_MICROBENCH_DEVICE": "cpu"},  # the CPU suite stays on the CPU on a GPU box
        timeout=300,
    )
    df = load_benchmark_json(out)
    assert sorted(df["workload"]) == ["bilinear_upsample_x2", "conv1x1_256"]
    assert (df["setting"] == "strict").all() and df["flags.deterministic_algorithms"].all()
    assert (df["samples_per_s"] > 0).all() and (df["kind"] == "microbench").all() and (df["device"] == "cpu").all()


def test_selfcheck_reports_overhead_agreement_repeatability_and_efficiency(capsys):
    code = main(["selfcheck", "--device", "cpu", "--quick", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    # a busy machine may fail a timing check; the exit code must agree with the lines printed
    assert code == (4 if any(c["ok"] is False for c in checks.values()) else 0)
    assert set(checks) == {
        "harness overhead",
        "agreement with torch.utils.benchmark",
        "repeatability (CV of samples/s)",
        "sweep efficiency (share of wall time in timed steps)",
    }
    assert 0 < checks["sweep efficiency (share of wall time in timed steps)"]["value"] < 1
    assert all(isinstance(c["value"], (int, float)) and c["target"] for c in checks.values()), checks  # null: NaN
