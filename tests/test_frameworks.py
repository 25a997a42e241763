"""The report's section on the frameworks' switches, on hand-made price and spread rows:
each switch beside detcost's cheapest setting as reproducible, and what it sets that no
determinism needs (CUDA_LAUNCH_BLOCKING) or leaves out (the fill)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from detcost import results
from detcost.derive.analysis import analyse
from detcost.derive.frameworks import framework_switches
from detcost.derive.keys import GroupKey, group_fields
from detcost.derive.prices import Price, Verdict
from detcost.derive.variance import Spread
from detcost.report.frameworks_text import TITLE, frameworks_table
from detcost.stats import PairedRatio

KEY = GroupKey("simple_cnn", tuple({"batch_size": 16}.get(f) for f in group_fields()))


def _price(label: str, p: float, members: tuple[str, ...] = ()) -> Price:
    nan = math.nan
    verdict = Verdict.FASTEST if p == 1.0 else Verdict.REAL
    return Price(KEY, label, members or (label,), 3, 100.0, nan, 0.01, PairedRatio(p, p - 0.02, p + 0.02, 3),
                 "default", None, nan, nan, nan, 0.0, 0, 0, detectable=0.02, verdict=verdict)  # fmt: skip


def _spread(setting: str, identical: bool) -> Spread:
    nan = math.nan
    return Spread(KEY, setting, 3, 3 if identical else 1, identical, nan, nan, nan, nan, nan, None,
                  rel_l2=0.0 if identical else 1e-4)  # fmt: skip


def _by_switch(prices, spreads, cpu):
    return {v.switch: v for v in framework_switches(prices, spreads, cpu)}


def test_on_a_gpu_hf_full_is_shown_beside_the_cheapest_bitwise_setting_and_its_launch_blocking_priced():
    prices = [_price("default", 1.0), _price("strict", 1.20), _price("strict_nofill", 1.05),
              _price("composer", 1.21), _price("hf_full", 1.90), _price("fastai", 1.02)]  # fmt: skip
    identical = {"default": False, "strict": True, "strict_nofill": True, "composer": True, "hf_full": True,
                 "fastai": False}  # fmt: skip
    spreads = [_spread(s, i) for s, i in identical.items()]
    rows = _by_switch(prices, spreads, cpu=False)
    assert set(rows) == {"composer", "hf_full", "fastai"}
    hf = rows["hf_full"]
    assert hf.bitwise and hf.equivalent == "strict_nofill" and hf.price.price.ratio == 1.90
    assert "CUDA_LAUNCH_BLOCKING=1" in hf.needless[0] and "strict (the same flags without it) 1.20x" in hf.needless[0]
    assert any("fill_uninitialized_memory stays on" in m and "1.05x" in m for m in hf.missing)
    # a switch whose repeats differ is matched by any setting: default, at no price
    assert rows["fastai"].equivalent == "default" and not rows["fastai"].bitwise
    assert any("use_deterministic_algorithms" in m for m in rows["fastai"].missing)
    assert rows["composer"].needless == ()


def test_on_the_cpu_launch_blocking_is_said_to_change_nothing_and_default_is_as_reproducible():
    prices = [_price("default", 1.0, ("default", "monai")), _price("strict", 1.30), _price("hf_full", 1.31),
              _price("lightning", 1.29), _price("hf_set_seed", 1.30)]  # fmt: skip
    spreads = [_spread(s, True) for s in ("default", "monai", "strict", "hf_full", "lightning", "hf_set_seed")]
    rows = _by_switch(prices, spreads, cpu=True)
    assert rows["hf_full"].equivalent == "default" and rows["lightning"].equivalent == "default"
    assert "On the CPU it changes nothing" in rows["hf_full"].needless[0]
    assert rows["lightning"].needless == ()
    assert any("no CUBLAS_WORKSPACE_CONFIG" in m and "the CPU has no cuBLAS" in m for m in rows["hf_set_seed"].missing)
    assert rows["monai"].price.pooled  # priced as one with default, like deterministic


def test_the_section_renders_the_switch_its_price_and_the_cheapest_equivalent():
    prices = [_price("default", 1.0), _price("strict", 1.20), _price("hf_full", 1.90)]
    spreads = [_spread("default", False), _spread("strict", True), _spread("hf_full", True)]
    m = SimpleNamespace(fields=[], cpu=False, frameworks=framework_switches(prices, spreads, cpu=False))
    header, rows = frameworks_table(m)
    row = dict(zip(header, rows[0]))
    assert row["switch"] == "hf_full" and row["replicates"] == "transformers.enable_full_determinism(seed)"
    assert row["price"].startswith("1.90 [1.88, 1.92] real") and row["repeats"] == "bitwise identical"
    assert row["detcost's cheapest as reproducible"].startswith("strict: 1.20 [1.18, 1.22] real")
    assert "CUDA_LAUNCH_BLOCKING=1" in row["sets what no determinism needs"]


def test_a_switch_whose_trials_failed_is_shown_with_the_reason():
    """hf_set_seed on CUDA sets no cuBLAS workspace: its cuBLAS ops raise; the section says so."""
    prices = [_price("default", 1.0), _price("strict", 1.20)]
    spreads = [_spread("default", False), _spread("strict", True)]
    why = "unsupported: ... it uses CuBLAS and you have CUDA >= 10.2"
    m = SimpleNamespace(fields=[], cpu=False, frameworks=framework_switches(prices, spreads, False,
                                                                            [(KEY, "hf_set_seed", why)]))  # fmt: skip
    header, rows = frameworks_table(m)
    row = dict(zip(header, rows[0]))
    assert row["switch"] == "hf_set_seed" and row["price"] == f"- (did not finish: {why})"
    assert "no CUBLAS_WORKSPACE_CONFIG" in row["leaves out"]


def test_a_run_without_a_framework_switch_has_no_section(tmp_path):
    from detcost.report.build import build_report

    analysis = analyse(results.load_records(Path(__file__).parent / "data" / "golden.jsonl"))
    assert analysis.only.frameworks == []
    assert TITLE not in build_report(analysis, tmp_path, []).markdown.read_text()
