"""Where a step's data comes from: a real DataLoader (seeded or not), and real images
(scikit-learn's digits) whose accuracy enters the variance measures."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from detcost import axes, loader, results
from detcost.cli import main
from detcost.measure import class_accuracy
from detcost.plan import SweepOptions, plan
from detcost.report.text import variance_display
from tests.conftest import TIMED_ONLY, analysis_of, make_spec, run_cli, variance_of

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


@pytest.fixture(scope="module")
def loader_sweep(tmp_path_factory):
    """simple_cnn, 2 repeats, the seeded and the unseeded loader, each with a worker
    process (a trial process starts processes of its own)."""
    path = tmp_path_factory.mktemp("loader") / "r.jsonl"
    code = run_cli(
        "--workloads", "simple_cnn", "--settings", "default", "--repeats", "2", *TIMED_ONLY,
        "--data", "loader,loader-unseeded", "--workers", "1", "--threads", "1", "--results", str(path),
    )  # fmt: skip
    assert code == 0
    return path


def test_the_seeded_loader_repeats_its_order_and_training_bitwise(loader_sweep):
    df = results.load(loader_sweep)
    seeded = df[df["data"] == "loader"]
    assert len(seeded) == 2 and (seeded["status"] == "ok").all()
    assert seeded["data_order_sha256"].nunique() == 1
    assert seeded["params_sha256"].nunique() == 1
    assert seeded["data_read_back"].iloc[0] == "DataLoader (seeded, 1 workers)"


def test_the_unseeded_loader_differs_from_the_first_step_and_the_table_says_so(loader_sweep):
    df = results.load(loader_sweep)
    unseeded = df[df["data"] == "loader-unseeded"]
    assert len(unseeded) == 2 and (unseeded["status"] == "ok").all()
    assert unseeded["data_order_sha256"].nunique() == 2
    table = variance_of(loader_sweep).set_index("data")
    assert not table.loc["loader-unseeded", "bitwise_identical"]
    assert table.loc["loader-unseeded", "first_diff_step"] == 1
    assert table.loc["loader", "bitwise_identical"]
    shown = variance_display(analysis_of(loader_sweep)).set_index("data")
    assert shown.loc["loader-unseeded", "data order"] == "differs"
    assert shown.loc["loader", "data order"] == "same"


def test_workers_only_multiply_the_loader_modes(tmp_path):
    """--workers 0,2 with --data staged,loader: staged batches have no workers, so
    staged runs once, not once per worker count."""
    opts = SweepOptions(
        workloads=["simple_cnn"], settings=["default"], repeats=1, seed=0, device="cpu", size_preset="quick",
        results=tmp_path / "r.jsonl", run_id="t", seeds=0, aa=False, audit=False, explain=False,
        axes={"data": ["staged", "loader"], "workers": [0, 2]},
    )  # fmt: skip
    combos = [(s.axes["data"], s.axes["workers"]) for s in plan(opts)]
    assert combos == [("staged", 0), ("loader", 0), ("loader", 2)]
    assert axes.REGISTRY["workers"].applies({"data": "loader"}) and not axes.REGISTRY["workers"].applies({})


def test_a_loader_needs_one_input_shape():
    batches = [(torch.zeros(2, 3, 8, 8), torch.zeros(2)), (torch.zeros(2, 3, 16, 16), torch.zeros(2))]
    with pytest.raises(ValueError, match="one input shape"):
        loader.pool_of(batches)


def test_loader_batches_read_in_order_and_give_shapes_without_reading():
    x, y = torch.arange(24.0).reshape(12, 1, 2, 1), torch.arange(12)
    dl, sampler = loader.make_loader(x, y, mode=loader.SEEDED, batch=4, workers=0, data_seed=3, device="cpu")
    batches = loader.LoaderBatches(dl, sampler, steps=5, device="cpu")  # 3 batches an epoch: 2 epochs
    assert batches.shapes(0, 2) == [((4, 1, 2, 1), torch.float32, (4,), torch.int64)] * 2
    assert sampler.seen == []  # nothing read yet
    labels = [b[1].tolist() for b in batches]
    assert sorted(sum(labels[:3], [])) == list(range(12))  # an epoch holds every sample once
    again = loader.LoaderBatches(*loader.make_loader(x, y, mode=loader.SEEDED, batch=4, workers=0, data_seed=3,
                                                     device="cpu"), steps=5, device="cpu")  # fmt: skip
    assert [b[1].tolist() for b in again] == labels and again.order_sha256() == batches.order_sha256()


def test_a_loader_is_read_once_in_order():
    x, y = torch.zeros(8, 1, 2, 2), torch.arange(8)
    batches = loader.LoaderBatches(*loader.make_loader(x, y, mode=loader.SEEDED, batch=4, workers=0, data_seed=0,
                                                       device="cpu"), steps=3, device="cpu")  # fmt: skip
    batches[0], batches[1]
    with pytest.raises(IndexError, match="read once, in order: step 0 after step 1"):
        batches[0]


def test_without_workers_the_flips_follow_the_data_seed_not_the_global_generator():
    x, y = torch.randn(16, 1, 2, 3), torch.arange(16)

    def images(global_seed: int, data_seed: int):
        torch.manual_seed(global_seed)  # what the model's code left the global generator at
        made = loader.make_loader(x, y, mode=loader.SEEDED, batch=4, workers=0, data_seed=data_seed, device="cpu")
        return torch.cat([b[0] for b in loader.LoaderBatches(*made, steps=8, device="cpu")])

    assert torch.equal(images(1, 5), images(2, 5))
    assert not torch.equal(images(1, 5), images(1, 6))


def test_class_accuracy_counts_each_class_and_skips_absent_ones():
    preds, labels = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert class_accuracy(preds, labels, 4) == [1.0, 1.0, 0.5, None]


def test_one_class_moves_more_than_the_top_line():
    """Two runs that each miss a different class's samples: overall accuracy equal,
    each class's accuracy far apart."""
    from detcost.derive.keys import GroupKey
    from detcost.derive.variance import compare
    from detcost.record import Outcome, Status, TrialParts, TrialRecord

    records = [
        TrialRecord(make_spec(repeat=k), Status.OK, parts=TrialParts(outcome=Outcome(
            final_loss=1.0, eval_accuracy=0.9, params_sha256=h, class_accuracy=acc)))
        for k, (h, acc) in enumerate([("a", [1.0, 0.8]), ("b", [0.8, 1.0])])
    ]  # fmt: skip
    row = compare(GroupKey.of(records[0]), "default", records, {})
    assert row.accuracy_range == 0.0
    assert row.class_accuracy_range == pytest.approx(0.2)
    assert row.same_data_order is None


def test_digits_without_scikit_learn_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing it fails, as where it is not installed
    assert main(["run", "--workloads", "digits", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'detcost[digits]'" in err


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn (the digits extra) is not installed")
def test_digits_reports_test_accuracy_and_its_per_class_spread_across_seeds(tmp_path):
    path = tmp_path / "r.jsonl"
    code = run_cli(
        "--workloads", "digits", "--settings", "default", "--repeats", "2", "--seeds", "3",
        "--no-aa", "--no-audit", "--no-explain", "--steps", "30", "--threads", "1", "--results", str(path),
    )  # fmt: skip
    assert code == 0
    df = results.load(path)
    assert df["eval_accuracy"].between(0.3, 1.0).all()  # it learns real digits from 30 steps
    assert all(len(v) == 10 for v in df["class_accuracy"])
    seeds = variance_of(path).set_index("setting").loc["seed yardstick"]
    assert np.isfinite(seeds["class_accuracy_range"])
    # A class's accuracy spreads at least as far as the top line (the overall accuracy
    # is a weighted mean of the classes'), and here further.
    assert seeds["class_accuracy_range"] >= seeds["accuracy_range"]
    repeats = variance_of(path).set_index("setting").loc["default"]
    assert repeats["bitwise_identical"] and repeats["class_accuracy_range"] == 0


def test_a_loader_beside_ddp_is_refused_in_one_line_before_any_trial(tmp_path, capsys):
    """--nproc shards the staged batches over its ranks and a DataLoader's not yet: refused
    up front, where every rank used to fail at its first batch; each alone still plans."""
    values = {"data": ["staged", "loader"], "nproc": [None, 2]}
    problem = axes.first_problem(values, "cpu", [])
    assert problem.startswith("--data loader with --nproc 2:")
    assert axes.first_problem({"data": ["loader"], "nproc": [None]}, "cpu", []) is None
    assert axes.first_problem({"data": ["staged"], "nproc": [2]}, "cpu", []) is None
    results = tmp_path / "r.jsonl"
    argv = ["--workloads", "simple_cnn", "--data", "loader-unseeded", "--nproc", "1", "--results", str(results)]
    assert run_cli(*TIMED_ONLY, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--data loader-unseeded with --nproc 1" in err and not results.exists()
