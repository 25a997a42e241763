"""How numbers read in every rendering: intervals, percentages, SI units, compact floats."""

from __future__ import annotations

import math

import numpy as np

from detcost.stats import PairedRatio


def _finite(v) -> bool:
    return v is not None and isinstance(v, int | float | np.floating | np.integer) and math.isfinite(v)


def interval_text(ratio: float, lo: float, hi: float, compact: bool = False) -> str:
    """`1.05 [0.98, 1.12]`; one round has no interval and says so, as does a degenerate one.
    `compact` (a terminal's matrix): `1.05 [0.98,1.12]`, `[1 round]`, `[0.06,>10x]`."""
    if not _finite(ratio):
        return "-"
    if not _finite(hi):
        return f"{ratio:.2f} [1 round]" if compact else f"{ratio:.2f} [one round: no interval]"
    sep = "," if compact else ", "
    if hi > 10 * max(ratio, 1e-12):
        return f"{ratio:.2f} [{lo:.2f}{sep}>10x" + ("]" if compact else ": no usable interval]")
    return f"{ratio:.2f} [{lo:.2f}{sep}{hi:.2f}]"


def ratio_text(r: PairedRatio | None) -> str:
    return "-" if r is None else interval_text(r.ratio, r.lo, r.hi)


def percent_text(fraction: float) -> str:
    """`7%`; `>100%` where a spread is so wide that its digits mean nothing."""
    if not _finite(fraction):
        return "- (one round)"
    return ">100%" if fraction > 1 else f"{fraction:.0%}"


def fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return format(v, spec) if _finite(v) else none


def si(v, unit: str) -> str:
    if not _finite(v):
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


def compact(v) -> str:
    return "-" if not _finite(v) else ("0" if v == 0 else f"{v:.2e}")


def share(v) -> str:
    return "-" if not _finite(v) else f"{v:.1%}"
