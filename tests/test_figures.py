"""The report's figures earn their place: read from the figures' data (artists, labels,
panels), not their pixels. A figure with nothing to show gives way to one sentence; labels
never print over each other; the marks follow the decisions the recommendation reads."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from detcost import results
from detcost.derive.analysis import analyse
from detcost.report import figures
from detcost.report.build import ALL_IDENTICAL, NONE_DIVERGE, _figures, tradeoff_points

GOLDEN = Path(__file__).parent / "data" / "golden.jsonl"
SEVEN = ["default", "benchmark", "deterministic", "benchmark_deterministic", "strict", "no_cudnn", "strict_nofill"]


def test_the_golden_runs_identical_repeats_are_one_sentence_not_empty_figures():
    m = analyse(results.load_records(GOLDEN)).only
    shown = {f["alt"]: f for f in _figures(m)}
    assert shown["tradeoff"]["png"] is None and shown["tradeoff"]["caption"] == ALL_IDENTICAL
    assert shown["divergence"]["png"] is None and shown["divergence"]["caption"] == NONE_DIVERGE
    assert shown["price"]["png"] and shown["cold start"]["png"]
    points = tradeoff_points(m)
    assert points["recommended"].sum() == 1 and points.loc[points["recommended"], "setting"].item() == "default"


def _labels_apart(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    boxes = [t.get_window_extent() for t in ax.texts if t.get_text() in SEVEN]
    assert len(boxes) == len(SEVEN)
    return not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_settings_at_one_spread_get_labels_that_do_not_overlap_and_one_ring():
    """Seven settings, four at the very same spread and nearly the same price (as a CPU run
    gives): every label readable; the ring on the recommended setting alone, the cross on
    the setting decided over the budget, hollow points where the price is not decided."""
    prices = [1.0, 1.01, 1.0, 1.02, 1.21, 1.0, 1.12]
    spread = [1e-6, 1e-6, 1e-6, 1e-6, 0.0, 1e-6, 0.0]
    points = pd.DataFrame({
        "setting": SEVEN, "price": prices, "rel_l2": spread,
        "recommended": [s == "strict_nofill" for s in SEVEN], "over_budget": [s == "strict" for s in SEVEN],
        "unconfirmed": [s == "benchmark" for s in SEVEN],
    })  # fmt: skip
    fig = figures.tradeoff_figure(points)
    try:
        assert _labels_apart(fig)
        ax = fig.axes[0]
        rings = [c for c in ax.collections if c.get_sizes().tolist() == [260.0]]
        crosses = [c for c in ax.collections if c.get_sizes().tolist() == [90.0]]
        assert len(rings) == 1 and rings[0].get_offsets().tolist() == [[1.12, figures.FLOOR]]
        assert len(crosses) == 1 and crosses[0].get_offsets().tolist() == [[1.21, figures.FLOOR]]
        hollow = [c for c in ax.collections if c.get_sizes().tolist() == [70.0] and tuple(c.get_facecolor()[0]) ==
                  (1.0, 1.0, 1.0, 1.0)]  # fmt: skip
        assert [c.get_offsets().tolist() for c in hollow] == [[[1.01, 1e-6]]]
    finally:
        plt.close(fig)


def test_the_divergence_figure_draws_only_workloads_whose_repeats_drift(monkeypatch):
    rows = []
    for workload, drift in (("a", 0.0), ("b", 1e-5), ("c", 0.0)):
        for setting in ("default", "strict"):
            for step in (1, 2, 4):
                rows.append({"workload": workload, "setting": setting, "step": step,
                             "rel_l2": drift * step if setting == "default" else 0.0})  # fmt: skip
    panels, real = [], figures._grid
    monkeypatch.setattr(figures, "_grid", lambda n, *a, **k: panels.append(n) or real(n, *a, **k))
    assert figures.divergence(pd.DataFrame(rows))
    assert panels == [1]  # only b: a and c would be empty panels
