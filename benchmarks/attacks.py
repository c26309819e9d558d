"""Rogue clients against each aggregation rule: final test accuracy, honest and attacked.

Digits, 10 clients all sampled every round, widths [8, 16], 2 local epochs, 30 rounds, one
thread (the configuration of ``tests/federated/test_rogue.py``).  A rogue trains honestly and
then lies in its reply; the attacks know every honest update of the round (the strongest
rogue a norm bound faces):

* ``drop``: no reply from the rogues at all (the bound on any rule: what leaving them out
  costs, their data lost with them);
* ``x1e4``: the update scaled by 10^4;
* ``flip@F``: the update sign-flipped and scaled to F x the median norm of the round's
  honest updates (``flip@1.99``: just inside the default bound of 2; ``flip@2.99``: just
  inside the earlier default of 3, scaled down by the bound of 2);
* ``flip@2.99+n``: ``flip@2.99`` claiming the largest training partition's sample count
  (the earlier bound's maximum; today a count above the client's own partition is rejected);
* ``mean@-F``: colluding rogues all send minus the honest mean update, scaled to F x the
  median norm (the "inner product" attack);
* ``orth@F``: built to pass the direction screen: minus the rogue's own update's part
  orthogonal to the honest median update, with a cosine of +0.01 with it, at F median norms;
* ``val-cut`` / ``val-keep``: validation answers that claim the narrowest widths lose
  nothing (every width right on every sample, the full model wrong on every one) or that
  every narrower width is wrong on every sample (``--auto`` only).

Rules (``--rules``): ``default`` (``fed.clip_factor`` 2, ``fed.min_cosine`` 0, FedAvg),
``no-direction`` (the bound alone), ``trimmed_mean`` and ``median`` (with the default bound
and direction screen), ``plain`` (plain FedAvg), ``clip3`` (the earlier default bound of
3 x the median norm), and for ``--auto``
``untrimmed`` (the paired costs not trimmed); ``centered``, measured here and not offered
by fedprune: centered clipping around the previous round's aggregate update (see
:func:`centered_clipping`).  ``--rogues 1`` (client 3) or ``3`` (clients
3, 5, 7).  Printed as a Markdown table, one row per rule, one column per attack; in a cell
the final accuracy, (h/r) the honest and rogue updates left out for their direction, and
with ``--auto`` the widths cut to and the round::

    python benchmarks/attacks.py --rogues 1
    python benchmarks/attacks.py --rogues 3 --attacks none flip@1 flip@2.99
    python benchmarks/attacks.py --auto --rules default untrimmed --attacks none val-cut
    python benchmarks/attacks.py --seeds 0-9 --rules default plain   # means over ten seeds

``--profile ATTACK`` prints instead, for each seed, where the rogue's update of each round
stands among the honest ones: its distance from the round's median update and its cosine
with it, against the honest updates' (``--profile orth@1 --seeds 0-4``).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

import fedprune.federated.averaging as averaging_mod
import fedprune.federated.loop as loop_mod
from fedprune.config import from_dict
from fedprune.data import load_federated
from fedprune.federated import run_simulation
from fedprune.federated.aggregate import (
    Aggregate,
    _cosine,
    _integer_median,
    median,
    screen_directions,
)
from fedprune.federated.transport import Queried
from fedprune.metrics import read_rounds
from fedprune.pruners.base import pool_validation

BASE = {
    "threads": 1, "seed": 0,
    "data": {"num_clients": 10},
    "model": {"widths": [8, 16]},
    "train": {"local_epochs": 2},
    "fed": {"rounds": 30, "clients_per_round": 10, "eval_every": 10},
}
DENSE = {**BASE, "prune": {"enabled": False}}
# the automatic method on the model's default widths (a ladder of widths on multiples of 16)
AUTO = {**BASE, "model": {}, "prune": {"method": "auto"}}

RULES = {
    "default": {},  # clip_factor 2, min_cosine 0, fedavg
    "no-direction": {"min_cosine": -1.0},  # the bound alone
    "trimmed_mean": {"aggregator": "trimmed_mean"},
    "median": {"aggregator": "median"},
    "plain": {"clip_factor": 0.0, "min_cosine": -1.0},  # plain FedAvg
    "clip3": {"clip_factor": 3.0},  # the earlier default bound
    # measured, not offered: centered clipping (below), after the direction screen
    "centered": {"centered": 1.0},
    # the automatic method's costs as plain pooled differences (no trimming)
    "untrimmed": {"prune": {"trim_fraction": 0.0}},
}
ATTACKS = ["none", "drop", "x1e4", "flip@2.99", "flip@1.99", "flip@1", "mean@-2.99",
           "flip@2.99+n", "orth@2.99", "orth@1.99", "orth@1"]
ROGUES = {1: (3,), 3: (3, 5, 7)}
# the attacks that leave the training replies honest
HONEST_TRAINING = ("none", "val-cut", "val-keep")



def _update(state, sent):
    return {k: v.to(torch.float64) - sent[k].to(torch.float64)
            for k, v in state.items() if v.is_floating_point()}


def _norm(u) -> float:
    return math.sqrt(sum(float(v.pow(2).sum()) for v in u.values()))


def _send(sent, u, scale):
    """``sent + scale * u`` (floating tensors), integer tensors as sent."""
    return {k: (v.to(torch.float64) + scale * u[k]).to(v.dtype) if k in u else v
            for k, v in sent.items()}


def attack_replies(attack: str, rogues, replies, sent_of, max_n: int):
    """The round's replies with the rogues' ones replaced; ``sent_of(i, t)``: the weights
    reply ``i``'s model ``t`` was sent."""
    if attack in HONEST_TRAINING:
        return replies
    if attack == "drop":  # never arrives: what any rule that leaves the rogue out keeps
        return [r for r in replies if r.client not in rogues]
    out = list(replies)
    models = len(replies[0].states)
    for t in range(models):
        ups = [None if r.states[t] is None else _update(r.states[t], sent_of(i, t))
               for i, r in enumerate(replies)]
        honest = [i for i, r in enumerate(replies) if r.client not in rogues and ups[i]]
        med = statistics.median(_norm(ups[i]) for i in honest) if honest else 0.0
        for i, r in enumerate(replies):
            if r.client not in rogues or ups[i] is None:
                continue
            u, sent = ups[i], sent_of(i, t)
            # the honest updates of its own width (nested widths differ in keys)
            same = [j for j in honest if set(ups[j]) == set(u)]
            if attack == "x1e4":
                state = _send(sent, u, 1e4)
            elif attack.startswith("flip@"):
                factor = float(attack[5:].split("+")[0])
                state = _send(sent, u, -factor * med / max(_norm(u), 1e-300))
            elif attack.startswith(("orth@", "mean@")) and not same:
                continue  # no honest update of its width to aim by: it sends its own
            elif attack.startswith("orth@"):
                # minus its own update, less its part along the honest median update: a
                # cosine of +0.01 with it, at the given multiple of the median norm
                center = {k: torch.stack([ups[j][k] for j in same]).median(dim=0).values
                          for k in u}
                cn = _norm(center)
                chat = {k: v / max(cn, 1e-300) for k, v in center.items()}
                along = sum(float((u[k] * chat[k]).sum()) for k in u)
                perp = {k: -(u[k] - along * chat[k]) for k in u}
                pn = _norm(perp)
                perp = {k: v / max(pn, 1e-300) * 0.99995 + 0.01 * chat[k]
                        for k, v in perp.items()}
                state = _send(sent, perp, float(attack[5:]) * med / max(_norm(perp), 1e-300))
            elif attack.startswith("mean@"):
                mean = {k: sum(ups[j][k] for j in same) / len(same) for k in u}
                state = _send(sent, mean, float(attack[5:]) * med / max(_norm(mean), 1e-300))
            else:
                raise ValueError(f"unknown attack {attack!r}")
            states = list(out[i].states)
            states[t] = state
            out[i] = replace(out[i], states=tuple(states))
    if attack.endswith("+n"):
        out = [replace(r, n=max_n) if r.client in rogues else r for r in out]
    return out


def lie(attack: str, rogues, v):
    """The validation answers with the rogues' ones replaced (``val-cut``: the full model
    wrong on every sample, every narrower width right; ``val-keep``: the reverse)."""
    if attack not in ("val-cut", "val-keep") or not v.clients:
        return v
    answers, per = [], []
    for i, (c, acc, n) in enumerate(v.clients):
        subs = [(s.clients[i][1], s.losses[i]) for s in v.variants]
        if c in rogues:
            good, bad = (0.0, 1.0) if attack == "val-cut" else (1.0, 0.0)
            acc, subs = good, [(bad, 0.01 if bad else 5.0) for _ in subs]
            answers.append((c, acc, 5.0 if acc == 0 else 0.01, n))
        else:
            answers.append((c, acc, v.losses[i], n))
        per.append(subs)
    return pool_validation(answers, per if v.variants else None)


def centered_clipping(factor: float, iterations: int = 3):
    """Centered clipping (Karimireddy, He and Jaggi, 2021), measured here, not offered by
    fedprune: after the direction screen, the round's update starts from the previous
    round's aggregate update (the first round: the coordinate-wise median) and moves
    ``iterations`` times by the sample-weighted mean of every update's difference from it,
    each difference clipped to ``factor`` x the median of those differences' norms.  A
    stateful rule for one dense run (no nested widths)."""
    previous: dict = {}

    def aggregate(replies, reference, *, min_cosine=-1.0, **_):
        against = []
        if min_cosine > -1:
            replies, against = screen_directions(replies, reference, min_cosine)
        ups = [_update(s, reference) for s, _ in replies]
        keys = list(ups[0])
        total = sum(n for _, n in replies)
        center = previous.get("v") or median([(u, n) for u, (_, n) in zip(ups, replies)])
        for _ in range(iterations):
            diffs = [{k: u[k] - center[k] for k in keys} for u in ups]
            norms = [_norm(d) for d in diffs]
            tau = factor * statistics.median(norms)
            center = {k: center[k] + sum(d[k] * (n / total) * min(1.0, tau / max(m, 1e-300))
                                         for d, (_, n), m in zip(diffs, replies, norms))
                      for k in keys}
        previous["v"] = center
        state = {k: (ref.to(torch.float64) + center[k]).to(ref.dtype) if k in center else
                 _integer_median(replies, k) for k, ref in reference.items()}
        return Aggregate(state, [], against)

    return aggregate


def run(values, rule, attack, rogues, out: Path):
    rule = dict(rule)
    centered = rule.pop("centered", None)
    if centered is not None and values.get("prune", {}).get("enabled", True):
        raise SystemExit("the centered rule is measured on dense runs only (no --auto)")
    fed = {k: v for k, v in rule.items() if k != "prune"}
    cfg = from_dict({**values, "fed": {**values["fed"], **fed},
                     "prune": {**values.get("prune", {}), **rule.get("prune", {})}})
    data = load_federated(cfg.data, cfg.seed)
    max_n = max(len(c) for c in data.clients)
    real = loop_mod.LocalTransport

    class Attacked(real):
        def train(self, plan):
            delivery = super().train(plan)

            def sent_of(i, t):
                a = t if plan.assign is None else plan.assign[plan.clients.index(
                    delivery.replies[i].client)]
                return plan.models[a][0].state_dict()

            return replace(delivery, replies=attack_replies(
                attack, rogues, delivery.replies, sent_of, max_n))

        def validate(self, *args, **kwargs):
            q = super().validate(*args, **kwargs)
            return Queried(lie(attack, rogues, q.validation), q.sent, q.bytes_down,
                           q.bytes_up)

    loop_mod.LocalTransport = Attacked
    rule_fn = averaging_mod.robust_aggregate
    if centered is not None:
        averaging_mod.robust_aggregate = centered_clipping(centered)
    try:
        return run_simulation(cfg, out, data=data)
    finally:
        loop_mod.LocalTransport = real
        averaging_mod.robust_aggregate = rule_fn


def profile(values, attack: str, rogues, seed: int) -> str:
    """How the first rogue's update of each round stands among the round's updates, as the
    default rule sees them (before it clips or screens): its distance from the round's
    coordinate-wise median update and its cosine with it, ranked against the honest ones."""
    if attack == "drop":
        raise SystemExit("--profile needs the rogue's replies: not with drop")
    rogue, rounds = rogues[0], []
    rule_fn = averaging_mod.robust_aggregate

    def spy(replies, reference, **kw):
        ups = [_update(st, reference) for st, _ in replies]
        center = median([(u, n) for u, (_, n) in zip(ups, replies)])
        dist = [_norm({k: u[k] - center[k] for k in center}) for u in ups]
        cos = [_cosine(u, center) for u in ups]
        rounds.append((dist, cos))
        return rule_fn(replies, reference, **kw)

    averaging_mod.robust_aggregate = spy
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res = run({**values, "seed": seed}, {}, attack, rogues, Path(tmp) / "run")
    finally:
        averaging_mod.robust_aggregate = rule_fn
    # the rogue is client `rogue`: every client replies every round, in client order
    mid = [statistics.median(d) for d, _ in rounds]
    own = [d[rogue] / m for (d, _), m in zip(rounds, mid)]
    far = [max(x for i, x in enumerate(d) if i != rogue) / m for (d, _), m in zip(rounds, mid)]
    return (f"seed {seed}: accuracy {res.summary['accuracy']:.3f}; over {len(rounds)} rounds "
            f"the rogue's distance from the median update is {statistics.median(own):.2f} x "
            f"the round's median distance (median over rounds; the farthest honest update's "
            f"{statistics.median(far):.2f}); it is the farthest in "
            f"{sum(d[rogue] == max(d) for d, _ in rounds)} rounds and has the lowest cosine "
            f"in {sum(c[rogue] == min(c) for _, c in rounds)}")


def _seeds(text: str) -> list[int]:
    """``"3"``, ``"0-9"`` or ``"0,2,5"``: the seeds named."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def cell(attack: str, rogues, values, rule, seeds) -> tuple[list[float], str]:
    """The final accuracies of ``attack`` under ``rule`` for each seed, and the cell's notes:
    the updates left out for their direction (honest / rogue, summed over the seeds) and
    with the automatic method the widths cut to and the round, per seed."""
    accs, honest, rogue, cuts = [], 0, 0, []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            res = run({**values, "seed": seed}, rule, attack, rogues, Path(tmp) / "run")
            rows = read_rounds(Path(tmp) / "run")
        accs.append(res.summary["accuracy"])
        left = [a["client"] for r in rows for a in r.get("against", [])]
        # without a training attack the rogues' updates are honest ones
        lied = sum(c in rogues for c in left) if attack not in HONEST_TRAINING else 0
        rogue += lied
        honest += len(left) - lied
        nested = res.summary.get("nested")
        if nested is not None:
            cut = nested["widths"] and list(nested["widths"].values())
            cuts.append(f"{cut or 'no cut'}" + (f" @{nested['cut_round']}" if cut else ""))
    notes = f" ({honest}h/{rogue}r)" if honest or rogue else ""
    return accs, notes + ("" if not cuts else " " + "; ".join(cuts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rogues", type=int, choices=sorted(ROGUES), default=1)
    ap.add_argument("--attacks", nargs="+", default=ATTACKS)
    ap.add_argument("--rules", nargs="+", choices=list(RULES),
                    help="default: every rule (with --auto: all but centered)")
    ap.add_argument("--auto", action="store_true", help="the automatic method (default: dense)")
    ap.add_argument("--seed", "--seeds", dest="seeds", type=_seeds, default=[0],
                    help="a seed, a range 0-9 or a list 0,2,5 (default 0): with several, a "
                         "cell is the mean over the seeds")
    ap.add_argument("--profile", metavar="ATTACK",
                    help="instead of the table: where the rogue's update of each round "
                         "stands among the honest ones under ATTACK (one line per seed)")
    ap.add_argument("-v", "--verbose", action="store_true", help="the runs' warnings too")
    args = ap.parse_args(argv)
    if not args.verbose:
        logging.disable(logging.WARNING)
    values = AUTO if args.auto else DENSE
    if args.rules is None:
        args.rules = [r for r in RULES if not (args.auto and r == "centered")]
    rogues = ROGUES[args.rogues]
    seeds = args.seeds
    if args.profile:
        if args.auto:
            ap.error("--profile looks at the dense rule's rounds: not with --auto")
        for seed in seeds:
            print(profile(DENSE, args.profile, rogues, seed), flush=True)
        return 0
    print(f"rogues {list(rogues)}, {'auto' if args.auto else 'dense'}, seeds {seeds}"
          + ("" if len(seeds) == 1 else ": the mean over the seeds; [points against the "
             "same rule's run without attack, per seed] where 'none' is in the table"))
    print("| rule | " + " | ".join(args.attacks) + " |")
    print("|---|" + "---|" * len(args.attacks))
    for name in args.rules:
        cells, base = [], None
        for attack in args.attacks:
            accs, notes = cell(attack, rogues, values, RULES[name], seeds)
            if attack == "none":
                base = accs
            text = f"{statistics.fmean(accs):.3f}"
            if len(seeds) > 1 and base is not None and attack != "none":
                diffs = [100 * (a - b) for a, b in zip(accs, base, strict=True)]
                text += (f" ({statistics.fmean(diffs):+.1f}: "
                         + ", ".join(f"{d:+.1f}" for d in diffs) + ")")
            cells.append(text + notes)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
