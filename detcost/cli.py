"""The `detcost` command: run | report | compare | variance | explain | audit | selfcheck | env.

Bad input ends in one line on stderr and exit code 2; an internal error in exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from detcost.errors import UsageError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _print_json(value) -> None:
    """Standard JSON on stdout: NaN and infinities become null (strict parsers reject them)."""
    from detcost.results import finite

    print(json.dumps(finite(value), indent=2, default=str, allow_nan=False))


def _records(df) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict(orient="records") if len(df) else []


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str):
        raise UsageError(message)


# ---- argument types -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _int_list(text: str) -> list[int]:
    values = [_positive_int(t.strip()) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return list(dict.fromkeys(values))


def _choice_list(valid: tuple[str, ...], what: str):
    """An argparse type: a comma list of names from `valid`, order kept, duplicates dropped."""

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or text!r}; valid: {', '.join(valid)}")
        return list(dict.fromkeys(names))

    return parse


# ---- device -------------------------------------------------------------------------


def _cuda_build(torch) -> str:
    return f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"


def resolve_device(requested: str) -> str:
    """auto -> cuda:0 when CUDA is usable, else cpu; cuda[:N] must exist."""
    from detcost.env import cuda_available

    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        import torch

        if not cuda_available():
            raise UsageError(
                f"--device {requested}: CUDA is not available (torch {torch.__version__}, {_cuda_build(torch)})"
            )
        index = 0 if requested == "cuda" else requested.split(":", 1)[1]
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise UsageError(
                f"--device {requested}: no such GPU; this machine has cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
        return f"cuda:{int(index)}"
    raise UsageError(f"--device {requested!r}: use auto, cpu, cuda or cuda:N")


# ---- commands -----------------------------------------------------------------------


def _add_run(sub) -> None:
    from detcost.trial import MEMORY_FORMATS, VARY_MODES
    from detcost.workloads import BUILTIN

    p = sub.add_parser("run", help="run a sweep: workloads x settings x repeats, each trial in a fresh process")
    p.add_argument(
        "--workloads",
        default=",".join(BUILTIN),
        help="comma list of workloads (default: the built-in %(default)s); also package.module:factory",
    )
    p.add_argument("--settings", default=None, help="comma list of settings (default: all seven)")
    p.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="repeats per workload x setting (default: 3 on CUDA, 2 on CPU)",
    )
    p.add_argument(
        "--steps", type=_positive_int, default=None, help="timed steps per trial (default: per workload and device)"
    )
    p.add_argument(
        "--warmup", type=_non_negative_int, default=None, help="warm-up steps before timing (default: per workload)"
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, help="trial seed (default: %(default)s)")
    p.add_argument(
        "--seeds",
        type=_non_negative_int,
        default=3,
        help="seed yardstick: trials of the reference setting with this many other seeds "
        "(default: %(default)s; 0 skips)",
    )
    p.add_argument(
        "--vary",
        type=_choice_list(VARY_MODES, "mode"),
        default=["impl"],
        help="what differs between repeats, comma list: impl (only the kernels: same seed, fresh "
        "processes; default), init (initialisation), data (data order and samples), all",
    )
    p.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--threads", type=_int_list, default=None, help="CPU thread counts, comma list (default: torch's default)"
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few steps: a smoke run")
    p.add_argument("--results", type=Path, default=None, help="results JSONL (default: results/<run-id>.jsonl)")
    p.add_argument(
        "--resume", action="store_true", help="continue a results file: run only trials without an ok record"
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=600.0,
        help="seconds per trial before it is killed (default: %(default)g)",
    )
    p.add_argument(
        "--max-time",
        type=_positive_float,
        default=None,
        help="stop starting trials after this many seconds (--resume continues)",
    )
    p.add_argument("--keep-params", action="store_true", help="keep the full final parameters of every trial (large)")
    p.add_argument("--no-aa", action="store_true", help="skip the A/A control (default is to run it)")
    p.add_argument("--no-audit", action="store_true", help="skip the per-workload audit of nondeterministic ops")
    p.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the profiled trials that explain the price (one per workload x setting)",
    )
    p.add_argument(
        "--memory-format",
        type=_choice_list(MEMORY_FORMATS, "memory format"),
        default=["contiguous"],
        help="comma list of contiguous, channels_last: each trial runs in each (default: contiguous)",
    )
    p.add_argument(
        "--start-method",
        choices=("auto", "forkserver", "spawn"),
        default="auto",
        help="how trial processes start (default: forkserver on CPU, spawn on CUDA)",
    )
    p.add_argument("--report", type=Path, default=None, help="report folder (default: reports/<run-id>)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML and Markdown report at the end")
    _add_max_slowdown(p)
    p.add_argument("--dry-run", action="store_true", help="list the planned trials and an estimated time, run nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def _sweep_options(args):
    import torch

    from detcost.settings import DEFAULT_SETTINGS, parse_settings
    from detcost.sweep import SweepOptions, new_run_id
    from detcost.timing import is_cuda
    from detcost.workloads import parse_workloads

    workloads = [w.name for w in parse_workloads(args.workloads)]
    settings = [s.name for s in parse_settings(args.settings or ",".join(DEFAULT_SETTINGS))]
    device = resolve_device(args.device)
    cuda = is_cuda(device)
    profile = "quick" if args.quick else ("gpu" if cuda else "cpu")
    run_id = new_run_id()
    results = args.results or Path("results") / f"{run_id}.jsonl"
    if results.exists() and results.is_dir():
        raise UsageError(f"--results {results} is a directory; give a file path")
    return SweepOptions(
        workloads=workloads,
        settings=settings,
        repeats=args.repeats or (3 if cuda else 2),
        seed=args.seed,
        device=device,
        threads=args.threads or [torch.get_num_threads()],
        profile=profile,
        results=results,
        run_id=run_id,
        steps=args.steps,
        warmup=args.warmup,
        timeout=args.timeout,
        seeds=args.seeds,
        aa=not args.no_aa,
        audit=not args.no_audit,
        explain=not args.no_explain,
        memory_formats=args.memory_format,
        vary=args.vary,
        keep_params=args.keep_params,
        start_method=args.start_method,
        max_time=args.max_time,
    )


def cmd_run(args) -> int:
    from detcost import results as results_mod
    from detcost.sweep import estimate_seconds, plan, run_sweep

    opts = _sweep_options(args)
    if opts.added_default:
        print(
            "note: default added to the settings: the A/A control and the seed yardstick run under it", file=sys.stderr
        )
    if args.dry_run:
        return _print_plan(plan(opts), estimate_seconds(plan(opts), opts.profile), args.json)
    _warn_other_gpu_users(opts.device)
    t0 = time.monotonic()
    outcome = run_sweep(opts, resume=args.resume, progress=not args.quiet)
    wall = time.monotonic() - t0
    df = results_mod.load(outcome.results)
    df = df[df["trial_id"].isin({s.trial_id for s in outcome.planned})]
    paths = None
    if not args.no_report and not df.empty:
        from detcost.report.build import build_report

        paths = build_report([outcome.results], args.report, max_slowdown=args.max_slowdown)
    _print_summary(df, outcome, wall, args.json, paths)
    return EXIT_STOPPED if outcome.stopped_early else EXIT_OK


def _print_plan(specs, seconds: float, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"trials": [s.trial_id for s in specs], "estimated_s": seconds}, indent=2))
        return EXIT_OK
    for s in specs:
        print(s.trial_id)
    print(f"{len(specs)} trials planned; rough estimate {seconds / 60:.1f} min")
    return EXIT_OK


def _warn_other_gpu_users(device: str) -> None:
    from detcost.env import gpu_processes
    from detcost.timing import is_cuda

    if is_cuda(device):
        others = gpu_processes(device)
        if others:
            print(f"warning: other processes are using {device}; timings may be disturbed:\n{others}", file=sys.stderr)


def _print_summary(df, outcome, wall: float, as_json: bool, report=None) -> None:
    from detcost.report.tables import AA_LABEL, CPU_NOTE, busy_count, failures, is_cpu, speed_pivot, speed_table

    table = speed_table(df)
    failed = failures(df)
    timed = df[df["kind"] == "timed"] if not df.empty else df
    ok = int((timed["status"] == "ok").sum()) if not timed.empty else 0
    busy = busy_count(df)
    if as_json:
        _print_json(
            {
                "results": str(outcome.results),
                "wall_s": wall,
                "ran": outcome.ran,
                "skipped": outcome.skipped,
                "stopped_early": outcome.stopped_early,
                "timed_ok": ok,
                "busy_trials": busy,
                "speed": _records(table),
                "failures": _records(failed),
                "report": {"html": str(report.html), "markdown": str(report.markdown)} if report else None,
            }
        )
        return
    print()
    if not table.empty:
        print("samples/s, median over repeats (ratio to default):")
        print(speed_pivot(table).to_string())
        aa = table[table["setting"] == AA_LABEL]
        for _, r in aa.iterrows():
            cv = table[(table["workload"] == r.workload) & (table["setting"] == "default")]["samples_per_s_cv"]
            cv_text = f"; CV of samples/s across repeats {cv.iloc[0]:.1%}" if len(cv) and cv.notna().iloc[0] else ""
            print(
                f"noise floor ({r.workload}): default vs itself {r.price:.3f}x [{r.price_lo:.3f}, {r.price_hi:.3f}]"
                f"{cv_text} - differences inside this are noise"
            )
            if not r.price_lo <= 1.0 <= r.price_hi:
                print(
                    f"  warning: on {r.workload} default differed from itself beyond its interval: the machine "
                    "was not steady during the sweep; read every price there as suspect"
                )
    if is_cpu(df):
        print("\nnote: " + CPU_NOTE)
    if not failed.empty:
        print(f"\n{len(failed)} trial(s) did not finish (findings, not crashes of detcost):")
        print(failed.to_string(index=False, max_colwidth=90))
    if busy:
        print(
            f"\nwarning: {busy} trial(s) ran while other processes used the CPU; "
            "their times are suspect (busy.busy in the results)"
        )
    if outcome.stopped_early:
        print(f"\nstopped by --max-time; rerun with --resume --results {outcome.results} to finish")
    print(f"\n{ok} timed trial(s) ok, {outcome.ran} run now, {outcome.skipped} already done; {wall:.0f} s")
    print(f"results: {outcome.results}")
    if report:
        print(f"report:  {report.html}\n         {report.markdown}")


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
    from detcost.env import fingerprint

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
    from detcost import variance

    df = results_mod.load(args.results)
    table = variance.variance_table(df)
    curves = variance.divergence_curves(df) if args.curves or args.json else None
    if args.json:
        _print_json({"variance": _records(table), "divergence": _records(curves)})
        return EXIT_OK
    if table.empty:
        print("no ok timed or seed trials in these results: nothing to compare")
        return EXIT_OK
    print("spread across repeats (same seed, fresh processes) and across seeds (the yardstick):")
    print(variance.display(table).to_string(index=False))
    print(
        "\nidentical: repeats whose final parameters are bitwise equal; rel L2: ||dθ|| / ||θ|| on the "
        "parameter sample; rel L2 / seeds: that spread as a fraction of the seed yardstick's."
    )
    if curves is not None and not curves.empty:
        print("\ndivergence between repeats at each checkpoint step (rel L2; 0: bitwise identical):")
        keys = [c for c in curves.columns if c not in ("step", "rel_l2", "max_abs_dtheta", "workload")]
        keys = [c for c in keys if c == "setting" or curves[c].nunique() > 1]
        for workload, rows in curves.groupby("workload", sort=False):  # each has its own checkpoints
            table = rows.pivot_table(index=keys, columns="step", values="rel_l2")
            print(f"{workload}:\n" + table.to_string(float_format="{:.1e}".format))
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
    from detcost.report.recommend import DEFAULT_MAX_SLOWDOWN

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
    from detcost.report.build import build_report

    paths = build_report(args.results, args.out, args.max_slowdown)
    if args.json:
        print(json.dumps({"html": str(paths.html), "markdown": str(paths.markdown)}))
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
    import pandas as pd

    from detcost.report import compare

    table, missing = compare.compare_runs(args.a, args.b)
    html = compare.write_html(table, missing, args.a, args.b, args.out) if args.out else None
    if args.json:
        _print_json({"comparison": _records(table), "missing": missing, "html": str(html) if html else None})
        return EXIT_OK
    header, rows = compare.display_rows(table)
    if rows:
        print(pd.DataFrame(rows, columns=header).to_string(index=False))
    else:
        print("no workload x setting ran in both runs at the same threads and sizes (batch, image): nothing to compare")
    if missing:
        print("only in one run:\n  " + "\n  ".join(missing))
    if html:
        print(f"html: {html}")
    return EXIT_OK


def _add_selfcheck(sub) -> None:
    p = sub.add_parser("selfcheck", help="measure detcost's own timing: overhead, agreement, repeatability, efficiency")
    p.add_argument(
        "--workloads", "--workload", default="simple_cnn", help="the workload to time (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_selfcheck)


def cmd_selfcheck(args) -> int:
    from dataclasses import asdict

    from detcost import selfcheck
    from detcost.workloads import parse_workloads

    workload = parse_workloads(args.workloads)[0].name
    device = resolve_device(args.device)
    checks = selfcheck.run_all(device, workload, "quick" if args.quick else None)
    if args.json:
        _print_json([asdict(c) for c in checks])
        return EXIT_OK
    print(f"detcost selfcheck on {device}, workload {workload}:")
    for c in checks:
        verdict = {True: "ok", False: "MISSED", None: "-"}[c.ok]
        value = f"{c.value:+.1%}" if "agreement" in c.name else (f"{c.value:.1%}" if c.ok is None else f"{c.value:.3f}")
        print(f"  {c.name}: {value}  (target {c.target}: {verdict})\n      {c.detail}")
    return EXIT_OK


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="which ops got slower: the profiled trials of a results file, diffed")
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s)")
    p.add_argument("--workloads", default=None, help="comma list (default: all in the results)")
    p.add_argument("--top", type=_positive_int, default=8, help="ops per workload x setting (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:

    from detcost import explain
    from detcost import results as results_mod
    from detcost.report.tables import is_cpu, speed_table

    df = results_mod.load(args.results)
    if args.workloads:
        df = df[df["workload"].isin([w.strip() for w in args.workloads.split(",")])]
    table = explain.attribution(df, speed_table(df, bootstrap=200), top=args.top)
    if args.json:
        _print_json(_records(table))
        return EXIT_OK
    if table.empty:
        print("no profiled trials in these results (the sweep ran with --no-explain?): nothing to explain")
        return EXIT_OK
    cpu = is_cpu(df)
    if cpu:
        print("note: " + explain.CPU_RANKING_NOTE + "\n")
    for _, rows in table.groupby(["workload", "setting"], sort=False):
        print(explain.headline(rows, cuda=not cpu))
        cols = ["op", "kind", "delta_calls", "delta_self_cpu_ms"] + ([] if cpu else ["delta_self_device_ms"])
        shown = rows.dropna(subset=["op"])[cols].copy()
        if len(shown):
            shown["delta_calls"] = shown["delta_calls"].map(lambda v: f"{v:+.0f}" if v == round(v) else f"{v:+.2f}")
            print(shown.to_string(index=False, float_format="{:+.3f}".format))
        print()
    return EXIT_OK


def _add_audit(sub) -> None:
    from detcost.workloads import BUILTIN

    p = sub.add_parser("audit", help="list the ops with no deterministic implementation that a workload hits")
    p.add_argument("--workloads", "--workload", default=",".join(BUILTIN), help="comma list (default: the built-in)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args) -> int:
    from detcost.sweep import run_isolated, start_method
    from detcost.timing import is_cuda
    from detcost.trial import TrialSpec
    from detcost.workloads import parse_workloads

    workloads = [w.name for w in parse_workloads(args.workloads)]
    device = resolve_device(args.device)
    profile = "quick" if args.quick else ("gpu" if is_cuda(device) else "cpu")
    method = start_method("auto", device)
    records = [
        run_isolated(TrialSpec.at_profile(w, "strict", device, profile, run_id="audit", kind="audit"), method=method)
        for w in workloads
    ]
    if args.json:
        _print_json(
            [
                {"workload": r["workload"], "status": r["status"], "error": r["error"], **(r.get("audit") or {})}
                for r in records
            ]
        )
        return EXIT_OK
    print_audit(records)
    return EXIT_OK


def print_audit(records: list[dict]) -> None:
    for r in records:
        audit = r.get("audit")
        if r["status"] != "ok" or not audit:
            print(f"{r['workload']}: the audit itself failed: {r['error']}")
            continue
        alerts = audit["alerts"]
        found = f"{len(alerts)} op(s) without a deterministic implementation" if alerts else "no alerts"
        print(f"{r['workload']} on {r['device']}: {found} in {audit['steps']} training steps")
        for a in alerts:
            print(f"  {a['op']}: {a['count']} call(s), in {', '.join(a['modules'])}")
        verdict = f"strict fails: {audit['strict_error']}" if audit["strict_fails"] else "strict runs"
        print(f"  {verdict}")
        if not alerts and r["device"] == "cpu":
            print("  (on the CPU torch raises few such alerts; the CUDA kernels are where most live)")


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"detcost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("detcost: interrupted; finished trials are kept (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
