"""Variance: what a setting buys. Compares repeats (same seed, fresh processes) and the
seed yardstick (different seeds) from what each trial stored; never re-runs training.

Distances use the fixed sample of parameter coordinates every trial keeps at checkpoints
1, 2, 4, ... (the same coordinates in every repeat), or the full final parameters when
the sweep ran with --keep-params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np

from detcost import axes as axes_mod
from detcost.derive.keys import SEED_LABEL, GroupKey, by_key, ok_of, setting_order, sidecar_path, varying_fields
from detcost.record import SIZE_FIELDS, Kind, TrialRecord

# Ratios to the seed yardstick are only shown when the yardstick itself moved.
MIN_SEED_SPREAD = 1e-12


def load_sidecar(record: TrialRecord) -> dict[str, np.ndarray] | None:
    """The arrays a trial stored beside the results file, or None if it stored none."""
    path = sidecar_path(record)
    if path is None or not path.is_file() or path.suffix != ".npz":
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@dataclass(frozen=True)
class Spread:
    """The spread across the trials of one group: repeats of a setting, the seed yardstick,
    or one seed across the values of an axis that changes numerics (`across`)."""

    key: GroupKey
    setting: str
    R: int
    n_identical: int
    bitwise_identical: bool
    loss_std: float
    loss_range: float
    accuracy_std: float
    accuracy_range: float
    class_accuracy_range: float
    same_data_order: bool | None
    max_abs_dtheta: float = math.nan
    rel_l2: float = math.nan
    disagreement: float = math.nan
    max_abs_dlogits: float = math.nan
    first_diff_step: int | None = None
    # DDP trials (`nproc`): whether every rank of every trial ended with the same parameters
    # (None: no trial of the group ran two ranks or more). A False is a finding: DDP's ranks
    # all receive the same reduced gradients, so they agree even where runs differ.
    ranks_agree: bool | None = None
    across: str | None = None
    across_values: str | None = None
    vs_seeds: dict = field(default_factory=dict)  # rel_l2, loss_std, disagreement over the yardstick's

    @property
    def same_seed(self) -> bool:
        """Repeats of one configuration: what a setting guarantees."""
        return self.setting != SEED_LABEL and self.across is None

    @property
    def all_identical(self) -> bool:
        return self.R >= 2 and self.n_identical == self.R

    def row(self, fields: list[str]) -> dict:
        out = {**self.key.shown(fields), "setting": self.setting}
        out.update({k: getattr(self, k) for k in _METRICS})
        out.update({f"{m}_vs_seeds": self.vs_seeds.get(m, math.nan) for m in _VS_SEEDS})
        return {**out, "across": self.across, "across_values": self.across_values, "machine": self.key.machine}


_METRICS = (
    "R", "n_identical", "bitwise_identical", "loss_std", "loss_range", "accuracy_std", "accuracy_range",
    "class_accuracy_range", "same_data_order", "max_abs_dtheta", "rel_l2", "disagreement", "max_abs_dlogits",
    "first_diff_step", "ranks_agree",
)  # fmt: skip
_VS_SEEDS = ("rel_l2", "loss_std", "disagreement")


def _final_params(side: dict) -> np.ndarray:
    return side["params"] if "params" in side else side["param_samples"][-1]


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a.astype(np.float64)))
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)) / denom) if denom else 0.0


def _first_difference(a: dict, b: dict) -> int | None:
    """The first checkpoint step at which two trials' parameters differ, bitwise."""
    for k, step in enumerate(a["checkpoints"]):
        if not (
            np.array_equal(a["param_samples"][k], b["param_samples"][k])
            and np.array_equal(a["param_norms"][k], b["param_norms"][k])
        ):
            return int(step)
    return None


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _range(values: list[float]) -> float:
    return float(max(values) - min(values)) if len(values) > 1 else math.nan


def _class_accuracy_range(outcomes) -> float:
    """The largest spread of one class's accuracy across the group (max - min, over the
    classes every trial evaluated): implementation noise shows here long before it
    moves the top-line accuracy."""
    lists = [o.class_accuracy for o in outcomes if isinstance(o.class_accuracy, list | tuple)]
    if len(lists) < 2:
        return math.nan
    per_class = np.array([[np.nan if a is None else a for a in v] for v in lists], dtype=float)
    per_class = per_class[:, np.isfinite(per_class).all(axis=0)]  # the classes every trial evaluated
    return float((per_class.max(axis=0) - per_class.min(axis=0)).max()) if per_class.size else math.nan


def _same_data_order(outcomes) -> bool | None:
    """Whether every trial read its data in the same order (None: staged batches, whose
    order is fixed by the data seed, or one trial)."""
    orders = [o.data_order_sha256 for o in outcomes if o.data_order_sha256]
    return len(set(orders)) == 1 if len(orders) > 1 else None


def _ranks_agree(records: list[TrialRecord]) -> bool | None:
    """Whether the ranks of every DDP trial here agreed (None: no trial ran two ranks)."""
    verdicts = [r.distributed.ranks_agree for r in records if r.distributed is not None]
    known = [v for v in verdicts if v is not None]
    return all(known) if known else None


def _distances(sides: list[dict | None]) -> dict:
    pairs = [(a, b) for a, b in combinations(sides, 2) if a is not None and b is not None]
    if not pairs:
        return {}
    firsts = [s for s in (_first_difference(a, b) for a, b in pairs) if s is not None]
    return {
        "max_abs_dtheta": max(float(np.max(np.abs(_final_params(a) - _final_params(b)))) for a, b in pairs),
        "rel_l2": float(np.mean([_rel_l2(_final_params(a), _final_params(b)) for a, b in pairs])),
        "disagreement": float(np.mean([np.mean(a["eval_preds"] != b["eval_preds"]) for a, b in pairs])),
        "max_abs_dlogits": max(float(np.max(np.abs(a["eval_logits"] - b["eval_logits"]))) for a, b in pairs),
        "first_diff_step": min(firsts) if firsts else None,
    }


def compare(key: GroupKey, setting: str, records: list[TrialRecord], sides: dict, **extra) -> Spread:
    """Spread across the trials of one group (repeats, or seeds): the variance metrics."""
    outcomes = [r.outcome for r in records if r.outcome]
    hashes = [o.params_sha256 for o in outcomes]
    top = max((hashes.count(h) for h in set(hashes)), default=0)
    losses = [o.final_loss for o in outcomes if o.final_loss is not None]
    acc = [o.eval_accuracy for o in outcomes if o.eval_accuracy is not None]
    r = len(records)
    return Spread(
        key=key,
        setting=setting,
        R=r,
        # repeats that share their final parameters with another (none, when all differ)
        n_identical=top if (top > 1 or r == 1) else 0,
        bitwise_identical=r > 1 and len(set(hashes)) == 1,
        loss_std=_std(losses),
        loss_range=float(max(losses) - min(losses)) if losses else math.nan,
        accuracy_std=_std(acc),
        accuracy_range=_range(acc),
        class_accuracy_range=_class_accuracy_range(outcomes),
        same_data_order=_same_data_order(outcomes),
        ranks_agree=_ranks_agree(records),
        **_distances([sides.get(rec.trial_id) for rec in records]),
        **extra,
    )


def load_sidecars(records: list[TrialRecord]) -> dict[str, dict | None]:
    """Every timed and seed trial's sidecar arrays, read once, by trial id."""
    return {r.trial_id: load_sidecar(r) for r in ok_of(records, (Kind.TIMED, Kind.SEED))}


def spreads(records: list[TrialRecord], sides: dict | None = None) -> list[Spread]:
    """Per workload x setting (x axes): spread across repeats; the seed yardstick as its
    own row; the same seed across the values of an axis that changes numerics; and each
    row's spread as a fraction of the seed yardstick's. Sidecars are read once here."""
    timed, seeds = ok_of(records, (Kind.TIMED,)), ok_of(records, (Kind.SEED,))
    sides = load_sidecars(records) if sides is None else sides
    rows = []
    for (key, setting), group in _by_setting(timed).items():
        rows.append(compare(key, setting, group, sides))
    for key, group in by_key(seeds).items():
        rows.append(compare(key, SEED_LABEL, group, sides))
    for axis in axes_mod.names():
        if axes_mod.compares_across(axis):
            rows += _across(timed, axis, sides)
    rows = _relative_to_seeds(rows)
    order = {s: i for i, s in enumerate([*setting_order(r.setting for r in rows), SEED_LABEL])}
    return sorted(rows, key=lambda s: (s.key.workload, order[s.setting], s.across or ""))


def _by_setting(records: list[TrialRecord]) -> dict[tuple, list[TrialRecord]]:
    out: dict[tuple, list[TrialRecord]] = {}
    for r in records:
        out.setdefault((GroupKey.of(r), r.spec.setting), []).append(r)
    return out


def _across(timed: list[TrialRecord], axis: str, sides: dict) -> list[Spread]:
    """The same seed at different values of `axis`: one trial per value (the first repeat)."""
    groups: dict[tuple, dict] = {}
    for r in sorted(timed, key=lambda r: r.spec.repeat):
        per_value = groups.setdefault((GroupKey.of(r).without(axis), r.spec.setting), {})
        per_value.setdefault(r.spec.axes[axis], r)
    rows = []
    for (key, setting), per_value in groups.items():
        if len(per_value) < 2:
            continue
        values = sorted(per_value)
        first = [per_value[v] for v in values]
        text = " vs ".join(str(v) for v in values)
        rows.append(compare(key, setting, first, sides, across=axis, across_values=text))
    return rows


def _seed_key(key: GroupKey) -> GroupKey:
    """The yardstick a row is measured against: the same workload, sizes and machine."""
    return key.without(*(a for a in axes_mod.names() if a not in SIZE_FIELDS))


def _relative_to_seeds(rows: list[Spread]) -> list[Spread]:
    yardsticks = {_seed_key(s.key): s for s in rows if s.setting == SEED_LABEL}
    out = []
    for s in rows:
        seed = yardsticks.get(_seed_key(s.key))
        ratios = {}
        for m in _VS_SEEDS:
            scale = getattr(seed, m) if seed else math.nan
            ratios[m] = getattr(s, m) / scale if scale > MIN_SEED_SPREAD else math.nan
        out.append(replace(s, vs_seeds=ratios))
    return out


def spread_rows(rows: list[Spread], records: list[TrialRecord]) -> list[dict]:
    """The variance table as rows of derived columns (the JSON and the display read these)."""
    from detcost.derive.keys import measured_keys

    fields = varying_fields(measured_keys(records))
    return [s.row(fields) for s in rows]


@dataclass(frozen=True)
class Divergence:
    """Distance between the repeats of one group at one checkpoint (mean over pairs)."""

    key: GroupKey
    setting: str
    step: int
    rel_l2: float
    max_abs_dtheta: float


def divergence_curves(records: list[TrialRecord], sides: dict | None = None) -> list[Divergence]:
    """How one rounding difference grows: data for a log-log plot, one point per group x
    checkpoint."""
    sides = load_sidecars(records) if sides is None else sides
    out = []
    for (key, setting), group in _by_setting(ok_of(records, (Kind.TIMED,))).items():
        arrays = [a for a in (sides.get(r.trial_id) for r in group) if a is not None]
        pairs = list(combinations(arrays, 2))
        for k, step in enumerate(arrays[0]["checkpoints"] if pairs else []):
            rel = [_rel_l2(a["param_samples"][k], b["param_samples"][k]) for a, b in pairs]
            mx = [float(np.max(np.abs(a["param_samples"][k] - b["param_samples"][k]))) for a, b in pairs]
            out.append(Divergence(key, setting, int(step), float(np.mean(rel)), max(mx)))
    return out
