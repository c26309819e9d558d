"""The pruning methods as one package: the registry, a new method, pure automatic state."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from fedprune.config import ConfigError, from_dict, load_config
from fedprune.federated import run_simulation
from fedprune.metrics import n_params
from fedprune.models import new_model
from fedprune.pruners import (
    PRUNERS,
    Pruner,
    PruneStep,
    Validation,
    make_pruner,
    method_of,
    pool_validation,
    register,
    validation_clients,
)
from fedprune.pruners.auto import AutoState, dropped, judged_again, kept, started, stopped
from fedprune.pruning import RatioRule, prune_model


@register("quarter_once")
class QuarterOnce(Pruner):
    """A method written for this file: after round 2 every layer loses 25 % of its filters
    (the lowest L1), and nothing is cut again."""

    record_key = "quarter"

    def __init__(self, cfg, **start):
        super().__init__(cfg, **start)
        self.cut_round = None

    def after_aggregate(self, rnd, model, spec, validate, last_round=False):
        if rnd != 2 or self.cut_round is not None:
            return PruneStep(model, spec, False, False, {"cut": False})
        res = prune_model(model, self.example, RatioRule(0.25), record=spec.record)
        self.cut_round = rnd
        return PruneStep(model, dataclasses.replace(spec, record=res.record), True, True,
                         {"cut": True})

    def state_entries(self):
        return {"quarter": {"cut_round": self.cut_round}}, None

    def restore_entries(self, state, snapshot):
        self.cut_round = state["quarter"]["cut_round"]

    def summary_entries(self, model):
        return {"prune_steps": int(self.cut_round is not None),
                "quarter_cut_round": self.cut_round}


BASE = {"threads": 1, "data": {"num_clients": 6, "val_fraction": 0.2},
        "model": {"widths": [8, 16]}, "train": {"local_epochs": 1},
        "fed": {"rounds": 4, "clients_per_round": 3, "eval_every": 2},
        "prune": {"start_round": 2, "max_prune_round": 3, "interval": 1}}


def _cfg(method=None, **over):
    """BASE with ``over`` merged into its sections; ``method``: set on the built value (a
    name the configuration's own check may refuse)."""
    tree = {k: ({**v, **over.get(k, {})} if isinstance(v, dict) else v)
            for k, v in BASE.items()}
    cfg = from_dict({**tree, **{k: v for k, v in over.items() if k not in tree}})
    if method is not None:
        object.__setattr__(cfg.prune, "method", method)
    return cfg


def _flat(tree, prefix=""):
    """``tree`` as ``section.key`` -> value, for ``--set`` overrides."""
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _make(cfg):
    model, spec = new_model(cfg.model.name, num_classes=10, in_channels=1, image_size=28,
                            widths=cfg.model.widths, seed=cfg.seed)
    return make_pruner(cfg, model=model, spec=spec, example=spec.example_input(),
                       params_initial=n_params(model), flops_initial=10**6, num_clients=6,
                       has_validation=[True] * 6)


@pytest.mark.parametrize(("over", "name", "key"), [
    ({"prune": {"method": "boundary"}}, "boundary", None),
    ({"prune": {"method": "ratio"}}, "ratio", None),
    ({"prune": {"method": "auto"}}, "auto", "nested"),
    ({"prune": {"method": "auto-paired"}}, "auto-paired", "auto"),
    ({"prune": {"enabled": False}}, "none", None),
    ({"budget": {"params_fraction": 0.5}}, "budget", "budget"),
])
def test_the_registry_builds_each_method_by_name(over, name, key):
    cfg = _cfg(**over)
    assert method_of(cfg) == name
    pruner = _make(cfg)
    assert type(pruner) is PRUNERS[name] and pruner.record_key == key
    assert pruner.trial() == []  # no trial model before the first round
    entries, snapshot = pruner.state_entries()
    assert json.loads(json.dumps(entries)) == entries and snapshot is None


def test_the_methods_share_one_class_where_they_share_the_code():
    assert PRUNERS["boundary"] is PRUNERS["ratio"] is PRUNERS["none"]
    assert len({PRUNERS["auto"], PRUNERS["auto-paired"], PRUNERS["budget"],
                PRUNERS["boundary"]}) == 4


def test_an_unknown_method_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError,
                       match=r"unknown pruning method 'nonesuch'.*auto, auto-paired, boundary"):
        _make(_cfg("nonesuch"))
    with pytest.raises(ValueError, match="already registered"):
        register("auto")(QuarterOnce)
    with pytest.raises(TypeError, match="not a Pruner"):
        register("plain")(dict)
    assert "plain" not in PRUNERS
    with pytest.raises(TypeError):  # the registry is read-only
        PRUNERS["plain"] = QuarterOnce  # type: ignore[index]


def test_a_new_method_is_one_registered_class_the_server_drives_unchanged(tmp_path):
    # chosen by name like a built-in one: the configuration knows every registered method
    cfg = load_config(None, [f"{k}={v}" for k, v in _flat(BASE).items()]
                      + ["prune.method=quarter_once"])
    assert cfg.prune.method == "quarter_once"
    with pytest.raises(ConfigError, match="'quarter_once'"):  # named among the choices
        load_config(None, ["prune.method=quarter_twice"])
    with pytest.raises(ConfigError, match="prune.method"):  # chosen by other settings
        load_config(None, ["prune.method=budget"])
    result = run_simulation(cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    widths = [r["widths"] for r in rows]
    assert widths[0] == {"features.0": 8, "features.3": 16}  # before the cut
    assert widths[1:] == [{"features.0": 6, "features.3": 12}] * 3  # floor(25 %) gone, once
    assert [r["pruned"] for r in rows] == [False, True, False, False]
    assert [r["quarter"] for r in rows] == [{"cut": False}, {"cut": True}, {"cut": False},
                                            {"cut": False}]
    assert "auto" not in rows[0] and "budget" not in rows[0]
    assert result.summary["quarter_cut_round"] == 2 and result.summary["prune_steps"] == 1
    assert result.summary["params_final"] == rows[-1]["params"] < rows[0]["params"]
    assert math.isfinite(result.summary["accuracy"])


def test_the_automatic_transitions_return_new_states_and_leave_the_old_ones():
    st = AutoState(step=0.2)
    trial = started(st, 3)
    assert (st.status, st.trial_round) == ("waiting", None)
    assert (trial.status, trial.trial_round) == ("trial", 3)
    again = judged_again(trial, {"round": 5, "decision": "again"})
    assert (trial.looks, trial.tries) == (0, ())
    assert again.looks == 1 and again.tries == ({"round": 5, "decision": "again"},)
    drop = dropped(again, {"round": 7, "decision": "reject"})
    assert (again.status, again.step, again.rejected) == ("trial", 0.2, 0)
    assert (drop.status, drop.step, drop.rejected, drop.looks, drop.trial_round) == (
        "between", 0.1, 1, 0, None)
    keep = kept(trial, 0.004, {"round": 5, "decision": "accept"})
    assert (trial.accepted, trial.spent) == (0, 0.0) and (keep.accepted, keep.spent) == (
        1, 0.004)
    end = stopped(keep, 9, "why")
    assert keep.status == "between" and (end.status, end.stopped_round) == ("stopped", 9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.status = "stopped"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown status"):
        AutoState(status="paused")  # type: ignore[arg-type]
    assert AutoState.from_dict(json.loads(json.dumps(drop.to_dict()))) == drop


def test_an_automatic_step_replaces_the_state_value():
    pruner = _make(_cfg(prune={"method": "auto-paired"}))
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[8, 16], seed=0)
    before = pruner.state
    step = pruner.after_aggregate(2, model, spec, lambda m, s, ids: Validation(0.9, 1, 0.3))
    assert step.record["status"] == "trial" and pruner.state.status == "trial"
    assert before.status == "waiting" and pruner.state is not before


def test_validation_answers_pool_by_samples_and_the_askers_are_drawn_from_the_pool():
    v = pool_validation([(4, 0.5, 1.0, 10), (1, 1.0, 0.0, 30)])
    assert v == Validation(0.875, 40, 0.25, ((4, 0.5, 10), (1, 1.0, 30)), (), (1.0, 0.0))
    empty = pool_validation([])
    assert math.isnan(empty.accuracy) and empty.samples == 0 and empty.clients == ()
    pool = [0, 2, 3, 5, 8]
    picked = validation_clients(7, 3, pool, 3)
    assert picked == sorted(picked) and len(set(picked)) == 3 and set(picked) <= set(pool)
    assert picked == validation_clients(7, 3, pool, 3)  # seeded: the same clients again
    assert validation_clients(7, 3, pool, 50) == pool  # all, if fewer


def test_screening_leaves_out_answers_nobody_asked_for_and_second_answers():
    from fedprune.pruners import screen_validation

    answers = [(0, 0.5, 0.7, 10), (1, 1.0, 0.1, 30), (1, 1.0, 0.1, 30), (7, 1.0, 0.0, 10)]
    v = pool_validation(answers)
    got, out = screen_validation(v, asked=[0, 1], val_sizes=[10, 30, 5, 5, 5, 5, 5, 10])
    assert out == [(1, "it answered twice"), (7, "it was not asked")]
    assert got == pool_validation(answers[:2])
    honest = pool_validation(answers[:2])
    assert screen_validation(honest, [0, 1], [10, 30])[0] is honest  # as it came
