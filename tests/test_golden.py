"""The reference runs of ``golden_runs.py`` give bit-identical results to the recorded ones."""

from __future__ import annotations

import json

import pytest
from golden_runs import GOLDEN_DIR, NAMES, run_scenario


@pytest.mark.parametrize("name", NAMES)
def test_reference_run_is_bit_identical_to_its_recording(name, tmp_path):
    expected = json.loads((GOLDEN_DIR / f"{name}.json").read_text(encoding="utf-8"))

    got = json.loads(json.dumps(run_scenario(name, tmp_path / name)))  # same JSON types

    assert got["summary"] == expected["summary"]
    assert got["rounds"] == expected["rounds"]
    assert got["checkpoint_round"] == expected["checkpoint_round"]
    assert got["weights_sha256"] == expected["weights_sha256"]


def test_the_resumed_run_ends_as_the_uninterrupted_one():
    resumed = json.loads((GOLDEN_DIR / "resumed.json").read_text(encoding="utf-8"))
    default = json.loads((GOLDEN_DIR / "default.json").read_text(encoding="utf-8"))

    assert resumed["weights_sha256"] == default["weights_sha256"]
    assert resumed["summary"] == default["summary"]
