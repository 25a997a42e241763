"""Is detcost's timing sound? The selfcheck's four figures, tracked over commits."""

from benchmarks.common import DEVICE, PROFILE, PROFILE_NAME
from detcost import selfcheck


class Measurement:
    timeout = 600

    def setup_cache(self):
        size = "quick" if PROFILE_NAME == "smoke" else PROFILE["size"]
        return {c.name: c.value for c in selfcheck.run_all(DEVICE, PROFILE["workloads"][0], size)}

    setup_cache.timeout = 1800

    def track_harness_overhead(self, checks):
        """detcost's step time / a bare loop's on the same workload (target <= 1.05 CPU, 1.02 GPU)."""
        return checks["harness overhead"]

    track_harness_overhead.unit = "ratio"

    def track_timer_agreement(self, checks):
        """detcost's median step / torch.utils.benchmark's, minus 1 (target within 3%)."""
        return checks["agreement with torch.utils.benchmark"]

    track_timer_agreement.unit = "fraction"

    def track_repeatability_cv(self, checks):
        return checks["repeatability (CV of samples/s)"]

    track_repeatability_cv.unit = "CV"

    def track_sweep_efficiency(self, checks):
        return checks["sweep efficiency (share of wall time in timed steps)"]

    track_sweep_efficiency.unit = "fraction"
