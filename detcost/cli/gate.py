"""`detcost gate RESULTS.jsonl`: judge the team's setting on a run, against an optional
baseline, and exit 0 (pass), 1 (fail) or 3 (cannot decide); bad input is exit 2."""

from __future__ import annotations

from pathlib import Path

from detcost.cli.output import print_json
from detcost.errors import UsageError

EXIT_PASS, EXIT_FAIL, EXIT_UNDECIDED = 0, 1, 3
EXIT_OF = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "cannot decide": EXIT_UNDECIDED}  # bad input: 2, as everywhere


def add_gate(sub, add_max_slowdown) -> None:
    """The gate's options (`add_max_slowdown` adds the one --max-slowdown every command shares)."""
    p = sub.add_parser(
        "gate",
        help="judge the team's setting on a run (and against a baseline run): exit 0 pass, 1 fail, 3 cannot decide",
    )
    p.add_argument("results", type=Path, nargs="+", help="results JSONL file(s) of the run to judge")
    p.add_argument("--setting", default=None, help="the setting to judge (default: the team config's, else the "
                   "run's recommendation)")  # fmt: skip
    p.add_argument("--baseline", type=Path, default=None, help="results JSONL of the run to compare with (default: "
                   "the team config's baseline)")  # fmt: skip
    add_max_slowdown(p)
    p.add_argument("--require", choices=("reproducible",), default=None, help="fail where the setting's repeats "
                   "are not bitwise identical (default: the team config's require)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gate)


def _baseline(args, team) -> Path | None:
    if args.baseline is not None:
        return args.baseline
    if team is None or team.baseline is None:
        return None
    if not team.baseline.is_file():
        raise UsageError(f"the team config {team.path} names the baseline {team.baseline}, which does not exist")
    return team.baseline


def cmd_gate(args) -> int:
    from detcost import config
    from detcost import results as results_mod
    from detcost.derive.analysis import analyse
    from detcost.derive.gate import judge
    from detcost.derive.policy import resolve
    from detcost.report.gate_text import gate_json, gate_text
    from detcost.settings import get_setting

    team = config.find()
    policy = resolve(args.max_slowdown, team=team, require_reproducible=args.require == "reproducible")
    baseline_path = _baseline(args, team)
    analysis = analyse(results_mod.load_records(args.results), policy)
    baseline = analyse(results_mod.load_records([baseline_path]), policy) if baseline_path else None
    if args.setting:
        setting, source = get_setting(args.setting).name, "--setting"
    elif policy.setting:
        setting, source = policy.setting, f"the team config's, {team.path.name}"
    else:
        rec = analysis.only.recommendation if analysis.only else None
        setting, source = (rec.setting if rec else None), "the run's recommendation"
    decision = judge(analysis, setting, baseline=baseline)
    shown = str(baseline_path) if baseline_path else None
    if args.json:
        print_json(gate_json(decision, source, shown))
    else:
        print(gate_text(decision, source, shown))
    return EXIT_OF[decision.status]
