"""Tables derived from records only: prices, variance, attribution, comparisons.

Below the report and above the results: nothing here re-runs training or draws; the
report and the CLI present what these functions return.
"""

from detcost import axes

# The derived tables' columns (the analysis's price and variance rows), which group rows by the axes:
# an axis of one of these names would be overwritten there. Beside the group key's fields
# (workload, axes, sizes) these are the names the figures and the JSON read by name.
DERIVED_COLUMNS = (
        "n", "rounds", "samples_per_s", "samples_per_s_cv", "step_time_s", "price", "price_lo", "price_hi",
        "price_vs", "vs_default", "vs_default_lo", "vs_default_hi", "label_bias", "busy_trials",
        "busy_trials_priced", "kernel_busy_fraction", "detectable", "within_noise", "default_cv", "R", "across",
        "bitwise_identical", "n_identical", "max_abs_dtheta", "rel_l2", "rel_l2_vs_seeds", "max_abs_dlogits",
        "first_diff_step", "loss_std", "loss_std_vs_seeds", "loss_range", "accuracy_std", "accuracy_range",
        "class_accuracy_range", "same_data_order", "disagreement", "disagreement_vs_seeds", "priced_as_one",
        "verdict", "why", "flag_reacts", "machine", "host_bound", "across_values", "cold_start_s",
        "peak_memory_bytes", "achieved_flops", "ranks_agree",
)  # fmt: skip
axes.reserve(DERIVED_COLUMNS, "a column of the derived tables")
