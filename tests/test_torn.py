"""A torn last line is not a lost run: a results file whose last write was cut short (a
full disk, a power cut, a killed process) still gives the good records before it to
`report`, `gate`, `compare` and `--resume`, with one warning naming the file and the line;
`--resume` cuts the torn line off before it appends. A bad line elsewhere is still an error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detcost import results
from detcost.cli import main
from tests.conftest import TIMED_ONLY, run_cli

GOLDEN = Path(__file__).parent / "data" / "golden.jsonl"
CUT = 200  # bytes cut off the end, as a full disk leaves a file


def torn_copy(tmp_path: Path, name: str = "torn.jsonl") -> tuple[Path, int]:
    """The golden file with its last CUT bytes gone; how many whole lines it keeps."""
    path = tmp_path / name
    shutil.copy(GOLDEN, path)
    data = path.read_bytes()[:-CUT]
    path.write_bytes(data)
    return path, data.count(b"\n")


def warned_once(err: str, path: Path, line: int) -> bool:
    lines = [ln for ln in err.splitlines() if ln.startswith("detcost: warning:")]
    return len(lines) == 1 and f"{path}: line {line}, the last, is cut short" in lines[0]


@pytest.mark.parametrize("command", ["report", "gate", "compare"])
def test_report_gate_and_compare_read_the_good_records_before_a_torn_last_line(command, tmp_path, capsys):
    path, whole = torn_copy(tmp_path)
    argv = {
        "report": ["report", str(path), "--out", str(tmp_path / "report"), "--json"],
        "gate": ["gate", str(path), "--json"],
        "compare": ["compare", str(GOLDEN), str(path), "--json"],
    }[command]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code != 2 and "not a detcost results file" not in err, err
    assert warned_once(err, path, whole + 1)
    json.loads(out)  # what it printed is whole
    with pytest.warns(results.TornRecordWarning):
        assert len(results.read_records(path)) == whole


def test_a_bad_line_that_is_not_the_last_is_still_an_error_naming_it(tmp_path, capsys):
    lines = GOLDEN.read_text().splitlines(keepends=True)
    middle = tmp_path / "middle.jsonl"
    middle.write_text("".join([*lines[:5], lines[5][:-CUT] + "\n", *lines[6:]]))
    assert main(["report", str(middle), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a detcost results file (line 6 is not JSON)" in err
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("hello, world")  # one unterminated line, no record before it: not a torn detcost file
    assert main(["report", str(foreign), "--out", str(tmp_path / "f")]) == 2
    assert "not a detcost results file (line 1 is not JSON)" in capsys.readouterr().err


def test_resume_cuts_the_torn_line_off_and_appends_whole_records(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    args = [*TIMED_ONLY, "--workloads", "simple_cnn", "--settings", "default,strict", "--repeats", "1"]
    assert run_cli(*args, "--results", str(path)) == 0
    data = path.read_bytes()
    assert data.count(b"\n") == 2
    path.write_bytes(data[:-CUT])  # the second record torn
    capsys.readouterr()
    assert run_cli(*args, "--results", str(path), "--resume") == 0
    assert warned_once(capsys.readouterr().err, path, 2)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert path.read_bytes().endswith(b"\n")


def test_resume_ends_a_last_record_that_lacks_its_newline_before_appending(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(GOLDEN.read_bytes().rstrip(b"\n"))  # whole, but the newline never written
    kept = results.open_for_sweep(path, resume=True)
    assert len(kept) == GOLDEN.read_text().count("\n") and path.read_bytes() == GOLDEN.read_bytes()
