"""The ``auto`` suite: its plan, the from-scratch baseline of the automatic method's size,
and the report's checks of the automatic method's targets."""

from __future__ import annotations

import json

import pytest

from fedprune.models import scaled_widths
from fedprune.reproduce import get_suite, plan_suite
from fedprune.reproduce.tables import Cell, RunData, auto_checks, efficiency_checks, rows_of


def _plan(tmp_path, fashion_mnist_dir, **kw):
    return plan_suite(get_suite("auto"), tmp_path,
                      data_paths={"fashion-mnist": str(fashion_mnist_dir)}, **kw)


def test_auto_suite_plan_holds_everything_but_the_method_equal(tmp_path, fashion_mnist_dir,
                                                               no_default_fashion):
    plan = _plan(tmp_path, fashion_mnist_dir)
    # 5 settings x 8 methods x 3 seeds now; the 15 from-scratch runs wait for their source
    assert len(plan.runs) == 5 * 8 * 3 and len(plan.deferred) == 5 * 3
    assert {s.model for s, *_ in plan.deferred} == {"cnn_femnist", "cnn_femnist_a01",
                                                    "resnet7", "inception"}
    assert all("waits for" in why and "/auto/seed" in why for *_, why in plan.deferred)
    keys = {(r.setting.dataset, r.setting.model) for r in plan.runs}
    assert keys == {("digits", "cnn_femnist"), ("fashion-mnist", "cnn_femnist"),
                    ("fashion-mnist", "cnn_femnist_a01"), ("fashion-mnist", "resnet7"),
                    ("fashion-mnist", "inception")}
    for key in keys:
        for seed in (0, 1, 2):
            cfgs = [r.config.to_dict() for r in plan.runs
                    if (r.setting.dataset, r.setting.model) == key and r.seed == seed]
            assert len(cfgs) == 8
            rest = [{k: v for k, v in c.items() if k != "prune"} for c in cfgs]
            assert all(c == rest[0] for c in rest)  # only prune.* differs
            assert rest[0]["data"]["val_fraction"] == 0.1  # the same split for every method
    by = {(r.setting.model, r.method.name): r.config for r in plan.runs if r.seed == 0
          and r.setting.dataset == "fashion-mnist"}
    auto = by[("cnn_femnist", "auto")]
    # the default's own window and widths on multiples of 16; the earlier method's window
    assert (auto.prune.method, auto.prune.start_round, auto.prune.max_prune_round,
            auto.prune.interval, auto.prune.max_accuracy_drop,
            auto.prune.round_to) == ("auto", 20, 40, 2, 0.01, 16)
    paired = by[("cnn_femnist", "auto-paired")].prune
    assert (paired.method, paired.start_round, paired.max_prune_round, paired.interval) == (
        "auto-paired", 30, 60, 2)
    assert auto.data.num_clients == 100 and auto.fed.rounds == 100
    assert auto.data.max_test_samples == 2000 and auto.train.local_epochs == 1
    assert by[("cnn_femnist_a01", "auto")].data.alpha == 0.1
    assert by[("cnn_femnist_a01", "auto")].model.name == "cnn_femnist"
    assert by[("inception", "auto")].fed.rounds == 100
    for r in (0.25, 0.5, 0.75):
        ratio = by[("cnn_femnist", f"ratio{round(100 * r)}")].prune
        assert (ratio.method, ratio.ratio, ratio.start_round, ratio.max_prune_round,
                ratio.round_to) == ("ratio", r, 30, 30, 16)
    assert by[("cnn_femnist", "fedprune-low")].prune.method == "boundary"
    digits = next(r.config for r in plan.runs if r.setting.dataset == "digits"
                  and r.method.name == "auto" and r.seed == 0)
    assert digits.to_dict() == {**digits.to_dict(), "data": digits.to_dict()["data"]}
    assert (digits.train.local_epochs, digits.fed.rounds, digits.data.num_clients) == (5, 100, 20)


def test_the_from_scratch_run_takes_the_size_its_automatic_run_ended_with(
        tmp_path, fashion_mnist_dir, no_default_fashion):
    # a plain CNN: its final widths are the model's width settings one to one
    cnn = tmp_path / "fashion-mnist" / "cnn_femnist" / "auto" / "seed1"
    cnn.mkdir(parents=True)
    plan = _plan(tmp_path, fashion_mnist_dir, models=["cnn_femnist"], seeds=[1],
                 datasets=["fashion-mnist"])
    assert [m.name for _, m, _, _ in plan.deferred] == ["scratch-auto"]
    (cnn / "summary.json").write_text(json.dumps({
        "widths_final": {"features.0": 21, "features.3": 41}, "params_final": 22532,
        "params_initial": 52746}))
    plan = _plan(tmp_path, fashion_mnist_dir, models=["cnn_femnist"], seeds=[1],
                 datasets=["fashion-mnist"])
    assert not plan.deferred
    scratch = next(r for r in plan.runs if r.method.name == "scratch-auto")
    dense = next(r for r in plan.runs if r.method.name == "dense")
    assert scratch.config.model.widths == [21, 41] and not scratch.config.prune.enabled
    a, b = scratch.config.to_dict(), dense.config.to_dict()
    a["model"].pop("widths"), b["model"].pop("widths")
    assert a == b

    # ResNet-7: five prunable groups (the residual stream among them) for three widths; the
    # default widths scaled to the run's final share of the parameters
    res = tmp_path / "fashion-mnist" / "resnet7" / "auto" / "seed1"
    res.mkdir(parents=True)
    (res / "summary.json").write_text(json.dumps({
        "widths_final": {"stem.0": 16, "blocks.0.conv1": 27, "blocks.0.conv2": 16,
                         "blocks.1.conv1": 52, "blocks.1.conv2": 16},
        "params_final": 20000, "params_initial": 29482}))
    plan = _plan(tmp_path, fashion_mnist_dir, models=["resnet7"], seeds=[1])
    scratch = next(r for r in plan.runs if r.method.name == "scratch-auto")
    assert scratch.config.model.widths == scaled_widths(
        "resnet7", 20000 / 29482, num_classes=10, in_channels=1, image_size=28)


def _cell(setting, method, accs, cut):
    c = Cell(setting, method, len(accs))
    for seed, acc in enumerate(accs):
        c.runs.append(RunData(seed, {
            "accuracy": acc, "params_final": 100, "params_initial": 1000, "flops_final":
            1000 * (1 - cut), "flops_initial": 1000, "bytes_total": 1e6,
            "bytes_total_dense": 2e6, "seconds": 1.0, "widths_final": {"a": 1}}, [], None))
    return c


@pytest.mark.parametrize(("auto_accs", "auto_cut", "verdicts"), [
    ([0.83, 0.82, 0.83], 0.50, ["met", "met", "met"]),
    ([0.83, 0.82, 0.83], 0.30, ["met", "NOT met", "met"]),  # less than ratio 25 % cuts
    ([0.80, 0.80, 0.80], 0.50, ["NOT met", "met", "met"]),  # 3 points below dense
    ([0.85, 0.85, 0.77], 0.50, ["met", "met", "NOT met"]),  # one seed 6 points below
])
def test_auto_checks_state_each_target_with_its_numbers(tmp_path, auto_accs, auto_cut,
                                                        verdicts):
    setting = get_suite("auto").settings[0]
    cells = {"dense": _cell(setting, "dense", [0.83, 0.83, 0.83], 0.0),
             "auto": _cell(setting, "auto", auto_accs, auto_cut),
             "ratio25": _cell(setting, "ratio25", [0.83, 0.825, 0.825], 0.414),
             "ratio50": _cell(setting, "ratio50", [0.81, 0.81, 0.81], 0.72)}
    lines = auto_checks(rows_of(cells), cells)[:3]
    assert [("NOT met" if "**NOT met**" in line else "met") for line in lines] == verdicts
    assert "fixed ratio 25 %" in lines[1] and "41.4%" in lines[1]  # the largest within 1 point


def _efficient(setting, seed, bytes_ratio, flops_ratio, peak, latency):
    return RunData(seed, {
        "accuracy": 0.83, "params_final": 250, "params_initial": 1000, "flops_final": 300,
        "flops_initial": 1000, "bytes_total": 1000 * bytes_ratio, "bytes_total_dense": 1000,
        "client_flops_total": 1000 * flops_ratio, "client_flops_total_dense": 1000,
        "client_flops_peak": peak, "seconds": 1.0, "widths_final": {"a": 1}}, [],
        {"ratio": latency})


@pytest.mark.parametrize(("runs", "verdicts"), [
    # params share 0.25, FLOPs share 0.30: bars 0.40, 0.45, peak 1, latency 0.30 + 0.225
    ([(0.39, 0.44, 1.0, 0.52), (0.40, 0.45, 0.9, 0.5)], ["met", "met", "met", "met"]),
    ([(0.39, 0.44, 1.0, 0.52), (0.41, 0.45, 0.9, 0.5)], ["NOT met", "met", "met", "met"]),
    ([(0.39, 0.46, 1.01, 0.6)], ["met", "NOT met", "NOT met", "NOT met"]),
])
def test_the_efficiency_bars_hold_for_every_seed(runs, verdicts):
    setting = get_suite("auto").settings[0]  # CNN-FEMNIST: the latency bar of its FLOPs
    auto = Cell(setting, "auto", len(runs))
    auto.runs = [_efficient(setting, i, *r) for i, r in enumerate(runs)]
    dense = _cell(setting, "dense", [0.83] * len(runs), 0.0)
    for r in dense.runs:
        r.summary.update(bytes_total=1000, client_flops_total=1000)
    lines = efficiency_checks({"dense": dense, "auto": auto})
    assert [("NOT met" if "**NOT met**" in line else "met") for line in lines] == verdicts
    assert "0.390 <= 0.400" in lines[0]
    resnet = next(s for s in get_suite("auto").settings if s.model == "resnet7")
    auto.setting = resnet
    assert "latency vs dense at most 1.0" in efficiency_checks({"auto": auto})[-1]
