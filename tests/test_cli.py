"""Tests for the ``fedprune`` command line (run in process via ``fedprune.cli.main``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedprune.cli import main

TINY_RUN = [
    "--set", "fed.rounds=4", "--set", "fed.clients_per_round=3",
    "--set", "data.num_clients=5", "--set", "train.local_epochs=1",
    "--set", "prune.start_round=2", "--set", "prune.max_prune_round=3",
    "--set", "prune.interval=1", "--set", "prune.k=0.5", "--set", "fed.eval_every=2",
    "--set", "prune.method=boundary", "--set", "threads=1", "--no-progress",
]


def test_config_prints_resolved_json_with_override(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["config", "--set", "prune.k=1.5"])

    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    resolved = json.loads(out)
    assert resolved["prune"]["k"] == 1.5
    assert resolved["prune"]["start_round"] == 20  # defaults are printed too
    assert resolved["prune"]["round_to"] == 16
    assert set(resolved) == {"seed", "threads", "device", "data", "model", "train", "fed", "prune",
                            "budget"}


def test_config_reads_toml_then_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("seed = 4\n[fed]\nrounds = 9\n", encoding="utf-8")

    rc = main(["config", "--config", str(path), "--set", "fed.rounds=2"])

    resolved = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert (resolved["seed"], resolved["fed"]["rounds"]) == (4, 2)


@pytest.mark.parametrize("cmd", ["config", "run"])
def test_unknown_key_exits_2_naming_key(
    cmd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--out", str(tmp_path / "run")] if cmd == "run" else []

    rc = main([cmd, "--set", "prune.bogus=1", *extra])

    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("fedprune: error: ")
    assert "prune.bogus" in err and "prune.k" in err
    assert not (tmp_path / "run").exists()  # nothing created for a bad config


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"

    rc = main(["config", "--config", str(missing)])

    assert rc == 2
    assert f"fedprune: error: config file {missing} does not exist" in capsys.readouterr().err


def test_models_lists_registered_models(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["models"])

    names = capsys.readouterr().out.split()
    assert rc == 0
    assert {"cnn_femnist", "resnet7", "inception"} <= set(names)
    assert names == sorted(names)


def test_run_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run"])

    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_run_refuses_non_empty_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "old_run"
    out_dir.mkdir()
    (out_dir / "rounds.jsonl").write_text('{"round": 1}\n', encoding="utf-8")
    (out_dir / "notes.txt").write_text("keep me", encoding="utf-8")

    rc = main(["run", "--out", str(out_dir), *TINY_RUN])

    _, err = capsys.readouterr()
    assert rc == 2
    assert "fedprune: error: --out" in err and "not empty" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt", "rounds.jsonl"]
    assert (out_dir / "rounds.jsonl").read_text(encoding="utf-8") == '{"round": 1}\n'
    assert (out_dir / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_run_out_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "results.txt"
    out_file.write_text("keep me", encoding="utf-8")

    rc = main(["run", "--out", str(out_file), *TINY_RUN])

    assert rc == 2 and "fedprune: error:" in capsys.readouterr().err
    assert out_file.read_text(encoding="utf-8") == "keep me"


@pytest.mark.slow
def test_tiny_run_writes_all_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"

    rc = main(["run", "--out", str(out_dir), *TINY_RUN])

    stdout, stderr = capsys.readouterr()
    assert rc == 0
    assert "budget" not in stderr
    printed = json.loads(stdout)
    assert printed["out"] == str(out_dir)
    assert printed["budget_status"] is None  # not a budget run
    expected_files = {"rounds.jsonl", "summary.json", "config.json", "checkpoint.pt",
                      "accuracy.png", "params.png", "bytes.png"}
    assert expected_files <= {p.name for p in out_dir.iterdir()}
    for png in ("accuracy.png", "params.png", "bytes.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lines = (out_dir / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    rounds = [json.loads(line) for line in lines]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    # eval_every=2: accuracy on rounds 2 and 4 only (4 is also the last round)
    assert [r["accuracy"] is not None for r in rounds] == [False, True, False, True]
    assert all(r["clients"] == 3 for r in rounds)

    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    keys = {"accuracy", "params_initial", "params_final", "flops_initial", "flops_final",
            "bytes_total", "bytes_total_dense", "widths_initial", "widths_final",
            "prune_stopped_round", "rounds", "seconds", "config"}
    assert keys <= set(summary)
    assert summary["rounds"] == 4
    assert summary["params_final"] < summary["params_initial"]
    assert summary["flops_final"] < summary["flops_initial"]
    assert summary["bytes_total"] < summary["bytes_total_dense"]  # pruned rounds send less
    # and train less: the clients' FLOPs against dense FedAvg's, said on stderr too
    assert summary["client_flops_total"] < summary["client_flops_total_dense"]
    assert printed["client_flops_total"] == summary["client_flops_total"]
    bytes_ratio = summary["bytes_total"] / summary["bytes_total_dense"]
    flops_ratio = summary["client_flops_total"] / summary["client_flops_total_dense"]
    assert (f"against dense FedAvg: bytes {bytes_ratio:.2f}x, client FLOPs "
            f"{flops_ratio:.2f}x") in stderr
    assert summary["accuracy"] == rounds[-1]["accuracy"]
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert rounds[-1]["params"] == summary["params_final"]
    # at most 2 cuts (rounds 2 and 3), each removing <= max_fraction 0.25 of a group
    before, after = summary["widths_initial"], summary["widths_final"]
    assert before.keys() == after.keys() and after != before
    assert all(0.75 * 0.75 * before[g] <= after[g] <= before[g] for g in before)

    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    assert config.pop("engine") == "in-process"  # beside the settings: which engine wrote it
    assert config == summary["config"]
    assert (config["fed"]["rounds"], config["data"]["num_clients"]) == (4, 5)
    assert config["prune"]["k"] == 0.5


def test_module_entry_point_runs_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedprune", "config", "--set", "seed=3"],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["seed"] == 3


# ----------------------------------------------------------------------------- version, pipes


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])

    assert exc.value.code == 0
    assert capsys.readouterr().out == f"fedprune {version('fedprune')}\n"


@pytest.mark.parametrize("argv", [["config"], ["--help"]], ids=["config", "help"])
def test_a_closed_stdout_pipe_ends_quietly(argv: list[str]) -> None:
    """``fedprune ... | head``: the reader is gone before anything is written."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "fedprune", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)

    assert proc.stderr == ""  # no traceback, no "Exception ignored" at exit
    # 128 + SIGPIPE, as for a filter stopped by its reader; argparse drops its own write errors
    assert proc.returncode == 141 if argv != ["--help"] else proc.returncode in (0, 141)


def test_piping_into_head_keeps_the_first_lines() -> None:
    proc = subprocess.run(f"'{sys.executable}' -m fedprune config | head -3", shell=True,
                          capture_output=True, text=True, timeout=120, check=False)

    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines() == ["{", '  "seed": 0,', '  "threads": 1,']


# ----------------------------------------------------------------------------- help texts


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


@pytest.mark.parametrize("command", ["info", "prepare"])
def test_data_commands_explain_their_own_settings(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(["data", command], capsys)

    assert "prune." not in text  # the data commands train nothing
    assert "--set KEY=VALUE override a data setting, e.g. --set data." in text
    assert ("--seed" in text) == (command == "info")  # prepare builds no partition


def test_run_help_names_the_dense_baseline_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["run"], capsys)

    assert "--set prune.enabled=false runs the dense FedAvg baseline" in text
    assert "budget.params_fraction=0.1" in text


@pytest.mark.parametrize("command", ["export", "bench-latency", "compare"])
def test_every_argument_has_help_and_shows_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from fedprune.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    text = _help([command], capsys)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help) > 15, name
        takes_value = action.option_strings and action.nargs != 0 and not action.required
        if takes_value:
            assert "default" in action.help, name  # said in words or as (default: X)
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, name


# ----------------------------------------------------------------------------- budget outcome

TINY_BUDGET = [
    "--set", "fed.rounds=4", "--set", "fed.clients_per_round=2", "--set", "data.num_clients=4",
    "--set", "train.local_epochs=1", "--set", "model.widths=[8,16]",
    "--set", "prune.start_round=2", "--set", "prune.max_prune_round=3",
    "--set", "prune.interval=1", "--set", "prune.max_fraction=0.4",
    "--set", "budget.guard=false", "--set", "data.val_fraction=0", "--set", "threads=1",
    "--no-progress", "--no-plots",
]


@pytest.mark.parametrize(("fraction", "status"), [(0.3, "met"), (0.1, "deadline")])
def test_run_ends_with_the_budget_outcome(
    fraction: float, status: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"

    rc = main(["run", "--out", str(out_dir), "--set", f"budget.params_fraction={fraction}",
               *TINY_BUDGET])

    out, err = capsys.readouterr()
    assert rc == 0
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    budget = summary["budget"]
    assert budget["status"] == status
    assert json.loads(out)["budget_status"] == status
    final, target = budget["final"]["params"], budget["targets"]["params"]
    assert target == int(fraction * summary["params_initial"])
    *_, last, cost = err.strip().splitlines()  # the outcome, then what it cost
    assert cost.startswith("against dense FedAvg: bytes ")
    if status == "met":
        assert final <= target and last == f"budget met: params {final:,} <= {target:,}"
    else:
        assert final > target
        assert last == f"budget NOT met (deadline): params {final:,} > {target:,}"


def test_budget_line_lists_every_target() -> None:
    from fedprune.cli import budget_line

    budget = {"status": "gave_up", "met": False,
              "targets": {"params": 5274, "flops": 900_000, "latency_ms": None},
              "final": {"params": 24144, "flops": 800_000}}

    assert budget_line(budget) == ("budget NOT met (gave_up): params 24,144 > 5,274, "
                                   "flops 800,000 <= 900,000")
    assert budget_line({**budget, "status": "met", "met": True,
                        "targets": {"latency_ms": 2.0}, "final": {"latency_ms": 1.5}}) == (
        "budget met: latency 1.500 ms <= 2.000 ms")


def test_an_automatic_run_ends_with_what_the_method_decided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    rc = main(["run", "--out", str(out_dir), "--set", "fed.rounds=6", "--set",
               "fed.clients_per_round=3", "--set", "data.num_clients=4", "--set",
               "train.local_epochs=1", "--set", "model.widths=[8,16]", "--set",
               "prune.max_accuracy_drop=1.0", "--set", "prune.round_to=4", "--set",
               "threads=1", "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 0
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    *_, last, cost = err.strip().splitlines()  # the decision, then what the run cost
    nested = summary["nested"]
    assert last.startswith(f"automatic pruning: cut at round {nested['cut_round']} to widths "
                           f"{list(nested['widths'].values())}, FLOPs -")
    flops = summary["client_flops_total"] / summary["client_flops_total_dense"]
    assert cost.endswith(f"client FLOPs {flops:.2f}x") and flops < 1
    assert (out_dir / "prune_path.png").is_file()
    # the earlier automatic method's line
    rc = main(["run", "--out", str(tmp_path / "paired"), "--set", "fed.rounds=6", "--set",
               "fed.clients_per_round=3", "--set", "data.num_clients=4", "--set",
               "train.local_epochs=1", "--set", "model.widths=[8,16]", "--set",
               "prune.max_accuracy_drop=1.0", "--set", "prune.method=auto-paired", "--set",
               "threads=1", "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 0
    summary = json.loads((tmp_path / "paired" / "summary.json").read_text(encoding="utf-8"))
    *_, last, _ = err.strip().splitlines()
    assert last.startswith(f"automatic pruning: {summary['auto']['accepted']} cuts kept")
    assert summary["auto"]["accepted"] >= 1 and "stopped: " in last
    assert (tmp_path / "paired" / "prune_path.png").is_file()
