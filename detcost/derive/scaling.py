"""DDP against one process (the `nproc` axis): for each setting, how many times one
process's samples/s N ranks give together, paired within rounds.

`plan.plan` is repeat-major: round r runs every workload x axis value x setting, so the
nproc 1 and nproc N trials of one setting and repeat share a round, and their ratio is
taken within it (machine drift cancels, as it does for prices). The global samples/s of N
ranks over one process's is N x (one process's step time / the job's step time), with the
interval of that step-time ratio over the rounds, at the records' own level.
"""

from __future__ import annotations

from dataclasses import dataclass

from detcost.derive.keys import GroupKey, by_key, group_fields, label_order, ok_of
from detcost.derive.pairing import interval_level, rounds_of, without_busy
from detcost.derive.variance import Spread
from detcost.record import ROUND_KINDS, Kind, TrialRecord
from detcost.stats import PairedRatio, paired_ratio, unpaired_ratio

AXIS = "nproc"


@dataclass(frozen=True)
class Scaling:
    """One setting at world size `nproc` against the same setting in one process."""

    key: GroupKey  # the nproc N group
    setting: str
    nproc: int
    speedup: PairedRatio  # global samples/s of N ranks over one process's, over rounds
    level: float
    reproducible: bool | None  # repeats bitwise identical at N (None: one repeat)
    ranks_agree: bool | None

    @property
    def efficiency(self) -> float:
        """The speed-up over N (the speed-up per rank): 1.00 is perfect scaling."""
        return self.speedup.ratio / self.nproc


def scaling(records: list[TrialRecord], spreads: list[Spread]) -> list[Scaling]:
    """Every (nproc N > 1 group, setting) that has an nproc 1 group beside it."""
    timed = [r for r in ok_of(records, ROUND_KINDS) if r.spec.kind == Kind.TIMED and r.timing]
    groups = by_key(timed)
    spread = {(s.key, s.setting): s for s in spreads if s.across is None}
    out = []
    for key, recs in groups.items():
        n = key.as_dict().get(AXIS)
        one = _with(key, 1)
        if not n or n < 2 or one not in groups:
            continue
        for setting in label_order({r.spec.setting for r in recs}):
            mine = without_busy([r for r in recs if r.spec.setting == setting])
            base = without_busy([r for r in groups[one] if r.spec.setting == setting])
            if not base:
                continue
            level = interval_level(mine + base)
            r = _over_rounds(rounds_of(base), rounds_of(mine), level)  # one process's step time over the job's
            s = spread.get((key, setting))
            out.append(Scaling(
                key, setting, int(n), PairedRatio(r.ratio * n, r.lo * n, r.hi * n, r.rounds), level,
                None if s is None or s.R < 2 else s.bitwise_identical, None if s is None else s.ranks_agree,
            ))  # fmt: skip
    return out


def _over_rounds(a: dict, b: dict, level: float) -> PairedRatio:
    """Paired within rounds; where busy trials left the two world sizes no round in common,
    unpaired (as prices do: drift then does not cancel, and the interval is wider for it)."""
    paired = paired_ratio(a, b, level)
    return paired if paired.rounds else unpaired_ratio(a, b, level)


def _with(key: GroupKey, nproc: int) -> GroupKey:
    values = tuple(nproc if f == AXIS else v for f, v in zip(group_fields(), key.values))
    return GroupKey(key.workload, values, key.machine)
