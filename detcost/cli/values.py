"""The values `detcost`'s options take: each one a type for argparse whose refusal of a
bad value is one line naming it (`ArgumentTypeError`, exit 2)."""

from __future__ import annotations

import argparse

from detcost.axes import int_at_least


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _int_at_least(text: str, low: int) -> int:
    try:
        return int_at_least(text, low)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def precision(text: str) -> float:
    """`2%` or `0.02`: a relative half-width between 0 and 1."""
    value = fraction(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"give a fraction below 1 or a percentage (2%), got {text}")
    return value


def non_negative_float(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_float(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.1 or 10%)") from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give a fraction such as 0.1 (10%)")
    return value
