"""`detcost`'s options: one parser, a sub-parser per command, each naming the function in
`detcost.cli.run` or `detcost.cli.show` that runs it. A usage error is one line, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from detcost.axes import int_at_least
from detcost.cli.gate import add_gate
from detcost.cli.run import cmd_audit, cmd_rank, cmd_run
from detcost.cli.show import cmd_compare, cmd_config, cmd_env, cmd_explain, cmd_report, cmd_selfcheck, cmd_variance
from detcost.cli.values import fraction, non_negative_float, non_negative_int, positive_float, positive_int, precision
from detcost.errors import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str):
        raise UsageError(message)


# ---- commands -----------------------------------------------------------------------


def _add_axes(p) -> None:
    """One option per registered axis (`--threads`, `--vary`, `--memory-format`, ...)."""
    from detcost import axes

    for axis, _ in axes.each({}):
        p.add_argument(
            axis.flag,
            dest=f"axis_{axis.name}",
            metavar=axis.name.upper(),
            type=_axis_values(axis),
            default=None,
            help=axis.help,
        )


def _axis_values(axis):
    def parse(text: str) -> list:
        try:
            return axis.parse_list(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{axis.flag}: ")) from None

    return parse


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a sweep: workloads x settings x repeats, each trial in a fresh process")
    _add_run_what(p.add_argument_group("what to run"))
    _add_run_trials(p.add_argument_group("trials"))
    _add_run_trust(p.add_argument_group("precision and the quiet-machine guard"))
    _add_run_output(p.add_argument_group("results and report"))
    p.set_defaults(func=cmd_run)


def _add_run_what(g) -> None:
    from detcost.derive.policy import MIN_ROUNDS
    from detcost.plan import DEFAULT_ROUNDS
    from detcost.workloads import DEFAULT_WORKLOADS

    g.add_argument(
        "--workloads",
        default=None,
        help=f"comma list of workloads; all: the nine built-in ones (default: the team config's, else "
        f"{','.join(DEFAULT_WORKLOADS)}, or only --model's); also package.module:factory",
    )
    _add_model(g)
    g.add_argument(
        "--settings",
        default=None,
        help="comma list of settings and groups (frameworks: every framework's switch; all: the seven and the "
        "switches); default: the seven; the team config's is added",
    )
    g.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help=f"rounds: repeats per workload x setting (default: {DEFAULT_ROUNDS['cuda']} on CUDA, "
        f"{DEFAULT_ROUNDS['cpu']} on the CPU; a verdict needs {MIN_ROUNDS})",
    )
    g.add_argument(
        "--seed", type=non_negative_int, default=None, help="trial seed (default: the team config's, else 0)"
    )
    g.add_argument(
        "--seeds",
        type=non_negative_int,
        default=3,
        help="seed yardstick: trials of the reference setting with this many other seeds "
        "(default: %(default)s; 0 skips)",
    )
    g.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:N")
    _add_axes(g)


def _add_model(g) -> None:
    g.add_argument(
        "--model",
        default=None,
        help="your own nn.Module: package.module:callable or path/to/file.py:callable returning it; "
        "trained on detcost's seeded data like the built-in nets",
    )
    g.add_argument(
        "--input", default=None, help="--model's input, CxHxW (default: its first conv's channels x 32 x 32)"
    )
    g.add_argument("--classes", type=positive_int, default=None, help="--model's classes (default: its output width)")


def _add_run_trials(g) -> None:
    g.add_argument("--quick", action="store_true", help="small sizes and few steps: a smoke run")
    g.add_argument(
        "--steps", type=positive_int, default=None, help="timed steps per trial (default: per workload and device)"
    )
    g.add_argument(
        "--warmup", type=non_negative_int, default=None, help="warm-up steps before timing (default: per workload)"
    )
    g.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help="batch size of every workload, --model's too (default: per workload and device; the tables show it)",
    )
    g.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        help="seconds per trial before it is killed (default: %(default)g)",
    )
    g.add_argument(
        "--max-time",
        type=positive_float,
        default=None,
        help="stop starting trials after this many seconds (--resume continues)",
    )
    g.add_argument("--keep-params", action="store_true", help="keep the full final parameters of every trial (large)")
    g.add_argument("--no-aa", action="store_true", help="skip the A/A control (default is to run it)")
    g.add_argument("--no-audit", action="store_true", help="skip the per-workload audit of nondeterministic ops")
    g.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the profiled trials that explain the price (one per workload x setting)",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the rounds in parallel on Ray, a task per round (one GPU, or --threads cores of its own): "
        "--ray alone starts a Ray cluster of this machine, --ray ADDRESS joins one (pip install 'detcost[ray]')",
    )
    g.add_argument(
        "--start-method",
        choices=("auto", "forkserver", "spawn"),
        default="auto",
        help="how trial processes start (default: the forkserver, on CPU and CUDA)",
    )
    g.add_argument(
        "--layout",
        metavar="{random,fixed}",
        default="random",  # checked by SweepOptions (isolation.LAYOUTS), without importing torch here
        help="random (default): a new forkserver each round and a random heap and environment pad in every "
        "trial, so a memory layout's bias becomes round-to-round noise the intervals see; fixed: one "
        "forkserver and no pads (as before; biased, see docs/layout-bias.md)",
    )


def _add_run_trust(g) -> None:
    from detcost.guard import DEFAULT_WAIT_S

    g.add_argument(
        "--precision",
        type=precision,
        default=None,
        help="add rounds until every price's 95%% interval is within this (2%% or 0.02), "
        "or until --max-repeats or --max-time",
    )
    g.add_argument(
        "--decide",
        action="store_true",
        help="add rounds only to the prices whose interval still straddles the budget (--max-slowdown), until "
        "each is within or over it, or --max-repeats (at least 5) or --max-time; the sweep looks at 5, 10, 20, "
        "... rounds and spreads the intervals' 95%% over the looks, so stopping early does not overstate them",
    )
    g.add_argument(
        "--max-repeats",
        type=positive_int,
        default=20,
        help="most rounds --precision or --decide may run (default: %(default)s)",
    )
    g.add_argument(
        "--wait-quiet",
        type=non_negative_float,
        default=DEFAULT_WAIT_S,
        help="seconds to wait for a busy machine to go quiet, before the sweep and before running a busy trial "
        "again (default: %(default)g)",
    )
    g.add_argument("--allow-busy", action="store_true", help="start and go on while other jobs use the machine")


def _add_run_output(g) -> None:
    g.add_argument("--results", type=Path, default=None, help="results JSONL (default: results/<run-id>.jsonl)")
    g.add_argument(
        "--resume", action="store_true", help="continue a results file: run only trials without an ok record"
    )
    g.add_argument("--report", type=Path, default=None, help="report folder (default: reports/<run-id>)")
    g.add_argument("--no-report", action="store_true", help="do not write the HTML and Markdown report at the end")
    add_max_slowdown(g)
    g.add_argument("--dry-run", action="store_true", help="list the planned trials and an estimated time, run nothing")
    g.add_argument(
        "--estimate-from",
        type=Path,
        default=None,
        metavar="RESULTS.jsonl",
        help="with --dry-run: estimate from the time each trial took on this machine in an earlier results file "
        "(its process_wall_s) instead of the assumed figures (default with --resume: the --results file)",
    )
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_env(sub) -> None:
    p = sub.add_parser("env", help="print the environment fingerprint stored with every result")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.add_argument(
        "--asv-machine",
        action="store_true",
        help="print a machine name for `asv machine --machine` that names the GPU (asv has no GPU field)",
    )
    p.set_defaults(func=cmd_env)


def _add_config(sub) -> None:
    p = sub.add_parser(
        "config", help="print the team config (detcost.toml, or [tool.detcost] in pyproject.toml) found here"
    )
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.set_defaults(func=cmd_config)


def _add_variance(sub) -> None:
    p = sub.add_parser("variance", help="what each setting buys: spread across repeats and seeds, from a results file")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s)")
    p.add_argument("--curves", action="store_true", help="also print the divergence over checkpoints")
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.set_defaults(func=cmd_variance)


def add_max_slowdown(p) -> None:
    """--max-slowdown, the one definition every command that judges prices shares: unset
    unless given, so that `derive.policy.resolve` takes the team config's, else the default."""
    from detcost.derive.policy import DEFAULT_MAX_SLOWDOWN

    p.add_argument(
        "--max-slowdown",
        type=fraction,
        default=None,
        help="speed budget, relative to the fastest setting: 10%% or 0.1 (default: the team config's, else "
        f"{DEFAULT_MAX_SLOWDOWN * 100:g}%%)",
    )


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report and Markdown summary of results file(s)")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s); several machines are grouped")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<run-id>)")
    add_max_slowdown(p)
    p.add_argument("--json", action="store_true", help="print the recommendation and paths as JSON")
    p.set_defaults(func=cmd_report)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="the price table of two runs side by side (two GPUs, torch versions, commits)")
    p.add_argument("a", type=Path, metavar="A.jsonl", help="results JSONL of run A")
    p.add_argument("b", type=Path, metavar="B.jsonl", help="results JSONL of run B")
    p.add_argument("--out", type=Path, default=None, help="also write the comparison as HTML to this file")
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.set_defaults(func=cmd_compare)


def _add_selfcheck(sub) -> None:
    p = sub.add_parser(
        "selfcheck",
        help="measure detcost's own timing (overhead, agreement, repeatability, efficiency); "
        "on CUDA, check the CUDA path too: one line per check, to paste into a bug report",
    )
    p.add_argument(
        "--workloads", "--workload", default="simple_cnn", help="the workload to time (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes for the timing checks")
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.set_defaults(func=cmd_selfcheck)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="which ops got slower: the profiled trials of a results file, diffed")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s)")
    p.add_argument("--workloads", default=None, help="comma list (default: all in the results)")
    p.add_argument("--top", type=positive_int, default=8, help="ops per workload x setting (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.set_defaults(func=cmd_explain)


def _add_audit(sub) -> None:
    from detcost.workloads import BUILTIN

    p = sub.add_parser("audit", help="list the ops with no deterministic implementation that a workload hits")
    p.add_argument(
        "--workloads", "--workload", default=None, help=f"comma list (default: the built-in {','.join(BUILTIN)})"
    )
    _add_model(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true", help="print the same as JSON (NaN as null)")
    p.set_defaults(func=cmd_audit)


def _add_rank(sub) -> None:
    p = sub.add_parser(
        "rank",
        help="one rank of a DDP trial that torchrun started, on one machine or across several "
        "(torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m detcost rank ...): "
        "rank 0 appends the trial's record to --results, and a rank that fails appends its own failure",
    )
    p.add_argument("--workload", default="simple_cnn", help="one workload (default: simple_cnn)")
    p.add_argument("--setting", default="default", help="one setting (default: default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda: each rank takes the GPU of its local rank")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--threads", type=lambda t: int_at_least(t, 1), default=None, help="torch's CPU threads a rank")
    p.add_argument("--seed", type=int, default=0, help="the trial's seed (default: 0)")
    p.add_argument("--repeat", type=int, default=0, help="the trial's repeat number, for its id (default: 0)")
    p.add_argument("--results", type=Path, required=True, help="the JSONL file the record is appended to")
    p.set_defaults(func=cmd_rank)


def build_parser() -> argparse.ArgumentParser:
    import detcost

    parser = _Parser(prog="detcost", description="What determinism costs in PyTorch training, and what it buys.")
    parser.add_argument("--version", action="version", version=f"detcost {detcost.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_env(sub)
    _add_config(sub)
    _add_variance(sub)
    _add_audit(sub)
    _add_rank(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_selfcheck(sub)
    _add_explain(sub)
    add_gate(sub, add_max_slowdown)
    return parser
