"""The shape the code keeps: layers checked by import-linter, a trial process free of the
presentation stack, axes that plug in through one registry, and old results that still load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detcost import axes, results
from detcost.derive.compare import match_fields
from detcost.derive.frame import group_fields
from detcost.derive.prices import speed_table
from detcost.derive.variance import variance_table
from detcost.isolation import run_isolated
from detcost.plan import SweepOptions, plan
from detcost.record import TrialRecord, TrialSpec
from detcost.report.recommend import axis_snippet
from detcost.report.text import axis_values_text
from detcost.trial import run_trial
from tests.conftest import V1_SAMPLE, make_spec

ROOT = Path(__file__).resolve().parents[1]


LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(package_parent: Path | None = None) -> subprocess.CompletedProcess:
    """import-linter on the contracts in pyproject.toml, against the detcost first on
    PYTHONPATH: the installed one, or a copy under `package_parent` that a test breaks."""
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)
    cmd = [sys.executable, "-c", LINT, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")]
    return subprocess.run(cmd, env=env, cwd=package_parent or ROOT, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    done = lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("measure.py", "import pandas", "A trial process loads no tables, figures or report"),
        ("record.py", "from detcost import sweep", "Layers"),
        ("train.py", "from detcost.report import text", "Layers"),
        ("derive/frame.py", "from detcost import report", "Layers"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    """The contract is not decoration: a copy of detcost with one import that runs against
    the layers fails the check, naming the contract it broke."""
    shutil.copytree(ROOT / "detcost", tmp_path / "detcost", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "detcost" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    broken = [ln for ln in done.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), done.stdout


def test_a_trial_process_loads_no_tables_figures_or_report():
    """Inside a forkserver trial, the workload factory finds neither pandas nor matplotlib
    nor detcost's derived tables and report in `sys.modules` (the probe raises if it does)."""
    record = run_isolated(make_spec(workload="tests.probes:layer_probe"), method="forkserver")
    assert record.status == "ok", record.error


# ---- a toy axis: one registry entry, and every part of detcost knows it ---------------


def _scale_loss(workload, value: int, _spec) -> None:
    base = workload.loss_fn
    workload.loss_fn = lambda out, y: base(out, y) * value
    workload.loss_scale = value


TOY = axes.Axis(
    name="loss_scale",
    default=1,
    values=(1, 2),
    parse=int,
    help="multiply the loss (a toy axis of the architecture test)",
    id_part=lambda v: None if v == 1 else f"ls{v}",
    on_workload=_scale_loss,
    read_back=lambda wl: getattr(wl, "loss_scale", 1),
    snippet=lambda values, cpu: [f"# loss scaled by {values}"] if values != [1] else [],
)


@pytest.fixture
def toy_axis():
    axes.register(TOY)
    yield TOY
    axes.unregister(TOY.name)


def test_a_toy_axis_reaches_plan_trial_record_tables_compare_and_snippet(toy_axis, tmp_path):
    # the CLI's option and the sweep's plan
    from detcost.cli import build_parser

    args = build_parser().parse_args(["run", "--loss-scale", "1,2"])
    assert args.axis_loss_scale == [1, 2]
    opts = SweepOptions(
        workloads=["simple_cnn"],
        settings=["default"],
        repeats=1,
        seed=0,
        device="cpu",
        size_preset="quick",
        results=tmp_path / "r.jsonl",
        run_id="toy",
        axes={"threads": [2], "loss_scale": [1, 2]},
        seeds=0,
        aa=False,
        audit=False,
        explain=False,
        steps=2,
        warmup=0,
    )
    ids = [s.trial_id for s in plan(opts)]
    assert ids == ["timed/simple_cnn/default/r0/s0/t2", "timed/simple_cnn/default/r0/s0/t2/ls2"]

    # the trial applies it and reads it back; the record stores both and loads again
    records = [run_trial(s) for s in plan(opts)]
    stored = [r.to_json() for r in records]
    assert [r["status"] for r in stored] == ["ok", "ok"]
    assert [(r["loss_scale"], r["loss_scale_read_back"]) for r in stored] == [(1, 1), (2, 2)]
    assert stored[1]["params_sha256"] != stored[0]["params_sha256"]  # applied: a doubled loss trains apart
    assert TrialRecord.from_json(stored[1]).to_json() == stored[1]

    # tables, resume/compare matching and the report's words and snippet
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in stored))
    df = results.load(path)
    assert "loss_scale" in group_fields() and "loss_scale" in match_fields()
    assert sorted(speed_table(df)["loss_scale"]) == [1, 2]
    assert axis_values_text({"threads": 2, "loss_scale": 2}).endswith("loss_scale 2")
    assert "# loss scaled by [1, 2]" in axis_snippet(df, cpu=True)


# ---- results written by the released detcost still load -----------------------------


def test_the_v1_sample_loads_into_the_same_tables():
    df = results.load(V1_SAMPLE)
    assert set(df["kind"]) == {"timed", "aa", "seed", "audit", "profiled"}
    assert (df["status"] == "ok").all()
    speed = speed_table(df)
    assert set(speed["setting"]) >= {"default", "strict"}
    var = variance_table(df)
    same_seed = var[var["setting"].isin(["default", "strict"])].set_index("setting")
    assert same_seed["bitwise_identical"].to_dict() == {"default": True, "strict": True}


def test_the_v1_sample_records_round_trip_and_keep_their_trial_ids():
    for line in V1_SAMPLE.read_text().splitlines():
        stored = json.loads(line)
        record = TrialRecord.from_json(stored)
        assert record.spec.trial_id == stored["trial_id"]
        identity = TrialSpec.from_json(stored).identity()
        assert {k: v for k, v in identity.items() if k in stored} == {k: stored[k] for k in identity if k in stored}
        newer = set(identity) - set(stored)  # axes added since: their defaults, which the ids leave out
        assert newer <= set(axes.names()) and all(identity[a] == axes.REGISTRY[a].default for a in newer)
        again = record.to_json()
        assert {k: v for k, v in again.items() if k in stored} == stored
