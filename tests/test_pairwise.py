"""Every pair of `detcost run`'s option values, each in at least one run (all-pairs).

Defects hide where two options meet. The factors are the trial kinds (--seeds, --no-aa,
--no-audit, --no-explain), the axes (--data with --workers, --threads, --amp, --compile,
--memory-format, --tf32, --vary, --nproc), the run modes (--ray, --decide, --precision,
--resume) and the device. `covering_set()` is a small greedy all-pairs generator; the rows
it makes, one per line (thr --threads, np --nproc, w --workers, cmp --compile, sd --seeds,
aud --audit, exp --explain, dec --decide, pre --precision, res --resume; "-": the flag is
not given); the last rows hold the refused pairs, one each:

   device vary data            thr amp  tf32  np w memory_format cmp sd aa  aud exp ray dec pre res
0  cuda   init loader          1   bf16 on    -  1 contiguous    off 1  on  on  on  off off on  off
1  cpu    data staged          2   bf16 off   2  1 contiguous    off 1  off on  off off on  off on
2  auto   all  loader-unseeded -   fp16 on    -  0 channels_last off 0  off off on  off on  off off
3  cuda:1 data loader          2   fp16 torch -  0 channels_last off 0  off on  on  off off on  off
4  cuda:1 impl loader-unseeded 1   off  off   -  0 contiguous    off 0  on  off off off on  off off
5  cuda   all  staged          1   off  torch 2  0 channels_last off 0  off off off off off on  on
6  auto   impl loader          -   bf16 off   -  0 contiguous    off 0  off on  on  on  off on  off
7  cuda:1 init staged          -   bf16 torch 1  1 contiguous    off 0  on  off off off on  off off
8  cpu    all  loader          2   off  on    -  1 contiguous    off 1  on  off off on  on  off off
9  auto   init loader-unseeded 2   off  torch -  0 contiguous    off 1  off on  off off off off on
10 cpu    impl staged          -   fp16 torch 1  0 channels_last off 1  off off on  on  off on  on
11 cuda   impl loader-unseeded 2   fp16 off   -  1 contiguous    off 0  off off off off on  off off
12 auto   data staged          1   off  on    1  1 contiguous    off 0  on  off off off off off off
13 cpu    init loader-unseeded -   bf16 off   -  0 channels_last off 0  off off off off off off off
14 cpu    init staged          -   fp16 on    2  0 contiguous    off 0  on  off on  off off off off
15 cuda   data loader-unseeded -   off  torch -  0 contiguous    off 0  off off off on  off off off
16 cuda   all  staged          2   bf16 off   1  0 contiguous    on  0  off on  off off off off off
17 cuda:1 impl loader          -   off  on    -  1 channels_last on  1  on  off on  off on  off on
18 cpu    init loader-unseeded 1   fp16 torch -  0 contiguous    on  0  off off off on  off on  off
19 cuda:1 all  staged          -   off  torch -  0 contiguous    off 0  off off off off off off off
20 cpu    impl staged          -   off  torch 2  0 contiguous    off 0  off off off off off off off
21 auto   data staged          -   off  torch 2  0 contiguous    on  0  off off off off off off off
22 cpu    impl loader          -   off  torch 1  0 contiguous    off 0  off off off off off off off
23 cpu    impl loader          -   off  torch 2  0 contiguous    off 0  off off off off off off off
24 cpu    impl loader-unseeded -   off  torch 1  0 contiguous    off 0  off off off off off off off
25 cpu    impl loader-unseeded -   off  torch 2  0 contiguous    off 0  off off off off off off off
26 cpu    impl staged          -   off  torch -  0 contiguous    off 0  off off off off on  on  off
27 cuda:1 impl staged          -   off  torch 2  0 contiguous    off 0  off off off off off off off
28 cuda:1 impl staged          -   off  torch -  0 contiguous    off 0  off off off on  off off off
29 cpu    impl staged          -   off  torch 2  0 contiguous    off 0  off off off on  off off off

On a faked CUDA box of two H100s, every row goes through option checking, planning and
`--dry-run` on its device, and none may call into CUDA: each plans the trial kinds and axis
values it asks for, or, where it holds a refused pair (`REFUSED`), is refused in one line
that names the pair (exit 2). On the CPU every row runs at quick sizes with `--device cpu`
(the device column is the GPU box's alone), once, in the session fixture `cpu_rows`: each
trial it plans ends with an `ok` record that reads back the axis values asked for, or the
row is refused in one line before any trial; a row with --resume then runs again with
--resume on the same results file and finds nothing left to run. The CPU rows (simple_cnn
under `default`, one round, five under --decide) cost about 5 minutes of CPU time on 2
cores, most of it compiling, starting Ray and DDP's ranks, and forkservers for --decide's
rounds; two rows run at once.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import multiprocessing
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import torch

from detcost.cli import main
from tests.conftest import QUICK
from tests.test_dry_run import H100, cuda_build, cuda_calls, fake_h100  # noqa: F401 - fixtures

# Each factor's values, the plainest (and cheapest to run) first: the greedy generator
# takes the first value wherever more pairs would not be covered by another.
FACTORS: dict[str, tuple[str, ...]] = {
    "device": ("cpu", "cuda", "auto", "cuda:1"),
    "vary": ("impl", "init", "data", "all"),
    "data": ("staged", "loader", "loader-unseeded"),
    "threads": ("-", "1", "2"),
    "amp": ("off", "bf16", "fp16"),
    "tf32": ("torch", "on", "off"),
    "nproc": ("-", "1", "2"),
    "workers": ("0", "1"),
    "memory_format": ("contiguous", "channels_last"),
    "compile": ("off", "on"),
    "seeds": ("0", "1"),
    "aa": ("off", "on"),
    "audit": ("off", "on"),
    "explain": ("off", "on"),
    "ray": ("off", "on"),
    "decide": ("off", "on"),
    "precision": ("off", "on"),
    "resume": ("off", "on"),
}
Pair = tuple[tuple[str, str], tuple[str, str]]
# What a value costs a run on the CPU, in pairs: a row takes it only where that buys as
# many more pairs (a compiled trial compiles, 10-20 s on a cold cache; Ray starts a
# cluster, 5-10 s; a DDP trial starts torch's launcher and its ranks, a few seconds). A
# plain row costs ROW_COST.
COST = {("compile", "on"): 12, ("ray", "on"): 3, ("nproc", "1"): 2, ("nproc", "2"): 2}
ROW_COST = 3


def _pair(a: tuple[str, str], b: tuple[str, str]) -> Pair:
    return (a, b) if list(FACTORS).index(a[0]) < list(FACTORS).index(b[0]) else (b, a)


def _pairs(factor_a: str, values_a: Iterable[str], factor_b: str, values_b: Iterable[str]) -> set[Pair]:
    return {_pair((factor_a, a), (factor_b, b)) for a in values_a for b in values_b}


# Pairs refused up front, in one line, wherever they meet: the rows that cover the others
# leave them out (a refused row would hide its other pairs), and each gets a row of its own.
REFUSED: set[Pair] = (
    _pairs("decide", ["on"], "precision", ["on"])  # both add rounds, to different ends
    | _pairs("nproc", ["2"], "ray", ["on"])  # a DDP trial needs a box, a round gets one GPU
    | _pairs("data", ["loader", "loader-unseeded"], "nproc", ["1", "2"])  # DDP shards staged batches only
)
# Refused on the GPU box alone (two GPUs): Ray picks each round's GPU itself, and two ranks
# from cuda:1 would need a cuda:2.
REFUSED_ON_GPUS: set[Pair] = _pairs("device", ["cuda:1"], "ray", ["on"]) | _pairs("device", ["cuda:1"], "nproc", ["2"])


def all_pairs() -> set[Pair]:
    out: set[Pair] = set()
    for a, b in itertools.combinations(FACTORS, 2):
        out |= _pairs(a, FACTORS[a], b, FACTORS[b])
    return out


def pairs_of(row: Mapping[str, str]) -> set[Pair]:
    return {_pair((a, row[a]), (b, row[b])) for a, b in itertools.combinations(FACTORS, 2)}


def _cost(row: Mapping[str, str]) -> int:
    return ROW_COST + sum(COST.get(value, 0) for value in row.items())


def _fill(seed: Pair, todo: set[Pair], refused: set[Pair]) -> dict[str, str]:
    """A row around `seed`: each other factor, in order, takes the value that covers the most
    pairs still to do with the values chosen so far, less its cost (the first such value on
    a tie), never one that makes a refused pair."""
    row = dict(seed)

    def gain(value: tuple[str, str]) -> float:
        made = {_pair(value, chosen) for chosen in row.items()}
        return -1 if made & refused else len(made & todo) - COST.get(value, 0)

    for factor, values in FACTORS.items():
        if factor not in row:
            row[factor] = max(values, key=lambda v: gain((factor, v)))  # noqa: B023 - used at once
    return {f: row[f] for f in FACTORS}


def _cheapen(rows: list[dict[str, str]], refused: set[Pair]) -> list[dict[str, str]]:
    """The greedy rows, cheaper to run: a value whose pairs in its row other rows cover
    too falls back to an earlier value of its factor (a plainer run), and a row whose
    pairs all others cover goes; until nothing changes."""
    rows = [dict(row) for row in rows]

    def covered_elsewhere(i: int) -> set[Pair]:
        return set().union(*(pairs_of(row) for j, row in enumerate(rows) if j != i))

    changed = True
    while changed:
        changed = False
        for i, row in enumerate(rows):
            others = covered_elsewhere(i)
            if pairs_of(row) <= others:
                del rows[i]
                changed = True
                break
            for factor, values in FACTORS.items():
                if {p for p in pairs_of(row) if (factor, row[factor]) in p} <= others:
                    earlier = values[: values.index(row[factor])]
                    plainer = [v for v in earlier if not pairs_of({**row, factor: v}) & refused]
                    if plainer:
                        row[factor], changed = plainer[0], True
    return rows


@cache
def covering_set() -> tuple[dict[str, str], ...]:
    """Rows until every pair that is not refused is in one; greedy: a row grows from each of
    the first pairs still to do, and the one that covers the most for its cost is kept;
    then made cheaper (`_cheapen`). Last, one row per refused pair, its other factors at
    their first values."""
    refused = REFUSED | REFUSED_ON_GPUS
    todo, rows = all_pairs() - refused, []
    while todo:
        candidates = [_fill(seed, todo, refused) for seed in sorted(todo)[:40]]
        rows.append(max(candidates, key=lambda row: len(pairs_of(row) & todo) / _cost(row)))
        todo -= pairs_of(rows[-1])
    rows = _cheapen(rows, refused)
    for pair in sorted(refused):
        rows.append({f: dict(pair).get(f, values[0]) for f, values in FACTORS.items()})
    return tuple(rows)


# The listing's column heads, where the factor's name is wider than its values.
HEADS = {"threads": "thr", "nproc": "np", "workers": "w", "compile": "cmp", "seeds": "sd", "audit": "aud"}
HEADS |= {"explain": "exp", "decide": "dec", "precision": "pre", "resume": "res"}


def listing() -> str:
    """The covering set as the docstring shows it: a head and a row per line."""
    table = [["", *(HEADS.get(f, f) for f in FACTORS)]]
    table += [[str(i), *row.values()] for i, row in enumerate(covering_set())]
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    return "\n".join(" ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def refused_pairs(row: Mapping[str, str], on_gpus: bool) -> set[Pair]:
    """The refused pairs a row holds: on the CPU the device column is not used."""
    return pairs_of(row) & (REFUSED | REFUSED_ON_GPUS if on_gpus else REFUSED)


# ---- a row as `detcost run`'s options ----------------------------------------------------

# The smallest sweep each row allows: the smallest workload, one setting (the A/A control
# and the seed yardstick run under it), one round (--decide and --precision add rounds).
SWEEP = ["--workloads", "simple_cnn", "--settings", "default", "--repeats", "1"]
AXES = ("vary", "data", "workers", "threads", "amp", "tf32", "nproc", "memory_format", "compile")
NO_KIND = {"aa": "--no-aa", "audit": "--no-audit", "explain": "--no-explain"}


def options(row: Mapping[str, str]) -> list[str]:
    argv = [*SWEEP, "--seeds", row["seeds"]]
    argv += [flag for kind, flag in NO_KIND.items() if row[kind] == "off"]
    for axis in AXES:
        if row[axis] != "-":
            argv += ["--" + axis.replace("_", "-"), row[axis]]
    argv += ["--ray"] if row["ray"] == "on" else []
    # --decide judges a price on 5 rounds at least (its first look); --precision adds one round
    argv += ["--decide", "--max-repeats", "5"] if row["decide"] == "on" else []
    argv += ["--precision", "1%", "--max-repeats", "2"] if row["precision"] == "on" else []
    return argv


def id_marks(row: Mapping[str, str]) -> set[str]:
    """The parts every trial id of the row carries for the axis values it asks for."""
    marks = {f"vary-{row['vary']}", f"tf32-{row['tf32']}", f"amp-{row['amp']}", row["data"], row["memory_format"]}
    marks -= {"vary-impl", "tf32-torch", "amp-off", "staged", "contiguous"}
    marks |= {"compiled"} if row["compile"] == "on" else set()
    marks |= {f"w{row['workers']}"} if row["data"] != "staged" and row["workers"] != "0" else set()
    return marks | {f"{part}{row[axis]}" for axis, part in (("threads", "t"), ("nproc", "np")) if row[axis] != "-"}


def expected_kinds(row: Mapping[str, str]) -> set[str]:
    kinds = {"timed"} | ({"seed"} if row["seeds"] != "0" else set())
    return kinds | {k if k != "explain" else "profiled" for k in NO_KIND if row[k] == "on"}


ROWS = list(enumerate(covering_set()))


def rows_where(keep) -> dict:
    """parametrize's arguments for the rows `keep(row)` keeps, each named by its number."""
    chosen = [(i, row) for i, row in ROWS if keep(row)]
    return {"argnames": ("index", "row"), "argvalues": chosen, "ids": [f"row{i}" for i, _ in chosen]}


def test_the_docstring_lists_the_covering_set():
    assert listing() in __doc__


def test_the_covering_set_covers_every_pair_of_values_where_it_is_not_refused():
    on_gpus = [pairs_of(row) for row in covering_set() if not refused_pairs(row, on_gpus=True)]
    assert all_pairs() - REFUSED - REFUSED_ON_GPUS <= set().union(*on_gpus)
    # the CPU runs every row on the CPU: the rows refused only on the GPU box run there
    on_cpu = [pairs_of(row) for row in covering_set() if not refused_pairs(row, on_gpus=False)]
    assert {p for p in all_pairs() - REFUSED if "device" not in dict(p)} <= set().union(*on_cpu)
    # and each refused pair is a row of its own, refused for that pair alone
    for pair in REFUSED | REFUSED_ON_GPUS:
        assert [refused_pairs(row, on_gpus=True) for row in covering_set() if pair in pairs_of(row)] == [{pair}]


# ---- on a faked CUDA box: options, plan and --dry-run, no CUDA call --------------------


@pytest.fixture
def two_gpus(monkeypatch, request):
    """The suite's faked CUDA build (`cuda_build`: torch says CUDA is there, NVML and
    nvidia-smi name an H100), with two H100s, so that --nproc 2 and cuda:1 can plan; the
    dry run's look at the machine is cut short (what it sees is not in question here)."""
    from detcost import env, guard

    request.getfixturevalue("cuda_build")
    monkeypatch.setattr(env, "nvml_gpu_count", lambda: 2)
    monkeypatch.setattr(env, "gpu_names", lambda: [H100] * 2)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(guard, "sample", functools.partial(guard.sample, seconds=0.05))


@pytest.fixture
def cuda_starts(two_gpus, cuda_calls) -> Counter:  # noqa: F811 - the fixture imported above
    """Every call into CUDA's entry points (`test_dry_run.cuda_calls`, counting the faked
    ones too: it wraps them after `two_gpus` made them) while CUDA has not started in this
    process: each is a call that would start it."""
    return cuda_calls


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _names_both(line: str, refused: set[Pair]) -> bool:
    """Whether a refusal names the options of one of the refused pairs (a flag, or cuda:1)."""
    words = {"device": "cuda:1", "data": "--data"}
    return any(all(words.get(f, "--" + f) in line for f, _ in pair) for pair in refused)


def _dry_run(row: Mapping[str, str], tmp_path) -> tuple[int, Path]:
    results = tmp_path / "r.jsonl"
    argv = ["run", *options(row), "--device", row["device"], "--allow-busy", "--dry-run", "--json"]
    return main([*argv, "--results", str(results)] + (["--resume"] if row["resume"] == "on" else [])), results


@pytest.mark.parametrize(**rows_where(lambda row: not refused_pairs(row, on_gpus=True)))
def test_on_a_gpu_box_each_row_plans_its_trials_without_a_call_into_cuda(index, row, cuda_starts, capsys, tmp_path):
    started = torch.cuda.is_initialized()
    code, results = _dry_run(row, tmp_path)
    out, err = capsys.readouterr()
    assert code == 0, err
    dry = json.loads(out)
    assert {t.split("/")[0] for t in dry["trials"]} == expected_kinds(row)
    assert all(id_marks(row) <= set(t.split("/")) for t in dry["trials"]), dry["trials"]
    assert ("ray_tasks" in dry) == (row["ray"] == "on")
    assert not results.exists()
    assert not cuda_starts and torch.cuda.is_initialized() == started


@pytest.mark.parametrize(**rows_where(lambda row: refused_pairs(row, on_gpus=True)))
def test_on_a_gpu_box_a_refused_pair_is_refused_in_one_line_naming_it_without_a_call_into_cuda(
    index, row, cuda_starts, capsys, tmp_path
):
    started = torch.cuda.is_initialized()
    code, results = _dry_run(row, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and _names_both(_one_line(err), refused_pairs(row, on_gpus=True)), (code, err)
    assert not results.exists()
    assert not cuda_starts and torch.cuda.is_initialized() == started


# ---- on the CPU: every row runs, once (and again with --resume) --------------------------


def _run(argv: list[str]) -> tuple[int | str, str]:
    """`detcost run` in this process: its exit code (what it raised, where it raised) and
    its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(["run", *argv])
        except Exception as exc:  # noqa: BLE001 - one row's failure is its test's, not the session's
            code = f"{type(exc).__name__}: {exc}"
    return code, err.getvalue()


def _planned(argv: list[str]) -> list[str]:
    """The trial ids `detcost run` plans for these options (before any round it adds)."""
    from detcost.cli.args import build_parser
    from detcost.cli.run import sweep_options
    from detcost.plan import plan

    return [s.trial_id for s in plan(sweep_options(build_parser().parse_args(["run", *argv])))]


def _run_row(index: int, folder: Path) -> dict:
    """One row run on the CPU at quick sizes: its exit code, stderr, planned trials and
    records (a line each); with --resume, its second run and the file after it."""
    results = folder / f"row{index}.jsonl"
    argv = [*QUICK, "--no-report", *options(ROWS[index][1]), "--results", str(results)]
    code, err = _run(argv)
    ran = {"code": code, "err": err, "written": results.exists()}
    if code == 0:
        ran |= {"planned": _planned(argv), "lines": results.read_text().splitlines()}
        if ROWS[index][1]["resume"] == "on":
            ran |= {"resumed": _run([*argv, "--resume"]), "after": results.read_text().splitlines()}
    return ran


def _run_rows(indexes: list[int], folder: Path) -> dict[int, dict]:
    return {index: _run_row(index, folder) for index in indexes}


# Rows run two at a time, each in a worker process of its own: most of a row is one core's
# work (starting a forkserver, compiling, starting Ray or DDP's ranks), so on 2 cores a
# second row takes the other. The --ray rows run one after another in one worker: two
# local Ray clusters would wait on each other's cores.
AT_ONCE = 2


@pytest.fixture(scope="session")
def cpu_rows(tmp_path_factory) -> dict[int, dict]:
    """Every row's run on the CPU (`_run_row`), by row number."""
    folder = tmp_path_factory.mktemp("pairwise")
    on_ray = [i for i, row in ROWS if row["ray"] == "on"]
    jobs = [on_ray, *([i] for i, row in ROWS if row["ray"] != "on")]
    jobs.sort(key=lambda job: -sum(_cost(ROWS[i][1]) for i in job))  # the longest first
    with ProcessPoolExecutor(AT_ONCE, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [pool.submit(_run_rows, job, folder) for job in jobs]
        return {index: ran for future in done for index, ran in future.result().items()}


def _ran(cpu_rows: dict, index: int) -> tuple[dict, dict[str, dict]]:
    """A row's run, which must have ended with exit 0, and its latest record per trial."""
    ran = cpu_rows[index]
    assert ran["code"] == 0, ran["err"]
    return ran, {r["trial_id"]: r for r in map(json.loads, ran["lines"])}


RUNS_ON_CPU = rows_where(lambda row: not refused_pairs(row, on_gpus=False))


@pytest.mark.parametrize(**RUNS_ON_CPU)
def test_on_the_cpu_each_row_ends_every_planned_trial_with_an_ok_record(index, row, cpu_rows):
    ran, latest = _ran(cpu_rows, index)
    assert not {t: f"{r['status']}: {r.get('error')}" for t, r in latest.items() if r["status"] != "ok"}
    assert set(ran["planned"]) <= set(latest)
    assert {r["kind"] for r in latest.values()} == expected_kinds(row)


@pytest.mark.parametrize(**rows_where(lambda row: refused_pairs(row, on_gpus=False)))
def test_on_the_cpu_a_refused_pair_is_refused_in_one_line_naming_it_before_any_trial(index, row, cpu_rows):
    ran = cpu_rows[index]
    assert ran["code"] == 2 and _names_both(_one_line(ran["err"]), refused_pairs(row, on_gpus=False)), ran
    assert not ran["written"]


@pytest.mark.parametrize(**rows_where(lambda row: row["resume"] == "on" and not refused_pairs(row, on_gpus=False)))
def test_on_the_cpu_a_resumed_row_finds_every_trial_done_and_runs_none_again(index, row, cpu_rows):
    ran, _ = _ran(cpu_rows, index)
    code, err = ran["resumed"]
    assert code == 0, err
    assert ran["after"] == ran["lines"]


def _read_back(row: Mapping[str, str]) -> dict:
    """What a trial of this row should read back, axis by axis (tf32 "torch": torch's own)."""
    loader = row["data"] != "staged"
    seeded = "unseeded" if row["data"] == "loader-unseeded" else "seeded"
    want = {
        "threads": torch.get_num_threads() if row["threads"] == "-" else int(row["threads"]),
        "data": f"DataLoader ({seeded}, {row['workers']} workers)" if loader else "staged",
        "memory_format": row["memory_format"],
        "compile": row["compile"],
        "amp": {"off": "off", "bf16": "bfloat16", "fp16": "float16 + GradScaler"}[row["amp"]],
        "nproc": None if row["nproc"] == "-" else int(row["nproc"]),
    }
    if row["tf32"] != "torch":
        precision = "tf32" if row["tf32"] == "on" else "ieee"
        want["tf32"] = f"conv={precision},matmul={precision}"
    return want


@pytest.mark.parametrize(**RUNS_ON_CPU)
def test_on_the_cpu_each_trial_reads_back_the_axis_values_its_row_asked_for(index, row, cpu_rows):
    _, latest = _ran(cpu_rows, index)
    for trial_id, record in latest.items():
        got = {axis: record.get(f"{axis}_read_back") for axis in _read_back(row)}
        got["compile"] = (got["compile"] or "").split(" ")[0]  # "on (inductor deterministic=...)"
        assert got == _read_back(row), trial_id
