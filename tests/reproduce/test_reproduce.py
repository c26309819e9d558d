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
from fedprune.data.registry import SPECS
from fedprune.federated import run_simulation
from fedprune.models import create_model, scaled_widths
from fedprune.pruning import RatioRule, decide_ratio, prune_model, widths_of
from fedprune.reproduce import (
    RunEvent,
    TaskInfo,
    TimeLeft,
    format_left,
    get_suite,
    plan_suite,
    run_plan,
    run_state,
    write_report,
)
from fedprune.reproduce.commands import ProgressView
from fedprune.reproduce.methods import Window
from fedprune.reproduce.tables import _fmt, collect, rows_of

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
    res = prune_model(net, x[:1], RatioRule(0.5))
    kept = {g["root"]: g["kept"] for g in res.record["groups"]}
    assert kept["conv"] == [4, 5, 6, 7]  # floor(0.5 * 8) = 4 lowest gone
    assert kept["pw"] == [0, 1, 2, 6, 7, 8]  # floor(0.5 * 6) = 3 per block, same positions
    assert kept["gconv"] == [3, 4, 5, 9, 10, 11]
    assert net(x).shape == (2, 3) and net.gconv.groups == 2

    net = DepthwiseNet()
    res = prune_model(net, x[:1], RatioRule(0.85))
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
        "prune": {"method": "ratio", "ratio": 0.5, "start_round": 2, "max_prune_round": 2,
                  "round_to": 4},
    })
    res = run_simulation(cfg)
    assert [r.pruned for r in res.records] == [False, True, False]
    assert list(res.summary["widths_final"].values()) == [4, 8]  # on multiples of 4
    assert res.summary["prune_steps"] == 1


# ---------------------------------------------------------------- suite planning




def test_quick_suite_plan_equal_settings_across_methods(tmp_path, fashion_mnist_dir,
                                                        no_default_fashion):
    plan = plan_suite(get_suite("quick"), tmp_path,
                      data_paths={"fashion-mnist": str(fashion_mnist_dir)})
    assert len(plan.runs) == 2 * 6 * 3 and not plan.skipped_settings
    assert {r.config.data.path for r in plan.runs if r.setting.dataset == "fashion-mnist"} == {
        str(fashion_mnist_dir)}
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


def test_budget_suite_has_the_scratch_baseline_at_the_budget_size(tmp_path, fashion_mnist_dir,
                                                                no_default_fashion):
    plan = plan_suite(get_suite("budget"), tmp_path,
                      data_paths={"fashion-mnist": str(fashion_mnist_dir)})
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


def test_plan_filters_by_model_and_rejects_unknown_ones(tmp_path, fashion_mnist_dir,
                                                       no_default_fashion, monkeypatch):
    monkeypatch.setenv("FEDPRUNE_FASHION_MNIST", str(fashion_mnist_dir))
    plan = plan_suite(get_suite("budget"), tmp_path, models=["inception"],
                      methods=["dense", "scratch-p10"], sets=["fed.rounds=20"])
    assert {(r.setting.model, r.method.name) for r in plan.runs} == {
        ("inception", "dense"), ("inception", "scratch-p10")}
    assert all(r.config.fed.rounds == 20 for r in plan.runs)
    with pytest.raises(ValueError, match="model 'resnet7' is not in suite budget"):
        plan_suite(get_suite("budget"), tmp_path, models=["resnet7"])


def test_fashion_mnist_files_come_from_data_paths_the_environment_or_the_default(
        tmp_path, fashion_mnist_dir, no_default_fashion, monkeypatch):
    suite = get_suite("quick")
    # no files anywhere: the setting is skipped, saying how to give them
    plan = plan_suite(suite, tmp_path / "out")
    assert {r.setting.dataset for r in plan.runs} == {"digits"}
    [(setting, why)] = plan.skipped_settings
    assert setting.dataset == "fashion-mnist"
    assert "--data fashion-mnist=PATH" in why and "$FEDPRUNE_FASHION_MNIST" in why
    assert str(no_default_fashion) in why

    def fashion_paths(plan):
        return {r.config.data.path for r in plan.runs if r.setting.dataset == "fashion-mnist"}

    # the environment variable, then --data over it; digits never gets a path
    monkeypatch.setenv("FEDPRUNE_FASHION_MNIST", str(fashion_mnist_dir))
    plan = plan_suite(suite, tmp_path / "out")
    assert fashion_paths(plan) == {str(fashion_mnist_dir)} and not plan.skipped_settings
    assert {r.config.data.path for r in plan.runs if r.setting.dataset == "digits"} == {""}
    other = tmp_path / "elsewhere"
    other.mkdir()
    plan = plan_suite(suite, tmp_path / "out", data_paths={"fashion-mnist": str(other)})
    assert fashion_paths(plan) == {str(other)}
    # a path given that does not exist is an error, not a silently smaller suite
    with pytest.raises(ValueError, match="does not exist"):
        plan_suite(suite, tmp_path / "out", data_paths={"fashion-mnist": str(tmp_path / "x")})
    monkeypatch.setenv("FEDPRUNE_FASHION_MNIST", str(tmp_path / "typo"))
    with pytest.raises(ValueError, match="typo does not exist"):
        plan_suite(suite, tmp_path / "out")
    assert plan_suite(suite, tmp_path / "out", datasets=["digits"]).runs  # not needed: fine
    monkeypatch.delenv("FEDPRUNE_FASHION_MNIST")
    # the default folder, when it holds the files: data.path stays empty (configs as before)
    monkeypatch.setitem(SPECS, "fashion-mnist", type(SPECS["fashion-mnist"])(
        **{**SPECS["fashion-mnist"].__dict__, "default_path": str(fashion_mnist_dir)}))
    plan = plan_suite(suite, tmp_path / "out")
    assert fashion_paths(plan) == {""} and not plan.skipped_settings
    # --data names only datasets the suite reads from files
    with pytest.raises(ValueError, match="suite quick reads no femnist files.*fashion-mnist"):
        plan_suite(suite, tmp_path / "out", data_paths={"femnist": str(other)})
    with pytest.raises(ValueError, match="all its data is embedded"):
        plan_suite(get_suite("test"), tmp_path / "out", data_paths={"fashion-mnist": str(other)})
    with pytest.raises(ValueError, match="--data NAME=PATH"):
        plan_suite(suite, tmp_path / "out", sets=[f"data.path={fashion_mnist_dir}"])


def test_quick_suite_trains_on_fashion_mnist_idx_files(tmp_path, fashion_mnist_dir,
                                                       no_default_fashion, monkeypatch, capsys):
    monkeypatch.setenv("FEDPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "quick"
    rc = main(["reproduce", "--suite", "quick", "--out", str(out), "--datasets", "fashion-mnist",
               "--methods", "dense", "--seeds", "0", "--data", f"fashion-mnist={fashion_mnist_dir}",
               "--set", "data.num_clients=4", "--set", "fed.clients_per_round=2",
               "--set", "fed.rounds=2", "--no-progress", "--no-report"])
    assert rc == 0, capsys.readouterr().err
    run = out / "fashion-mnist" / "cnn_femnist" / "dense" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["data"]["name"] == "fashion-mnist"
    assert summary["config"]["data"]["path"] == str(fashion_mnist_dir)
    assert summary["params_initial"] == summary["params_final"] > 50_000  # full width
    assert "run 1/1 done (fashion-mnist/cnn_femnist/dense/seed0, ran in" in capsys.readouterr().out


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
    events = []
    outcome = run_plan(plan, jobs=1, argv=["reproduce", "--suite", "test"],
                       progress=events.append)
    return out, plan, killed, early, states, outcome, events


def test_states_and_resume_of_an_interrupted_suite(finished, tmp_path):
    out, plan, killed, early, states, outcome, events = finished
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
    # progress: the runs listed once, then a start and a done per run, in that order
    assert [e.kind for e in events] == ["begin"] + ["start", "done"] * len(plan.runs)
    assert events[0].states == {"done": 0, "resume": 1, "fresh": len(plan.runs) - 1}
    by_run = {t.run: t for t in events[0].tasks}
    rel = lambda r: str(r.run_dir.relative_to(out))  # noqa: E731
    # the resumed run has 1 of its 3 rounds left: a third of its cost; the run killed
    # before its first checkpoint starts over: all of it
    assert by_run[rel(killed)].state == "resume"
    assert by_run[rel(killed)].cost == pytest.approx(killed.cost / 3)
    assert by_run[rel(early)].state == "fresh" and by_run[rel(early)].cost == early.cost
    costs = [t.cost for t in events[0].tasks]
    assert costs == sorted(costs, reverse=True)  # longest first
    assert [e.task for e in events[1::2]] == [e.task for e in events[2::2]] == list(
        events[0].tasks)
    assert all(e.result["ok"] for e in events[2::2])


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


def test_a_stored_configuration_is_compared_by_its_resolved_values(tmp_path, capsys):
    args = ["reproduce", "--suite", "test", "--out", str(tmp_path), "--seeds", "0",
            "--methods", "dense"]
    assert main([*args, "--no-report", "--no-progress"]) == 0
    run = plan_suite(get_suite("test"), tmp_path, seeds=[0], methods=["dense"]).runs[0]
    cfg_file = run.run_dir / "config.json"
    written = json.loads(cfg_file.read_text())
    # settings added after the run was written: absent from its config.json, and their
    # defaults are what the suite plans
    stored = json.loads(json.dumps(written))
    del stored["fed"]["min_replies"]
    del stored["budget"]["guard_z"]
    cfg_file.write_text(json.dumps(stored))
    assert run_state(run) == "done"
    capsys.readouterr()
    assert main([*args, "--plan"]) == 0
    assert capsys.readouterr().out.startswith(f"done    {run.run_dir}")
    assert main([*args, "--no-report", "--no-progress"]) == 0
    assert "0 runs executed" in capsys.readouterr().out
    # an absent key whose default is not the planned value is a real difference
    del stored["train"]["local_epochs"]  # default 5, the test suite plans 1
    cfg_file.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"another configuration .*train\.local_epochs: 5 "
                                         r"there, 1 planned"):
        run_state(run)
    # so is a changed value, named with both sides
    stored = json.loads(json.dumps(written))
    stored["train"]["lr"] = 0.5
    cfg_file.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"train\.lr: 0\.5 there, 0\.003 planned"):
        run_state(run)
    assert main([*args, "--no-report", "--no-progress"]) == 2
    assert "train.lr: 0.5 there" in capsys.readouterr().err
    # a stored configuration that no longer parses is refused, saying why
    stored = json.loads(json.dumps(written))
    stored["fed"]["retired_setting"] = 1
    cfg_file.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"configuration cannot be read .*fed\.retired_setting"):
        run_state(run)
    cfg_file.write_text("{not json")
    with pytest.raises(ValueError, match="configuration cannot be read"):
        run_state(run)
    assert json.loads((run.run_dir / "summary.json").read_text())["rounds"] == 3  # untouched


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
    from fedprune.reproduce.runner import Task, execute
    from fedprune.rundir import RunLock

    plan = plan_suite(get_suite("test"), tmp_path, seeds=[0], methods=["dense"])
    run = plan.runs[0]
    run.run_dir.mkdir(parents=True)
    held = RunLock(run.run_dir / ".lock")  # e.g. a worker orphaned by a killed suite
    try:
        res = execute(Task(str(run.run_dir), run.config.to_dict(), "fresh", True, 1, 0))
        assert not res["ok"] and "in use by another fedprune process" in res["error"]
        assert not (run.run_dir / "config.json").exists()
    finally:
        held.release()
    held = RunLock(tmp_path / ".suite.lock")
    try:
        with pytest.raises(ValueError, match="in use"):
            run_plan(plan, jobs=1)
    finally:
        held.release()
    assert not run_plan(plan, jobs=1).failed


# ---------------------------------------------------------------- progress and time left


def _tasks(*costs):
    return [TaskInfo(name, "fresh", c) for name, c in zip("abcdef", costs, strict=False)]


def test_time_left_weights_finished_runs_by_cost_and_packs_the_rest_over_the_workers():
    left = TimeLeft(_tasks(4, 1, 1), jobs=2)
    left.start("a", 0)
    left.start("b", 0)
    assert left.seconds_left(5) is None  # nothing finished: nothing to go by
    left.finish("b", 100, ok=True)  # cost 1 in 100 s
    assert left.seconds_per_cost() == 100
    # a (400 s expected) has run 100 s: 300 s left; c (100 s) fits on the other worker
    assert left.seconds_left(100) == 300
    left.start("c", 100)
    assert left.seconds_left(150) == 250
    left.finish("c", 100, ok=True)
    assert left.seconds_left(200) == 200 and left.done == 2 and left.total == 3
    # a run past its estimate counts as ending now, never negative
    assert left.seconds_left(1000) == 0
    left.finish("a", 800, ok=True)
    assert left.seconds_left(1000) == 0.0
    assert left.seconds_per_cost() == pytest.approx((100 + 100 + 800) / 6)


def test_time_left_in_parallel_is_not_the_sequential_sum():
    tasks = _tasks(1, 1, 1, 1, 1)
    one, two = TimeLeft(tasks, jobs=1), TimeLeft(tasks, jobs=2)
    for left in (one, two):
        left.start("a", 0)
        left.finish("a", 60, ok=True)
    assert one.seconds_left(60) == 4 * 60
    assert two.seconds_left(60) == 2 * 60  # b, c side by side, then d, e
    two.start("b", 60)
    two.start("c", 60)
    assert two.seconds_left(90) == 30 + 60  # b and c half done, then d and e together
    two.finish("b", 60, ok=True)
    two.start("d", 120)
    assert two.seconds_left(120) == 60  # c is due now, e follows it, beside d: both at 180


def test_time_left_ignores_failed_and_latency_only_runs_for_the_rate():
    tasks = [TaskInfo("a", "fresh", 2.0), TaskInfo("b", "fresh", 2.0),
             TaskInfo("t", "done", 0.0), TaskInfo("c", "fresh", 1.0)]
    left = TimeLeft(tasks, jobs=1)
    left.start("a", 0)
    left.finish("a", 1.0, ok=False)  # failed at once: says nothing about run time
    assert left.seconds_per_cost() is None and left.seconds_left(1) is None
    left.start("b", 1)
    left.finish("b", 200, ok=True)
    left.start("t", 201)
    left.finish("t", 6, ok=True)  # latency only: cost 0, not in the rate
    assert left.seconds_per_cost() == 100
    assert left.seconds_left(207) == 100
    with pytest.raises(KeyError):
        left.start("zz", 0)
    with pytest.raises(ValueError):
        TimeLeft(tasks, jobs=0)


def test_format_left():
    assert format_left(None) == "time left not known yet"
    assert format_left(12) == "less than a minute left"
    assert format_left(9 * 60 + 10) == "about 9 min left"
    assert format_left(3 * 3600) == "about 3.0 h left"


def _feed(view, clock, events):
    for t, ev in events:
        clock[0] = t
        view(ev)


def _script(jobs=2):
    tasks = tuple(_tasks(4, 1, 1))
    a, b, c = tasks

    def done(task, seconds, ok=True):
        return RunEvent("done", tasks, jobs, task=task, result={
            "ok": ok, "seconds": seconds, "error": "" if ok else "RuntimeError: boom"})
    return tasks, [
        (0, RunEvent("begin", tasks, jobs, states={"done": 0, "resume": 0, "fresh": 3})),
        (0, RunEvent("start", tasks, jobs, task=a)), (0, RunEvent("start", tasks, jobs, task=b)),
        (100, done(b, 100)), (100, RunEvent("start", tasks, jobs, task=c)),
        (130, RunEvent("tick", tasks, jobs)),
        (200, done(c, 100, ok=False)), (400, done(a, 400))]


def test_progress_lines_count_finished_runs_and_say_the_time_left():
    import io

    clock = [0.0]
    out = io.StringIO()
    view = ProgressView(bar=False, stream=out, clock=lambda: clock[0])
    _, events = _script()
    _feed(view, clock, events)
    assert out.getvalue().splitlines() == [
        "run 1/3 done (b, ran in 100 s), about 5 min left",  # a: 300 s left, c beside it
        "run 2/3 FAILED (c: RuntimeError: boom), about 3 min left",  # a: 400 - 200 s
        "run 3/3 done (a, ran in 400 s)",
    ]


def test_progress_bar_shows_the_runs_under_way_and_the_time_left():
    import io

    clock = [0.0]
    bar = io.StringIO()
    view = ProgressView(bar=True, stream=io.StringIO(), bar_file=bar, clock=lambda: clock[0])
    _, events = _script()
    _feed(view, clock, events[:1])
    assert view.postfix() == "time left not known yet"
    _feed(view, clock, events[1:5])
    assert view.bar.n == 1 and view.bar.total == 3
    assert view.postfix() == "about 5 min left; running a, c"
    clock[0] = 130
    assert view.postfix() == "about 4 min left; running a, c"  # a: 400 - 130 = 270 s
    _feed(view, clock, events[5:])
    assert view.postfix() == "all done"
    view.close()
    text = bar.getvalue()
    assert "running a, b" in text and "3/3 runs" in text
    assert "run 2/3 FAILED (c: RuntimeError: boom)" in text  # failures above the bar


def test_parallel_runs_report_progress_as_they_start_and_end(tmp_path, monkeypatch):
    plan = plan_suite(get_suite("test"), tmp_path, methods=["dense", "ratio50"])
    events = []
    outcome = run_plan(plan, jobs=2, progress=events.append)
    assert not outcome.failed and len(outcome.executed) == 4
    assert events[0].kind == "begin" and len(events[0].tasks) == 4
    under_way, most, ended = set(), 0, []
    for ev in events[1:]:
        assert ev.kind in ("start", "done", "tick")
        if ev.kind == "start":
            assert ev.task not in under_way and ev.task not in ended
            under_way.add(ev.task)
        elif ev.kind == "done":
            under_way.remove(ev.task)
            ended.append(ev.task)
            assert ev.result["ok"]
        most = max(most, len(under_way))
    assert most == 2 and not under_way and sorted(ended, key=str) == sorted(events[0].tasks,
                                                                           key=str)
    # the same events drive the estimate to its end
    left = TimeLeft(events[0].tasks, 2)
    for t, ev in enumerate(events[1:]):
        if ev.kind == "start":
            left.start(ev.task.run, t)
        elif ev.kind == "done":
            left.finish(ev.task.run, ev.result["seconds"], ev.result["ok"])
    assert left.done == 4 and left.seconds_left(len(events)) == 0.0


# ---------------------------------------------------------------- defaults and one seed


def test_default_out_is_runs_suite_and_the_report_goes_beside_its_runs(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--suite", "test", "--plan"]) == 0
    listed = capsys.readouterr().out.split()
    assert "runs/test/digits/cnn_femnist/dense/seed0" in listed
    assert main(["reproduce", "--suite", "test", "--methods", "dense", "ratio85", "--seeds", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "report: runs/test/report.md" in out and "run 2/2 done (" in out
    root = tmp_path / "runs" / "test"
    assert (root / "digits" / "cnn_femnist" / "ratio85" / "seed0" / "summary.json").exists()
    text = (root / "report.md").read_text()
    assert (root / "report" / "digits_cnn_femnist_accuracy.png").stat().st_size > 1000
    assert "(report/digits_cnn_femnist_accuracy.png)" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing written elsewhere
    # one seed: every value says n = 1, none shows a zero spread
    assert "± 0.0" not in text and "1 seed)" in text
    rows = [line for line in text.splitlines()
            if line.startswith(("| dense FedAvg |", "| fixed ratio 85 % (one-shot) |"))]
    assert len(rows) == 2
    for row in rows:
        # acc, params, FLOPs, bytes, 3 ratios (bytes, client FLOPs, latency)
        assert "±" not in row and row.count("(n = 1)") == 7


def test_a_spread_of_one_value_is_n_1_and_of_equal_values_zero():
    from fedprune.reproduce.tables import mean_sd

    assert _fmt(*mean_sd([0.5]), ".4f") == "0.5000 (n = 1)"
    assert _fmt(*mean_sd([0.5, 0.5]), ".4f") == "0.5000 ± 0.0000"
    assert _fmt(*mean_sd([1.0, 3.0]), ".2f", " MB") == "2.00 MB ± 1.41 MB"
    assert _fmt(*mean_sd([]), ".2f") == "-"
