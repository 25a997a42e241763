"""Machine kinds: the analysis pools rounds across the GPUs (or hosts) of one kind (on CUDA
the GPU model, driver, torch and cuDNN; on the CPU the CPU model, its cores and torch),
shows the spread between them, never pools two kinds, and puts each setting's price per
kind side by side in one report. Built from the committed pair in tests/data/kinds/ (a real
CPU sweep and the same records under a rewritten fingerprint, see its README) and records
rewritten from it here; no test depends on a clock or a quiet machine."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from detcost import results
from detcost.cli import main
from detcost.derive.analysis import analyse
from detcost.derive.keys import AA_LABEL, GroupKey
from detcost.record import TrialRecord
from detcost.report import text
from detcost.report.kinds_text import MISSING, kinds_section
from tests.conftest import make_spec

KINDS = Path(__file__).parent / "data" / "kinds"
BOX_A, BOX_B = KINDS / "box-a.jsonl", KINDS / "box-b.jsonl"
KIND_A = "AMD EPYC x2 cores, torch 2.13.0+cpu"
KIND_B = "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz x16 cores, torch 2.13.0+cpu"
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "cudnn": 90100, "cuda": "12.4"}


def _rewritten(path: Path, source: Path, run_id: str, device: str | None = None, drop: str | None = None,
               **env) -> Path:  # fmt: skip
    """`source`'s records under another run id and fingerprint (`env` merged in), on
    `device` where given, without the trials of setting `drop`."""
    out = []
    for line in source.read_text().splitlines():
        r = json.loads(line)
        if drop and r["setting"] == drop:
            continue
        r["run_id"] = run_id
        r["env"] = {**r["env"], **env}
        if device:
            r["device"] = r["env"]["device"] = device
        out.append(json.dumps(r))
    path.write_text("\n".join(out) + "\n")
    return path


def _outcome(records):
    return SimpleNamespace(events=[], precision=None, decide=None, stopped_early=False, results="RESULTS",
                           planned=records, ran=len(records), skipped=0, reruns=0)  # fmt: skip


def test_a_kind_is_the_gpu_driver_torch_and_cudnn_on_cuda_and_the_cpu_cores_and_torch_on_the_cpu():
    cpu = TrialRecord(make_spec(), env={"cpu": "AMD EPYC", "cpu_count": 2, "torch": "2.4.0", "hostname": "a"})
    assert cpu.machine_kind == "AMD EPYC x2 cores, torch 2.4.0"
    assert cpu.machine_kind_fields == {"cpu": "AMD EPYC", "cpu_count": 2, "torch": "2.4.0"}
    assert cpu.unit == "a"
    gpu = TrialRecord(make_spec(device="cuda:1"), env={**H100, "torch": "2.4.0", "hostname": "g", "cpu": "x"})
    assert gpu.machine_kind == "NVIDIA H100 80GB HBM3, driver 550.54.15, torch 2.4.0, cuDNN 90100"
    assert gpu.unit == "g cuda:1"  # no NVML: the host and the device
    assert TrialRecord(make_spec(device="cuda:0"), env={**gpu.env, "gpu_uuid": "GPU-1"}).unit == "g GPU-1"
    # --ray without NVML: every round sees its GPU as cuda, so the GPU Ray assigned names it
    on_ray = TrialRecord(make_spec(device="cuda"), env=gpu.env, placement={"ray_gpu": "3"})
    assert on_ray.unit == "g GPU 3"
    # another host, the same GPU model, driver, torch and cuDNN: the same kind
    assert TrialRecord(make_spec(device="cuda:0"), env={**gpu.env, "hostname": "h"}).machine_kind == gpu.machine_kind


def test_an_old_record_without_the_fingerprint_still_has_a_kind():
    assert TrialRecord(make_spec()).machine_kind == "? x? cores, torch ?"
    assert TrialRecord(make_spec()).unit == "?"


def test_two_kinds_are_never_pooled_and_their_prices_sit_side_by_side():
    analysis = analyse(results.load_records([BOX_A, BOX_B]))
    assert [m.machine for m in analysis.machines] == [KIND_A, KIND_B]
    for m in analysis.machines:  # each kind prices its own three rounds, not six
        assert {p.price.rounds for p in m.prices} == {3} and m.unit_spreads == []
        assert {p.key.machine for p in m.prices} == {m.machine}
    ak = analysis.across_kinds
    assert ak.kinds == (KIND_A, KIND_B)
    assert [r.setting for r in ak.rows] == ["default", "strict", AA_LABEL]
    for row in ak.rows:  # box-b is box-a's records under another fingerprint: equal prices
        a, b = row.prices
        assert a is not b and a.price == b.price
        assert row.key == GroupKey.of(analysis.records[0]).without_machine()


def test_two_hosts_of_one_kind_pool_and_the_spread_between_them_is_shown(tmp_path):
    twin = _rewritten(tmp_path / "twin.jsonl", BOX_A, "twin", hostname="vm-2")
    analysis = analyse(results.load_records([BOX_A, twin]))
    assert len(analysis.machines) == 1 and analysis.across_kinds is None
    m = analysis.only
    assert m.units == ["vm", "vm-2"]
    assert {p.price.rounds for p in m.prices} == {6}  # both hosts' rounds
    assert [s.pooled.label for s in m.unit_spreads] == ["default", "strict", AA_LABEL]
    for s in m.unit_spreads:
        assert [u.unit for u in s.units] == ["vm", "vm-2"] and s.ratio == pytest.approx(1.0)
        assert all(u.price.price.rounds == 3 for u in s.units)
    lines = text.run_summary(analysis, _outcome(analysis.records), 0.0)
    assert f"Spread between 2 hosts of {KIND_A}" in lines and "max/min" in lines
    rows = text.run_summary_json(analysis, _outcome(analysis.records), 0.0)["unit_spread"]
    assert {r["unit"] for r in rows} == {"vm", "vm-2"} and all(r["max_over_min"] == 1.0 for r in rows)


def test_two_hosts_under_one_run_id_keep_their_rounds_apart(tmp_path):
    """A round pairs the labels of one unit: the same run id and repeat on another host is
    another round, not the same one. (Loaded file by file: the loader keeps the latest
    record of a run id and trial id, so one load of both files keeps one host's.)"""
    run_id = results.load_records(BOX_A)[0].spec.run_id
    twin = _rewritten(tmp_path / "twin.jsonl", BOX_A, run_id, hostname="vm-2")
    m = analyse(results.load_records(BOX_A) + results.load_records(twin)).only
    assert {p.price.rounds for p in m.prices} == {6}


def test_gpus_of_one_model_pool_by_uuid_and_another_driver_is_another_kind(tmp_path):
    g1 = _rewritten(tmp_path / "g1.jsonl", BOX_A, "g1", "cuda:0", **H100, hostname="n1", gpu_uuid="GPU-aaa")
    g2 = _rewritten(tmp_path / "g2.jsonl", BOX_A, "g2", "cuda:0", **H100, hostname="n1", gpu_uuid="GPU-bbb")
    g3 = _rewritten(tmp_path / "g3.jsonl", BOX_A, "g3", "cuda:0", **{**H100, "driver": "560.28.03"}, hostname="n2")
    analysis = analyse(results.load_records([g1, g2, g3]))
    assert len(analysis.machines) == 2
    h100, other = analysis.machines
    assert h100.units == ["n1 GPU-aaa", "n1 GPU-bbb"] and not h100.cpu
    assert {p.price.rounds for p in h100.prices} == {6} and {p.price.rounds for p in other.prices} == {3}
    assert h100.unit_spreads and other.unit_spreads == []
    assert "driver 560.28.03" in other.machine and analysis.across_kinds.kinds == (h100.machine, other.machine)
    section = kinds_section(analysis)
    assert section["header"][-2:] == [h100.machine, other.machine]


def test_a_kind_that_did_not_run_a_setting_shows_a_dash(tmp_path):
    b = _rewritten(tmp_path / "b.jsonl", BOX_B, "b", drop="strict")
    section = kinds_section(analyse(results.load_records([BOX_A, b])))
    strict = next(r for r in section["rows"] if r[1] == "strict")
    assert strict[2] == "1.00 (fastest)" and strict[3] == MISSING


def test_the_report_of_two_kinds_has_a_column_per_kind_and_a_figure(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(BOX_A), str(BOX_B), "--out", str(out)]) == 0
    assert "2 machine kinds side by side" in capsys.readouterr().out
    html = (out / "index.html").read_text()
    assert 'id="kinds"' in html and 'alt="price per machine kind"' in html
    assert html.count("Machine: ") == 2
    header = html.split('<table class="kinds">')[1].split("</tr>")[0]
    assert KIND_A in header and KIND_B in header
    md = (out / "summary.md").read_text()
    assert "## Price per machine kind" in md and f"| {KIND_A} | {KIND_B} |" in md
    assert "![price per machine kind](price-per-kind.png)" in md and (out / "price-per-kind.png").stat().st_size
    assert main(["report", str(BOX_A), str(BOX_B), "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["across_kinds"]
    assert {r["machine"] for r in rows} == {KIND_A, KIND_B} and len(rows) == 6


def test_the_run_summary_puts_the_kinds_side_by_side():
    analysis = analyse(results.load_records([BOX_A, BOX_B]))
    summary = text.run_summary(analysis, _outcome(analysis.records), 0.0)
    assert "Price per machine kind:" in summary and KIND_B in summary
    assert len(text.run_summary_json(analysis, _outcome(analysis.records), 0.0)["across_kinds"]) == 6


def test_one_kind_has_no_side_by_side_section():
    analysis = analyse(results.load_records(BOX_A))
    assert analysis.across_kinds is None and kinds_section(analysis) is None
    assert "Price per machine kind" not in text.run_summary(analysis, _outcome(analysis.records), 0.0)
