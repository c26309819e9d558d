"""The automatic boundary rule: per-layer scores -> keep mask.

For the scores ``s`` of one prunable group (one entry per output channel), with mean ``m`` and
standard deviation ``sd`` (population, ``ddof=0``), the boundaries are ``[m - k*sd, m + k*sd]``.

* ``mode="both"`` removes channels outside either boundary (the paper's rule);
* ``mode="low"`` removes only channels below the lower boundary (weak filters).

Two guards bound one decision: at least ``min_channels`` channels survive, and at most
``max_fraction`` of the group's current channels are removed in one step.  When a guard binds,
the most extreme channels (largest distance outside the boundary, in units of ``sd``) go first.
Scores that are equal up to float32 rounding (``sd <= 1e-6 * |m|``) are never split.

The fixed-ratio baseline (:class:`RatioRule`, :func:`decide_ratio`) is the manual alternative
the automatic rule is compared with: it removes the ``floor(ratio * n)`` lowest-scoring channels
of every group, whatever the scores look like, keeping at least ``min_channels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Mode = Literal["both", "low"]
MODES: tuple[str, ...] = ("both", "low")


@dataclass(frozen=True)
class BoundaryRule:
    """Parameters of the boundary rule (see the module docstring)."""

    k: float = 2.0
    mode: Mode = "both"
    min_channels: int = 1
    max_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.k) or self.k < 0:
            raise ValueError(f"k must be a finite number >= 0, got {self.k!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if int(self.min_channels) != self.min_channels or self.min_channels < 1:
            raise ValueError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if not 0.0 < self.max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in (0, 1], got {self.max_fraction!r}")

    def decide(self, scores: np.ndarray) -> Decision:
        """:func:`decide` with this rule."""
        return decide(scores, self)


@dataclass(frozen=True)
class RatioRule:
    """Fixed-ratio L1 pruning: remove the ``floor(ratio * n)`` lowest-scoring channels; with
    ``round_to`` > 1 the channels kept are rounded to the nearest multiple of it
    (:func:`~.widths.aligned`: half up, at least one multiple, a group of ``round_to``
    channels or fewer left whole)."""

    ratio: float = 0.5
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self) -> None:
        if not (np.isfinite(self.ratio) and 0.0 < self.ratio < 1.0):
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio!r}")
        if int(self.min_channels) != self.min_channels or self.min_channels < 1:
            raise ValueError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if int(self.round_to) != self.round_to or self.round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {self.round_to!r}")

    def decide(self, scores: np.ndarray) -> Decision:
        """:func:`decide_ratio` with this rule."""
        return decide_ratio(scores, self)


@dataclass(frozen=True)
class Decision:
    """What the rule decided for one group of scores."""

    keep: np.ndarray  # bool mask, True = channel survives
    lower: float
    upper: float
    mean: float
    std: float

    @property
    def n_removed(self) -> int:
        return int((~self.keep).sum())


def decide(scores: np.ndarray, rule: BoundaryRule) -> Decision:
    """Apply ``rule`` to one group's ``scores`` and return the keep mask and boundaries."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("cannot apply the boundary rule to an empty score vector")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or Inf; the model weights are not finite")
    mean = float(s.mean())
    std = float(s.std())
    lower, upper = mean - rule.k * std, mean + rule.k * std
    n = s.size
    # scores equal up to float32 rounding carry no signal: never split them
    if std <= 1e-6 * abs(mean) or std == 0.0 or n <= rule.min_channels:
        return Decision(np.ones(n, dtype=bool), lower, upper, mean, std)

    outside = s < lower
    if rule.mode == "both":
        outside |= s > upper
    # distance outside the band, in std units; used to rank removals when a guard binds
    excess = np.where(s < lower, (lower - s) / std, np.where(s > upper, (s - upper) / std, 0.0))

    max_remove = min(n - rule.min_channels, int(np.floor(rule.max_fraction * n)))
    candidates = np.flatnonzero(outside)
    if candidates.size > max_remove:
        # stable sort: ties resolved by channel index, so decisions are deterministic
        order = np.argsort(-excess[candidates], kind="stable")
        candidates = candidates[order[: max(max_remove, 0)]]
    keep = np.ones(n, dtype=bool)
    keep[candidates] = False
    return Decision(keep, lower, upper, mean, std)


def decide_ratio(scores: np.ndarray, rule: RatioRule) -> Decision:
    """Remove the ``floor(rule.ratio * n)`` lowest of ``scores`` (at least ``min_channels`` kept).

    Ties are broken by channel index (the lower index goes first), so the decision is
    deterministic.  ``lower`` is the highest removed score (NaN when nothing is removed) and
    ``upper`` is +inf: the ratio rule has no upper boundary.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("cannot apply the ratio rule to an empty score vector")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or Inf; the model weights are not finite")
    n = s.size
    # + 1e-9: 0.29 * 100 is 28.999999999999996 in floating point, and must count as 29
    n_remove = max(0, min(int(np.floor(rule.ratio * n + 1e-9)), n - rule.min_channels))
    round_to = getattr(rule, "round_to", 1)
    if round_to > 1:
        from .widths import aligned

        n_remove = n - aligned(n - n_remove, n, round_to, rule.min_channels)
    order = np.argsort(s, kind="stable")
    keep = np.ones(n, dtype=bool)
    keep[order[:n_remove]] = False
    lower = float(s[order[n_remove - 1]]) if n_remove else float("nan")
    return Decision(keep, lower, float("inf"), float(s.mean()), float(s.std()))


class Rule(Protocol):
    """What :func:`~.apply.prune_model` needs of a rule: a floor and a pure decision.

    :class:`BoundaryRule` and :class:`RatioRule` are rules; a rule is a frozen dataclass, so
    that a grouped conv's per-block floor can be set with :func:`dataclasses.replace`.
    """

    @property
    def min_channels(self) -> int: ...

    def decide(self, scores: np.ndarray) -> Decision: ...
