"""``fedprune data info|prepare|list`` and ``fedprune run --set data.name=...`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedprune.cli import main
from fedprune.config import from_dict
from fedprune.data import load_federated
from fedprune.data.synthetic import (
    femnist_clients,
    split_clients,
    write_idx,
    write_leaf_femnist,
    write_tff_sqlite,
)

SHORT_RUN = ["--set", "fed.rounds=2", "--set", "fed.eval_every=2", "--set",
             "train.local_epochs=1", "--set", "threads=1", "--no-progress", "--no-plots"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPRUNE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def leaf(tmp_path: Path) -> Path:
    writers = femnist_clients(12, np.random.default_rng(0), mean_size=25)
    train, test = split_clients(writers, 0.2, np.random.default_rng(1))
    return write_leaf_femnist(tmp_path / "leaf", train, test, writers_per_file=5)


def test_data_list_names_every_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0

    out = capsys.readouterr().out
    for name in ("digits", "femnist", "celeba", "fashion-mnist", "mnist", "emnist"):
        assert f"\n{name} " in "\n" + out
    assert "/usr/share/datasets/fashion-mnist" in out and "flwrlabs/femnist" in out


def test_data_info_on_a_path_guesses_the_dataset(leaf: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "info", str(leaf), "--set", "data.partition=natural",
               "--set", "data.num_clients=12", "--set", "data.min_client_size=1"])

    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("dataset     femnist")
    assert "(leaf)" in out and "classes     62" in out
    assert "clients     12 writers in the files" in out
    assert "partition   data.partition=natural, 12 clients" in out
    bars = [line for line in out.splitlines() if " | " in line]
    assert len(bars) >= 4 and sum(int(b.split()[-1]) for b in bars) == 24  # 2 histograms


def test_data_prepare_then_reuse(leaf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "prepare", str(leaf)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["data", "prepare", "femnist", "--set", f"data.path={leaf}"]) == 0
    second = json.loads(capsys.readouterr().out)

    assert first["state"].startswith("prepared in") and second["state"].startswith("reused")
    assert first["cache"] == second["cache"] and Path(first["cache"]).is_dir()


def test_data_info_digits_and_bad_targets(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    assert main(["data", "info", "digits"]) == 0
    assert "partition   data.partition=dirichlet, 20 clients" in capsys.readouterr().out

    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert "neither a dataset name" in capsys.readouterr().err
    assert main(["data", "info", "femnist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedprune: error: ") and "needs data.path" in err


def test_bad_file_exits_2_with_the_file_named(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "all_data_0.json").write_text('{"users": ["a"], "num_samples": [1], "user_', "utf-8")

    rc = main(["data", "info", str(bad)])

    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"fedprune: error: {bad / 'all_data_0.json'}: is not valid JSON")


def test_run_femnist_natural_from_leaf(leaf: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"

    rc = main(["run", "--out", str(out), "--set", "data.name=femnist",
               "--set", f"data.path={leaf}", "--set", "data.partition=natural",
               "--set", "data.num_clients=10", "--set", "data.min_client_size=5",
               "--set", "fed.clients_per_round=3", *SHORT_RUN])

    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["accuracy"] <= 1 and summary["config"]["data"]["partition"] == "natural"


def test_run_femnist_from_tff_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writers = femnist_clients(6, np.random.default_rng(4), mean_size=15)
    train, test = split_clients(writers, 0.2, np.random.default_rng(5))
    db = write_tff_sqlite(tmp_path / "emnist_all.sqlite", {"all_train": train, "all_test": test})

    rc = main(["run", "--out", str(tmp_path / "run"), "--set", "data.name=femnist",
               "--set", f"data.path={db}", "--set", "data.num_clients=3",
               "--set", "data.min_client_size=3", "--set", "fed.clients_per_round=2",
               *SHORT_RUN])

    assert rc == 0, capsys.readouterr().err


def test_run_fashion_mnist_dirichlet_on_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    d = write_idx(tmp_path / "fmnist", (x, np.arange(300) % 10), (x[:50], np.arange(50) % 10))

    rc = main(["run", "--out", str(tmp_path / "run"), "--set", "data.name=fashion-mnist",
               "--set", f"data.path={d}", "--set", "data.num_clients=5",
               "--set", "fed.clients_per_round=2", *SHORT_RUN])

    assert rc == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["partition"] == "dirichlet"


@pytest.fixture
def three_writers(tmp_path: Path) -> Path:
    writers = femnist_clients(3, np.random.default_rng(2), mean_size=6)
    return write_leaf_femnist(tmp_path / "leaf3", writers)


def test_files_with_client_ids_are_split_by_their_own_clients(three_writers: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    rc = main(["data", "info", str(three_writers), "--set", "data.min_client_size=1"])

    out = capsys.readouterr().out
    assert rc == 0, out
    assert "clients     3 writers in the files" in out
    assert "partition   data.partition=natural, 3 clients" in out


def test_data_info_describes_the_files_when_the_partition_does_not_fit(
        three_writers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "info", str(three_writers), "--set", "data.num_clients=20",
               "--set", "data.min_client_size=1"])

    out = capsys.readouterr().out
    assert rc == 0
    assert "clients     3 writers in the files" in out and "classes     62" in out
    assert "data.num_clients=20: cannot be drawn from these files" in out
    assert "data.num_clients = 20 but only 3 writers hold at least" in out


def test_a_natural_run_uses_every_writer_by_default(leaf: Path, tmp_path: Path) -> None:
    rc = main(["run", "--out", str(tmp_path / "run"), "--set", "data.name=femnist",
               "--set", f"data.path={leaf}", "--set", "data.min_client_size=1",
               "--set", "fed.clients_per_round=3", *SHORT_RUN])

    assert rc == 0
    cfg = from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert cfg.data.partition == "natural" and cfg.data.num_clients == 0
    assert len(load_federated(cfg.data, cfg.seed).clients) == 12  # every writer is a client
