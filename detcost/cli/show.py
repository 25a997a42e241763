"""The commands that read results or describe the machine: env, variance, report, compare,
explain, and selfcheck (which measures detcost's own timing)."""

from __future__ import annotations

import json

from detcost.cli.output import EXIT_CHECKS_FAILED, EXIT_OK, print_json


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


def cmd_config(args) -> int:
    from dataclasses import asdict

    from detcost import config

    found = config.find()
    if args.json:
        print_json(None if found is None else {k: v for k, v in asdict(found).items() if k != "extra"})
        return EXIT_OK
    if found is None:
        print(
            f"no team config: no {config.CONFIG_FILE}, and no [tool.detcost] in a {config.PROJECT_FILE}, here or above"
        )
        return EXIT_OK
    print(f"team config: {found.path}")
    for key in ("setting", "seed", "max_slowdown", "threads", "workloads", "model", "baseline", "require"):
        value = getattr(found, key)
        if value not in (None, ()):
            print(f"  {key}: {', '.join(value) if isinstance(value, tuple) else value}")
    return EXIT_OK


def cmd_variance(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.report import text

    analysis = analyse(results_mod.load_records(args.results))
    machines = analysis.machines
    if args.json:
        print_json(
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


def cmd_report(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.derive.policy import resolve
    from detcost.report.build import build_report
    from detcost.report.kinds_text import kinds_json, unit_spread_json
    from detcost.report.sweep_text import decisions, recommendation_json

    policy = resolve(args.max_slowdown)  # the team's budget, and its setting marked as `run` marks it
    analysis = analyse(results_mod.load_records(args.results), policy)
    paths = build_report(analysis, args.out, args.results, policy.setting)
    if args.json:
        recs = [recommendation_json(m.recommendation) | {"machine": m.machine} for m in analysis.machines]
        spread = [row for m in analysis.machines for row in unit_spread_json(m)]
        print_json({"html": str(paths.html), "markdown": str(paths.markdown), "recommendation": recs,
                    "policy": policy.to_json(), "decisions": decisions(analysis),
                    "across_kinds": kinds_json(analysis), "unit_spread": spread})  # fmt: skip
    else:
        kinds = f" ({len(analysis.machines)} machine kinds side by side)" if analysis.across_kinds else ""
        print(f"report:  {paths.html}{kinds}\n         {paths.markdown}")
    return EXIT_OK


def cmd_compare(args) -> int:
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.derive.compare import compare_runs
    from detcost.derive.policy import resolve
    from detcost.report import compare, text

    a, b = results_mod.load_records(args.a), results_mod.load_records(args.b)
    policy = resolve()
    ma, mb = analyse(a, policy).only, analyse(b, policy).only
    deltas, missing = compare_runs(a, b, ma.prices if ma else [], mb.prices if mb else [])
    html = None
    if args.out:
        machines = (ma.machine if ma else "?", mb.machine if mb else "?")
        html = compare.write_html(deltas, missing, (args.a, args.b), machines, args.out)
    if args.json:
        table = [d.row() for d in deltas]
        print_json({"comparison": text.records_json(table), "missing": missing, "html": str(html) if html else None})
        return EXIT_OK
    print(compare.compare_text(deltas, missing))
    if html:
        print(f"html: {html}")
    return EXIT_OK


def cmd_selfcheck(args) -> int:
    from dataclasses import asdict

    import torch

    import detcost
    from detcost import selfcheck
    from detcost.env import resolve_device
    from detcost.workloads import parse_workloads

    workload = parse_workloads(args.workloads)[0].name
    device = resolve_device(args.device)  # no CUDA, or no such GPU: one line, exit 2
    size = "quick" if args.quick else None
    if args.json:
        checks = selfcheck.run_all(device, workload, size)
        print_json([asdict(c) for c in checks])
        return EXIT_CHECKS_FAILED if any(c.ok is False for c in checks) else EXIT_OK
    # each line flushed as its check is decided: a selfcheck stopped part-way (a first GPU
    # run's share of its time, output piped into a file) keeps every line it got
    print(
        f"detcost {detcost.__version__} selfcheck on {device} (torch {torch.__version__}), workload {workload}:",
        flush=True,
    )
    checks = selfcheck.run_all(
        device, workload, size, progress=True, on_check=lambda c: print(f"  {c.line()}", flush=True)
    )
    missed = sum(c.ok is False for c in checks)
    print(f"{missed} of {len(checks)} checks failed" if missed else f"all {len(checks)} checks passed or reported")
    return EXIT_CHECKS_FAILED if missed else EXIT_OK


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
        print_json(text.records_json(table if table is not None else []))
    elif table is None or table.empty:
        print("no profiled trials in these results (the sweep ran with --no-explain?): nothing to explain")
    else:
        print(text.explain_text(table, cpu=m.cpu))
    return EXIT_OK
