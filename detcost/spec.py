"""What identifies and configures one trial (`TrialSpec`, import it from detcost.record):
decided by the parent, sent to the child, written into its record as the record's
identity (schema version 1); and the seeds a trial derives from its own (`derive_seed`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from detcost import axes as axes_mod
from detcost.stats import LEVEL
from detcost.vocabulary import Kind

SCHEMA_VERSION = 1

# Sizes: two runs of one workload at different sizes do not compare.
SIZE_FIELDS = ("batch_size", "image_size", "steps")


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A seed for one purpose ("init", "data", ...) derived stably from a trial seed.

    Stable across Python processes and versions (not `hash()`, which is salted). The one
    rule: `detcost.seeding.derive_seed` is this function.
    """
    digest = hashlib.sha256(f"{seed}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class TrialSpec:
    """What identifies and configures one trial; decided by the parent, sent to the child."""

    run_id: str
    kind: Kind
    workload: str
    setting: str
    repeat: int
    seed: int
    device: str
    steps: int
    warmup: int
    batch_size: int
    image_size: int
    axes: dict = field(default_factory=dict)  # every registered axis with its value
    sidecar: str | None = None  # path relative to the results file's directory
    keep_params: bool = False
    # FLOPs per step already counted by an earlier trial of the same workload and sizes
    # (they do not depend on the setting): saves ~0.2 s of counting per trial.
    known_flops: float | None = None
    # The confidence of the intervals drawn from this trial's sweep: 0.95, or under
    # --decide, which may stop at any of several looks, 0.95 spread over the looks
    # (`stats.level_over_looks`). Carried in every record so any later reading of the
    # results draws the same intervals the sweep decided on.
    interval_level: float = LEVEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "axes", axes_mod.complete(self.axes))

    @property
    def trial_id(self) -> str:
        head = [str(self.kind), self.workload, self.setting, f"r{self.repeat}", f"s{self.seed}"]
        return "/".join(head + axes_mod.id_parts(self.axes))

    def _seed_for(self, purpose: str) -> int:
        varies = any(a.varies_seed and a.varies_seed(v, purpose) for a, v in axes_mod.each(self.axes))
        return derive_seed(self.seed, purpose, self.repeat if varies else 0)

    @property
    def init_seed(self) -> int:
        return self._seed_for("init")

    @property
    def data_seed(self) -> int:
        return self._seed_for("data")

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    def sizes(self) -> dict:
        """What must match for two trials' step times to be compared (resume checks it)."""
        return {"device": self.device, "steps": self.steps, "warmup": self.warmup, **self._shape()}

    def _shape(self) -> dict:
        return {"batch_size": self.batch_size, "image_size": self.image_size}

    def identity(self) -> dict:
        """The fields every record has, whatever happened to the trial."""
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "trial_id": self.trial_id,
            "kind": str(self.kind),
            "workload": self.workload,
            "setting": self.setting,
            "repeat": self.repeat,
            "seed": self.seed,
            "init_seed": self.init_seed,
            "data_seed": self.data_seed,
            "interval_level": self.interval_level,
            **self.axes,
            **self.sizes(),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialSpec:
        return cls(**d)

    @classmethod
    def from_json(cls, record: dict) -> TrialSpec:
        """The spec a stored record was made from (axes it predates get their defaults)."""
        names = ("run_id", "kind", "workload", "setting", "repeat", "seed", "device", "steps", "warmup")
        return cls(
            **{k: record[k] for k in names},
            **{k: record[k] for k in ("batch_size", "image_size")},
            axes={a: record[a] for a in axes_mod.names() if a in record},
            sidecar=record.get("sidecar"),
            interval_level=record.get("interval_level") or LEVEL,
        )
