"""The text renderings, one module per table family (`prices_text`, `variance_text`,
`explain_text`, `sweep_text`; numbers in `fmt`). This module gathers their names for the
CLI, which imports `detcost.report.text`."""

from __future__ import annotations

from detcost.report.explain_text import CPU_RANKING_NOTE, audit_cells, audit_text, explain_text, headline
from detcost.report.fmt import interval_text, percent_text
from detcost.report.keys_text import axis_values_text
from detcost.report.prices_text import (
    HOST_BOUND_NOTE,
    detectable_text,
    host_bound_lines,
    layout_text,
    noise_lines,
    price_cell,
    price_matrix,
)
from detcost.report.sweep_text import (
    cuda_estimate_lines,
    plan_text,
    precision_text,
    ran_report,
    recommendation_text,
    records_json,
    run_summary,
    run_summary_json,
)
from detcost.report.variance_text import VARIANCE_LEGEND, divergence_text, variance_display

__all__ = [
    "CPU_RANKING_NOTE", "HOST_BOUND_NOTE", "VARIANCE_LEGEND", "audit_cells", "audit_text", "axis_values_text",
    "cuda_estimate_lines", "detectable_text", "divergence_text", "explain_text", "headline", "host_bound_lines",
    "interval_text", "layout_text", "noise_lines", "percent_text", "plan_text", "precision_text", "price_cell",
    "price_matrix", "ran_report", "recommendation_text", "records_json", "run_summary", "run_summary_json",
    "variance_display",
]  # fmt: skip
