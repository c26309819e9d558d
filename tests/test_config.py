"""Tests for fedprune.config: defaults, TOML + --set layering, coercion and validation."""

from __future__ import annotations

import dataclasses
import typing
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


# --- hostile values: a one-line ConfigError quoting a short prefix, before anything runs -------

BIG = 10_000_000  # a 10 MB key or value
NINES = "9" * 4000  # an integer of 4000 digits: int() reads it, float() and range() do not


def _one_short_line(err: pytest.ExceptionInfo[ConfigError], limit: int = 300) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) <= limit, msg[:400]
    return msg


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("source", "text"), [
    ("set", f"fed.rounds={NINES}"), ("toml", f"[fed]\nrounds = {NINES}\n"),
    ("set", f"budget.params={NINES}"), ("toml", f"[train]\nlr = {NINES}\n"),
])
def test_an_integer_of_4000_digits_is_a_one_line_error(tmp_path: Path, source: str,
                                                       text: str) -> None:
    with pytest.raises(ConfigError) as err:
        if source == "set":
            load_config(None, [text])
        else:
            load_config(_write(tmp_path, text))

    assert "(4000 digits)" in _one_short_line(err)


def test_an_integer_past_pythons_digit_limit_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds an integer of more than") as err:
        load_config(_write(tmp_path, f"[fed]\nrounds = {'9' * 5000}\n"))
    _one_short_line(err)
    with pytest.raises(ConfigError, match=r"^budget.flops = an integer of about 5000 digits"):
        from_dict({"budget": {"flops": 10**5000}})


@pytest.mark.parametrize("source", ["toml", "toml-tables", "set", "set-2000", "from_dict"])
def test_arrays_nested_5000_deep_are_a_one_line_error(tmp_path: Path, source: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(ConfigError) as err:  # not RecursionError
        if source == "toml":
            load_config(_write(tmp_path, f"[model]\nwidths = {deep}\n"))
        elif source == "toml-tables":
            load_config(_write(tmp_path, "[" + ".".join(["a"] * 5000) + "]\nx = 1\n"),
                        ["a.a=1"])
        elif source == "set":
            load_config(None, [f"model.widths={deep}"])
        elif source == "set-2000":  # short enough to be read: refused for its depth
            load_config(None, ["model.widths=" + "[" * 2000 + "]" * 2000])
        else:
            from_dict({"model": {"widths": _nested(5000)}})

    msg = _one_short_line(err)
    assert "deep" in msg or "too long" in msg


@pytest.mark.parametrize(("pairs", "text", "start"), [
    (["x" * BIG + "=1"], None, "unknown key 'xxxx"),
    (["model.name=" + "n" * BIG], None, "model.name is too long"),
    (["prune.mode=" + "m" * BIG], None, "prune.mode is too long"),
    ([], "[fed]\n" + "k" * BIG + " = 1\n", "unknown key 'fed.kkk"),
    ([], "[model]\nname = '" + "n" * BIG + "'\n", "model.name is too long"),
])
def test_a_10_mb_key_or_value_is_quoted_by_a_short_prefix(tmp_path: Path, pairs: list[str],
                                                          text: str | None,
                                                          start: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None if text is None else _write(tmp_path, text), pairs)

    msg = _one_short_line(err, limit=400)
    assert msg.startswith(start) and "... (1000000" in msg  # BIG characters (+ "fed.")


@pytest.mark.parametrize(("key", "most"), [
    ("fed.rounds", 1_000_000), ("fed.eval_every", 1_000_000), ("data.num_clients", 10_000_000),
    ("train.local_epochs", 10_000), ("train.batch_size", 1_000_000),
    ("prune.start_round", 1_000_000), ("prune.patience", 1_000_000),
    ("prune.val_clients", 10_000_000), ("threads", 4096),
    ("budget.params", 10**18), ("budget.guard_clients", 10_000_000),
])
def test_rounds_and_sizes_have_generous_upper_bounds(key: str, most: int) -> None:
    more = ["prune.enabled=false"] if key == "prune.start_round" else []

    load_config(None, [*more, f"{key}={most}"])  # the bound itself is allowed
    for bad in (most + 1, 2**63 - 1):
        with pytest.raises(ConfigError, match=rf"^{key} = {bad} is out of range"):
            load_config(None, [*more, f"{key}={bad}"])


def _int_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out += _int_keys(tp, f"{prefix}{name}.")
        elif tp is int:
            out.append(prefix + name)
    return out


def test_every_integer_setting_refuses_huge_values() -> None:
    keys = _int_keys()
    assert {"seed", "fed.rounds", "data.num_clients", "budget.flops"} <= set(keys)
    for key in keys:
        section, _, name = key.rpartition(".")
        for huge in (2**63, int(NINES), 10**5000):  # seed may be any 64-bit integer
            values = {section: {name: huge}} if section else {name: huge}
            with pytest.raises(ConfigError, match=rf"^{key} = .* is out of range") as err:
                from_dict(values)
            _one_short_line(err)


@pytest.mark.parametrize(("text", "fragment"), [
    ("seed = 1.0\n", "seed must be an integer, got 1.0"),
    ("[fed]\nrounds = 3.0\n", "fed.rounds must be an integer, got 3.0"),
    ("[train]\nlr = \"0.1\"\n", "train.lr must be a number, got '0.1'"),
    ("[fed]\nrounds = \"3\"\n", "fed.rounds must be an integer, got '3'"),
    ("[prune]\nenabled = \"false\"\n", "prune.enabled must be true or false, got 'false'"),
    ("[model]\nwidths = [\"4\", \"8\"]\n", "model.widths[0] must be an integer, got '4'"),
])
def test_typed_values_must_have_the_fields_type(tmp_path: Path, text: str,
                                                fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))

    assert fragment in _one_short_line(err)


def test_command_line_text_is_still_read_as_the_fields_type(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "seed = 2\n[train]\nlr = 1\n"),
                      ["train.lr=0.1", "fed.rounds=3", "prune.enabled=false"])

    assert (cfg.train.lr, cfg.fed.rounds, cfg.prune.enabled, cfg.seed) == (0.1, 3, False, 2)
    # parse_overrides' strings (fedprune reproduce --set merges them) read the same
    assert from_dict(parse_overrides(["train.lr=0.1", "seed=4"])) == load_config(
        None, ["train.lr=0.1", "seed=4"])
    with pytest.raises(ConfigError, match=r"^seed must be an integer, got True$"):
        from_dict({"seed": True})
    with pytest.raises(ConfigError, match=r"^seed must be an integer, got '1'$"):
        from_dict({"seed": "1"})  # a plain string is not command-line text


@pytest.mark.parametrize("key", ["data.path", "data.image_dir", "data.cache_dir",
                                 "model.name", "budget.latency_table"])
def test_string_settings_are_at_most_4096_characters(key: str) -> None:
    section, name = key.split(".")
    ok = from_dict({section: {name: "/" + "p" * 4095}})  # Linux's PATH_MAX
    assert len(getattr(getattr(ok, section), name)) == 4096
    for size in (4097, BIG):
        with pytest.raises(ConfigError, match=rf"^{key} is too long: at most 4096") as err:
            load_config(None, [f"{key}=/" + "p" * (size - 1)])
        assert f"... ({size} characters)" in _one_short_line(err)


@pytest.mark.parametrize("pair", [
    f"fed.rounds={NINES}", "model.widths=" + "[" * 5000 + "]" * 5000,
    "data.path=" + "p" * BIG, "x" * BIG + "=1", f"fed.rounds={2**63 - 1}", "seed=1.0",
])
def test_hostile_values_stop_the_cli_with_one_short_line(pair: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    from fedprune.cli import main

    assert main(["config", "--set", pair]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fedprune: error: ")
    assert err.count("\n") == 1 and len(err) < 400 and "Traceback" not in err


def test_a_10_mb_data_path_never_reaches_config_json(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from fedprune.cli import main

    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-progress", "--set", "data.name=femnist",
                 "--set", "fed.rounds=1", "--set", "data.path=/" + "p" * BIG]) == 2
    assert not out.exists()  # refused before the run directory (and its config.json)
    err = capsys.readouterr().err
    assert err.startswith("fedprune: error: data.path is too long") and len(err) < 400
