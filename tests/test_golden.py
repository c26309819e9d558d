"""The reference runs of ``golden_runs.py`` give bit-identical results to the recorded ones.

Recordings of format 2 (written since the meter counts every byte and the clients' compute)
must come back exactly.  The earlier recordings (format 1) must too, except the traffic: the
meter (:mod:`fedprune.federated.meter`) counts everything a message carries, and they
counted the weights and the architecture only.  The difference is checked to be exactly the
texts and numbers they left out: per train message the experiment config and three numbers
(round, architecture version, partition), per reply its four metrics; per validation query
the experiment config and the query's kind, per answer one more number (the partition);
and per dense FedAvg client and round, the dense model's spec, the experiment config and
seven numbers.  The client-compute measurements are new to them.

Every scenario is compared where a recording of this CPU's vendor exists; every scenario
has one for some vendor (``golden_runs.py`` says which are recorded where).
"""

from __future__ import annotations

import json

import pytest
from golden_runs import GOLDEN_DIR, HERE, NAMES, run_scenario

from fedprune.federated.meter import NUMBER_BYTES, VALIDATE_KIND

NEW_ROUND_KEYS = {"client_flops_train", "client_flops_val", "client_flops", "messages",
                  "client_flops_peak"}
NEW_SUMMARY_KEYS = {"client_flops_total", "client_flops_total_dense", "client_flops_peak"}
BYTES_ROUND = {"bytes_down", "bytes_up", "bytes_cumulative"}
BYTES_SUMMARY = {"bytes_total", "bytes_total_dense"}
RECORDED = [n for n in NAMES if (GOLDEN_DIR / f"{n}.json").is_file()]


def _without(d: dict, keys: set[str]) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def _texts_not_counted_before(row: dict, wire: dict) -> tuple[int, int]:
    """(down, up) bytes of a round that the recordings did not count."""
    experiment = wire["experiment"]
    train, queries = row["messages"]["train"], row["messages"]["validate"]
    down = train * (experiment + 3 * NUMBER_BYTES) + queries * (experiment + len(VALIDATE_KIND))
    up = train * 4 * NUMBER_BYTES + queries * NUMBER_BYTES
    return down, up


def test_every_scenario_is_recorded_on_some_cpu():
    for name in NAMES:
        assert any((d / f"{name}.json").is_file() for d in (HERE / "golden").iterdir()), name
    assert {"boundary", "budget", "ratio", "auto-paired", "flower"} <= set(RECORDED)


@pytest.mark.parametrize("name", RECORDED)
def test_reference_run_is_bit_identical_to_its_recording(name, tmp_path):
    expected = json.loads((GOLDEN_DIR / f"{name}.json").read_text(encoding="utf-8"))

    got = json.loads(json.dumps(run_scenario(name, tmp_path / name)))  # same JSON types
    if expected.get("format") == 2:
        del got["wire"]
        assert got == expected
        s = got["summary"]
        assert s["client_flops_total"] == sum(r["client_flops"] for r in got["rounds"])
        return

    assert (_without(got["summary"], NEW_SUMMARY_KEYS | BYTES_SUMMARY)
            == _without(expected["summary"], BYTES_SUMMARY))
    assert ([_without(r, NEW_ROUND_KEYS | BYTES_ROUND) for r in got["rounds"]]
            == [_without(r, BYTES_ROUND) for r in expected["rounds"]])
    assert got["checkpoint_round"] == expected["checkpoint_round"]
    assert got["weights_sha256"] == expected["weights_sha256"]
    # the traffic: the recorded bytes plus exactly what they did not count
    wire, total = got["wire"], 0
    for new, old in zip(got["rounds"], expected["rounds"], strict=True):
        down, up = _texts_not_counted_before(new, wire)
        assert new["bytes_down"] == old["bytes_down"] + down
        assert new["bytes_up"] == old["bytes_up"] + up
        total += down + up
        assert new["bytes_cumulative"] == old["bytes_cumulative"] + total
    s, old_s = got["summary"], expected["summary"]
    assert s["bytes_total"] == old_s["bytes_total"] + total
    per_client = wire["dense_spec"] + wire["experiment"] + 7 * NUMBER_BYTES
    assert s["bytes_total_dense"] == (old_s["bytes_total_dense"] + len(got["rounds"])
                                      * wire["clients_per_round"] * per_client)
    # the client compute is the rounds' sum
    assert s["client_flops_total"] == sum(r["client_flops"] for r in got["rounds"])
    assert all(r["client_flops"] == r["client_flops_train"] + r["client_flops_val"]
               for r in got["rounds"])


@pytest.mark.parametrize("resumed, base", [("resumed", "auto-paired"),
                                           ("resumed-default", "default")])
def test_the_resumed_run_ends_as_the_uninterrupted_one(resumed, base):
    for d in (HERE / "golden").iterdir():
        if (d / f"{resumed}.json").is_file():
            a = json.loads((d / f"{resumed}.json").read_text(encoding="utf-8"))
            b = json.loads((d / f"{base}.json").read_text(encoding="utf-8"))
            assert a["weights_sha256"] == b["weights_sha256"]
            assert a["summary"] == b["summary"]
