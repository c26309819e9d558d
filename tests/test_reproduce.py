"""fedprune reproduce: the fixed-ratio rule, suite planning, skip/resume, the report."""

import json
import math

import numpy as np
import pytest
import torch
from interrupt import Stop, stop_after
from nets import DepthwiseNet

from fedprune.cli import main
from fedprune.config import ConfigError, from_dict
from fedprune.federated import run_simulation
from fedprune.models import create_model, scaled_widths
from fedprune.pruning import RatioRule, decide_ratio, prune_model, widths_of
from fedprune.reproduce import get_suite, plan_suite, run_plan, run_state, write_report
from fedprune.reproduce.report import collect, rows_of
from fedprune.reproduce.suites import Window

# ---------------------------------------------------------------- the fixed-ratio rule


def test_ratio_removes_the_floor_of_ratio_times_n_lowest_scores():
    # 5 channels, ratio 0.5: floor(2.5) = 2 removed, the scores 1 (index 1) and 2 (index 3)
    d = decide_ratio(np.array([5.0, 1.0, 4.0, 2.0, 3.0]), RatioRule(0.5))
    assert d.keep.tolist() == [True, False, True, False, True]
    assert d.lower == 2.0 and d.upper == math.inf  # highest removed score; no upper bound
    # 20 channels at 85 %: floor(17.0) = 17 removed, the three highest (17, 18, 19) stay
    d = decide_ratio(np.arange(20.0)[::-1].copy(), RatioRule(0.85))
    assert np.flatnonzero(d.keep).tolist() == [0, 1, 2]


def test_ratio_floor_is_exact_and_ties_go_by_index_and_min_channels_holds():
    # 0.29 * 100 is 28.999999999999996 in floating point: still 29 channels
    assert decide_ratio(np.arange(100.0), RatioRule(0.29)).n_removed == 29
    assert decide_ratio(np.ones(4), RatioRule(0.5)).keep.tolist() == [False, False, True, True]
    # 4 channels at 85 %: floor(3.4) = 3, but min_channels = 2 keeps the two highest
    d = decide_ratio(np.array([4.0, 3.0, 2.0, 1.0]), RatioRule(0.85, min_channels=2))
    assert d.keep.tolist() == [True, True, False, False]
    assert decide_ratio(np.array([1.0, 2.0]), RatioRule(0.4)).n_removed == 0  # floor(0.8)
    assert decide_ratio(np.array([7.0]), RatioRule(0.99)).keep.tolist() == [True]


@pytest.mark.parametrize("kwargs", [{"ratio": 0.0}, {"ratio": 1.0}, {"ratio": float("nan")},
                                    {"ratio": 0.5, "min_channels": 0}])
def test_bad_ratio_rules_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RatioRule(**kwargs)


def test_prune_model_ratio_cuts_grouped_blocks_alike():
    torch.manual_seed(0)
    net = DepthwiseNet()
    with torch.no_grad():
        for m in (net.conv, net.dw, net.pw, net.gconv):  # every filter L1 = 1, then scaled
            w = torch.randn(m.weight.shape)
            m.weight.copy_(w / w.abs().flatten(1).sum(1).view(-1, 1, 1, 1))
        # conv (coupled with its depthwise follower): channel i scores about i + 1
        net.conv.weight.mul_(torch.arange(1.0, 9.0).view(-1, 1, 1, 1))
        net.dw.weight.mul_(torch.arange(1.0, 9.0).view(-1, 1, 1, 1))
        # pw feeds gconv (2 blocks of 6): local means 1..6 in reverse, so positions 0, 1, 2
        # are the strongest; block 1 disagrees at position 5 but the mean decides
        scale = torch.tensor([6.0, 5, 4, 3, 2, 1, 6, 5, 4, 3, 2, 1.5])
        net.pw.weight.mul_(scale.view(-1, 1, 1, 1))
        net.gconv.weight.mul_(torch.arange(1.0, 13.0).view(-1, 1, 1, 1))
    x = torch.randn(2, 1, 8, 8)
    res = prune_model(net, x[:1], ratio=0.5, k=99.0, mode="low", max_fraction=0.01)
    kept = {g["root"]: g["kept"] for g in res.record["groups"]}
    assert kept["conv"] == [4, 5, 6, 7]  # floor(0.5 * 8) = 4 lowest gone; k, cap ignored
    assert kept["pw"] == [0, 1, 2, 6, 7, 8]  # floor(0.5 * 6) = 3 per block, same positions
    assert kept["gconv"] == [3, 4, 5, 9, 10, 11]
    assert net(x).shape == (2, 3) and net.gconv.groups == 2

    net = DepthwiseNet()
    res = prune_model(net, x[:1], ratio=0.85)
    w = widths_of(res.record)
    # conv floor(6.8) = 6 -> 2; pw floor(0.85 * 6) = 5 per block -> 1 + 1; gconv must keep
    # 2 per block (fewer would look depthwise), so 4 of its 6 per block go -> 2 + 2
    assert w == {"conv": 2, "pw": 2, "gconv": 4}
    assert net(x).shape == (2, 3)


def test_config_method_and_ratio_keys():
    cfg = from_dict({"prune": {"method": "ratio", "ratio": 0.85}})
    assert cfg.prune.method == "ratio" and cfg.prune.ratio == 0.85
    assert from_dict({}).prune.method == "auto" and from_dict({}).prune.ratio == 0.5
    for bad in ({"method": "manual"}, {"ratio": 0.0}, {"ratio": 1.0}, {"ratio": -0.5}):
        with pytest.raises(ConfigError, match="prune"):
            from_dict({"prune": bad})


def test_loop_runs_the_ratio_method_one_shot():
    cfg = from_dict({
        "threads": 1, "data": {"num_clients": 4}, "model": {"widths": [8, 16]},
        "train": {"local_epochs": 1}, "fed": {"rounds": 3, "clients_per_round": 2},
        "prune": {"method": "ratio", "ratio": 0.5, "start_round": 2, "max_prune_round": 2},
    })
    res = run_simulation(cfg)
    assert [r.pruned for r in res.records] == [False, True, False]
    assert list(res.summary["widths_final"].values()) == [4, 8]
    assert res.summary["prune_steps"] == 1


# ---------------------------------------------------------------- suite planning


def test_quick_suite_plan_equal_settings_across_methods(tmp_path):
    plan = plan_suite(get_suite("quick"), tmp_path)
    assert len(plan.runs) == 2 * 6 * 3 and not plan.skipped_settings
    run = next(r for r in plan.runs if r.key == ("fashion-mnist", "cnn_femnist", "ratio85", 1))
    assert run.run_dir == tmp_path / "fashion-mnist" / "cnn_femnist" / "ratio85" / "seed1"
    assert run.config.prune.method == "ratio" and run.config.prune.ratio == 0.85
    assert run.config.prune.start_round == run.config.prune.max_prune_round  # one-shot
    assert run.config.data.num_clients == 100 and run.config.fed.clients_per_round == 10
    assert run.config.threads == 1
    for setting in ("digits", "fashion-mnist"):
        for seed in (0, 1, 2):
            cfgs = [r.config.to_dict() for r in plan.runs
                    if r.setting.dataset == setting and r.seed == seed]
            assert len(cfgs) == 6
            no_prune = [{k: v for k, v in c.items() if k != "prune"} for c in cfgs]
            assert all(c == no_prune[0] for c in no_prune)  # only prune.* differs
    by = {r.method.name: r.config.prune for r in plan.runs
          if r.setting.dataset == "fashion-mnist" and r.seed == 0}
    assert not by["dense"].enabled
    assert (by["paper"].mode, by["paper"].k, by["paper"].start_round, by["paper"].reinit,
            by["paper"].max_fraction) == ("both", 2.0, 1, True, 1.0)
    assert (by["fedprune-low"].k, by["fedprune-low"].mode, by["fedprune-low"].max_fraction,
            by["fedprune-low"].reinit) == (0.75, "low", 0.2, False)
    assert by["fedprune-both"].mode == "both"
    assert by["ratio50"].start_round == by["fedprune-low"].start_round


def test_budget_suite_has_the_scratch_baseline_at_the_budget_size(tmp_path):
    plan = plan_suite(get_suite("budget"), tmp_path)
    assert len(plan.runs) == 2 * 6 * 3
    for model in ("cnn_femnist", "inception"):
        by = {r.method.name: r.config for r in plan.runs
              if r.setting.model == model and r.seed == 0}
        scratch, dense = by["scratch-p10"], by["dense"]
        assert not scratch.prune.enabled
        widths = scratch.model.widths
        assert widths == scaled_widths(model, 0.1, num_classes=10, in_channels=1,
                                       image_size=28)
        n = {w: sum(p.numel() for p in create_model(
            model, num_classes=10, in_channels=1, image_size=28, widths=w).parameters())
            for w in (None, tuple(widths))}
        assert 0.05 * n[None] < n[tuple(widths)] <= 0.1 * n[None]
        guarded, free = by["budget-p10"], by["budget-p10-noguard"]
        assert guarded.budget.guard and guarded.data.val_fraction == 0.1
        assert not free.budget.guard and free.data.val_fraction == 0.0
        assert guarded.budget.params_fraction == free.budget.params_fraction == 0.1
        assert guarded.prune == free.prune
        # everything else equal to dense FedAvg's run
        a, b = scratch.to_dict(), dense.to_dict()
        a["model"].pop("widths"), b["model"].pop("widths")
        assert a == b


def test_plan_filters_by_model_and_rejects_unknown_ones(tmp_path):
    plan = plan_suite(get_suite("budget"), tmp_path, models=["inception"],
                      methods=["dense", "scratch-p10"], sets=["fed.rounds=20"])
    assert {(r.setting.model, r.method.name) for r in plan.runs} == {
        ("inception", "dense"), ("inception", "scratch-p10")}
    assert all(r.config.fed.rounds == 20 for r in plan.runs)
    with pytest.raises(ValueError, match="model 'resnet7' is not in suite budget"):
        plan_suite(get_suite("budget"), tmp_path, models=["resnet7"])


def test_scaled_widths_is_the_largest_uniform_scale_within_the_fraction():
    kw = {"num_classes": 10, "in_channels": 1, "image_size": 28}

    def params(w):
        return sum(p.numel() for p in create_model("cnn_femnist", widths=w, **kw).parameters())

    full = params([32, 64])
    assert scaled_widths("cnn_femnist", 1.0, **kw) == [32, 64]
    for frac in (0.5, 0.1, 0.03):
        w = scaled_widths("cnn_femnist", frac, **kw)
        assert params(w) <= frac * full
        # the next scale at which a width grows no longer fits
        nxt = min((w[0] + 1) / 32, (w[1] + 1) / 64)
        assert params([int(32 * nxt + 1e-9), int(64 * nxt + 1e-9)]) > frac * full
    with pytest.raises(ValueError, match="fraction"):
        scaled_widths("cnn_femnist", 0.0, **kw)
    with pytest.raises(ValueError, match="every width at 1"):
        scaled_widths("cnn_femnist", 1e-4, **kw)


def test_window_scales_the_default_and_is_the_default_at_100_rounds():
    assert Window.scaled(100) == Window(30, 40, 2)
    assert Window.scaled(40) == Window(12, 22, 2)
    assert Window.scaled(10) == Window(3, 8, 1)


def test_paper_suite_needs_its_files(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDPRUNE_FEMNIST", raising=False)
    monkeypatch.delenv("FEDPRUNE_CELEBA", raising=False)
    plan = plan_suite(get_suite("paper"), tmp_path)
    assert not plan.runs and len(plan.skipped_settings) == 6
    assert main(["reproduce", "--suite", "paper", "--out", str(tmp_path), "--plan"]) == 2
    (tmp_path / "fem").mkdir()
    plan = plan_suite(get_suite("paper"), tmp_path, data_paths={"femnist": str(tmp_path / "fem")})
    assert {r.setting.model for r in plan.runs} == {"cnn_femnist", "resnet7", "inception"}
    assert all(r.config.data.path == str(tmp_path / "fem") for r in plan.runs)
    assert len(plan.skipped_settings) == 3  # CelebA


def test_set_overrides_apply_to_all_runs_but_not_to_methods(tmp_path):
    plan = plan_suite(get_suite("quick"), tmp_path, sets=["fed.rounds=100"], seeds=[0])
    assert {r.config.fed.rounds for r in plan.runs} == {100}
    low = next(r.config.prune for r in plan.runs if r.method.name == "fedprune-low")
    assert (low.start_round, low.max_prune_round, low.interval) == (30, 40, 2)
    with pytest.raises(ValueError, match="prune"):
        plan_suite(get_suite("quick"), tmp_path, sets=["prune.k=1"])


# ---------------------------------------------------------------- running and resuming


def _strip(summary):
    return {k: v for k, v in summary.items() if k != "seconds"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The test suite, run once with one run killed mid-way and one killed before round 1."""
    out = tmp_path_factory.mktemp("suite")
    plan = plan_suite(get_suite("test"), out)
    killed = next(r for r in plan.runs if r.method.name == "fedprune-low" and r.seed == 1)
    with pytest.raises(Stop):
        run_simulation(killed.config, killed.run_dir, on_round=stop_after(2))
    early = next(r for r in plan.runs if r.method.name == "ratio50" and r.seed == 0)
    early.run_dir.mkdir(parents=True)
    (early.run_dir / "config.json").write_text(json.dumps(early.config.to_dict()))
    (early.run_dir / "rounds.jsonl").write_text('{"round": 1}\n')  # no checkpoint yet
    states = {r.key: run_state(r) for r in plan.runs}
    outcome = run_plan(plan, jobs=1, argv=["reproduce", "--suite", "test"])
    return out, plan, killed, early, states, outcome


def test_states_and_resume_of_an_interrupted_suite(finished, tmp_path):
    out, plan, killed, early, states, outcome = finished
    assert states[killed.key] == "resume" and states[early.key] == "fresh"
    assert sum(s == "fresh" for s in states.values()) == len(plan.runs) - 1
    assert not outcome.failed and len(outcome.executed) == len(plan.runs)
    assert all(run_state(r) == "done" for r in plan.runs)
    # the resumed run ends as an uninterrupted run of the same config does
    ref = run_simulation(killed.config, tmp_path / "ref")
    resumed = json.loads((killed.run_dir / "summary.json").read_text())
    assert _strip(resumed) == _strip(json.loads(json.dumps(ref.summary)))
    rounds = [json.loads(x)["round"] for x in
              (killed.run_dir / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]
    rounds = [json.loads(x)["round"] for x in
              (early.run_dir / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]  # the stale line of the run killed before round 1 is gone
    lat = json.loads((killed.run_dir / "latency.json").read_text())
    assert lat["timed"] and lat["ratio"] > 0
    log = json.loads((out / "suite.json").read_text())
    assert log["suite"] == "test" and log["invocations"][0]["states_before"]["resume"] == 1


def test_finished_runs_are_skipped(finished):
    out, plan, *_ = finished
    mtimes = {r.key: (r.run_dir / "summary.json").stat().st_mtime_ns for r in plan.runs}
    again = run_plan(plan_suite(get_suite("test"), out), jobs=2)
    assert again.executed == [] and again.states == {"done": len(plan.runs), "resume": 0,
                                                     "fresh": 0}
    assert mtimes == {r.key: (r.run_dir / "summary.json").stat().st_mtime_ns for r in plan.runs}
    # a missing latency.json is measured again, and only that
    lat = plan.runs[0].run_dir / "latency.json"
    lat.unlink()
    third = run_plan(plan_suite(get_suite("test"), out), jobs=1)
    assert [r["state"] for r in third.executed] == ["done"] and lat.exists()


def test_a_folder_of_another_configuration_is_refused(finished):
    out, *_ = finished
    other = plan_suite(get_suite("test"), out, sets=["train.lr=0.01"])
    with pytest.raises(ValueError, match="another configuration"):
        run_plan(other, jobs=1)


# ---------------------------------------------------------------- the report


def test_report_from_the_run_folders(finished, tmp_path):
    _, plan, *_ = finished
    rows = {r.method: r for r in rows_of(collect(plan)[("digits", "cnn_femnist")])}
    assert rows["dense"].n == 2 and rows["dense"].bytes_ratio == (1.0, 0.0)
    assert rows["ratio85"].params[0] < rows["ratio50"].params[0] < rows["dense"].params[0]
    report = write_report(plan, tmp_path / "res" / "test.md")
    text = report.read_text()
    for needle in ("| method | seeds | accuracy |", "dense FedAvg", "fixed ratio 85 %",
                   "paper rule, faithful", "CNN / FEMNIST", "Inception / CelebA",
                   "Wall time", "fedprune reproduce --suite test", "FLOPs cut ≥ 85%"):
        assert needle in text, needle
    for kind in ("accuracy", "params", "acc_vs_flops"):
        png = tmp_path / "res" / "test" / f"digits_cnn_femnist_{kind}.png"
        assert png.stat().st_size > 1000
        assert f"(test/digits_cnn_femnist_{kind}.png)" in text


def test_cli_report_only_and_rerun_skips(finished, tmp_path, capsys):
    out, *_ = finished
    notes = tmp_path / "notes.md"
    notes.write_text("A closing note.")
    rep = tmp_path / "r.md"
    assert main(["reproduce", "--suite", "test", "--out", str(out), "--report-only",
                 "--report", str(rep), "--notes", str(notes)]) == 0
    assert "## Notes\n\nA closing note." in rep.read_text()
    assert main(["reproduce", "--suite", "test", "--out", str(out), "--jobs", "1",
                 "--no-report"]) == 0
    assert "0 runs executed" in capsys.readouterr().out
    assert main(["reproduce", "--suite", "quick", "--out", str(out), "--no-report"]) == 2


def test_a_run_or_suite_in_use_is_not_touched(tmp_path):
    from fedprune.reproduce.runner import Task, _try_lock, execute

    plan = plan_suite(get_suite("test"), tmp_path, seeds=[0], methods=["dense"])
    run = plan.runs[0]
    run.run_dir.mkdir(parents=True)
    held = _try_lock(run.run_dir / ".lock")  # e.g. a worker orphaned by a killed suite
    try:
        res = execute(Task(str(run.run_dir), run.config.to_dict(), "fresh", True, 1, 0))
        assert not res["ok"] and "another process" in res["error"]
        assert not (run.run_dir / "config.json").exists()
    finally:
        held.close()
    held = _try_lock(tmp_path / ".suite.lock")
    try:
        with pytest.raises(ValueError, match="in use"):
            run_plan(plan, jobs=1)
    finally:
        held.close()
    assert not run_plan(plan, jobs=1).failed
