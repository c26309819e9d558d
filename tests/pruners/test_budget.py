"""Budget mode: targets, the k controller, the accuracy guard with rollback, both engines."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from interrupt import Stop, stop_after

import fedprune.federated.client as client_mod
from fedprune.config import BudgetConfig, ConfigError, from_dict
from fedprune.federated import run_simulation
from fedprune.metrics import n_params, plot_run
from fedprune.models import new_model
from fedprune.pruners import Validation, make_pruner
from fedprune.pruners.budget import measure, smallest_model
from fedprune.pruning import BoundaryRule, prune_model
from fedprune.pruning import budget as B

# ----------------------------------------------------------------------------- controller


def test_tightening_lowers_k_until_k_min_then_reports_unreachable():
    cfg = BudgetConfig(params=10, k_min=0.2, tighten=0.5)
    st = B.start(1.0, 0.2)
    ks = []
    for _ in range(4):
        st = B.nothing_cut(cfg, st)
        ks.append(st.k)
    assert ks[:3] == [0.5, 0.25, 0.2]
    assert st.status == "unreachable"
    # at k_min but with a step cap shrunk by rollbacks: the cap grows back first
    shrunk = B.ControllerState(k=0.2, step_fraction=0.05, step_cap=0.2)
    grown = B.nothing_cut(cfg, shrunk)
    assert grown.status == "pruning" and grown.step_fraction == pytest.approx(0.075)


def test_guard_accepts_within_tolerance_and_rolls_back_beyond_it():
    cfg = BudgetConfig(params=10, guard_tolerance=0.02, guard_recovery_rounds=3, relax=2.0,
                       k_max=3.0, max_rollbacks=2)
    st = B.cut(cfg, B.start(1.0, 0.4), rnd=10, acc_before=0.80, val_clients=[1, 2])
    assert st.pending and st.check_round == 13 and st.val_clients == [1, 2]
    ok_state, ok = B.judge(cfg, st, 0.785)
    assert ok and ok_state.accepted == 1 and not ok_state.pending and ok_state.k == 1.0
    assert ok_state.step_fraction == 0.4  # already at its cap
    bad, ok = B.judge(cfg, st, 0.75)
    assert not ok and not bad.pending
    assert (bad.k, bad.step_fraction, bad.rollbacks, bad.status) == (2.0, 0.2, 1, "pruning")
    regrow, ok = B.judge(cfg, B.cut(cfg, bad, 14, 0.8, [1]), 0.8)
    assert ok and regrow.step_fraction == pytest.approx(0.25)  # x1.25 after an accepted cut
    again, ok = B.judge(cfg, B.cut(cfg, bad, 14, 0.8, [1]), 0.7)
    assert not ok and again.k == 3.0 and again.status == "gave_up"  # k_max caps; 2 in a row
    with pytest.raises(ValueError, match="no candidate"):
        B.judge(cfg, bad, 0.5)


def test_the_guard_margin_allows_for_sampling_noise():
    cfg = BudgetConfig(params=10, guard_tolerance=0.01, guard_z=1.0)
    st = B.cut(cfg, B.start(1.0, 0.2), 3, acc_before=0.80, val_clients=[0], n_before=100)
    se = math.sqrt(0.8 * 0.2 / 100 + 0.75 * 0.25 / 100)
    assert B.guard_margin(cfg, 0.8, 100, 0.75, 100) == pytest.approx(0.01 + se)
    assert B.judge(cfg, st, 0.75, n_after=100)[1]  # a 5-point drop on 100 samples: noise
    assert not B.judge(cfg, st, 0.75, n_after=0)[1]  # unknown count: the tolerance alone
    strict = BudgetConfig(params=10, guard_tolerance=0.01, guard_z=0.0)
    assert not B.judge(strict, st, 0.75, n_after=100)[1]
    assert not B.judge(cfg, st, float("nan"), n_after=100)[1]  # not judged: rolled back


def test_without_the_guard_a_cut_is_accepted_at_once():
    st = B.cut(BudgetConfig(params=10, guard=False), B.start(1.0, 0.2), 5, None, [])
    assert st.accepted == 1 and not st.pending


def test_targets_gaps_and_the_tightest_target_wins():
    t = B.resolve_targets(BudgetConfig(params=900, params_fraction=0.05, flops_fraction=0.5),
                          params_initial=10_000, flops_initial=1_000_000)
    assert (t.params, t.flops, t.latency_ms) == (500, 500_000, None)
    g = B.gaps(t, {"params": 1000, "flops": 400_000})
    assert g["params"] == pytest.approx(1.0) and g["flops"] == pytest.approx(-0.2)
    assert not B.is_met(t, {"params": 1000, "flops": 400_000})
    assert B.is_met(t, {"params": 500, "flops": 500_000})
    with pytest.raises(B.BudgetError, match="budget params = 500 is unreachable"):
        B.check_reachable(t, {"params": 800, "flops": 100})


def test_latency_table_interpolates_on_flops_and_rejects_bad_files(tmp_path):
    table = B.LatencyTable.from_dict({"rows": [
        {"flops": 4e6, "latency_ms": 2.0}, {"flops": 1e6, "latency_ms": 0.5},
        {"flops": 2e6, "latency_ms": 1.0}]})
    assert table.estimate(1.5e6) == pytest.approx(0.75)
    assert table.estimate(0.5e6) == pytest.approx(0.25)
    assert table.estimate(6e6) == pytest.approx(3.0)
    bad = tmp_path / "t.json"
    for doc, msg in [("{", "not readable"), ('{"rows": [{"flops": 1}]}', "at least two"),
                     (('{"rows": [{"flops": 1, "latency_ms": 1}, {"flops": -1, '
                       '"latency_ms": 1}]}'), "non-positive"),
                     ('{"rows": [{"flops": 1, "latency_ms": 1}, {"x": 2}]}', "lacks numeric")]:
        bad.write_text(doc)
        with pytest.raises(B.BudgetError, match=msg):
            B.LatencyTable.load(bad)
    with pytest.raises(B.BudgetError, match="does not exist"):
        B.LatencyTable.load(tmp_path / "missing.json")


def test_config_rejects_a_guard_without_validation_data_and_non_rule_methods():
    with pytest.raises(ConfigError, match="data.val_fraction"):
        from_dict({"budget": {"params_fraction": 0.1}, "data": {"val_fraction": 0.0}})
    with pytest.raises(ConfigError, match="prune.method = 'auto'"):
        from_dict({"budget": {"params_fraction": 0.1, "guard": False},
                   "prune": {"method": "ratio"}})
    with pytest.raises(ConfigError, match="budget.latency_table"):
        from_dict({"budget": {"latency_ms": 2.0, "guard": False}})
    assert not from_dict({}).budget.active


# ----------------------------------------------------------------------------- server


def _model():
    return new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                     widths=[8, 16], seed=0)


def test_the_floor_is_the_smallest_model_the_rule_can_reach():
    model, spec = _model()
    small = smallest_model(model, spec.example_input(), spec, min_channels=2)
    assert [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)] == [2, 2]
    assert n_params(model) > n_params(small)  # the original is untouched


def _pruner(cfg, model, spec):
    """Budget mode's pruner of ``model`` among 4 clients, each with a validation split."""
    return make_pruner(cfg, model=model, spec=spec, example=spec.example_input(),
                       params_initial=n_params(model), flops_initial=2 * 10**6,
                       num_clients=4, has_validation=[True] * 4)


def test_budget_pruner_rolls_back_to_the_exact_pre_cut_model():
    model, spec = _model()
    cfg = from_dict({"data": {"val_fraction": 0.2}, "budget": {
        "params_fraction": 0.2, "guard_recovery_rounds": 1, "guard_tolerance": 0.01},
        "prune": {"start_round": 1, "interval": 2, "max_prune_round": 10, "k": 0.0,
                  "max_fraction": 0.5}})
    srv = _pruner(cfg, model, spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accs = iter([0.9, 0.5])  # before the cut, then after recovery: a 40-point drop

    def validate(m, s, ids):
        return Validation(next(accs), 100, 0.3)

    step = srv.after_aggregate(1, model, spec, validate)
    assert step.pruned and step.changed
    assert [e["decision"] for e in step.record["guard"]] == ["candidate"]
    assert n_params(step.model) < n_params(model.__class__(10, 1, 28, [8, 16]))
    step2 = srv.after_aggregate(2, step.model, step.spec, validate)
    assert step2.changed and not step2.pruned
    (verdict,) = step2.record["guard"]
    assert {k: verdict[k] for k in ("decision", "cut_round", "acc_before", "acc_after")} == {
        "decision": "rollback", "cut_round": 1, "acc_before": 0.9, "acc_after": 0.5}
    # tolerance + 1 standard error of two estimates from 100 samples each
    assert verdict["margin"] == pytest.approx(0.01 + math.sqrt(0.09 / 100 + 0.25 / 100))
    assert step2.spec == spec
    for k, v in step2.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert srv.state.k == 0.0 and srv.state.step_fraction == 0.25  # k*1.5 of 0 stays 0


@pytest.mark.parametrize("guard", [False, True])
def test_the_cut_that_meets_the_budget_takes_only_what_it_needs(guard):
    model, spec = _model()
    ex = spec.example_input()
    full = copy.deepcopy(model)  # the same cut at the controller's full step
    prune_model(full, ex, BoundaryRule(k=0.0, mode="low", min_channels=1, max_fraction=0.5),
                seed=1 * 100_003 + 1, record=spec.record)
    target = n_params(model) - 300  # a few channels' worth below the model
    assert n_params(full) < target - 1000  # the full step would overshoot it by far
    cfg = from_dict({"seed": 1, "data": {"val_fraction": 0.2 if guard else 0.0}, "budget": {
        "params": target, "guard": guard, "guard_recovery_rounds": 0},
        "prune": {"start_round": 1, "interval": 1, "max_prune_round": 10, "k": 0.0,
                  "max_fraction": 0.5}})
    srv = _pruner(cfg, model, spec)
    step = srv.after_aggregate(1, model, spec, lambda m, s, ids: Validation(0.9, 100, 0.3))
    assert step.pruned
    assert n_params(full) < n_params(step.model) <= target
    assert 0 < step.record["cut_step"] < 0.5
    assert srv.state.status == "met"


# ----------------------------------------------------------------------------- loop

BASE = {
    "threads": 1, "data": {"num_clients": 6, "val_fraction": 0.2},
    "model": {"widths": [8, 16]}, "train": {"local_epochs": 1},
    "fed": {"rounds": 12, "clients_per_round": 4, "eval_every": 4},
    "prune": {"start_round": 2, "max_prune_round": 11, "interval": 1, "max_fraction": 0.4},
}


def _cfg(**budget):
    return from_dict({**BASE, "budget": budget})


def test_loop_reaches_a_reachable_params_budget_and_stops(tmp_path):
    res = run_simulation(_cfg(params_fraction=0.3, guard=False), tmp_path)
    s = res.summary["budget"]
    assert s["status"] == "met" and s["met"] and res.summary["budget_status"] == "met"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["budget_status"] == "met"
    assert res.summary["params_final"] <= 0.3 * res.summary["params_initial"]
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    met_at = next(r["round"] for r in rows if r["budget"]["status"] == "met")
    assert len({r["params"] for r in rows if r["round"] >= met_at}) == 1  # no cut after
    assert all(r["budget"]["gap"]["params"] <= 0 for r in rows if r["round"] >= met_at)
    assert rows[0]["budget"]["gap"]["params"] > 0
    plot_run(tmp_path)
    assert (tmp_path / "budget.png").stat().st_size > 0


def test_loop_rejects_an_unreachable_budget_before_training(tmp_path):
    with pytest.raises(B.BudgetError, match="unreachable"):
        run_simulation(_cfg(params=50, guard=False), tmp_path)


def test_loop_guard_rolls_back_every_harmful_cut_and_gives_up(monkeypatch, tmp_path):
    real = client_mod.evaluate

    def evaluate(model, x, y, batch_size=512, **kw):  # smaller models look worse on validation
        acc, loss = real(model, x, y, batch_size, **kw)
        return (n_params(model) / 10**4, loss) if len(y) < 100 else (acc, loss)

    monkeypatch.setattr(client_mod, "evaluate", evaluate)  # what clients answer with
    res = run_simulation(_cfg(params_fraction=0.3, guard_recovery_rounds=1, guard_z=0.0,
                              max_rollbacks=3), tmp_path)
    s = res.summary["budget"]
    assert (s["status"], s["rollbacks"], s["accepted"]) == ("gave_up", 3, 0)
    assert res.summary["budget_status"] == "gave_up"
    assert res.summary["params_final"] == res.summary["params_initial"]
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    decisions = [e["decision"] for r in rows for e in r["budget"]["guard"]]
    assert decisions == ["candidate", "rollback"] * 3
    # judged and cut again in the same round: the rollback comes first
    assert [e["decision"] for e in rows[2]["budget"]["guard"]] == ["rollback", "candidate"]
    ks = [r["budget"]["k"] for r in rows]
    assert ks[-1] > ks[0]  # relaxed after each rollback


def test_budget_run_resumes_bit_identically_with_a_pending_candidate(tmp_path):
    cfg = _cfg(params_fraction=0.3, guard_recovery_rounds=2, guard_tolerance=1.0)
    full = run_simulation(cfg, tmp_path / "full")
    rows = [json.loads(x) for x in (tmp_path / "full" / "rounds.jsonl").read_text().splitlines()]
    pending = [r["round"] for r in rows if r["budget"]["pending"]]
    assert pending, "no round ended with a candidate under the guard"
    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        run_simulation(cfg, cut, on_round=stop_after(pending[0]))
    resumed = run_simulation(cfg, cut, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    a, b = dict(full.summary), dict(resumed.summary)
    a.pop("seconds"), b.pop("seconds")
    assert a == b or (math.isnan(a["loss"]) and {**a, "loss": 0} == {**b, "loss": 0})


def test_measure_uses_the_latency_table(tmp_path):
    model, spec = _model()
    table = B.LatencyTable.from_dict({"rows": [{"flops": 1e5, "latency_ms": 0.1},
                                               {"flops": 1e7, "latency_ms": 10.0}]})
    m = measure(model, spec.example_input(), table)
    assert m["latency_ms"] == pytest.approx(table.estimate(m["flops"]))


# ----------------------------------------------------------------------------- Flower


def test_the_flower_app_runs_budget_mode_like_the_loop(tmp_path):
    from fedprune.flower.client_app import client_app
    from fedprune.flower.grid import LocalGrid
    from fedprune.flower.run_config import experiment_to_run_config
    from fedprune.flower.server_app import run_server
    from fedprune.metrics import read_rounds

    cfg = from_dict({
        **BASE, "data": {"num_clients": 4, "val_fraction": 0.2},
        "train": {"local_epochs": 1, "engine": "per_client"},  # ClientApps train one by one
        "fed": {"rounds": 8, "clients_per_round": 3, "eval_every": 4},
        "budget": {"params_fraction": 0.4, "guard_recovery_rounds": 1, "guard_clients": 3,
                   "guard_tolerance": 0.05},
    })
    loop = run_simulation(cfg, tmp_path / "loop")
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 4} for i in range(4)])
    summary = run_server(grid, {**experiment_to_run_config(cfg),
                                "out-dir": str(tmp_path / "flower")})
    rows_l, rows_f = read_rounds(tmp_path / "loop"), read_rounds(tmp_path / "flower")
    decisions = [e["decision"] for r in rows_l for e in r["budget"]["guard"]]
    assert "candidate" in decisions  # the guard was exercised through query messages
    assert [r["widths"] for r in rows_f] == [r["widths"] for r in rows_l]
    for a, b in zip(rows_l, rows_f, strict=True):
        ga, gb = a["budget"].pop("guard"), b["budget"].pop("guard")
        assert a["budget"] == b["budget"]
        assert len(ga) == len(gb)
        for ea, eb in zip(ga, gb, strict=True):
            assert ea.keys() == eb.keys() and ea["decision"] == eb["decision"]
            for key in ("acc_before", "acc_after", "margin"):
                if key in ea:
                    assert eb[key] == pytest.approx(ea[key], abs=1e-9)
    assert summary["budget"]["status"] == loop.summary["budget"]["status"]
    assert summary["params_final"] == loop.summary["params_final"]
