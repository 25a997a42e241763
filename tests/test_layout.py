"""Memory-layout bias made noise: a new forkserver each round (its labels share it), a
random heap and environment pad in every trial, and round orders from a Williams design,
so no label keeps one layout or one predecessor for a whole sweep."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from detcost import executors, isolation, plan, sweep
from detcost.isolation import run_isolated
from detcost.plan import round_order, williams_rows
from detcost.record import ROUND_KINDS
from detcost.trial import ENV_PAD_MAX, HEAP_PAD_MAX, Layout
from tests.conftest import make_spec
from tests.test_trust import SyntheticTrials, options


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_over_one_pass_of_the_design_every_label_follows_every_other_equally_often(n):
    orders = [round_order(r, n, seed=7) for r in range(len(williams_rows(n)))]
    follows = Counter((o[i], o[i + 1]) for o in orders for i in range(n - 1))
    places = Counter((label, o.index(label)) for o in orders for label in o)
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1
    assert len(places) == n * n and len(set(places.values())) == 1
    assert all(sorted(o) == list(range(n)) for o in orders)


def test_round_orders_are_a_function_of_the_round_and_the_seed():
    assert [round_order(r, 8, 3) for r in range(20)] == [round_order(r, 8, 3) for r in range(20)]
    assert [round_order(r, 8, 3) for r in range(8)] != [round_order(r, 8, 4) for r in range(8)]


def test_a_sweep_plans_each_round_in_the_designs_order(tmp_path):
    opts = options(tmp_path, settings=["default", "benchmark", "strict"], repeats=4)
    labels = [("timed", s) for s in opts.settings] + [("aa", "default")]
    for r in range(4):
        got = [(str(s.kind), s.setting) for s in plan.plan(opts) if s.repeat == r and s.kind in ROUND_KINDS]
        assert got == [labels[i] for i in round_order(r, 4, opts.seed)]


def test_layouts_are_drawn_over_the_whole_range():
    rng = random.Random(0)
    drawn = [Layout.draw(rng) for _ in range(400)]
    assert all(0 <= d.heap_pad < HEAP_PAD_MAX and d.heap_pad % 16 == 0 for d in drawn)
    assert all(0 <= d.env_pad < ENV_PAD_MAX for d in drawn)
    assert max(d.heap_pad for d in drawn) > HEAP_PAD_MAX * 0.9 and min(d.heap_pad for d in drawn) < HEAP_PAD_MAX * 0.1


class _Servers:
    """Counts the sweep's forkserver restarts."""

    def __init__(self):
        self.starts = 0

    def new_server(self, rng) -> bool:
        self.starts += 1
        return True


def _sweep(tmp_path, monkeypatch, **kw):
    servers, trials = _Servers(), SyntheticTrials(noise=0.01)
    seen = []

    def run_one(opts, spec, machine, layout=None):
        seen.append((spec, layout, servers.starts))
        return trials(opts, spec, machine, layout)

    monkeypatch.setattr(executors, "new_server", servers.new_server)
    monkeypatch.setattr(executors, "_run_one", run_one)
    monkeypatch.setattr(executors, "start_method", lambda method, device: "forkserver")
    sweep.run_sweep(options(tmp_path, allow_busy=True, **kw), progress=False)
    return servers, seen


def test_each_round_starts_a_new_server_and_every_trial_gets_a_pad(tmp_path, monkeypatch):
    servers, seen = _sweep(tmp_path, monkeypatch, repeats=3)
    assert servers.starts == 3
    by_round = {}
    for spec, layout, server in seen:
        assert isinstance(layout, Layout)
        by_round.setdefault(spec.repeat, set()).add(server)
    assert [len(s) for s in by_round.values()] == [1, 1, 1]  # the labels of a round share one server
    assert len(set().union(*by_round.values())) == 3
    assert len({layout for _, layout, _ in seen}) == len(seen)  # each trial its own pad


def test_precision_rounds_get_servers_of_their_own(tmp_path, monkeypatch):
    servers, seen = _sweep(tmp_path, monkeypatch, repeats=2, precision=0.0001, max_repeats=5)
    assert {spec.repeat for spec, _, _ in seen} == set(range(5)) and servers.starts == 5


def test_a_fixed_layout_keeps_one_server_and_no_pads(tmp_path, monkeypatch):
    servers, seen = _sweep(tmp_path, monkeypatch, repeats=3, layout="fixed")
    assert servers.starts == 0 and all(layout is None for _, layout, _ in seen)


def test_an_unknown_layout_is_refused_in_one_line(capsys):
    from tests.conftest import run_cli

    assert run_cli("--layout", "shuffled", "--workloads", "simple_cnn", "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown layout 'shuffled'" in err and "random, fixed" in err


def test_a_trial_process_sets_its_pad_before_the_workload_and_the_record_keeps_it():
    layout = Layout(heap_pad=4096, env_pad=123)
    record = run_isolated(make_spec(workload="tests.probes:layout_probe"), method="forkserver", layout=layout)
    assert record.ok, record.error
    assert record.workload_notes["env_pad_seen"] == 123
    assert record.layout["heap_pad"] == 4096 and record.layout["env_pad"] == 123
    assert record.layout["server"] == isolation.server_pid()
    assert record.to_json()["layout"] == record.layout


def test_a_new_server_is_a_new_process_started_with_its_own_pad():
    first = run_isolated(make_spec(), method="forkserver", layout=Layout())
    assert isolation.new_server(random.Random(1))
    second = run_isolated(make_spec(), method="forkserver", layout=Layout())
    assert first.ok and second.ok and first.layout["server"] != second.layout["server"]
    assert isolation.ENV_PAD_VAR not in os.environ  # the pad went to the server only
    assert first.to_json()["params_sha256"] == second.to_json()["params_sha256"]  # the bits do not move


def test_the_trials_before_the_first_round_share_its_server(tmp_path, monkeypatch):
    servers, seen = _sweep(tmp_path, monkeypatch, repeats=2, audit=True)
    assert servers.starts == 2  # the sweep's own first server, then one for round 1
    audit = [server for spec, _, server in seen if spec.kind == "audit"]
    first_round = {server for spec, _, server in seen if spec.kind in ROUND_KINDS and spec.repeat == 0}
    assert audit and first_round == set(audit[:1])


def test_a_trial_does_not_import_the_parents_main_script_again(tmp_path, monkeypatch):
    """multiprocessing's forkserver children import the parent's __main__ by its path; a
    trial must not (in a Ray worker that script is Ray's, ~0.4 s a trial)."""
    import sys
    import types

    marker = tmp_path / "imported"
    script = tmp_path / "main_script.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    main = types.ModuleType("__main__")
    main.__file__, main.__spec__ = str(script), None
    monkeypatch.setitem(sys.modules, "__main__", main)
    record = run_isolated(make_spec(steps=1, warmup=0), method="forkserver", timeout=120)
    assert record.ok, record.error
    assert not marker.exists()
    assert main.__spec__ is None  # the parent's own main as it was
