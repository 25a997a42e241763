"""Is detcost's timing sound? The selfcheck's four figures, tracked over commits; on a GPU
the selfcheck's acceptance suite of the CUDA path runs too, tracked as its failed checks.

The selfcheck keeps this process off the device: what builds a workload runs in a child
process, as trials do, so this process never holds a CUDA context while trials start.
"""

import math

from benchmarks.common import DEVICE, PROFILE, PROFILE_NAME
from detcost import selfcheck


def _value(checks, name):
    """A check's figure; NaN for one missing from the selfcheck's answer."""
    return checks.get(name, {}).get("value", math.nan)


class Measurement:
    timeout = 600

    def setup_cache(self):
        size = "quick" if PROFILE_NAME == "smoke" else PROFILE["size"]
        checks = selfcheck.run_all(DEVICE, PROFILE["workloads"][0], size)
        print("\n".join(c.line() for c in checks))  # what a bug report wants, in asv's output
        return {c.name: {"value": c.value, "ok": c.ok} for c in checks}

    setup_cache.timeout = 1800

    def track_harness_overhead(self, checks):
        """detcost's step time / a bare loop's on the same workload (target <= 1.05 CPU, 1.01 GPU)."""
        return _value(checks, selfcheck.OVERHEAD)

    track_harness_overhead.unit = "ratio"

    def track_timer_agreement(self, checks):
        """detcost's median step / torch.utils.benchmark's, minus 1 (target within 3%)."""
        return _value(checks, selfcheck.AGREEMENT)

    track_timer_agreement.unit = "fraction"

    def track_repeatability_cv(self, checks):
        return _value(checks, selfcheck.REPEATABILITY)

    track_repeatability_cv.unit = "CV"

    def track_sweep_efficiency(self, checks):
        return _value(checks, selfcheck.EFFICIENCY)

    track_sweep_efficiency.unit = "fraction"

    def track_missed_checks(self, checks):
        """Checks that missed their target or could not run (on a GPU, the acceptance suite too); 0 is good."""
        return sum(c["ok"] is False for c in checks.values())

    track_missed_checks.unit = "checks"
