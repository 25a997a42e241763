"""The `detcost` command: run | report | compare | variance | explain | audit | selfcheck | env.

Bad input ends in one line on stderr and exit code 2; an internal error in exit code 1
(one line where detcost knows what went wrong); a failed selfcheck check in exit code 4.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from detcost.axes import int_at_least
from detcost.errors import HarnessError, UsageError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CHECKS_FAILED = 4  # selfcheck: a check failed (its lines say which)


def _print_json(value) -> None:
    """Standard JSON on stdout: NaN and infinities become null (strict parsers reject them)."""
    from detcost.results import finite

    print(json.dumps(finite(value), indent=2, default=str, allow_nan=False))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str):
        raise UsageError(message)


# ---- argument types -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _int_at_least(text: str, low: int) -> int:
    try:
        return int_at_least(text, low)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _precision(text: str) -> float:
    """`2%` or `0.02`: a relative half-width between 0 and 1."""
    value = _fraction(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"give a fraction below 1 or a percentage (2%), got {text}")
    return value


def _non_negative_float(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _positive_float(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


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
    from detcost.workloads import BUILTIN

    g.add_argument(
        "--workloads",
        default=None,
        help=f"comma list of workloads (default: the built-in {','.join(BUILTIN)}, or only --model's); "
        "also package.module:factory",
    )
    _add_model(g)
    g.add_argument("--settings", default=None, help="comma list of settings (default: all seven)")
    g.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="repeats per workload x setting (default: 3 on CUDA, 2 on CPU)",
    )
    g.add_argument("--seed", type=_non_negative_int, default=0, help="trial seed (default: %(default)s)")
    g.add_argument(
        "--seeds",
        type=_non_negative_int,
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
    g.add_argument("--classes", type=_positive_int, default=None, help="--model's classes (default: its output width)")


def _workload_names(args) -> list[str]:
    """--workloads and --model as workload names; a broken --model is a UsageError now,
    before any trial starts. Without --workloads: the built-in ones, or only the model."""
    from detcost.workloads import BUILTIN, parse_workloads
    from detcost.workloads.model import resolve

    if args.model is None and (args.input or args.classes):
        raise UsageError("--input and --classes describe --model; give --model too")
    given = args.workloads or ("" if args.model else ",".join(BUILTIN))
    names = [w.name for w in parse_workloads(given)] if given else []
    return names + ([resolve(args.model, args.input, args.classes).name] if args.model else [])


def _add_run_trials(g) -> None:
    g.add_argument("--quick", action="store_true", help="small sizes and few steps: a smoke run")
    g.add_argument(
        "--steps", type=_positive_int, default=None, help="timed steps per trial (default: per workload and device)"
    )
    g.add_argument(
        "--warmup", type=_non_negative_int, default=None, help="warm-up steps before timing (default: per workload)"
    )
    g.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="batch size of every workload, --model's too (default: per workload and device; the tables show it)",
    )
    g.add_argument(
        "--timeout",
        type=_positive_float,
        default=600.0,
        help="seconds per trial before it is killed (default: %(default)g)",
    )
    g.add_argument(
        "--max-time",
        type=_positive_float,
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
        "--start-method",
        choices=("auto", "forkserver", "spawn"),
        default="auto",
        help="how trial processes start (default: the forkserver, on CPU and CUDA)",
    )
    g.add_argument(
        "--layout",
        default="random",  # checked by SweepOptions (isolation.LAYOUTS), without importing torch here
        help="random (default): a new forkserver each round and a random heap and environment pad in every "
        "trial, so a memory layout's bias becomes round-to-round noise the intervals see; fixed: one "
        "forkserver and no pads (as before; biased, see docs/layout-bias.md)",
    )


def _add_run_trust(g) -> None:
    from detcost.guard import DEFAULT_WAIT_S

    g.add_argument(
        "--precision",
        type=_precision,
        default=None,
        help="add rounds until every price's 95%% interval is within this (2%% or 0.02), "
        "or until --max-repeats or --max-time",
    )
    g.add_argument(
        "--max-repeats", type=_positive_int, default=20, help="most rounds --precision may run (default: %(default)s)"
    )
    g.add_argument(
        "--wait-quiet",
        type=_non_negative_float,
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
    _add_max_slowdown(g)
    g.add_argument("--dry-run", action="store_true", help="list the planned trials and an estimated time, run nothing")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _results_path(given: Path | None, run_id: str) -> Path:
    results = given or Path("results") / f"{run_id}.jsonl"
    if results.exists() and results.is_dir():
        raise UsageError(f"--results {results} is a directory; give a file path")
    if not results.suffix:  # the arrays go in a folder named after the file's stem: it must differ
        results = results.with_suffix(".jsonl")
    return results


def _sweep_options(args):
    from detcost import axes
    from detcost.env import resolve_device
    from detcost.plan import SweepOptions, new_run_id, size_preset
    from detcost.settings import DEFAULT_SETTINGS, parse_settings
    from detcost.timing import is_cuda

    workloads = _workload_names(args)
    settings = [s.name for s in parse_settings(args.settings or ",".join(DEFAULT_SETTINGS))]
    device = resolve_device(args.device)
    cuda = is_cuda(device)
    run_id = new_run_id()
    results = _results_path(args.results, run_id)
    return SweepOptions(
        workloads=workloads,
        settings=settings,
        repeats=args.repeats or (3 if cuda else 2),
        seed=args.seed,
        device=device,
        axes={name: getattr(args, f"axis_{name}") for name in axes.names() if getattr(args, f"axis_{name}")},
        size_preset=size_preset(device, args.quick),
        results=results,
        run_id=run_id,
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        timeout=args.timeout,
        seeds=args.seeds,
        aa=not args.no_aa,
        audit=not args.no_audit,
        explain=not args.no_explain,
        keep_params=args.keep_params,
        start_method=args.start_method,
        layout=args.layout,
        max_time=args.max_time,
        allow_busy=args.allow_busy,
        wait_quiet=args.wait_quiet,
        precision=args.precision,
        max_repeats=max(args.max_repeats, args.repeats or 0),
    )


def cmd_run(args) -> int:
    from detcost.derive.analysis import analyse
    from detcost.report import text
    from detcost.sweep import run_sweep

    opts = _sweep_options(args)
    if opts.added_default:
        print(
            "note: default added to the settings: the A/A control and the seed yardstick run under it", file=sys.stderr
        )
    _check_paths(opts, args)  # every path the run will write, before its first trial
    if args.dry_run:
        return _dry_run(opts, args)
    if not opts.results.parent.exists():
        print(f"note: created the folder {opts.results.parent}/, where the results file goes", file=sys.stderr)
    t0 = time.monotonic()
    outcome = run_sweep(opts, resume=args.resume, progress=not args.quiet)
    wall = time.monotonic() - t0
    # the sweep's records, every planned trial's latest (a --precision run may have added rounds)
    analysis = analyse(outcome.records, args.max_slowdown)
    paths = None
    if not args.no_report and outcome.records:
        from detcost.report.build import build_report

        try:
            paths = build_report(analysis, args.report, [outcome.results])
        except OSError as exc:  # the results are safe: say so, and print the summary anyway
            print(f"detcost: could not write the report: {exc}; the results are in {outcome.results}", file=sys.stderr)
    if args.json:
        _print_json(text.run_summary_json(analysis, outcome, wall, paths))
    else:
        print(text.run_summary(analysis, outcome, wall, paths))
    return EXIT_STOPPED if outcome.stopped_early else EXIT_OK


def _check_paths(opts, args) -> None:
    from detcost.results import check_writable

    check_writable(opts.results, "results file")
    if not args.no_report:
        check_writable(args.report or Path("reports") / opts.run_id, "report folder")


def _dry_run(opts, args) -> int:
    """The trials a run would start (with --resume: those still to do), a rough time, and
    whether the machine is busy now. Nothing here initialises CUDA: the estimate counts
    FLOPs on the meta device and names the GPU through nvidia-smi."""
    from detcost import axes, guard, results
    from detcost.estimate import estimate
    from detcost.plan import new_servers, plan
    from detcost.record import TrialRecord
    from detcost.report import text
    from detcost.sweep import ok_trial_ids

    specs = plan(opts)
    if args.resume and opts.results.exists():
        done = ok_trial_ids([TrialRecord.from_json(r) for r in results.iter_records(opts.results)])
        specs = [s for s in specs if s.trial_id not in done]
    est = estimate(specs, opts.size_preset, new_servers(opts, specs))
    gpu = _gpu_name(opts.device) if est.cuda else None
    load = guard.sample(opts.device, axes.host_threads(opts.axes, opts.device))
    if args.json:
        _print_json(
            {
                "trials": [s.trial_id for s in specs],
                "estimated_s": est.seconds,
                "estimate": {"by_kind": est.by_kind, "once_s": est.once_s, "assumptions": est.assumptions()},
                "gpu": gpu,
                "busy_now": load.describe() if load.busy else None,
            }
        )
        return EXIT_OK
    print(text.plan_text(specs, est, gpu))
    if load.busy:
        wait = f"a run would wait up to {opts.wait_quiet:g} s for it to go quiet"
        print(f"the machine is busy now: {load.describe()}; {wait}")
    else:
        print("the machine is quiet now (no other process competes for its CPUs or GPU)")
    return EXIT_OK


def _gpu_name(device: str) -> str | None:
    """The name of `device` as nvidia-smi lists it (no CUDA in this process), if it does."""
    from detcost.env import gpu_names

    names, index = gpu_names(), int(device.partition(":")[2] or 0)
    return names[index] if index < len(names) else None


def _add_env(sub) -> None:
    p = sub.add_parser("env", help="print the environment fingerprint stored with every result")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--asv-machine",
        action="store_true",
        help="print a machine name for `asv machine --machine` that names the GPU (asv has no GPU field)",
    )
    p.set_defaults(func=cmd_env)


def cmd_env(args) -> int:
    from detcost.env import fingerprint, resolve_device

    info = fingerprint(resolve_device(args.device))
    if args.asv_machine:
        hardware = info["gpu"] or info["cpu"]
        words = [("".join(c if c.isalnum() else " " for c in part)).split() for part in (info["hostname"], hardware)]
        print("-".join(w for part in words for w in part))
        return EXIT_OK
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for key, value in info.items():
        if key == "env":
            print("env:" + ("" if value else " (none of the relevant variables set)"))
            for k, v in value.items():
                print(f"  {k}={v}")
        else:
            print(f"{key}: {value}")
    return EXIT_OK


def _add_variance(sub) -> None:
    p = sub.add_parser("variance", help="what each setting buys: spread across repeats and seeds, from a results file")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s)")
    p.add_argument("--curves", action="store_true", help="also print the divergence over checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_variance)


def cmd_variance(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.report import text

    analysis = analyse(results_mod.load_records(args.results))
    machines = analysis.machines
    if args.json:
        _print_json(
            {
                "variance": [row for m in machines for row in text.records_json(m.spread_frame())],
                "divergence": [row for m in machines for row in text.records_json(m.curve_frame())]
                if args.curves or args.json
                else None,
            }
        )
        return EXIT_OK
    if not any(m.spreads for m in machines):
        print("no ok timed or seed trials in these results: nothing to compare")
        return EXIT_OK
    for m in machines:
        if len(machines) > 1:
            print(f"== machine: {m.machine}")
        print("spread across repeats (same seed, fresh processes) and across seeds (the yardstick):")
        print(text.variance_display(m).to_string(index=False))
        if args.curves and m.curves:
            print("\ndivergence between repeats at each checkpoint step (rel L2; 0: bitwise identical):")
            print(text.divergence_text(m))
    print("\n" + text.VARIANCE_LEGEND)
    return EXIT_OK


def _fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.1 or 10%)") from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give a fraction such as 0.1 (10%)")
    return value


def _add_max_slowdown(p) -> None:
    from detcost.derive.recommend import DEFAULT_MAX_SLOWDOWN

    p.add_argument(
        "--max-slowdown",
        type=_fraction,
        default=DEFAULT_MAX_SLOWDOWN,
        help="speed budget of the recommendation, relative to the fastest setting (default: %(default)s)",
    )


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report and Markdown summary of results file(s)")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s); several machines are grouped")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<run-id>)")
    _add_max_slowdown(p)
    p.add_argument("--json", action="store_true", help="print the recommendation and paths as JSON")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.report.build import build_report
    from detcost.report.sweep_text import recommendation_json

    analysis = analyse(results_mod.load_records(args.results), args.max_slowdown)
    paths = build_report(analysis, args.out, args.results)
    if args.json:
        recs = [recommendation_json(m.recommendation) | {"machine": m.machine} for m in analysis.machines]
        _print_json({"html": str(paths.html), "markdown": str(paths.markdown), "recommendation": recs})
    else:
        print(f"report:  {paths.html}\n         {paths.markdown}")
    return EXIT_OK


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="the price table of two runs side by side (two GPUs, torch versions, commits)")
    p.add_argument("a", type=Path, metavar="A.jsonl", help="results JSONL of run A")
    p.add_argument("b", type=Path, metavar="B.jsonl", help="results JSONL of run B")
    p.add_argument("--out", type=Path, default=None, help="also write the comparison as HTML to this file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.derive.compare import compare_runs
    from detcost.report import compare, text

    a, b = results_mod.load_records(args.a), results_mod.load_records(args.b)
    ma, mb = analyse(a).only, analyse(b).only
    deltas, missing = compare_runs(a, b, ma.prices if ma else [], mb.prices if mb else [])
    html = None
    if args.out:
        machines = (ma.machine if ma else "?", mb.machine if mb else "?")
        html = compare.write_html(deltas, missing, (args.a, args.b), machines, args.out)
    if args.json:
        table = [d.row() for d in deltas]
        _print_json({"comparison": text.records_json(table), "missing": missing, "html": str(html) if html else None})
        return EXIT_OK
    print(compare.compare_text(deltas, missing))
    if html:
        print(f"html: {html}")
    return EXIT_OK


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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_selfcheck)


def cmd_selfcheck(args) -> int:
    from dataclasses import asdict

    import torch

    import detcost
    from detcost import selfcheck
    from detcost.env import resolve_device
    from detcost.workloads import parse_workloads

    workload = parse_workloads(args.workloads)[0].name
    device = resolve_device(args.device)  # no CUDA, or no such GPU: one line, exit 2
    checks = selfcheck.run_all(device, workload, "quick" if args.quick else None, progress=not args.json)
    missed = sum(c.ok is False for c in checks)
    if args.json:
        _print_json([asdict(c) for c in checks])
    else:
        print(f"detcost {detcost.__version__} selfcheck on {device} (torch {torch.__version__}), workload {workload}:")
        for c in checks:
            print(f"  {c.line()}")
        print(f"{missed} of {len(checks)} checks failed" if missed else f"all {len(checks)} checks passed or reported")
    return EXIT_CHECKS_FAILED if missed else EXIT_OK


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="which ops got slower: the profiled trials of a results file, diffed")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s)")
    p.add_argument("--workloads", default=None, help="comma list (default: all in the results)")
    p.add_argument("--top", type=_positive_int, default=8, help="ops per workload x setting (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.report import text

    records = results_mod.load_records(args.results)
    if args.workloads:
        wanted = {w.strip() for w in args.workloads.split(",")}
        records = [r for r in records if r.spec.workload in wanted]
    m = analyse(records).only
    table = m.attribution.groupby(["workload", "setting"], sort=False).head(args.top) if m else None
    if args.json:
        _print_json(text.records_json(table if table is not None else []))
    elif table is None or table.empty:
        print("no profiled trials in these results (the sweep ran with --no-explain?): nothing to explain")
    else:
        print(text.explain_text(table, cpu=m.cpu))
    return EXIT_OK


def _add_audit(sub) -> None:
    from detcost.workloads import BUILTIN

    p = sub.add_parser("audit", help="list the ops with no deterministic implementation that a workload hits")
    p.add_argument(
        "--workloads", "--workload", default=None, help=f"comma list (default: the built-in {','.join(BUILTIN)})"
    )
    _add_model(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args) -> int:
    from detcost.env import resolve_device
    from detcost.isolation import run_isolated, start_method
    from detcost.plan import size_preset
    from detcost.record import Kind
    from detcost.report import text
    from detcost.train import spec_at_preset

    workloads = _workload_names(args)
    device = resolve_device(args.device)
    preset = size_preset(device, args.quick)
    method = start_method("auto", device)
    specs = [spec_at_preset(w, "strict", device, preset, run_id="audit", kind=Kind.AUDIT) for w in workloads]
    records = [run_isolated(spec, method=method) for spec in specs]
    if args.json:
        _print_json(
            [
                {
                    "workload": r.spec.workload,
                    "status": r.status,
                    "error": r.error,
                    **(r.audit.to_json() if r.audit else {}),
                }
                for r in records
            ]
        )
    else:
        from detcost.derive.analysis import AuditFinding

        print(text.audit_text([AuditFinding.of(r) for r in records]))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    import detcost

    parser = _Parser(prog="detcost", description="What determinism costs in PyTorch training, and what it buys.")
    parser.add_argument("--version", action="version", version=f"detcost {detcost.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_env(sub)
    _add_variance(sub)
    _add_audit(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_selfcheck(sub)
    _add_explain(sub)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with _terminate_as_interrupt():
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
        print("detcost: interrupted; finished trials are kept (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
