"""``fedprune compare``: the table and the overlay figure, on real tiny runs of every kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from interrupt import Stop, stop_after

from fedprune.cli import main
from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.metrics.compare import (
    NotARunError,
    compare_figure,
    format_table,
    label_runs,
    read_run,
    reference_run,
)

TINY = {
    "threads": 1, "data": {"num_clients": 4, "val_fraction": 0.2},
    "model": {"widths": [8, 16]}, "train": {"local_epochs": 1, "engine": "per_client"},
    "fed": {"rounds": 4, "clients_per_round": 2, "eval_every": 1},
    "prune": {"method": "auto-paired", "start_round": 2, "max_prune_round": 3, "interval": 1,
              "k": 0.5, "max_fraction": 0.4},
}


BUDGET = {"method": "boundary"}  # budget mode adapts the boundary rule


def _cfg(**sections):
    return from_dict({**TINY, **{k: {**TINY.get(k, {}), **v} for k, v in sections.items()}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Real runs: dense FedAvg, the boundary rule, a met and a missed budget, the same rule
    through the Flower app, and one stopped after round 2 (no summary.json).  One client at a
    time everywhere, as the Flower app trains, so that its run equals the loop's."""
    from fedprune.flower.client_app import client_app
    from fedprune.flower.grid import LocalGrid
    from fedprune.flower.run_config import experiment_to_run_config
    from fedprune.flower.server_app import run_server

    root = tmp_path_factory.mktemp("compare")
    out = {name: root / name for name in
           ("dense", "rule", "budget_met", "budget_missed", "flower", "stopped",
                             "budget_stopped")}
    run_simulation(_cfg(prune={"enabled": False}), out["dense"])
    run_simulation(_cfg(), out["rule"])
    run_simulation(_cfg(budget={"params_fraction": 0.3, "guard": False}, prune=BUDGET),
                   out["budget_met"])
    run_simulation(_cfg(budget={"params_fraction": 0.1, "guard": False}, prune=BUDGET),
                   out["budget_missed"])
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 4} for i in range(4)])
    run_server(grid, {**experiment_to_run_config(_cfg()), "out-dir": str(out["flower"])})
    with pytest.raises(Stop):
        run_simulation(_cfg(fed={"rounds": 6}), out["stopped"], on_round=stop_after(2))
    with pytest.raises(Stop):
        run_simulation(_cfg(budget={"params_fraction": 0.3, "guard": False}, prune=BUDGET),
                       out["budget_stopped"], on_round=stop_after(2))
    return out


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_read_run_takes_the_figures_of_summary_json(runs):
    s = _summary(runs["rule"])
    r = read_run(runs["rule"])
    assert r.finished and not r.dense and r.engine == "loop"
    assert (r.accuracy, r.params_initial, r.params_final) == (
        s["accuracy"], s["params_initial"], s["params_final"])
    assert r.params_final < r.params_initial
    assert r.flops_cut == pytest.approx(1 - s["flops_final"] / s["flops_initial"])
    assert r.bytes_total == s["bytes_total"] and r.rounds_done == 4
    assert r.budget is None and r.latency is None and r.latency_ms is None
    assert any(row["pruned"] for row in r.rows)
    dense = read_run(runs["dense"])
    assert dense.dense and dense.flops_cut == 0.0 and dense.params_final == r.params_initial


def test_flower_runs_read_like_loop_runs(runs):
    loop, flower = read_run(runs["rule"]), read_run(runs["flower"])
    assert flower.engine == "flower" and flower.finished
    assert (flower.params_final, flower.accuracy) == (loop.params_final, loop.accuracy)
    assert [r["pruned"] for r in flower.rows] == [r["pruned"] for r in loop.rows]
    table = format_table([loop, flower])
    # only what differs goes in the setting column; the rest is said once below the table
    assert re.search(r"^rule +in-process +4 ", table, re.M), table
    assert re.search(r"^flower +Flower +4 ", table, re.M), table
    assert ("all runs: digits (4 clients); cnn_femnist [8, 16]; auto-paired, max drop 1 pt;"
            in table)


def test_an_unfinished_run_is_read_from_its_last_round(runs):
    r = read_run(runs["stopped"])
    rows = [json.loads(x) for x in (runs["stopped"] / "rounds.jsonl").read_text().splitlines()]
    assert not r.finished and r.rounds_done == 2 and r.rounds_planned == 6
    assert r.params_final == rows[-1]["params"] and r.bytes_total == rows[-1]["bytes_cumulative"]
    assert r.params_initial == rows[0]["params"]  # round 1 did not prune
    assert r.accuracy == rows[-1]["accuracy"]
    assert "2 of 6 (unfinished)" in format_table([r])
    assert r.budget is None


def test_an_unfinished_budget_run_shows_its_target_and_status_so_far(runs):
    r = read_run(runs["budget_stopped"])
    done = read_run(runs["budget_met"])  # the same run, to the end
    assert not r.finished and r.budget_status == "pruning" and not r.budget["met"]
    assert r.budget["targets"] == {"params": done.budget["targets"]["params"]}
    row = format_table([r]).splitlines()[1]
    assert row.rstrip().endswith("NOT met (pruning)")
    assert f"budget params <= {done.budget['targets']['params']:,}" in format_table([r, done])


def test_table_compares_every_run_against_the_dense_one(runs, capsys):
    order = ["rule", "dense", "budget_met", "budget_missed"]
    assert main(["compare", *(str(runs[n]) for n in order)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "setting", "rounds"]
    assert "budget" in lines[0] and "latency" not in lines[0]  # no run was timed
    body = {ln.split()[0]: ln for ln in lines[1:5]}
    assert list(body) == order
    dense_bytes = _summary(runs["dense"])["bytes_total"]
    for name in order:
        s = _summary(runs[name])
        ratio = f"{s['bytes_total'] / dense_bytes:.2f}x"
        cut = f"{100 * (1 - s['flops_final'] / s['flops_initial']):.1f} %"
        assert f"{s['params_initial']:,} -> {s['params_final']:,}" in body[name]
        assert ratio in body[name] and cut in body[name], body[name]
        assert f"{s['accuracy']:.4f}" in body[name]
    assert "dense FedAvg" in body["dense"] and "1.00x" in body["dense"]
    target = _summary(runs["budget_met"])["budget"]["targets"]["params"]
    assert f"budget params <= {target:,}" in body["budget_met"]
    assert body["budget_met"].rstrip().endswith(" met")
    assert body["budget_missed"].rstrip().endswith("NOT met (deadline)")
    assert body["rule"].rstrip().endswith("-")
    # what all runs share is said once, below the table
    assert "all runs: digits (4 clients); cnn_femnist [8, 16]; 4 rounds x 2 clients x 1 epoch" \
        in out
    assert "total bytes over those of dense (dense FedAvg)" in out


def test_without_a_dense_run_the_first_run_is_the_reference(runs):
    facts = [read_run(runs["budget_met"]), read_run(runs["rule"])]
    assert reference_run(facts) is facts[0]
    table = format_table(facts)
    assert "over those of budget_met (the first run)" in table
    first_row = table.splitlines()[1]
    assert "1.00x" in first_row


def test_markdown_table(runs, capsys):
    assert main(["compare", str(runs["dense"]), str(runs["rule"]), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | setting | rounds | accuracy |")
    assert re.fullmatch(r"\|---\|---\|(---:\|)+", lines[1]), lines[1]
    assert lines[2].startswith("| dense | dense FedAvg |") and lines[3].startswith("| rule |")
    assert all(ln.count("|") == lines[0].count("|") for ln in lines[:4])
    assert lines[5].startswith("- all runs: ")


def test_latency_saved_by_bench_latency_shows_in_the_table(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "timed"
    shutil.copytree(runs["rule"], run)
    assert main(["bench-latency", str(run), "--save", "--runs", "5", "--warmup", "1"]) == 0
    assert f"wrote {run / 'latency.json'}" in capsys.readouterr().out
    saved = json.loads((run / "latency.json").read_text())
    assert saved["timed"] and saved["ratio"] == pytest.approx(
        saved["final"]["median_ms"] / saved["dense"]["median_ms"])
    assert saved["final"]["params"] == _summary(run)["params_final"]
    assert saved["dense"]["params"] == _summary(run)["params_initial"]

    assert main(["compare", str(runs["dense"]), str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "latency ms" in lines[0] and "latency vs dense" in lines[0]
    timed = lines[2]
    assert f"{saved['final']['median_ms']:.3f}" in timed and f"{saved['ratio']:.2f}x" in timed
    assert lines[1].split()[-2:] == ["-", "-"]  # the dense run was not timed

    # never replaced silently; --force measures again
    before = (run / "latency.json").read_text()
    assert main(["bench-latency", str(run), "--save", "--runs", "5"]) == 2
    assert "latency.json exists: add --force" in capsys.readouterr().err
    assert (run / "latency.json").read_text() == before
    assert main(["bench-latency", str(run), "--save", "--force", "--runs", "5",
                 "--warmup", "1"]) == 0
    assert json.loads((run / "latency.json").read_text())["final"]["runs"] == 5


def test_latency_json_of_a_dense_reproduce_run_reads_as_ratio_one(runs, tmp_path):
    import shutil

    run = tmp_path / "dense"
    shutil.copytree(runs["dense"], run)
    (run / "latency.json").write_text(json.dumps(
        {"ratio": 1.0, "timed": False, "why": "dense FedAvg"}))
    r = read_run(run)
    assert r.latency_ratio == 1.0 and r.latency_ms is None


def test_plot_overlays_every_run_and_marks_pruning_rounds(runs, tmp_path, capsys):
    out = tmp_path / "fig" / "compare.png"
    assert main(["compare", str(runs["dense"]), str(runs["rule"]), str(runs["budget_met"]),
                 "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import matplotlib.pyplot as plt

    facts = [read_run(runs[n]) for n in ("dense", "rule", "budget_met")]
    fig = compare_figure(facts)
    ax_acc, ax_par = fig.axes
    labels = [ln.get_label() for ln in ax_par.get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["dense", "rule", "budget_met"]
    rule_rows = facts[1].rows
    par = {ln.get_label(): ln for ln in ax_par.get_lines()}
    assert list(par["rule"].get_ydata()) == [r["params"] for r in rule_rows]
    assert par["dense"].get_linestyle() == "--"
    acc = {ln.get_label(): ln for ln in ax_acc.get_lines()}
    assert list(acc["rule"].get_ydata()) == [r["accuracy"] for r in rule_rows]
    # pruning rounds: one triangle per accepted cut on each pruned run's params curve
    marked = sorted(tuple(p) for c in ax_par.collections for p in c.get_offsets().tolist())
    expected = sorted((r["round"], r["params"]) for f in facts for r in f.rows if r["pruned"])
    assert expected and marked == [tuple(map(float, e)) for e in expected]
    target = facts[2].budget["targets"]["params"]
    assert any(list(ln.get_ydata()) == [target, target] for ln in ax_par.get_lines())
    plt.close(fig)


def test_labels_take_parent_folders_only_to_tell_runs_apart():
    assert label_runs([Path("/r/a/low/seed0"), Path("/r/a/dense/seed0")]) == [
        "low/seed0", "dense/seed0"]
    assert label_runs([Path("/r/x"), Path("/r/y")]) == ["x", "y"]
    assert label_runs([Path("/r/x"), Path("/r/x")]) == ["x", "x#2"]


def test_a_folder_that_is_not_a_run_is_refused_clearly(runs, tmp_path, capsys):
    with pytest.raises(NotARunError, match="no rounds.jsonl; it holds runs in subdirectories"):
        read_run(runs["rule"].parent)
    suite = tmp_path / "suite"
    (suite / "digits" / "cnn_femnist" / "low").mkdir(parents=True)
    import shutil

    shutil.copytree(runs["rule"], suite / "digits" / "cnn_femnist" / "low" / "seed0")
    with pytest.raises(NotARunError, match=r"e\.g\. .*suite/digits/cnn_femnist/low/seed0$"):
        read_run(suite)
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(runs["rule"]), str(tmp_path / "empty")]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing printed for a partial set
    assert err.startswith("fedprune: error: ") and "is not a run directory" in err
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file.txt").write_text("x")
    assert main(["compare", str(tmp_path / "file.txt")]) == 2
    assert "is a file" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "rounds.jsonl").write_text("not json\n")
    assert main(["compare", str(bad)]) == 2
    assert "line 1: malformed JSON" in capsys.readouterr().err
    (bad / "rounds.jsonl").write_text('{"round": 1}\n')
    assert main(["compare", str(bad)]) == 2
    assert "a record lacks the key 'params'" in capsys.readouterr().err
    assert main(["compare", str(runs["rule"]), "--plot", str(tmp_path / "x.notanimage")]) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "x.notanimage").exists()


def test_bytes_and_client_flops_are_shown_as_ratios_to_dense_fedavg(runs):
    dense, auto = read_run(runs["dense"]), read_run(runs["rule"])
    # dense FedAvg spends exactly its own dense-equivalent: the meter counts both alike
    assert dense.bytes_vs_dense == 1.0 and dense.client_flops_vs_dense == 1.0
    # the earlier automatic method's search trains and sends trial models beside the global one
    assert auto.client_flops_vs_dense > 1.0 and auto.bytes_vs_dense > 1.0
    table = format_table([dense, auto])
    header, *_ = table.splitlines()
    assert "bytes vs dense" in header and "client FLOPs vs dense" in header
    assert f"{auto.client_flops_vs_dense:.2f}x" in table
