"""The `detcost` command: run | report | compare | variance | explain | audit | rank | gate | config |
selfcheck | env.

Bad input ends in one line on stderr and exit code 2; an internal error in exit code 1
(one line where detcost knows what went wrong); a failed selfcheck check in exit code 4;
`gate` exits 0 (pass), 1 (fail) or 3 (cannot decide).
Its options are in `args`; the commands in `run` (those that run trials) and `show`
(those that read results or describe the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings

from detcost.cli.args import build_parser
from detcost.cli.output import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from detcost.errors import HarnessError, TornRecordWarning, UsageError

__all__ = ["build_parser", "main"]


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a cancelled CI job, `kill`) and SIGHUP (a closed terminal) stop detcost as
    Ctrl-C does: the running trial and its workers are killed, finished trials kept."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _warnings_as_lines():
    """detcost's own warnings (a torn results file) as one line each on stderr, once each,
    not Python's two-line form with a source location."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TornRecordWarning):
            print(f"detcost: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("default", TornRecordWarning)
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        with _terminate_as_interrupt(), _warnings_as_lines():
            return args.func(args)
    except UsageError as exc:
        print(f"detcost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HarnessError as exc:
        print(f"detcost: error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        # only `run` keeps a results file to resume; the selfcheck and the others stop
        resumable = getattr(args, "command", None) == "run"
        print("detcost: interrupted" + ("; finished trials are kept (rerun with --resume)" if resumable else ""),
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
