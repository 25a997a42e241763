"""How one label's trials pair with another's, for the prices (`prices`), the comparisons
between runs (`compare`) and the DDP scaling (`scaling`): each trial in the round it ran
in (`rounds.Round`), busy trials left out where others remain, and the ratio of two labels
paired within rounds at the level their sweep decided on.
"""

from __future__ import annotations

from detcost.derive.keys import is_busy
from detcost.record import TrialRecord
from detcost.rounds import Round
from detcost.stats import LEVEL, PairedRatio, paired_ratio, per_round, unpaired_ratio


def rounds_of(records: list[TrialRecord]) -> dict[Round, float]:
    """{round: typical step time} of one label's trials, each in the round it ran in
    (`Round.ran`: its run, its repeat and its unit)."""
    kept = [r.timing.kept for r in records]
    pairs = [(Round.ran(r), times) for r, (times, _) in zip(records, kept)]
    return per_round(pairs, kept[0][1] if kept else None)


def without_busy(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials run while other processes took the CPU are left out of prices (they stay in
    the results and are counted), unless no other trial of the label is left."""
    quiet = [r for r in records if not is_busy(r)]
    return quiet or records


def ratio(a: dict, b: dict, bias_var: float = 0.0, level: float = LEVEL) -> PairedRatio:
    """Paired within rounds, the labels' fixed effect `bias_var` included; where busy
    trials left the two labels no round in common, unpaired (drift then does not cancel,
    and the interval is wider for it)."""
    paired = paired_ratio(a, b, level=level, bias_var=bias_var)
    return paired if paired.rounds else unpaired_ratio(a, b, level=level)


def interval_level(records: list[TrialRecord]) -> float:
    """The level a group's intervals are drawn at: the one its sweep decided on, and where
    records of sweeps with other levels meet (a resumed run), the most cautious."""
    return min((r.spec.interval_level for r in records), default=LEVEL)
