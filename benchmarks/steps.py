"""One training step timed by asv itself (the step synchronises on CUDA), so asv's own
statistics sit beside detcost's. One setting per benchmark process (asv spawns one)."""

from benchmarks.common import DEVICE, PARAM_NAMES, PROFILE
from detcost import tracking


class TrainStep:
    params = ([PROFILE["workloads"][0]], list(PROFILE["settings"]))
    param_names = PARAM_NAMES
    timeout = 300

    def setup(self, workload, setting):
        self.step = tracking.train_step(workload, setting, DEVICE, PROFILE["size"])

    def teardown(self, workload, setting):
        self.step.close()

    def time_train_step(self, workload, setting):
        self.step()
