"""The boundary rule and the pruning schedule, with numbers worked out by hand."""

import numpy as np
import pytest

from fedprune.pruners.schedule import Schedule, ScheduleState, advance, is_active
from fedprune.pruning import BoundaryRule, decide


def test_both_tails_removes_outliers_on_each_side():
    # scores 0, 10 x8, 20: mean 10, std = sqrt((100+100)/10) = 4.472; k=2 -> [1.06, 18.94]
    scores = np.array([0.0] + [10.0] * 8 + [20.0])
    d = decide(scores, BoundaryRule(k=2.0, mode="both"))
    assert d.mean == pytest.approx(10.0)
    assert d.std == pytest.approx(np.sqrt(20.0))
    assert d.lower == pytest.approx(10 - 2 * np.sqrt(20.0))
    assert d.keep.tolist() == [False] + [True] * 8 + [False]


def test_low_mode_keeps_the_strong_tail():
    scores = np.array([0.0] + [10.0] * 8 + [20.0])
    d = decide(scores, BoundaryRule(k=2.0, mode="low"))
    assert d.keep.tolist() == [False] + [True] * 9


def test_large_k_removes_nothing_and_constant_scores_are_kept():
    scores = np.array([0.0] + [10.0] * 8 + [20.0])
    assert decide(scores, BoundaryRule(k=3.5)).keep.all()  # max |z| = 2.236 < 3.5
    assert decide(np.full(5, 3.0), BoundaryRule(k=0.0)).keep.all()  # std 0


def test_min_channels_keeps_the_least_extreme():
    # k=0: everything off the mean is outside; scores 1,2,3,4 (mean 2.5): all four outside
    d = decide(np.array([1.0, 2.0, 3.0, 4.0]), BoundaryRule(k=0.0, mode="both", min_channels=2))
    # the two closest to the band survive (2 and 3), the extremes go first
    assert d.keep.tolist() == [False, True, True, False]


def test_max_fraction_caps_one_step():
    scores = np.array([1.0, 1.1, 1.2, 10, 10, 10, 10, 10, 10, 10])
    full = decide(scores, BoundaryRule(k=0.5, mode="low"))
    assert full.n_removed == 3
    capped = decide(scores, BoundaryRule(k=0.5, mode="low", max_fraction=0.2))
    assert capped.n_removed == 2
    assert capped.keep.tolist()[:3] == [False, False, True]  # the lowest two go first


@pytest.mark.parametrize(
    "kwargs",
    [dict(k=-1.0), dict(k=float("nan")), dict(mode="high"), dict(min_channels=0),
     dict(max_fraction=0.0), dict(max_fraction=1.5)],
)
def test_bad_rule_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        BoundaryRule(**kwargs)


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        decide(np.array([1.0, np.nan]), BoundaryRule())


def test_schedule_window_and_patience():
    sch = Schedule(start_round=3, max_prune_round=20, patience=2)
    st = ScheduleState()
    assert not is_active(sch, st, 2)
    assert is_active(sch, st, 3)
    st = advance(sch, st, 3, 100, 80)  # drop: accepted
    assert st.accepted_steps == 1 and st.stale_rounds == 0 and not st.stopped
    st = advance(sch, st, 4, 80, 80)  # no drop
    assert st.stale_rounds == 1 and not st.stopped
    st = advance(sch, st, 5, 80, 70)  # a drop resets patience
    assert st.stale_rounds == 0
    st = advance(sch, st, 6, 70, 70)
    st = advance(sch, st, 7, 70, 70)  # second stale round in a row: stop for good
    assert st.stopped and st.stopped_round == 7
    assert not is_active(sch, st, 8)


def test_schedule_stops_at_max_prune_round():
    sch = Schedule(start_round=1, max_prune_round=2, patience=5)
    st = advance(sch, ScheduleState(), 1, 10, 9)
    st = advance(sch, st, 2, 9, 8)
    assert st.stopped and st.stopped_round == 2 and st.accepted_steps == 2


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="max_prune_round"):
        Schedule(start_round=5, max_prune_round=4)
    with pytest.raises(ValueError, match="patience"):
        Schedule(patience=0)
