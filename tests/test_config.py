"""The team config: [tool.detcost] in pyproject.toml or a detcost.toml, found upward from
a folder; every malformed key is one line naming the file and the key, and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from detcost import config
from detcost.cli import main
from detcost.errors import UsageError


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_the_nearest_config_upward_is_found_and_read(tmp_path):
    _write(
        tmp_path,
        "pyproject.toml",
        """[project]\nname = "x"\n\n[tool.detcost]
setting = "strict_nofill"\nseed = 7\nmax_slowdown = "15%"\nworkloads = ["simple_cnn", "resnet18"]
baseline = "results/release.jsonl"\nrequire = ["reproducible"]\n""",
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = config.find(deep)
    assert found.path == tmp_path / "pyproject.toml" and found.setting == "strict_nofill" and found.seed == 7
    assert found.max_slowdown == pytest.approx(0.15) and found.workloads == ("simple_cnn", "resnet18")
    assert found.baseline == (tmp_path / "results" / "release.jsonl").resolve() and found.requires_reproducible


def test_a_detcost_toml_takes_its_keys_at_the_top_level_and_comes_before_pyproject(tmp_path):
    _write(tmp_path, "pyproject.toml", '[tool.detcost]\nsetting = "strict"\n')
    _write(tmp_path, "detcost.toml", 'setting = "deterministic"\nmax_slowdown = 0.05\n')
    found = config.find(tmp_path)
    assert found.setting == "deterministic" and found.max_slowdown == pytest.approx(0.05)


def test_a_pyproject_without_the_table_is_no_config(tmp_path):
    _write(tmp_path / "p", "pyproject.toml", '[project]\nname = "x"\n')
    assert config.find(tmp_path / "p") is None or config.find(tmp_path / "p").path.parent != tmp_path / "p"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[tool.detcost]\nsetttng = "strict"\n', "unknown key 'setttng'"),
        ('[tool.detcost]\nsetting = "fastest"\n', "unknown setting 'fastest'"),
        ("[tool.detcost]\nseed = -1\n", "seed must be a whole number"),
        ('[tool.detcost]\nmax_slowdown = "lots"\n', "max_slowdown: 'lots' is not a number"),
        ('[tool.detcost]\nworkloads = "simple_cnn"\nrequire = ["fast"]\n', "unknown requirement 'fast'"),
        ("[tool.detcost\nsetting = 1\n", "is not valid TOML"),
    ],
)
def test_a_malformed_config_is_one_line_naming_the_key(tmp_path, text, says):
    path = _write(tmp_path, "pyproject.toml", text)
    with pytest.raises(UsageError) as caught:
        config.read(path)
    message = str(caught.value)
    assert says in message and str(path) in message and "\n" not in message


def test_a_bad_config_is_exit_2_and_one_line_at_the_cli(tmp_path, monkeypatch, capsys):
    _write(tmp_path, "detcost.toml", 'speed = "fast"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["config"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'speed'" in err and len(err.splitlines()) == 1


def test_run_takes_the_team_config_where_no_flag_is_given_and_marks_the_team_setting(tmp_path, monkeypatch, capsys):
    """One tiny sweep: the config's workloads, seed and budget; its setting added to the
    --settings given, with one line saying so, and marked in the terminal and the report."""
    import json

    from tests.conftest import TIMED_ONLY, run_cli

    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "detcost.toml", 'setting = "strict"\nseed = 5\nmax_slowdown = "20%"\nworkloads = ["simple_cnn"]\n')
    results_path, report = tmp_path / "r.jsonl", tmp_path / "report"
    code = run_cli("--settings", "default", "--repeats", "2", *TIMED_ONLY, "--results", str(results_path),
                   "--report", str(report))  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert "note: strict added to the settings: the team config" in err
    records = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert {(r["workload"], r["setting"], r["seed"]) for r in records} == {("simple_cnn", s, 5) for s in
                                                                          ("default", "strict")}  # fmt: skip
    assert "strict (team)" in out
    markdown, html = (report / "summary.md").read_text(), (report / "index.html").read_text()
    assert "| strict (team) |" in markdown and "strict (team)</th>" in html
    assert markdown.count("(team)") >= 2  # the matrix's column and the detail row


def test_a_run_flag_always_wins_over_the_team_config(tmp_path):
    from detcost.cli.args import build_parser
    from detcost.cli.run import with_team
    from detcost.derive.policy import resolve

    team = config.read(_write(tmp_path, "detcost.toml", 'seed = 5\nmax_slowdown = "20%"\nmodel = "m.py:net"\n'))
    args = build_parser().parse_args(["run", "--seed", "1", "--max-slowdown", "5%", "--workloads", "resnet18"])
    given = with_team(args, team)
    assert (given.seed, given.workloads, given.model) == (1, "resnet18", None)
    assert resolve(args.max_slowdown, team=team).max_slowdown == 0.05
    bare = build_parser().parse_args(["run"])
    filled = with_team(bare, team)
    assert (filled.seed, filled.workloads, filled.model) == (5, None, "m.py:net")
    assert resolve(bare.max_slowdown, team=team).max_slowdown == 0.2
    plain = with_team(bare, None)
    assert (plain.seed, plain.workloads, plain.model) == (0, None, None)
    assert resolve(bare.max_slowdown, team=None).max_slowdown == 0.1
