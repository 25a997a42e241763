"""The record's vocabularies: a trial's `Kind` and its `Status`, closed sets of names that
are plain strings on disk and in tables (import them from detcost.record)."""

from __future__ import annotations

from enum import Enum


class _Vocabulary(str, Enum):
    """A closed set of names that are plain strings on disk and in tables."""

    def __str__(self) -> str:  # pandas and f-strings see the value, not "Kind.TIMED"
        return self.value


class Kind(_Vocabulary):
    TIMED = "timed"  # a workload x setting x repeat: the prices and the variance
    AA = "aa"  # the A/A control: `default` again under a second label (the noise floor)
    SEED = "seed"  # the seed yardstick: `default` with other seeds
    PROFILED = "profiled"  # a few steps under torch.profiler (what changed)
    AUDIT = "audit"  # the ops without a deterministic implementation
    MICROBENCH = "microbench"  # a pytest-benchmark layer, loaded beside sweeps

    @property
    def measured(self) -> bool:
        """Trials whose steps are timed at the workload's sizes (their axes make groups)."""
        return self in MEASURED


MEASURED = (Kind.TIMED, Kind.AA, Kind.SEED)
ROUND_KINDS = (Kind.TIMED, Kind.AA)  # a round: every setting and the A/A control once (what prices pair)


class Status(_Vocabulary):
    OK = "ok"
    ERROR = "error"  # raised
    UNSUPPORTED = "unsupported"  # strict mode: "does not have a deterministic implementation"
    OOM = "oom"
    NAN = "nan"  # the loss became non-finite
    CRASH = "crash"  # the process died without reporting
    TIMEOUT = "timeout"
