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
from detcost.derive.keys import group_fields
from detcost.derive.recommend import axis_snippet
from detcost.estimate import estimate
from detcost.isolation import run_isolated
from detcost.plan import SweepOptions, plan
from detcost.record import TrialRecord, TrialSpec
from detcost.report.text import axis_values_text
from detcost.trial import run_trial
from tests.conftest import V1_SAMPLE, make_spec, speed_of, variance_of

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
        ("derive/keys.py", "from detcost import report", "Layers"),
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


# ---- a toy axis: one class in this file, and every part of detcost knows it ----------


class ScaledLoss(axes.StepWrapper):
    """The training step with its loss multiplied by `scale`, counting the forward passes."""

    def __init__(self, inner, scale: int):
        super().__init__(inner)
        self.scale, self.calls = scale, 0

    def forward(self, wl, x, y):
        self.calls += 1
        return self.inner.forward(wl, x, y) * self.scale


class LossScale(axes.Axis):
    """A toy axis of the architecture test: it wraps the training step, and nothing else."""

    def wrap_step(self, value, step, spec):
        return ScaledLoss(step, value) if value != 1 else step

    def read_back(self, workload):
        scaled = axes.wrapper_of(workload.step, ScaledLoss)
        return {"scale": scaled.scale if scaled else 1, "steps": scaled.calls if scaled else None}

    def id_part(self, value):
        return None if value == 1 else f"ls{value}"

    def estimate(self, value, spec):
        if value == 1:
            return axes.Cost()
        return axes.Cost(step_s=0.5 * (value - 1), basis=("--loss-scale: half a second a step more per unit",))

    def describe(self, value):
        return f"loss x{value}"

    def snippet(self, values, cpu):
        return [f"# loss scaled by {values}"] if values != [1] else []


TOY = LossScale(name="loss_scale", default=1, values=(1, 2), parse=int, help="multiply the loss (a toy axis)")


@pytest.fixture
def toy_axis():
    axes.register(TOY)
    yield TOY
    axes.unregister(TOY.name)


def _toy_options(tmp_path) -> SweepOptions:
    return SweepOptions(
        workloads=["simple_cnn"], settings=["default"], repeats=1, seed=0, device="cpu", size_preset="quick",
        results=tmp_path / "r.jsonl", run_id="toy", axes={"threads": [2], "loss_scale": [1, 2]},
        seeds=0, aa=False, audit=False, explain=False, steps=2, warmup=1,
    )  # fmt: skip


def test_a_toy_axis_reaches_plan_trial_record_tables_compare_and_snippet(toy_axis, tmp_path):
    # the CLI's option, the sweep's plan and the dry run's estimate
    from detcost.cli import build_parser

    args = build_parser().parse_args(["run", "--loss-scale", "1,2"])
    assert args.axis_loss_scale == [1, 2]
    specs = plan(_toy_options(tmp_path))
    assert [s.trial_id for s in specs] == ["timed/simple_cnn/default/r0/s0/t2", "timed/simple_cnn/default/r0/s0/t2/ls2"]
    plain, scaled = (estimate([s], "quick") for s in specs)
    assert scaled.seconds - plain.seconds == pytest.approx(0.5 * specs[1].total_steps)
    assert scaled.assumptions() == ["--loss-scale: half a second a step more per unit"] and not plain.assumptions()

    # the trial wraps its step and reads it back; the record stores both and loads again
    stored = [run_trial(s).to_json() for s in specs]
    assert [r["status"] for r in stored] == ["ok", "ok"]
    assert [r["loss_scale"] for r in stored] == [1, 2]
    assert stored[0]["loss_scale_read_back"] == {"scale": 1, "steps": None}
    assert stored[1]["loss_scale_read_back"] == {"scale": 2, "steps": specs[1].total_steps}  # every step, wrapped
    assert stored[1]["params_sha256"] != stored[0]["params_sha256"]  # applied: a doubled loss trains apart
    assert TrialRecord.from_json(stored[1]).to_json() == stored[1]

    # tables, resume/compare matching and the report's words and snippet
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in stored))
    loaded = results.load_records(path)
    assert "loss_scale" in group_fields() and "loss_scale" in match_fields()
    assert sorted(speed_of(path)["loss_scale"]) == [1, 2]
    assert axis_values_text({"threads": 2, "loss_scale": 2}) == "threads 2, loss x2"
    assert "# loss scaled by [1, 2]" in axis_snippet(loaded, cpu=True)


@pytest.mark.parametrize("name", ["status", "steps", "price", "params_sha256", "audit", "top_ops", "cold_start_s"])
def test_an_axis_named_as_a_record_field_or_a_table_column_is_refused(name):
    with pytest.raises(ValueError, match=f"axis '{name}' clashes with '{name}'") as refused:
        axes.register(axes.Axis(name=name, default=0, help="a clash"))
    assert "\n" not in str(refused.value) and name not in axes.REGISTRY


def test_every_field_of_a_stored_record_and_every_derived_column_is_reserved():
    """What the v1 sample's records hold and what the derived tables make of them: every
    name that is not an axis (or its read-back) is one no axis may take."""
    stored = {k for line in V1_SAMPLE.read_text().splitlines() for k in json.loads(line)}
    columns = stored | set(speed_of(V1_SAMPLE).columns) | set(variance_of(V1_SAMPLE).columns)
    ours = set(axes.names()) | {f"{a}_read_back" for a in axes.names()}
    assert columns - ours - set(axes.RESERVED) == set()
    taken = [a for a in axes.names() if a in axes.RESERVED]
    assert not taken


# ---- results written by the released detcost still load -----------------------------


def test_the_v1_sample_loads_into_the_same_tables():
    df = results.load(V1_SAMPLE)
    assert set(df["kind"]) == {"timed", "aa", "seed", "audit", "profiled"}
    assert (df["status"] == "ok").all()
    speed = speed_of(V1_SAMPLE)
    assert set(speed["setting"]) >= {"default", "strict"}
    var = variance_of(V1_SAMPLE)
    same_seed = var[var["setting"].isin(["default", "strict"])].set_index("setting")
    assert same_seed["bitwise_identical"].to_dict() == {"default": True, "strict": True}


def test_the_v1_sample_records_round_trip_and_keep_their_trial_ids():
    for line in V1_SAMPLE.read_text().splitlines():
        stored = json.loads(line)
        record = TrialRecord.from_json(stored)
        assert record.spec.trial_id == stored["trial_id"]
        identity = TrialSpec.from_json(stored).identity()
        assert {k: v for k, v in identity.items() if k in stored} == {k: stored[k] for k in identity if k in stored}
        # axes added since: their defaults, which the ids leave out; and the intervals' level (95% then)
        newer = set(identity) - set(stored) - {"interval_level"}
        assert newer <= set(axes.names()) and all(identity[a] == axes.REGISTRY[a].default for a in newer)
        assert identity["interval_level"] == 0.95
        again = record.to_json()
        assert {k: v for k, v in again.items() if k in stored} == stored
