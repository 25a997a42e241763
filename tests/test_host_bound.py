"""Host-bound steps: how busy the kernels kept the GPU in the profiled trial's steps, the
price table's `host_bound` column built from it, and the mark the reports put on such
prices. Synthetic intervals and records: nothing here needs a GPU or the profiler's timing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from detcost import profile
from detcost.derive.analysis import analyse
from detcost.derive.keys import AA_LABEL
from detcost.profile import host_bound, merged_busy_s
from detcost.record import HOST_BOUND_BELOW, Profile, Status, StepTiming, TrialParts, TrialRecord
from detcost.report import prices_text, text
from detcost.trial import run_trial
from tests.conftest import make_spec

# ---- kernel busy time ------------------------------------------------------------------


def test_overlapping_kernels_count_once_towards_busy_time():
    # (start, duration): two overlapping, one nested, one touching, one apart, given unsorted
    intervals = [(3.0, 1.0), (0.0, 1.0), (0.5, 1.0), (0.6, 0.2), (1.5, 0.5), (2.5, 0.0)]
    assert merged_busy_s(intervals) == pytest.approx(1.5 + 0.5 + 1.0)
    assert merged_busy_s([]) == 0.0
    assert merged_busy_s([(1.0, 2.0), (1.0, 2.0)]) == pytest.approx(2.0)  # the same kernel twice


def test_a_step_whose_kernels_leave_the_gpu_idle_is_host_bound():
    # two 10 ms steps: kernels cover 0-4 ms (two overlapping) and 5-7 ms, then 10-14 ms
    kernels = [(0.000, 0.003), (0.002, 0.002), (0.005, 0.002), (0.010, 0.004)]
    found = host_bound(kernels, [0.010, 0.010])
    assert found.kernel_busy_s == pytest.approx(0.005) and found.step_s == pytest.approx(0.010)
    assert found.kernel_busy_fraction == pytest.approx(0.5) and found.host_bound is True
    assert found.threshold == HOST_BOUND_BELOW


def test_a_step_the_kernels_fill_is_not_host_bound_and_the_fraction_stops_at_one():
    assert host_bound([(0.0, 0.0095)], [0.010]).host_bound is False
    assert host_bound([(0.0, 0.012)], [0.010]).kernel_busy_fraction == 1.0
    assert host_bound([], []).kernel_busy_fraction is None and not host_bound([], []).host_bound


def test_only_device_activity_counts_not_cpu_ops_or_the_annotation_spans_over_kernels():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(device, start_us, end_us, annotation=False, activity="kernel"):
        span = SimpleNamespace(start=start_us, end=end_us)
        return SimpleNamespace(
            device_type=device, time_range=span, is_user_annotation=annotation, activity_type=activity
        )

    events = [
        event(cuda, 0, 1000),
        event(cuda, 5000, 6000, activity="gpu_memcpy"),
        event(cpu, 0, 9000, activity="cpu_op"),
        event(cuda, 0, 9000, annotation=True, activity="gpu_user_annotation"),  # covers the gap too
    ]
    intervals = profile._device_intervals(SimpleNamespace(events=lambda: events))
    assert intervals == [(0.0, 0.001), (0.005, 0.001)]


def _profiled_optimizer_step():
    """What torch 2.13's profiler gives for one CUDA optimizer step, as its own event
    objects: the host-side annotation and op, the kernel, and the annotation's device-side
    span (`gpu_user_annotation`), which covers the kernel and the gap after it (the device
    runs behind the host)."""
    from torch.autograd.profiler_util import EventList, FunctionEvent

    cuda, step, span = torch.autograd.DeviceType.CUDA, "Optimizer.step#SGD.step", "gpu_user_annotation"

    def event(i, name, thread, start, end, **kw):
        return FunctionEvent(i, name, thread, start, end, stack=[], use_device="cuda", **kw)

    events = EventList(
        [
            event(1, step, 1, 0, 500, is_user_annotation=True, activity_type="user_annotation"),
            event(2, "aten::_foreach_add_", 1, 100, 400, activity_type="cpu_op"),
            event(3, "void multi_tensor_apply_kernel", 7, 300, 1000, device_type=cuda, activity_type="kernel"),
            event(4, step, 7, 300, 9000, device_type=cuda, is_user_annotation=True, activity_type=span),
        ],
        use_device="cuda",
    )
    events._build_tree()
    return SimpleNamespace(events=lambda: events, key_averages=events.key_averages)


def test_the_op_table_takes_no_annotation_span_for_a_kernel():
    """The optimizer's device-side annotation span is no kernel: it would top the ranking
    (8.7 ms against its one 0.7 ms kernel) and count that kernel twice."""
    prof = _profiled_optimizer_step()
    rows = {(r["name"], r["kind"]): r for r in profile._op_rows(prof, steps=1)}
    assert set(rows) == {
        ("Optimizer.step#SGD.step", "op"),  # the host-side range stays, by its host time
        ("aten::_foreach_add_", "op"),
        ("void multi_tensor_apply_kernel", "kernel"),
    }
    assert rows["void multi_tensor_apply_kernel", "kernel"]["self_device_ms"] == pytest.approx(0.7)
    assert rows["Optimizer.step#SGD.step", "op"]["self_device_ms"] == 0
    assert profile.top_ops(list(rows.values()))[0] == "void multi_tensor_apply_kernel"
    # the busy time follows the same rule
    assert profile._device_intervals(prof) == [(pytest.approx(0.0003), pytest.approx(0.0007))]


def test_the_profiled_trial_records_no_host_bound_on_the_cpu():
    record = run_trial(make_spec(kind="profiled", steps=2, warmup=1))
    assert record.status == Status.OK, record.error
    assert record.profile.host_bound is None and record.profile.profiled_steps == 2
    assert "profiled_clock_warmup_steps" not in record.to_json()  # no clock warm-up on the CPU


# ---- the price table and the reports ---------------------------------------------------

TIMED_STEP_S = {"default": 0.010, "benchmark": 0.008}
KERNEL_S = {"default": 0.004, "benchmark": 0.0076}  # 40% and 95% of the timed step


def _timed(kind: str, setting: str, repeat: int, workload: str) -> TrialRecord:
    spec = make_spec(kind=kind, setting=setting, repeat=repeat, workload=workload, device="cuda:0")
    timing = StepTiming(step_times_s=[TIMED_STEP_S[setting]] * 4, batch_size=spec.batch_size)
    return TrialRecord(spec, Status.OK, parts=TrialParts(timing=timing))


def _profiled(setting: str, workload: str, cuda: bool = True) -> TrialRecord:
    spec = make_spec(kind="profiled", setting=setting, workload=workload, device="cuda:0" if cuda else "cpu")
    # the profiler slows the trial's own steps to 20 ms: by its own step, both look host-bound
    measured = host_bound([(0.0, 3 * KERNEL_S[setting])], [0.020] * 3) if cuda else None
    return TrialRecord(spec, Status.OK, parts=TrialParts(profile=Profile(host_bound=measured)))


def _analysis(profiled: list[TrialRecord]):
    timed = [
        _timed(kind, setting, repeat, workload)
        for workload in ("simple_cnn", "resnet18")
        for repeat in range(2)
        for kind, setting in (("timed", "default"), ("timed", "benchmark"), ("aa", "default"))
    ]
    return analyse(timed + profiled).only


def test_the_price_table_marks_a_setting_host_bound_against_its_timed_step():
    m = _analysis([_profiled("default", "simple_cnn"), _profiled("benchmark", "simple_cnn")])
    row = {(p.key.workload, p.label): p for p in m.prices}
    assert row["simple_cnn", "default"].host_bound is True
    assert row["simple_cnn", "default"].kernel_busy_fraction == pytest.approx(0.4)
    # the timed step, not the profiled one, is the yardstick: 95% busy is kernel-bound
    assert row["simple_cnn", "benchmark"].host_bound is False
    assert row["simple_cnn", "benchmark"].kernel_busy_fraction == pytest.approx(0.95)
    assert row["simple_cnn", AA_LABEL].host_bound is True  # the A/A control runs default
    assert row["resnet18", "default"].host_bound is None  # nothing profiled it


def test_cpu_results_have_no_host_bound_prices_and_no_mark():
    m = _analysis([_profiled("default", "simple_cnn", cuda=False)])
    assert all(p.host_bound is None for p in m.prices)
    assert text.host_bound_lines(m.prices) == []
    assert "host-bound" not in str(text.price_matrix(m))


def test_the_text_and_html_reports_say_a_host_bound_price_is_understated():
    m = _analysis([_profiled("default", "simple_cnn"), _profiled("benchmark", "simple_cnn")])
    (sentence,) = text.host_bound_lines(m.prices)
    assert sentence.startswith("host-bound: the price is understated") and "simple_cnn default 40%" in sentence
    assert "benchmark" not in sentence and "resnet18" not in sentence
    header, rows = text.price_matrix(m)
    cells = {
        (r["head"][0].split(" (")[0], s): c for r in rows for s, (c, _) in zip(header[len(r["head"]) :], r["cells"])
    }
    assert "host-bound" in cells["simple_cnn", "default"] and "host-bound" not in cells["simple_cnn", "benchmark"]
    _, rows, _ = prices_text.price_details(m)
    marked = {r["cells"][1] for r in rows if any(text.HOST_BOUND_NOTE in c for c in r["cells"])}
    assert marked == {"default"}
