"""The earlier automatic method (prune.method = "auto-paired"): candidates, paired
validation, decisions."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from interrupt import Stop, stop_after

from fedprune.config import ConfigError, from_dict, load_config
from fedprune.federated import run_simulation
from fedprune.metrics import count_macs, n_params, payload_bytes
from fedprune.models import new_model
from fedprune.pruners import Validation, make_pruner
from fedprune.pruners.auto import paired, trimmed_count

SHORT = {"threads": 1, "train": {"local_epochs": 1},
         "fed": {"rounds": 8, "clients_per_round": 5, "eval_every": 1},
         "prune": {"method": "auto-paired", "start_round": 2, "interval": 2,
                   "confidence_z": 1.0, "trim_fraction": 0.0}}


def _cfg(**prune):
    """SHORT with these prune settings; a candidate is judged once unless ``judgements``."""
    return from_dict({**SHORT, "prune": {**SHORT["prune"], "judgements": 1, **prune}})


def _pruner(cfg, n_val=4):
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[10, 20], seed=0)
    pruner = make_pruner(cfg, model=model, spec=spec, example=spec.example_input(),
                         params_initial=n_params(model), flops_initial=0, num_clients=6,
                         has_validation=[True] * n_val + [False] * (6 - n_val))
    return pruner, model, spec


def _validator(cost_of):
    """validate() giving the unpruned model accuracy 0.9 on each client and a pruned one
    (fewer params) 0.9 - cost +- 0.01, on 4 clients of 100 samples each."""
    full = {}

    def validate(model, spec, ids):
        p = n_params(model)
        full.setdefault("params", p)
        spread = 0.0 if p == full["params"] else 0.01
        base = 0.9 if p == full["params"] else 0.9 - cost_of(p)
        clients = tuple((c, base + (spread if i % 2 else -spread), 100)
                        for i, c in enumerate(ids))
        return Validation(sum(a for _, a, _ in clients) / len(clients), 100 * len(ids), 0.3,
                          clients)
    return validate, full


def test_a_cheap_candidate_is_kept_and_the_next_one_cut_from_it():
    cfg = _cfg()
    pruner, model, spec = _pruner(cfg)
    validate, _ = _validator(lambda p: 0.0)

    step = pruner.after_aggregate(1, model, spec, validate)  # before the window
    assert not step.changed and pruner.trial() == [] and step.record["status"] == "waiting"
    step = pruner.after_aggregate(2, model, spec, validate)
    assert not step.changed and step.record["candidate"]["widths"] == {"features.0": 8,
                                                                       "features.3": 16}
    [(cand, _)] = pruner.trial()  # no reference before the first kept cut
    assert n_params(cand) < n_params(model) and spec.widths_now() == {"features.0": 10,
                                                                      "features.3": 20}
    assert not pruner.after_aggregate(3, model, spec, validate).changed  # still training
    step = pruner.after_aggregate(4, model, spec, validate)
    assert step.changed and step.pruned and step.model is cand
    judged = step.record["judged"]
    assert judged["decision"] == "accept" and judged["cost"] == pytest.approx(0.0)
    assert judged["clients"] == 4 and judged["samples"] == 400  # the pool: clients with a split
    # the next candidate, cut at once from the kept one, and the unpruned model as reference
    (nxt, _), (ref, _) = pruner.trial()
    assert n_params(nxt) < n_params(cand) and ref is model


def test_a_costly_candidate_is_dropped_the_step_halves_and_pruning_stops_below_min_step():
    cfg = _cfg(step=0.4, min_step=0.15)
    pruner, model, spec = _pruner(cfg)
    validate, _ = _validator(lambda p: 0.05)  # every cut costs 5 points

    pruner.after_aggregate(2, model, spec, validate)
    step = pruner.after_aggregate(4, model, spec, validate)
    assert not step.changed and step.model is model  # the model trained on: nothing lost
    assert step.record["judged"]["decision"] == "reject"
    assert "> prune.max_accuracy_drop" in step.record["judged"]["why"]
    assert pruner.state.step == pytest.approx(0.2) and len(pruner.trial()) == 1
    step = pruner.after_aggregate(6, model, spec, validate)
    assert step.record["status"] == "stopped" and pruner.trial() == []
    summary = pruner.summary_entries(model)
    assert summary["prune_steps"] == 0 and summary["auto"]["rejected"] == 2
    assert "prune.min_step" in summary["auto"]["stop_reason"]
    assert [t["decision"] for t in summary["auto"]["tries"]] == ["reject", "reject"]


def test_a_candidate_that_does_not_fit_yet_trains_on_and_is_judged_again():
    cfg = _cfg(judgements=3, step=0.4, min_step=0.15, max_prune_round=100)
    pruner, model, spec = _pruner(cfg)
    costs = iter([0.05, 0.03, 0.0])  # a fresh cut recovering: its cost at each judgement
    current = {}

    def cost_of(p):
        return current["cost"]
    validate, _ = _validator(cost_of)

    pruner.after_aggregate(2, model, spec, validate)  # cut at round 2
    [(cand, _)] = pruner.trial()
    decisions = []
    for rnd in (4, 6, 8):
        current["cost"] = next(costs)
        assert not pruner.after_aggregate(rnd - 1, model, spec, validate).changed
        step = pruner.after_aggregate(rnd, model, spec, validate)
        judged = step.record["judged"]
        decisions.append(judged["decision"])
        assert judged["cut_round"] == 2
        if judged["decision"] == "again":
            assert not step.changed and pruner.trial()[0][0] is cand  # the same copy trains on
            assert f"judged again at round {rnd + 2}" in judged["why"]
            assert pruner.state.step == pytest.approx(0.4)  # the step halves only on a drop
    assert decisions == ["again", "again", "accept"] and step.model is cand
    assert pruner.state.rejected == 0 and pruner.state.accepted == 1
    assert [t["decision"] for t in pruner.state.tries] == decisions

    # a candidate that never fits is dropped at its last judgement; the step halves then
    pruner, model, spec = _pruner(cfg)
    validate, _ = _validator(lambda p: 0.05)
    pruner.after_aggregate(2, model, spec, validate)
    decisions = [pruner.after_aggregate(r, model, spec, validate).record.get("judged", {})
                 .get("decision") for r in range(3, 9)]
    assert decisions == [None, "again", None, "again", None, "reject"]
    assert pruner.state.step == pytest.approx(0.2) and pruner.state.looks == 0

    # judged again only inside the window: at prune.max_prune_round the verdict is final
    pruner, model, spec = _pruner(_cfg(judgements=3, max_prune_round=4))
    pruner.after_aggregate(2, model, spec, validate)
    assert pruner.after_aggregate(4, model, spec, validate).record["judged"]["decision"] \
        == "reject"


def test_cuts_are_kept_while_their_cost_against_the_reference_fits_the_tolerance():
    cfg = _cfg(max_accuracy_drop=0.02, confidence_z=0.0, step=0.1, min_step=0.1,
               max_prune_round=100)
    pruner, model, spec = _pruner(cfg)
    p0 = n_params(model)
    # what the cuts so far cost together: half a point per tenth of the parameters removed
    validate, _ = _validator(lambda p: 0.05 * (1 - p / p0))
    rnd, costs, decisions = 2, [], []
    pruner.after_aggregate(rnd, model, spec, validate)
    while pruner.candidate is not None:
        rnd += 2
        step = pruner.after_aggregate(rnd, model, spec, validate)
        model, spec = step.model, step.spec
        costs.append(step.record["judged"]["cost"])
        decisions.append(step.record["judged"]["decision"])
    assert decisions[-1] == "reject" and set(decisions[:-1]) == {"accept"}
    assert all(c <= 0.02 for c in costs[:-1]) and costs[-1] > 0.02
    assert costs == sorted(costs)  # measured against the unpruned reference: cumulative
    assert pruner.state.spent == pytest.approx(costs[-2])
    assert pruner.reference is None  # dropped once pruning stopped

    strict = _cfg(max_accuracy_drop=0.02, confidence_z=3.0, step=0.1, min_step=0.1)
    pruner, model, spec = _pruner(strict)
    validate, _ = _validator(lambda p: 0.008)
    pruner.after_aggregate(2, model, spec, validate)
    step = pruner.after_aggregate(4, model, spec, validate)
    # the clients' differences spread by +-1 point: s.e. 0.58 points, 0.8 + 3 x 0.58 > 2
    assert step.record["judged"]["decision"] == "reject"
    assert step.record["judged"]["cost_se"] == pytest.approx(math.sqrt(16 / 3) / 400)


def test_paired_se_comes_from_the_clients_paired_differences():
    ref = Validation(0.9, 300, 0.3, ((0, 0.9, 100), (1, 0.9, 100), (2, 0.9, 100)))
    same = Validation(0.8, 300, 0.4, ((0, 0.8, 100), (1, 0.8, 100), (2, 0.8, 100)))
    spread = Validation(0.8, 300, 0.4, ((0, 0.7, 100), (1, 0.8, 100), (2, 0.9, 100)))
    assert paired(ref, same)[1] == pytest.approx(0.0)
    assert paired(ref, spread)[1] == pytest.approx(math.sqrt(3 / 2 * 2 * 10 ** 2) / 300)
    assert math.isnan(paired(ref, Validation(0.8, 100, 0.4, ((0, 0.8, 100),)))[1])


def _answers(accs, n=100):
    clients = tuple((c, a, n) for c, a in enumerate(accs))
    return Validation(sum(accs) / len(accs), n * len(accs), 0.3, clients)


def test_trimmed_count_leaves_one_of_ten_out_at_each_end_and_always_keeps_one():
    assert [trimmed_count(k, 0.1) for k in (2, 3, 4, 5, 9, 10, 11, 50)] == [
        0, 0, 1, 1, 1, 1, 2, 5]
    assert trimmed_count(10, 0.0) == 0 and trimmed_count(5, 0.45) == 1
    # three clients keep their spread: no standard error of 0 from a single one left
    ref, got = _answers([0.9] * 3), _answers([0.85, 0.9, 0.8])
    assert paired(ref, got, 0.1) == paired(ref, got)


def test_a_lying_client_moves_the_trimmed_cost_no_further_than_the_honest_spread():
    honest = [0.02, 0.01, 0.03, 0.00, 0.02, 0.01, 0.02, 0.03, 0.01]  # differences, 9 clients
    ref = _answers([0.9] * 10)
    for lie in (-1.0, -0.1, 0.5):  # client 9 claims the width gained 100 / 10 / lost 50 points
        got = _answers([0.9 - d for d in honest] + [0.9 - lie])
        plain, _, _ = paired(ref, got)
        cost, _, k = paired(ref, got, 0.1)
        assert k == 10 and min(honest) <= cost <= max(honest)
        assert abs(plain - sum(honest) / 9) > 0.009  # the plain mean moves by its share
    # the lie at one end: the other end's honest extreme goes too, the mean of the middle 8
    got = _answers([0.9 - d for d in honest] + [1.9])
    kept = sorted(honest)[:-1]
    assert paired(ref, got, 0.1)[0] == pytest.approx(sum(kept) / 8)


def test_the_trimmed_standard_error_is_the_winsorized_one_over_one_minus_twice_the_trim():
    d = [0.05, -0.02, 0.01, 0.03, 0.0, 0.02, 0.04, -0.01, 0.02, 0.5]
    ref, got = _answers([0.9] * 10), _answers([0.9 - x for x in d])
    cost, se, _ = paired(ref, got, 0.1)
    s = sorted(d)
    w = [min(max(x, s[1]), s[-2]) for x in d]
    mean = sum(w) / 10
    sw = math.sqrt(sum((x - mean) ** 2 for x in w) / 9)
    assert cost == pytest.approx(sum(s[1:-1]) / 8)
    assert se == pytest.approx(sw / math.sqrt(10) / 0.8)
    # with no trimming the figures are the plain ones, bit for bit
    assert paired(ref, got, 0.0) == paired(ref, got)
    # clients of unequal sizes: the sum of squares over the kept clients' samples
    sizes = [50, 100, 100, 100, 100, 100, 100, 100, 100, 400]
    ref = Validation(0.9, sum(sizes), 0.3, tuple((c, 0.9, n) for c, n in enumerate(sizes)))
    got = Validation(0.9, sum(sizes), 0.3, tuple((c, 0.9 - x, n)
                                                 for c, (x, n) in enumerate(zip(d, sizes))))
    cost, se, _ = paired(ref, got, 0.1)
    kept = [(n, x) for x, n in zip(d, sizes) if x not in (s[0], s[-1])]
    held = sum(n for n, _ in kept)
    assert cost == pytest.approx(sum(n * x for n, x in kept) / held)
    wm = sum(n * x for x, n in zip(w, sizes)) / sum(sizes)
    var = 10 / 9 * sum((n * (x - wm)) ** 2 for x, n in zip(w, sizes))
    assert se == pytest.approx(math.sqrt(var) / held)


def test_no_candidate_starts_after_the_window_and_a_pending_one_is_judged_at_the_last_round():
    cfg = _cfg(max_prune_round=2)
    pruner, model, spec = _pruner(cfg)
    validate, _ = _validator(lambda p: 0.0)
    pruner.after_aggregate(2, model, spec, validate)
    step = pruner.after_aggregate(3, model, spec, validate, last_round=True)
    assert step.record["judged"]["decision"] == "accept"
    assert step.record["status"] == "stopped" and pruner.trial() == []


def test_the_method_needs_validation_splits_and_says_how_to_get_them():
    with pytest.raises(ConfigError, match="data.val_fraction > 0"):
        run_simulation(from_dict({**SHORT, "data": {"val_fraction": 0.0}}))
    with pytest.raises(ConfigError, match="prune.min_step"):
        _cfg(step=0.1, min_step=0.2)


def test_budget_mode_runs_the_boundary_rule_whatever_the_method_default():
    cfg = load_config(None, ["budget.params_fraction=0.3"])
    assert cfg.prune.method == "boundary"
    with pytest.raises(ConfigError, match="budget"):
        load_config(None, ["budget.params_fraction=0.3", "prune.method=ratio"])


def test_a_run_records_each_try_and_counts_the_trial_traffic(tmp_path):
    cfg = _cfg(max_accuracy_drop=1.0)  # every cut kept: the path is deterministic
    result = run_simulation(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    tries = result.summary["auto"]["tries"]
    assert [t["round"] for t in tries] == [4, 6, 8] and result.summary["prune_steps"] == 3
    assert all(t["decision"] == "accept" and t["clients"] > 0 for t in tries)
    assert result.summary["params_final"] == tries[-1]["params"]
    # a round inside a trial carries both models down and up; a judged round adds the queries
    r1, r3, r4 = rows[0], rows[2], rows[3]
    assert r1["bytes_down"] > 0 and r3["bytes_down"] > r1["bytes_down"]
    assert r3["bytes_up"] > r1["bytes_up"]
    # the judged round's queries: the reference and the candidate to each asked client
    n_val = tries[0]["clients"]
    assert r4["messages"] == {"train": 5, "validate": 2 * n_val}
    assert r3["messages"]["validate"] == 0
    # and their compute: every asked client evaluates both models on its validation split
    assert r4["client_flops_val"] > 0 == r3["client_flops_val"]
    assert r3["client_flops_train"] > r1["client_flops_train"]  # two models trained
    assert rows[3]["auto"]["judged"]["decision"] == "accept"
    assert rows[1]["auto"]["candidate"]["round"] == 2
    from fedprune.metrics import plot_run

    path = plot_run(tmp_path)[-1]
    assert path.name == "prune_path.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_killed_inside_a_trial_resumes_bit_identically(tmp_path):
    cfg = _cfg()
    full = run_simulation(cfg, tmp_path / "full")
    with pytest.raises(Stop):  # round 3: the candidate cut after round 2 is being trained
        run_simulation(cfg, tmp_path / "cut", on_round=stop_after(3))
    resumed = run_simulation(cfg, tmp_path / "cut", resume=True)
    for key, value in full.summary.items():
        if key != "seconds":
            assert resumed.summary[key] == value, key
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert payload_bytes(full.model) == payload_bytes(resumed.model)


def test_a_cost_is_measured_on_the_clients_that_answered_both_and_needs_two_of_them():
    ref = Validation(0.9, 300, 0.3, ((0, 0.9, 100), (1, 0.9, 100), (2, 0.9, 100)))
    # client 2 did not answer for the candidate, where it would have done worst
    got = Validation(0.85, 200, 0.4, ((0, 0.86, 100), (1, 0.84, 100)))
    cost, se, n = paired(ref, got)
    assert n == 2 and cost == pytest.approx(0.05) and se > 0
    assert paired(ref, Validation(0.8, 100, 0.4, ((0, 0.8, 100),)))[1:] == (
        pytest.approx(math.nan, nan_ok=True), 1)

    cfg = _cfg()
    pruner, model, spec = _pruner(cfg)

    def one_client(m, s, ids):  # a single client answers: no standard error
        return Validation(0.9, 100, 0.3, ((ids[0], 0.9, 100),))
    pruner.after_aggregate(2, model, spec, one_client)
    judged = pruner.after_aggregate(4, model, spec, one_client).record["judged"]
    assert judged["decision"] == "reject" and "no standard error" in judged["why"]
    assert judged["cost_se"] is None and judged["bound"] is None  # JSON: no NaN
    with pytest.raises(ConfigError, match="prune.val_clients"):
        _cfg(val_clients=1)


def test_a_candidate_nobody_validated_is_judged_again_next_round():
    cfg = _cfg()
    pruner, model, spec = _pruner(cfg)
    def silent(m, s, ids):
        return Validation(math.nan, 0, math.nan)
    validate, _ = _validator(lambda p: 0.0)
    pruner.after_aggregate(2, model, spec, validate)
    step = pruner.after_aggregate(4, model, spec, silent)
    assert step.record["judged"]["decision"] == "retry" and pruner.candidate is not None
    assert pruner.state.step == pytest.approx(0.2)  # no step lost to the outage
    step = pruner.after_aggregate(5, model, spec, validate)
    assert step.record["judged"]["decision"] == "accept"


def test_trial_models_learn_from_the_clients_whose_main_reply_was_accepted():
    from fake_transport import FakeTransport

    from fedprune.federated.server import PruningServer
    from fedprune.federated.transport import TrainReply

    cfg = from_dict({**_cfg().to_dict(), "fed": {**SHORT["fed"], "clients_per_round": 3}})
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8], seed=0)
    server = PruningServer(cfg, model, spec, train_sizes=[10] * 3, val_sizes=[2] * 3,
                           test_x=torch.zeros(2, 1, 28, 28), test_y=torch.zeros(2).long())
    cand, cspec = copy.deepcopy(model), spec
    server.pruner.candidate = (cand, cspec)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    good = [{k: v + i for k, v in base.items()} for i in range(3)]
    nan = {k: torch.full_like(v, math.nan) for k, v in base.items()}
    # client 1's main reply is NaN; client 2 sent no trained copy of the candidate
    states = [(good[0], {k: v + 10 for k, v in base.items()}), (nan, good[1]), (good[2], None)]

    rec = server.run_round(1, FakeTransport(
        lambda plan: [TrainReply(c, states[c], 10) for c in plan.clients]))

    assert [r["index"] for r in rec.extra["rejected"]] == [1]
    assert [(r["index"], "no trained copy" in r["reason"])
            for r in rec.extra["trial_rejected"]] == [(2, True)]
    # the candidate averaged client 0's copy alone: not client 1's (main reply rejected)
    key = next(iter(base))
    assert torch.equal(cand.state_dict()[key], base[key] + 10)
    # every client trained both models: the candidate's FLOPs count as the model's
    assert rec.extra["client_flops_train"] == 2 * 3 * 30 * cfg.train.local_epochs * (
        2 * count_macs(model, spec.example_input()))


def test_a_skipped_last_round_still_judges_the_pending_candidate():
    cfg = _cfg()
    pruner, model, spec = _pruner(cfg)
    validate, _ = _validator(lambda p: 0.0)
    pruner.after_aggregate(6, model, spec, validate)
    step = pruner.after_skipped(7, model, spec, validate, last_round=True)
    assert step.record["judged"]["decision"] == "accept"
    assert step.record["status"] == "stopped"
    # a skipped round without a candidate still writes the method's entry
    assert pruner.after_skipped(8, step.model, step.spec, validate).record["status"] == (
        "stopped")
