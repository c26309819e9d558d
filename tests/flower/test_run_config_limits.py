"""A Flower run config is checked as ``fedprune run`` checks its settings: hostile values
(integers of thousands of digits, lists nested 5000 deep, 10 MB keys and strings, strings for
numbers) stop with a one-line :class:`ConfigError` that quotes a short prefix of the value.

:mod:`fedprune.flower.run_config` needs no ``flwr``: these tests run without it.
"""

from __future__ import annotations

import pytest

from fedprune.config import ConfigError
from fedprune.flower.run_config import declared_run_config, parse_run_config

BIG = 10_000_000


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _refused(over: dict, limit: int = 300) -> str:
    with pytest.raises(ConfigError) as err:
        parse_run_config({**declared_run_config(), **over})
    msg = str(err.value)
    assert "\n" not in msg and len(msg) <= limit, msg[:400]
    return msg


def test_an_integer_of_4000_digits_is_a_one_line_error():
    msg = _refused({"fed.rounds": int("9" * 4000)})
    assert msg.startswith("fed.rounds = 9999") and "(4000 digits)" in msg
    assert _refused({"min-nodes": 10**5000}).startswith("min-nodes = an integer of about")
    assert "must be a finite number" in _refused({"round-timeout": 10**400})


@pytest.mark.parametrize("over", [
    {"model.widths": _nested(5000)},
    {"prune.start-round": _nested(5000), "prune.start_round": _nested(5000)},  # both compared
    {"model.widths": "[" * 5000 + "]" * 5000},
    {"model.widths": "[" * 2000 + "]" * 2000},
])
def test_values_nested_5000_deep_are_a_one_line_error(over):
    msg = _refused(over)  # not RecursionError
    assert "deep" in msg or "too long" in msg


@pytest.mark.parametrize(("over", "start"), [
    ({"x" * BIG: 1}, "unknown run-config key 'xxxx"),
    ({"model.name": "n" * BIG}, "model.name is too long"),
    ({"data.path": "p" * BIG}, "data.path is too long"),
    ({"out-dir": "o" * BIG}, "out-dir is too long"),
    ({"config-file": "c" * BIG}, "config-file is too long"),
])
def test_a_10_mb_key_or_value_is_quoted_by_a_short_prefix(over, start):
    # an unknown key's message lists the known keys, as before: the key itself is cut
    msg = _refused(over, limit=4000)
    assert msg.startswith(start) and f"... ({BIG} characters)" in msg
    assert len(msg.split(";")[0]) < 200


@pytest.mark.parametrize(("over", "start"), [
    ({"fed.rounds": 2**63 - 1}, "fed.rounds = 9223372036854775807 is out of range"),
    ({"train.batch-size": 1_000_001}, "train.batch-size = 1000001 is out of range"),
    ({"min-nodes": 10_000_001}, "min-nodes = 10000001 is out of range"),
    ({"seed": 1.0}, "seed must be an integer, got 1.0"),
    ({"train.lr": "0.1"}, "train.lr must be a number, got '0.1'"),
    ({"prune.enabled": "false"}, "prune.enabled must be true or false"),
])
def test_bounds_and_types_of_run_config_values(over, start):
    assert _refused(over).startswith(start)


def test_honest_run_config_values_still_read():
    cfg, settings = parse_run_config({**declared_run_config(), "model.widths": "4,8",
                                      "fed.rounds": 1_000_000, "train.lr": 1,
                                      "round-timeout": 5, "min-nodes": 3})
    assert (cfg.model.widths, cfg.fed.rounds, cfg.train.lr) == ([4, 8], 1_000_000, 1.0)
    assert (settings.round_timeout, settings.min_nodes) == (5.0, 3)
