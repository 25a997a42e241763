"""The exit codes of `detcost`, and its JSON on stdout."""

from __future__ import annotations

import json

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CHECKS_FAILED = 4  # selfcheck: a check failed (its lines say which)


def print_json(value) -> None:
    """Standard JSON on stdout: NaN and infinities become null (strict parsers reject them)."""
    from detcost.results import finite

    print(json.dumps(finite(value), indent=2, default=str, allow_nan=False))
