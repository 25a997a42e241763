"""The price and the stability of each setting, from one detcost sweep per asv run.

The sweep runs every trial in a fresh process, as `detcost run` does; asv's own timer
does not wait for the GPU, so every figure here is detcost's, reported as track_*.
"""

from benchmarks.common import DEVICE, PARAM_NAMES, PARAMS, PROFILE
from detcost import tracking


class Price:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600

    def setup_cache(self):
        return tracking.sweep_figures(
            PROFILE["workloads"],
            PROFILE["settings"],
            PROFILE["repeats"],
            PROFILE["size"],
            DEVICE,
            PROFILE["steps"],
            allow_busy=PROFILE.get("allow_busy", False),
        )

    setup_cache.timeout = 7200

    def setup(self, figures, workload, setting):
        if figures[(workload, setting)]["status"] != "ok":  # e.g. strict without a deterministic kernel
            raise NotImplementedError(figures[(workload, setting)]["status"])

    def track_samples_per_s(self, figures, workload, setting):
        return figures[(workload, setting)]["samples_per_s"]

    track_samples_per_s.unit = "samples/s"

    def track_step_time(self, figures, workload, setting):
        return figures[(workload, setting)]["step_time_s"]

    track_step_time.unit = "s"

    def track_cold_start(self, figures, workload, setting):
        return figures[(workload, setting)]["cold_start_s"]

    track_cold_start.unit = "s"

    def track_peak_memory(self, figures, workload, setting):
        return figures[(workload, setting)]["peak_memory_bytes"]

    track_peak_memory.unit = "bytes"

    def track_achieved_flops(self, figures, workload, setting):
        return figures[(workload, setting)]["achieved_flops"]

    track_achieved_flops.unit = "FLOP/s"

    def track_within_budget(self, figures, workload, setting):
        """The price's decision against the team's budget: 1 within, 0 over, NaN cannot decide."""
        return figures[(workload, setting)]["within_budget"]

    track_within_budget.unit = "decision"

    def track_slowdown_vs_default(self, figures, workload, setting):
        return figures[(workload, setting)]["slowdown_vs_default"]

    track_slowdown_vs_default.unit = "ratio"

    def track_divergence(self, figures, workload, setting):
        """Mean relative L2 distance between repeats' parameters (0: bitwise identical)."""
        return figures[(workload, setting)]["divergence"]

    track_divergence.unit = "rel. L2"

    def track_identical_repeats(self, figures, workload, setting):
        return figures[(workload, setting)]["identical_fraction"]

    track_identical_repeats.unit = "fraction"
