"""benchmarks/attacks.py: each attack sends what it says (no training: replies made here)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from fedprune.federated.transport import TrainReply
from fedprune.pruners.base import pool_validation

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "attacks.py"


@pytest.fixture(scope="module")
def attacks():
    spec = importlib.util.spec_from_file_location("attacks_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SENT = {"w": torch.zeros(6), "n": torch.tensor(0)}


def _replies(seed=0, m=10):
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(6, generator=gen)
    return [TrainReply(c, ({"w": common + 0.5 * torch.randn(6, generator=gen),
                            "n": torch.tensor(1)},), 50 + c) for c in range(m)]


def _upd(r):
    return r.states[0]["w"].to(torch.float64)


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_a_flip_is_minus_the_rogues_own_update_at_a_multiple_of_the_honest_median(attacks):
    replies = _replies()
    honest = sorted(float(_upd(r).norm()) for r in replies if r.client != 3)
    for attack, factor in (("flip@2.99", 2.99), ("flip@1", 1.0)):
        out = attacks.attack_replies(attack, (3,), replies, lambda i, t: SENT, 999)
        u = _upd(out[3])
        assert float(u.norm()) == pytest.approx(factor * honest[4], rel=1e-5)
        assert _cos(u, _upd(replies[3])) == pytest.approx(-1.0, abs=1e-6)
        assert all(out[i] is replies[i] for i in range(10) if i != 3)
        assert torch.equal(out[3].states[0]["n"], SENT["n"]) and out[3].n == replies[3].n
    out = attacks.attack_replies("flip@2.99+n", (3,), replies, lambda i, t: SENT, 999)
    assert out[3].n == 999


def test_orth_points_past_the_median_and_mean_against_the_honest_mean(attacks):
    replies = _replies(1)
    honest = [_upd(r) for r in replies if r.client not in (3, 5, 7)]
    median = torch.stack(honest).median(dim=0).values
    out = attacks.attack_replies("orth@2.99", (3, 5, 7), replies, lambda i, t: SENT, 999)
    assert all(_cos(_upd(out[c]), median) == pytest.approx(0.01, abs=1e-3) for c in (3, 5, 7))
    mean = sum(honest) / len(honest)
    norms = sorted(float(u.norm()) for u in honest)
    for factor in (2.99, 1.99):
        out = attacks.attack_replies(f"mean@-{factor}", (3, 5, 7), replies, lambda i, t: SENT,
                                     999)
        for c in (3, 5, 7):
            assert _cos(_upd(out[c]), mean) == pytest.approx(-1.0, abs=1e-6)
            assert float(_upd(out[c]).norm()) == pytest.approx(factor * norms[3], rel=1e-5)


def test_lying_validation_answers_stay_within_what_the_server_checks(attacks):
    answers = [(c, 0.8, 0.5, 10) for c in range(4)]
    v = pool_validation(answers, [[(0.7, 0.6), (0.6, 0.7)]] * 4)
    cut = attacks.lie("val-cut", (2,), v)
    assert cut.clients[2] == (2, 0.0, 10) and cut.clients[:2] == v.clients[:2]
    assert all(sub.clients[2] == (2, 1.0, 10) for sub in cut.variants)
    keep = attacks.lie("val-keep", (2,), v)
    assert keep.clients[2] == (2, 1.0, 10)
    assert all(sub.clients[2] == (2, 0.0, 10) for sub in keep.variants)
    assert all(math.isfinite(lo) and lo >= 0 for lo in cut.losses + keep.losses)
    assert attacks.lie("none", (2,), v) is v


def test_drop_leaves_the_rogues_replies_out_and_the_others_as_they_were(attacks):
    replies = _replies(2)
    out = attacks.attack_replies("drop", (3, 5), replies, lambda i, t: SENT, 999)
    assert [r.client for r in out] == [c for c in range(10) if c not in (3, 5)]
    assert all(r is replies[r.client] for r in out)


def test_seeds_name_one_a_range_or_a_list(attacks):
    assert attacks._seeds("3") == [3]
    assert attacks._seeds("0-4") == [0, 1, 2, 3, 4]
    assert attacks._seeds("0,2-3,7") == [0, 2, 3, 7]
    with pytest.raises(ValueError):
        attacks._seeds("x")


def test_centered_clipping_gives_a_far_update_no_more_pull_for_going_further(attacks):
    gen = torch.Generator().manual_seed(3)
    sent = {"w": torch.zeros(6, dtype=torch.float64), "n": torch.tensor(0)}
    honest = [{"w": torch.ones(6, dtype=torch.float64) + 0.3 * torch.randn(6, generator=gen,
                                                                           dtype=torch.float64),
               "n": torch.tensor(1)} for _ in range(5)]
    far = {"w": torch.full((6,), 40.0, dtype=torch.float64), "n": torch.tensor(1)}
    further = {"w": torch.full((6,), 4000.0, dtype=torch.float64), "n": torch.tensor(1)}
    rule = attacks.centered_clipping(1.0)
    a = rule([(s, 10) for s in [*honest, far]], sent).state["w"]
    b = attacks.centered_clipping(1.0)([(s, 10) for s in [*honest, further]], sent).state["w"]
    assert float((a - b).norm()) < 1e-3 * float(a.norm())  # its direction barely moves
    mean = sum(s["w"] for s in honest) / 5
    assert float((a - mean).norm()) < 0.5 * float((far["w"] - mean).norm()) / 6
    # the next round starts from this round's aggregate update
    again = rule([(s, 10) for s in honest], sent).state["w"]
    assert not torch.equal(again, attacks.centered_clipping(1.0)(
        [(s, 10) for s in honest], sent).state["w"])
