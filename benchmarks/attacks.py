"""Rogue clients against each aggregation rule: final test accuracy, honest and attacked.

Digits, 10 clients all sampled every round, widths [8, 16], 2 local epochs, 30 rounds, one
thread (the configuration of ``tests/federated/test_rogue.py``).  A rogue trains honestly and
then lies in its reply; the attacks know every honest update of the round (the strongest
rogue a norm bound faces):

* ``x1e4``: the update scaled by 10^4;
* ``flip@F``: the update sign-flipped and scaled to F x the median norm of the round's
  honest updates (``flip@2.99``: just inside the default bound of 3);
* ``flip@2.99+n``: ``flip@2.99`` claiming the largest training partition's sample count
  (the earlier bound's maximum; today a count above the client's own partition is rejected);
* ``mean@-2.99``: colluding rogues all send minus the honest mean update, scaled to 2.99 x
  the median norm (the "inner product" attack);
* ``orth@F``: built to pass the direction screen: minus the rogue's own update's part
  orthogonal to the honest median update, with a cosine of +0.01 with it, at F median norms;
* ``val-cut`` / ``val-keep``: validation answers that claim the narrowest widths lose
  nothing (every width right on every sample, the full model wrong on every one) or that
  every narrower width is wrong on every sample (``--auto`` only).

Rules (``--rules``): ``default`` (``fed.clip_factor`` 3, ``fed.min_cosine`` 0, FedAvg),
``no-direction`` (the bound alone), ``trimmed_mean`` and ``median`` (with the default bound
and direction screen), ``plain`` (plain FedAvg), ``clip2``, and for ``--auto``
``untrimmed`` (the paired costs not trimmed).  ``--rogues 1`` (client 3) or ``3`` (clients
3, 5, 7).  Printed as a Markdown table, one row per rule, one column per attack; in a cell
the final accuracy, (h/r) the honest and rogue updates left out for their direction, and
with ``--auto`` the widths cut to and the round::

    python benchmarks/attacks.py --rogues 1
    python benchmarks/attacks.py --rogues 3 --attacks none flip@1 flip@2.99
    python benchmarks/attacks.py --auto --rules default untrimmed --attacks none val-cut
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

import fedprune.federated.loop as loop_mod
from fedprune.config import from_dict
from fedprune.data import load_federated
from fedprune.federated import run_simulation
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
    "default": {},  # clip_factor 3, min_cosine 0, fedavg
    "no-direction": {"min_cosine": -1.0},  # the bound alone
    "trimmed_mean": {"aggregator": "trimmed_mean"},
    "median": {"aggregator": "median"},
    "plain": {"clip_factor": 0.0, "min_cosine": -1.0},  # plain FedAvg
    "clip2": {"clip_factor": 2.0},
    # the automatic method's costs as plain pooled differences (no trimming)
    "untrimmed": {"prune": {"trim_fraction": 0.0}},
}
ATTACKS = ["none", "x1e4", "flip@2.99", "flip@1", "mean@-2.99", "flip@2.99+n", "orth@2.99"]
ROGUES = {1: (3,), 3: (3, 5, 7)}



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
    if attack in ("none", "val-cut", "val-keep"):
        return replies
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
            if attack == "x1e4":
                state = _send(sent, u, 1e4)
            elif attack.startswith("flip@"):
                factor = float(attack[5:].split("+")[0])
                state = _send(sent, u, -factor * med / max(_norm(u), 1e-300))
            elif attack.startswith(("orth@", "mean@")) and not [
                    j for j in honest if set(ups[j]) == set(u)]:
                continue  # no honest update of its width to aim by: it sends its own
            elif attack.startswith("orth@"):
                # minus its own update, less its part along the honest median update: a
                # cosine of +0.01 with it, at the given multiple of the median norm
                same = [j for j in honest if set(ups[j]) == set(u)]
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
            elif attack == "mean@-2.99":
                same = [j for j in honest if set(ups[j]) == set(u)]
                mean = {k: sum(ups[j][k] for j in same) / len(same) for k in u}
                state = _send(sent, mean, -2.99 * med / max(_norm(mean), 1e-300))
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


def run(values, rule, attack, rogues, out: Path):
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
    try:
        return run_simulation(cfg, out, data=data)
    finally:
        loop_mod.LocalTransport = real


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rogues", type=int, choices=sorted(ROGUES), default=1)
    ap.add_argument("--attacks", nargs="+", default=ATTACKS)
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--auto", action="store_true", help="the automatic method (default: dense)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true", help="the runs' warnings too")
    args = ap.parse_args(argv)
    if not args.verbose:
        logging.disable(logging.WARNING)
    values = {**(AUTO if args.auto else DENSE), "seed": args.seed}
    rogues = ROGUES[args.rogues]
    print(f"rogues {list(rogues)}, {'auto' if args.auto else 'dense'}, seed {args.seed}")
    print("| rule | " + " | ".join(args.attacks) + " |")
    print("|---|" + "---|" * len(args.attacks))
    for name in args.rules:
        cells = []
        for attack in args.attacks:
            with tempfile.TemporaryDirectory() as tmp:
                res = run(values, RULES[name], attack, rogues, Path(tmp) / "run")
                rows = read_rounds(Path(tmp) / "run")
            cell = f"{res.summary['accuracy']:.3f}"
            left = [a["client"] for r in rows for a in r.get("against", [])]
            if left:  # updates left out for their direction: honest / rogue
                rogue = sum(c in rogues for c in left)
                cell += f" ({len(left) - rogue}h/{rogue}r)"
            nested = res.summary.get("nested")
            if nested is not None:
                cut = nested["widths"] and list(nested["widths"].values())
                cell += f" {cut or 'no cut'}" + (f" @{nested['cut_round']}" if cut else "")
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
