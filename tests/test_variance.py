"""What a setting buys: bitwise identity, distances, the seed yardstick, the audit."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from detcost.cli import main
from detcost.derive import variance
from detcost.derive.keys import SEED_LABEL, GroupKey
from detcost.ops import op_base
from detcost.record import Alert
from detcost.trial import run_trial
from tests.conftest import TIMED_ONLY, analysis_of, make_spec, run_cli, variance_of


@pytest.fixture(scope="module")
def table(variance_sweep):
    return variance_of(variance_sweep)


def rows(table, workload, threads):
    """The rows of one thread count ("2"), or across thread counts ("1 vs 2")."""
    if " vs " in threads:
        return table[
            (table["workload"] == workload) & (table["across"] == "threads") & (table["across_values"] == threads)
        ]
    return table[(table["workload"] == workload) & table["across"].isna() & (table["threads"] == int(threads))]


def test_repeats_of_a_cpu_trial_are_bitwise_identical_with_zero_distance(table):
    same_thread = table[
        (table["workload"] == "simple_cnn") & table["setting"].isin(["default", "strict"]) & table["across"].isna()
    ]
    assert len(same_thread) == 4
    for _, row in same_thread.iterrows():
        assert row["n_identical"] == row["R"] == 3
        assert row["max_abs_dtheta"] == row["rel_l2"] == row["loss_std"] == row["max_abs_dlogits"] == 0
        assert row["disagreement"] == 0 and pd.isna(row["first_diff_step"])  # never differ


def test_injected_noise_is_reported_as_not_reproducible(table):
    for _, row in rows(table, "diag_noise", "2").iterrows():
        assert row["n_identical"] < row["R"]
        assert row["rel_l2"] > 0 and row["max_abs_dtheta"] > 0 and row["max_abs_dlogits"] > 0
        assert row["first_diff_step"] == 1  # the noise enters at the first forward pass


def test_different_thread_counts_give_different_numbers_on_a_conv_net(table):
    cross = rows(table, "simple_cnn", "1 vs 2")
    assert len(cross) == 2
    assert (cross["rel_l2"] > 0).all() and (cross["n_identical"] == 0).all()


def test_spread_is_shown_as_a_fraction_of_the_seed_yardstick(table):
    seeds = table[(table["workload"] == "simple_cnn") & (table["setting"] == SEED_LABEL)].iloc[0]
    assert seeds["R"] == 2 and seeds["rel_l2"] > 0
    assert seeds["rel_l2_vs_seeds"] == pytest.approx(1.0)
    cross = rows(table, "simple_cnn", "1 vs 2").iloc[0]
    assert 0 < cross["rel_l2_vs_seeds"] < 0.01  # rounding noise is tiny next to a new seed


def test_divergence_curves_have_a_point_per_checkpoint(variance_sweep):
    curves = analysis_of(variance_sweep).curve_frame()
    noisy = curves[(curves["workload"] == "diag_noise") & (curves["setting"] == "default") & (curves["threads"] == 2)]
    assert list(noisy["step"]) == [1, 2, 4, 5]  # 1 warm-up + 4 timed steps
    assert (noisy["rel_l2"] > 0).all()
    clean = curves[curves["workload"] == "simple_cnn"]
    assert (clean["rel_l2"] == 0).all()


def test_variance_command_prints_the_table(capsys, variance_sweep):
    assert main(["variance", str(variance_sweep), "--curves"]) == 0
    out = capsys.readouterr().out
    assert "seed yardstick" in out and "3/3" in out and "1 vs 2" in out and "never" in out


def test_vary_init_makes_repeats_differ_from_the_first_step(tmp_path):
    path = tmp_path / "vary.jsonl"
    assert (
        run_cli(
            "--workloads",
            "simple_cnn",
            "--settings",
            "default",
            "--repeats",
            "2",
            *TIMED_ONLY,
            "--vary",
            "impl,init",
            "--results",
            str(path),
        )
        == 0
    )
    table = variance_of(path).set_index("vary")
    assert table.loc["impl", "n_identical"] == 2
    assert table.loc["init", "n_identical"] == 0 and table.loc["init", "first_diff_step"] == 1


def test_keep_params_gives_exact_distances_from_the_full_parameters(tmp_path):
    spec = make_spec(run_id="k", workload="diag_noise", axes={"threads": 1}, keep_params=True)
    records = [run_trial(replace(spec, repeat=r, sidecar=f"s/{r}.npz"), tmp_path) for r in range(2)]
    for r in records:
        r.results_path = str(tmp_path / "k.jsonl")
    a, b = (variance.load_sidecar(r) for r in records)
    assert a["params"].size > a["param_samples"].shape[1]
    spread = variance.compare(GroupKey.of(records[0]), "default", records, variance.load_sidecars(records))
    assert spread.max_abs_dtheta == pytest.approx(float(np.max(np.abs(a["params"] - b["params"]))))


def test_the_audit_lists_an_alert_with_the_module_it_came_from():
    spec = make_spec(
        run_id="a",
        kind="audit",
        workload="diag_alert",
        setting="strict",
        axes={"threads": 1},
        steps=2,
        warmup=0,
        batch_size=4,
    )
    audit = run_trial(spec).audit
    assert audit.alerts == (Alert("put_", 2, ("model (_Alert)",)),)
    assert audit.strict_fails and "put_ does not have a deterministic implementation" in audit.strict_error


def test_the_sweep_audits_each_workload_once(small_sweep_df):
    audits = small_sweep_df[small_sweep_df["kind"] == "audit"]
    assert sorted(audits["workload"]) == ["resnet18", "simple_cnn"]
    assert (audits["status"] == "ok").all()
    assert not audits["audit.strict_fails"].any()  # the CPU conv nets run under strict


def test_backward_kernel_names_map_to_their_forward_op():
    assert op_base("upsample_bilinear2d_backward_out_cuda") == op_base("aten.upsample_bilinear2d.vec")
    assert op_base("nll_loss2d_forward_out_cuda_template") == op_base("aten.nll_loss2d_forward.default")
    assert op_base("adaptive_avg_pool2d_backward_cuda") == op_base("aten._adaptive_avg_pool2d.default")
