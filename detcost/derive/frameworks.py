"""What each framework's determinism switch in a run costs and buys: its price and whether
its repeats were bitwise identical, beside the detcost setting that is at least as
reproducible for the lowest price, and what the switch sets that no determinism needs
(CUDA_LAUNCH_BLOCKING=1) or leaves out (the NaN fill stays on; no cuBLAS workspace; only
warnings for ops without a deterministic implementation).

Computed from the analysis's own price and spread rows, per group; a switch's figures are
the rows the price matrix and the variance table show. Ties in price follow the
recommendation's rule: overlapping intervals count as equal, and then fewer changes from
`default` win.
"""

from __future__ import annotations

from dataclasses import dataclass

from detcost.derive.keys import GroupKey
from detcost.derive.prices import Price
from detcost.derive.recommend import changes_from_default
from detcost.derive.variance import Spread
from detcost.settings import FRAMEWORKS, SETTINGS, Setting
from detcost.snippets import determinism_flags


@dataclass(frozen=True)
class SwitchVerdict:
    """One framework switch on one group."""

    key: GroupKey
    switch: str
    call: str  # the framework call it replicates
    source: str  # the version and file its flags were read from
    price: Price | None  # the row that prices it (its pooled row on the CPU)
    bitwise: bool | None  # its repeats bitwise identical; None where it has no repeats
    equivalent: str | None  # the detcost setting at least as reproducible, cheapest
    equivalent_price: Price | None
    needless: tuple[str, ...]  # what it sets that no determinism needs
    missing: tuple[str, ...]  # what it leaves out
    failed: str | None = None  # why its timed trials did not all finish (e.g. a cuBLAS op with no workspace set)


def _price(prices: list[Price], key: GroupKey, setting: str) -> Price | None:
    return next((p for p in prices if p.key == key and p.prices(setting) and not p.is_aa), None)


def _spread(spreads: list[Spread], key: GroupKey, setting: str) -> Spread | None:
    return next((s for s in spreads if s.key == key and s.setting == setting and s.same_seed), None)


def cheapest_equivalent(
    prices: list[Price], spreads: list[Spread], key: GroupKey, bitwise: bool | None
) -> tuple[str, Price] | None:
    """Among detcost's own settings priced on `key`: those at least as reproducible as a
    switch (bitwise identical repeats where the switch's were), the cheapest; prices whose
    intervals overlap tie, and the one with fewer changes from `default` wins."""
    rows = []
    for name, setting in SETTINGS.items():
        p, s = _price(prices, key, name), _spread(spreads, key, name)
        if setting.is_framework or p is None:
            continue
        if bitwise and not (s is not None and s.all_identical):
            continue
        rows.append((name, p))
    if not rows:
        return None
    low = min(rows, key=lambda r: r[1].price.ratio)[1].price
    tied = [r for r in rows if r[1].price.lo <= low.hi or r[1].price.ratio <= low.ratio]
    return min(tied, key=lambda r: (changes_from_default(r[0]), r[1].price.ratio))


def _without_launch_blocking(prices: list[Price], key: GroupKey, switch: Setting) -> tuple[str, Price] | None:
    """A setting of the run with the switch's flags but CUDA_LAUNCH_BLOCKING, priced on `key`."""
    want = {**determinism_flags(switch), "cuda_launch_blocking": None}
    for name, setting in SETTINGS.items():
        p = _price(prices, key, name)
        if p is not None and name != switch.name and determinism_flags(setting) == want:
            return name, p
    return None


def needless(prices: list[Price], key: GroupKey, switch: Setting, cpu: bool) -> tuple[str, ...]:
    if not switch.launch_blocking:
        return ()
    text = (
        "CUDA_LAUNCH_BLOCKING=1 makes every kernel launch synchronous (the host waits for each kernel); no "
        "determinism needs it on CUDA >= 10.2, where CUBLAS_WORKSPACE_CONFIG does the job"
    )
    if cpu:
        return (text + ". On the CPU it changes nothing, so this run cannot show its price; on a GPU expect it to "
                "dominate the switch's price",)  # fmt: skip
    same = _without_launch_blocking(prices, key, switch)
    price = _price(prices, key, switch.name)
    if same and price is not None:
        name, p = same
        return (f"{text}: {switch.name} costs {price.price.ratio:.2f}x, {name} (the same flags without it) "
                f"{p.price.ratio:.2f}x",)  # fmt: skip
    return (text + ": expect it to dominate the switch's price",)


def missing(prices: list[Price], key: GroupKey, switch: Setting, cpu: bool) -> tuple[str, ...]:
    out = []
    if not switch.deterministic_algorithms:
        out.append(
            "it does not call use_deterministic_algorithms: ops outside cuDNN with a nondeterministic CUDA kernel "
            "(index_add_, scatter_add_, ...) stay nondeterministic"
        )
        return tuple(out)
    if switch.warn_only:
        out.append(
            "warn_only: an op with no deterministic implementation only warns and runs nondeterministically, so "
            "repeats may differ without an error"
        )
    if dict(switch.env).get("CUBLAS_WORKSPACE_CONFIG") is None:
        out.append(
            "no CUBLAS_WORKSPACE_CONFIG: on CUDA >= 10.2 a cuBLAS op then raises an error under "
            "use_deterministic_algorithms unless the variable is set elsewhere"
            + (" (the CPU has no cuBLAS: this run cannot show it)" if cpu else "")
        )
    if switch.fill_uninitialized_memory:
        nofill = _price(prices, key, "strict_nofill")
        saves = f"; strict_nofill, strict without the fill, costs {nofill.price.ratio:.2f}x here" if nofill else ""
        out.append(
            "fill_uninitialized_memory stays on (no switch touches it): every uninitialised allocation is NaN-filled"
            f"{saves}; turning it off is safe only if the program never reads memory it did not write first"
        )
    return tuple(out)


def framework_switches(
    prices: list[Price], spreads: list[Spread], cpu: bool, failures: list[tuple[GroupKey, str, str]] = ()
) -> list[SwitchVerdict]:
    """Each framework switch the run priced or tried, per group (empty when the run has none).
    `failures`: (key, setting, "status: error") of the timed trials that did not finish."""
    keys = list(dict.fromkeys([*(p.key for p in prices), *(k for k, _, _ in failures)]))
    out = []
    for key in keys:
        for name, switch in FRAMEWORKS.items():
            price = _price(prices, key, name)
            spread = _spread(spreads, key, name)
            failed = sorted({why for k, s, why in failures if k == key and s == name})
            if price is None and spread is None and not failed:
                continue
            bitwise = spread.all_identical if spread is not None else None
            eq = cheapest_equivalent(prices, spreads, key, bitwise)
            out.append(
                SwitchVerdict(
                    key=key,
                    switch=name,
                    call=switch.framework,
                    source=switch.source,
                    price=price,
                    bitwise=bitwise,
                    equivalent=eq[0] if eq else None,
                    equivalent_price=eq[1] if eq else None,
                    needless=needless(prices, key, switch, cpu),
                    missing=missing(prices, key, switch, cpu),
                    failed="; ".join(failed) or None,
                )
            )
    return out
