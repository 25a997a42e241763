"""The commands that run trials: `detcost run` (and its --dry-run) and `detcost audit`.
Each turns its options into the library's, calls it, and prints what it returns."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from detcost.cli.output import EXIT_OK, EXIT_STOPPED, print_json
from detcost.errors import UsageError


def _workload_names(args) -> list[str]:
    """--workloads and --model as workload names; a broken --model is a UsageError now,
    before any trial starts. Without --workloads: the default ones, or only the model."""
    from detcost.workloads import DEFAULT_WORKLOADS, parse_workloads
    from detcost.workloads.model import resolve

    if args.model is None and (args.input or args.classes):
        raise UsageError("--input and --classes describe --model; give --model too")
    given = args.workloads or ("" if args.model else ",".join(DEFAULT_WORKLOADS))
    names = [w.name for w in parse_workloads(given)] if given else []
    return names + ([resolve(args.model, args.input, args.classes).name] if args.model else [])


def _results_path(given: Path | None, run_id: str) -> Path:
    results = given or Path("results") / f"{run_id}.jsonl"
    if results.exists() and results.is_dir():
        raise UsageError(f"--results {results} is a directory; give a file path")
    if not results.suffix:  # the arrays go in a folder named after the file's stem: it must differ
        results = results.with_suffix(".jsonl")
    return results


def with_team(args, team):
    """`detcost run`'s options with the team config's where a flag was not given (a flag
    always wins): its workloads (or model) and seed. The budget is the policy's
    (`derive.policy.resolve`), never resolved here."""
    values = vars(args).copy()
    if team is not None:
        if args.workloads is None and args.model is None:
            values["workloads"] = ",".join(team.workloads) or None
            values["model"] = team.model
        if args.seed is None:
            values["seed"] = team.seed
    values["seed"] = 0 if values["seed"] is None else values["seed"]
    return argparse.Namespace(**values)


def sweep_options(args, team=None, notes: list[str] | None = None, policy=None):
    """`detcost run`'s options as the sweep's, the team config's where no flag was given,
    and the team's setting among the settings (a line in `notes` where it was added); bad
    input is a UsageError here, before any trial."""
    from detcost import axes
    from detcost.derive.policy import resolve
    from detcost.env import resolve_device
    from detcost.plan import SweepOptions, new_run_id, size_preset
    from detcost.settings import DEFAULT_SETTINGS, parse_settings

    policy = policy or resolve(args.max_slowdown, team=team)  # the command's own, where it resolved it
    args = with_team(args, team)
    device = resolve_device(args.device)
    workloads = _workload_names(args)
    settings = [s.name for s in parse_settings(args.settings or ",".join(DEFAULT_SETTINGS))]
    if team is not None and team.setting and team.setting not in settings:
        settings.append(team.setting)
        if notes is not None:
            notes.append(f"note: {team.setting} added to the settings: the team config ({team.path}) names it")
    run_id = new_run_id()
    results = _results_path(args.results, run_id)
    return SweepOptions(
        workloads=workloads,
        settings=settings,
        repeats=args.repeats or _first_rounds(args, device),
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
        decide=policy.max_slowdown if args.decide else None,
        max_repeats=max(args.max_repeats, args.repeats or 0),
        ray=_ray(args.ray, args),
    )


def _first_rounds(args, device: str) -> int:
    """The rounds a run starts with where --repeats is not given: --decide's first look
    (the least a verdict rests on), else the device's default rounds; --precision and
    --decide add rounds from there, so they start within --max-repeats."""
    from detcost.derive.policy import MIN_ROUNDS
    from detcost.plan import default_rounds

    rounds = MIN_ROUNDS if args.decide else default_rounds(device)
    return min(rounds, args.max_repeats) if args.decide or args.precision is not None else rounds


def _ray(address: str | None, args) -> str | None:
    """--ray's address, refused in one line before any trial where Ray is not installed or
    the sweep cannot run as a round per task. The device judged is the one the user asked
    for (auto, cuda, cuda:N), not the resolved one: auto and cuda resolve to cuda:0 on a
    GPU box, and Ray, not the user, picks each round's GPU."""
    if address is None:
        return None
    from detcost.cluster import LOCAL, check_available, check_options, check_reachable

    check_available()
    check_options(args.device, [int(n) for n in (getattr(args, "axis_nproc", None) or [1])])
    if address != LOCAL:
        check_reachable(address)
    return address


def cmd_run(args) -> int:
    from detcost import config
    from detcost.derive.analysis import analyse
    from detcost.derive.policy import resolve
    from detcost.report import text
    from detcost.sweep import run_sweep

    team, notes = config.find(), []
    policy = resolve(args.max_slowdown, team=team)
    opts = sweep_options(args, team, notes, policy)
    args = with_team(args, team)
    team_setting = policy.setting
    for note in notes:
        print(note, file=sys.stderr)
    if opts.added_default:
        print(
            "note: default added to the settings: the A/A control and the seed yardstick run under it", file=sys.stderr
        )
    _check_paths(opts, args)  # every path the run will write, before its first trial
    if args.estimate_from is not None and not args.dry_run:
        raise UsageError("--estimate-from is for --dry-run: a sweep measures its own times")
    if args.dry_run:
        return _dry_run(opts, args.resume, args.json, args.estimate_from)
    if not opts.results.parent.exists():
        print(f"note: created the folder {opts.results.parent}/, where the results file goes", file=sys.stderr)
    t0 = time.monotonic()
    outcome = run_sweep(opts, resume=args.resume, progress=not args.quiet)
    wall = time.monotonic() - t0
    # the sweep's records, every planned trial's latest (a --precision run may have added rounds)
    analysis = analyse(outcome.records, policy)
    paths = None
    if not args.no_report and outcome.records:
        from detcost.report.build import build_report

        try:
            paths = build_report(analysis, args.report, [outcome.results], team_setting, text.ran_report(outcome))
        except OSError as exc:  # the results are safe: say so, and print the summary anyway
            print(f"detcost: could not write the report: {exc}; the results are in {outcome.results}", file=sys.stderr)
    figures = _per_trial(outcome.records)
    if args.json:
        print_json(text.run_summary_json(analysis, outcome, wall, paths, figures))
    else:
        print(text.run_summary(analysis, outcome, wall, paths, team_setting, figures))
    return EXIT_STOPPED if outcome.stopped_early else EXIT_OK


def _per_trial(records) -> list | None:
    """Each kind's measured time per trial beside the dry run's figure; None (and a note)
    where the figures cannot be had: the sweep's summary is printed without them."""
    from detcost.estimate import per_trial

    try:
        return per_trial(records)
    except Exception as exc:  # noqa: BLE001 - the results are safe; the summary goes on without this line
        print(f"note: no per-trial figures: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _check_paths(opts, args) -> None:
    from detcost.results import check_writable

    check_writable(opts.results, "results file")
    if not args.no_report:
        check_writable(args.report or Path("reports") / opts.run_id, "report folder")


def _dry_run(opts, resume: bool, as_json: bool, estimate_from: Path | None = None) -> int:
    from detcost.dryrun import dry_run
    from detcost.report.sweep_text import dry_run_json, dry_run_text

    if estimate_from is not None and not estimate_from.is_file():
        raise UsageError(f"--estimate-from {estimate_from}: no such results file")
    dry = dry_run(opts, resume=resume, estimate_from=estimate_from)
    if as_json:
        print_json(dry_run_json(dry))
    else:
        print(dry_run_text(dry))
    return EXIT_OK


def cmd_rank(args) -> int:
    """One rank of a DDP trial that torchrun started (its environment names the rank, the
    world size and the rendezvous): the trial as `detcost run --nproc` runs it, the job
    being torchrun's; rank 0 appends the record, a rank that fails its own."""
    import os

    from detcost import axes
    from detcost.env import resolve_device
    from detcost.plan import size_preset
    from detcost.results import ResultsWriter
    from detcost.settings import apply_env, get_setting
    from detcost.train import spec_at_preset
    from detcost.trial import run_trial

    if "TORCHELASTIC_RUN_ID" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UsageError("detcost rank runs under torchrun: torchrun --nproc-per-node N -m detcost rank ...")
    device = resolve_device(args.device)
    values = {**axes.first_defaults(device), "nproc": int(os.environ["WORLD_SIZE"])}
    values.update({"threads": args.threads} if args.threads else {})
    spec = spec_at_preset(
        args.workload, args.setting, device, size_preset(device, args.quick), axes=values,
        seed=args.seed, repeat=args.repeat, run_id=f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}",
    )  # fmt: skip
    apply_env(get_setting(args.setting))  # the setting's environment, before anything touches CUDA
    record = run_trial(spec, args.results.parent, joined=True)
    if int(os.environ["RANK"]) == 0 or not record.ok:
        with ResultsWriter(args.results) as out:
            out.write(record.to_json())
        print(f"{record.trial_id}: {record.status}" + (f" ({record.error})" if record.error else ""))
    return EXIT_OK if record.ok else 1  # a failed rank: torchrun stops the job


def cmd_audit(args) -> int:
    from detcost.env import resolve_device
    from detcost.plan import size_preset
    from detcost.sweep import audit_workloads

    workloads = _workload_names(args)
    device = resolve_device(args.device)
    records = audit_workloads(workloads, device, size_preset(device, args.quick))
    if args.json:
        print_json(
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
        from detcost.report import text

        print(text.audit_text([AuditFinding.of(r) for r in records]))
    return EXIT_OK
