"""Tests for fedprune.config: defaults, TOML + --set layering, coercion and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedprune import config
from fedprune.config import (
    ConfigError,
    ExperimentConfig,
    default_window,
    from_dict,
    load_config,
    parse_overrides,
)


def _write(tmp_path: Path, text: str) -> Path:
    (path := tmp_path / "exp.toml").write_text(text, encoding="utf-8")
    return path


def test_defaults_build_and_match_dataclass_defaults() -> None:
    cfg = load_config()

    assert cfg == ExperimentConfig() and cfg.model.widths is None
    assert (cfg.seed, cfg.data.name, cfg.model.name) == (0, "digits", "cnn_femnist")
    assert (cfg.fed.rounds, cfg.fed.clients_per_round, cfg.data.num_clients) == (100, 10, 20)
    # the automatic method: judged from round 20 every 2 rounds up to round 40, widths on
    # multiples of 16; the earlier one: candidates from round 30, 2 rounds each, to round 60
    assert (cfg.prune.method, cfg.prune.start_round, cfg.prune.max_prune_round) == (
        "auto", 20, 40)
    assert cfg.prune.round_to == 16
    paired = load_config(None, ["prune.method=auto-paired"]).prune
    assert (paired.start_round, paired.max_prune_round, paired.interval) == (30, 60, 2)
    assert (cfg.prune.max_accuracy_drop, cfg.data.val_fraction) == (0.01, 0.1)
    assert (cfg.prune.interval, cfg.threads, cfg.data.partition) == (2, 1, "dirichlet")
    boundary = load_config(None, ["prune.method=boundary"]).prune
    assert (boundary.k, boundary.start_round, boundary.max_prune_round) == (0.75, 30, 40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def test_toml_file_overrides_defaults_and_set_wins_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed = 7\n[prune]\nk = 2.0\nmode = 'both'\n[fed]\nrounds = 12\n")

    from_file = load_config(path)
    layered = load_config(path, ["prune.k=0.5", "fed.rounds=3"])

    assert (from_file.seed, from_file.prune.k, from_file.fed.rounds) == (7, 2.0, 12)
    # 1: the automatic window of a 12-round run tries every round (rounds 4 to 9)
    assert (from_file.prune.mode, from_file.prune.interval) == ("both", 1)
    assert (layered.prune.k, layered.fed.rounds) == (0.5, 3)  # --set wins
    assert (layered.seed, layered.prune.mode) == (7, "both")  # the rest of the file stays
    assert load_config(path, ["prune.k=-1", "prune.k=2"]).prune.k == 2.0  # last --set wins


def test_toml_ints_coerced_to_floats_and_lists(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "[train]\nlr = 1\n[model]\nwidths = [3, 5]\n"))

    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.widths == [3, 5]


@pytest.mark.parametrize(
    ("pair", "get", "expected"),
    [
        ("seed=42", lambda c: c.seed, 42),
        ("train.lr=0.01", lambda c: c.train.lr, 0.01),
        ("prune.k=2", lambda c: c.prune.k, 2.0),  # an integer string for a float field
        ("prune.enabled=false", lambda c: c.prune.enabled, False),
        ("prune.reinit=True", lambda c: c.prune.reinit, True),
        ("prune.enabled=0", lambda c: c.prune.enabled, False),
        ("model.widths=[4,8]", lambda c: c.model.widths, [4, 8]),
        ("model.widths=4, 8", lambda c: c.model.widths, [4, 8]),
        ("model.widths=none", lambda c: c.model.widths, None),
        ("data.partition=iid", lambda c: c.data.partition, "iid"),
    ],
)
def test_set_values_are_coerced_to_field_types(pair: str, get, expected) -> None:
    value = get(load_config(None, [pair]))

    assert value == expected
    assert type(value) is type(expected)
    if isinstance(value, list):
        assert all(type(v) is int for v in value)


def test_unknown_top_level_key_names_key_and_lists_known() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["bogus=1"])

    msg = str(err.value)
    assert "'bogus'" in msg and "top level" in msg
    for known in ("seed", "threads", "data", "model", "train", "fed", "prune"):
        assert known in msg


def test_unknown_key_in_section_names_key_and_lists_known(tmp_path: Path) -> None:
    path = _write(tmp_path, "[prune]\nkk = 1.0\n")

    with pytest.raises(ConfigError) as err:
        load_config(path)

    msg = str(err.value)
    assert "prune.kk" in msg and "[prune]" in msg
    assert "prune.k," in msg and "prune.max_fraction" in msg and "prune.interval" in msg


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        (["prune.k=-0.1"], "prune.k"),
        (["prune.max_fraction=0"], "prune.max_fraction"),
        (["prune.max_fraction=1.5"], "prune.max_fraction"),
        (["fed.rounds=0"], "fed.rounds"),
        (["fed.clients_per_round=21"], "fed.clients_per_round"),  # 20 clients by default
        (["data.num_clients=3", "fed.clients_per_round=4"], "fed.clients_per_round"),
        (["prune.start_round=10", "prune.max_prune_round=9"], "prune.max_prune_round"),
        (["prune.interval=-1"], "prune.interval"),
        (["prune.start_round=-1"], "prune.start_round"),
        (["data.num_clients=-1"], "data.num_clients"),
        (["data.test_fraction=1"], "data.test_fraction"),
        (["data.image_size=7"], "data.image_size"),
        (["seed=-1"], "seed"),
        (["model.widths=[4,0]"], "model.widths"),
    ],
)
def test_out_of_range_values_raise_naming_the_key(pairs: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match="out of range") as err:
        load_config(None, pairs)

    assert str(err.value).startswith(f"{key} = ")


def test_boundary_values_are_accepted() -> None:
    cfg = load_config(None, ["prune.max_fraction=1", "prune.k=0", "fed.clients_per_round=20",
                             "prune.start_round=5", "prune.max_prune_round=5",
                             "data.image_size=8"])

    assert (cfg.prune.max_fraction, cfg.prune.k, cfg.fed.clients_per_round) == (1.0, 0.0, 20)
    assert cfg.prune.max_prune_round == cfg.prune.start_round == 5


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        (["fed.rounds=abc"], "fed.rounds must be an integer"),
        (["fed.rounds=1.5"], "fed.rounds must be an integer"),
        (["prune.k=abc"], "prune.k must be a number"),
        (["prune.k=nan"], "prune.k must be a finite number"),
        (["prune.enabled=maybe"], "prune.enabled must be true or false"),
        (["prune.mode=high"], "prune.mode = 'high' is not allowed"),
        (["model.widths=[4,"], "model.widths: cannot read"),
        (["prune=1"], "prune is a section"),
        (["noequals"], "expected key=value"),
        (["prune..k=1"], "bad key"),
        (["seed=1", "seed.x=2"], "'seed' is a value, not a section"),
    ],
)
def test_wrong_types_and_malformed_sets_raise(pairs: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, pairs)

    assert fragment in str(err.value)


def test_toml_wrong_types_raise(tmp_path: Path) -> None:
    for text, fragment in [("[fed]\nrounds = 1.5\n", "fed.rounds must be an integer"),
                           ("[fed]\nrounds = true\n", "fed.rounds must be an integer"),
                           ("prune = 1\n", "prune is a section"),
                           ("[model]\nname = 3\n", "model.name must be a string")]:
        with pytest.raises(ConfigError, match=fragment):
            load_config(_write(tmp_path, text))


def test_parse_overrides_nests_and_keeps_strings() -> None:
    out = parse_overrides(["prune.k=1.5", "seed=3", "prune.mode=both", "data.name=a=b"])

    assert out == {"prune": {"k": "1.5", "mode": "both"}, "seed": "3", "data": {"name": "a=b"}}


@pytest.mark.parametrize(("text", "fragment"), [(None, "does not exist"),
                                               ("[prune\nk = = 1\n", "not valid TOML")])
def test_missing_or_invalid_toml_file_names_path(tmp_path: Path, text, fragment) -> None:
    path = tmp_path / "exp.toml" if text is None else _write(tmp_path, text)

    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(path)

    assert str(path) in str(err.value)


def test_non_utf8_toml_file_gives_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00seed = 1\n")

    with pytest.raises(ConfigError) as err:
        load_config(path)

    assert str(path) in str(err.value)


def test_to_dict_round_trips_through_from_dict() -> None:
    cfg = load_config(None, ["seed=5", "model.widths=[4,8]", "prune.enabled=false",
                             "data.partition=iid", "train.optimizer=sgd", "train.momentum=0.9"])
    d = cfg.to_dict()

    assert config.from_dict(d) == cfg
    assert d["model"]["widths"] == [4, 8] and d["prune"]["enabled"] is False
    assert config.from_dict(ExperimentConfig().to_dict()) == ExperimentConfig()
    with pytest.raises(ConfigError, match="table"):
        config.from_dict([("seed", 1)])  # type: ignore[arg-type]



B = ["prune.method=boundary"]


@pytest.mark.parametrize(("sets", "window"), [
    ([], (20, 40, 2)),  # the default 100 rounds, automatic method: judgements 20 % to 40 %
    (["fed.rounds=20"], (4, 8, 1)),
    (["prune.method=auto-paired"], (30, 60, 2)),  # candidates up to 60 %
    (["prune.method=auto-paired", "fed.rounds=20"], (6, 12, 1)),
    (B, (30, 40, 2)),  # the boundary rule: six tries
    (B + ["fed.rounds=3"], (1, 6, 1)),  # a short run still prunes from round 1
    (B + ["fed.rounds=20"], (6, 11, 1)),
    (B + ["fed.rounds=200"], (60, 70, 2)),
    (["budget.params_fraction=0.1", "budget.guard=false"], (30, 80, 2)),  # budget: to 80 %
    (B + ["prune.start_round=10"], (10, 40, 2)),  # explicit keys win
    (B + ["prune.max_prune_round=10"], (10, 10, 2)),  # the automatic start moves to fit
    (B + ["prune.interval=3"], (30, 40, 3)),
])
def test_the_pruning_window_follows_the_rounds(sets: list[str],
                                                window: tuple[int, int, int]) -> None:
    p = load_config(None, sets).prune

    assert (p.start_round, p.max_prune_round, p.interval) == window
    assert default_window(100) == (30, 40, 2)


def test_a_start_after_the_last_round_is_refused_unless_pruning_is_off() -> None:
    with pytest.raises(ConfigError, match=r"prune.start_round = 20 .*<= fed.rounds \(10\)"):
        load_config(None, ["fed.rounds=10", "prune.start_round=20"])
    assert not load_config(None, ["fed.rounds=10", "prune.start_round=20",
                                  "prune.enabled=false"]).prune.enabled


def test_the_resolved_config_round_trips_unchanged() -> None:
    cfg = load_config(None, ["fed.rounds=7", "data.name=femnist", "data.path=/x"])

    assert from_dict(cfg.to_dict()) == cfg
    assert (cfg.data.partition, cfg.data.num_clients) == ("natural", 0)  # every writer


@pytest.mark.parametrize(("sets", "split"), [
    ([], ("dirichlet", 20)),
    (["data.name=femnist"], ("natural", 0)),
    (["data.name=celeba"], ("natural", 0)),
    (["data.name=femnist", "data.partition=dirichlet"], ("dirichlet", 20)),
    (["data.name=femnist", "data.num_clients=50"], ("natural", 50)),
    (["data.name=fashion-mnist", "data.num_clients=100"], ("dirichlet", 100)),
])
def test_files_with_client_ids_default_to_their_natural_clients(
        sets: list[str], split: tuple[str, int]) -> None:
    d = load_config(None, sets).data

    assert (d.partition, d.num_clients) == split
