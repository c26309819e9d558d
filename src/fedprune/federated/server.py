"""The server side of a federated round, and its state over a run, for every engine.

:class:`PruningServer` owns what the server decides and keeps: client sampling, bytes on the
wire, screening and the bounded-influence average (``fed.clip_factor``, ``fed.aggregator``),
the ``fed.min_replies`` skip, the pruning step (the schedule's rule or budget mode, behind
one :class:`~.schedule.Pruner` interface), central evaluation, the round records, the
checkpoint and the summary.  An engine only moves weights to clients
and back: the in-process loop (:func:`fedprune.federated.run_simulation`) trains them
directly, the Flower strategy (:mod:`fedprune.flower.strategy`) sends messages.  A round is::

    sampled = server.sample(rnd)
    ... send server.model's weights and those of server.trial() to the sampled clients,
    ... collect their replies: each client's trained copy of every model ...
    outcome = server.aggregate(rnd, replies, clients=sampled, trial_replies=...)
    server.after_aggregate(rnd, validate)
    record = server.finish_round(rnd, bytes_down=..., bytes_up=..., rejected=...)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..config import ConfigError, ExperimentConfig
from ..data import FederatedData
from ..device import resolve_device, to_device
from ..metrics import RoundRecord, count_macs, n_params, payload_bytes
from ..models import ModelSpec, new_model
from ..rundir import OpenedRun, RunDir
from .aggregate import Clip, Rejection, robust_aggregate, screen_replies
from .auto_server import AutoPruner
from .budget_server import BudgetServer
from .client import evaluate
from .schedule import Pruner, PruneStep, SchedulePruner, Validate, Validation
from .wire import element_bytes, round_model, round_trip

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# bytes of one client's answer to a validation query: accuracy, loss and sample count
VALIDATION_ANSWER_BYTES = 24


@dataclass
class RoundOutcome:
    """What the server did with the replies of the current round."""

    clients: int = 0  # replies aggregated (0 when skipped)
    skipped: bool = False  # fewer valid replies than fed.min_replies: nothing averaged
    rejections: list[Rejection] = field(default_factory=list)  # screened out, by index
    trial_rejections: list[Rejection] = field(default_factory=list)  # candidate replies
    client_ids: list[int] = field(default_factory=list)  # client id of each reply, by index
    clips: list[Clip] = field(default_factory=list)  # updates scaled down to the bound
    trial_clips: list[tuple[int, Clip]] = field(default_factory=list)  # (trial model, clip)
    pruned: bool = False
    budget: dict[str, Any] | None = None  # budget mode: the round's "budget" entry


class PruningServer:
    """The server of one run: the global model, the pruning state, the records.

    ``num_clients`` and ``has_validation`` (per client) describe the population the server
    samples from; ``test_x``/``test_y`` are the held-out test split for central evaluation;
    ``max_client_size`` bounds a plausible reply's sample count.  With a run directory (opened
    by :meth:`fedprune.rundir.RunDir.open`, given to :meth:`begin`), every finished round is
    appended to ``rounds.jsonl`` and checkpointed.
    """

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, spec: ModelSpec, *,
                 num_clients: int, has_validation: Sequence[bool], test_x: torch.Tensor,
                 test_y: torch.Tensor, max_client_size: int | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None) -> None:
        self.cfg = cfg
        self.model, self.spec = model, spec
        self.num_clients = num_clients
        # central evaluation runs on cfg.device as this machine resolves it
        self.device = resolve_device(cfg.device)
        self.test_x, self.test_y = to_device(test_x, self.device), to_device(test_y, self.device)
        self.max_client_size = max_client_size
        self.run_dir: RunDir | None = None  # set by begin
        self.on_round = on_round
        self.example = spec.example_input()
        self.params_initial = n_params(model)
        self.macs_initial = count_macs(model, self.example)
        self.widths_initial = spec.widths_now()
        # what the weights travel as (fed.payload_dtype): the model is kept rounded to it
        self.payload_dtype = cfg.fed.payload_dtype
        round_model(model, self.payload_dtype)
        self.dense_payload = self.payload_bytes(model.state_dict())
        self.pruner: Pruner
        if cfg.budget.active:
            self.pruner = BudgetServer(cfg, model, self.example, spec, self.params_initial,
                                       2 * self.macs_initial, num_clients, has_validation)
        elif cfg.prune.enabled and cfg.prune.method == "auto":
            self.pruner = AutoPruner(cfg, self.example, num_clients, has_validation)
        else:
            self.pruner = SchedulePruner(cfg, self.example)
        # traffic of the pruning step's validation queries this round (down, up)
        self.query_bytes = [0, 0]
        self.sample_rng = seeds.client_sampling(cfg.seed)
        self.arch_version = 0  # +1 whenever the architecture changes (cut or rollback)
        self.bytes_total = self.bytes_total_dense = 0
        self.accuracy = self.loss = float("nan")
        self.records: list[RoundRecord] = []
        self.rounds_done = 0
        self.outcome = RoundOutcome()
        self.sampled: list[int] = []  # the clients of the current round
        self.t0 = time.perf_counter()
        self.seconds_before = 0.0
        self._run: OpenedRun | None = None

    @classmethod
    def for_data(cls, cfg: ExperimentConfig, data: FederatedData, *,
                 on_round: Callable[[RoundRecord], None] | None = None) -> PruningServer:
        """The server of ``cfg`` over ``data``, with the seeded initial model: what every
        engine starts from (the clients sampled are ``data``'s, with their validation splits
        and sizes; the test split is evaluated centrally)."""
        if cfg.fed.clients_per_round > len(data.clients):
            raise ConfigError(f"fed.clients_per_round = {cfg.fed.clients_per_round} but the "
                              f"data give only {len(data.clients)} clients: lower "
                              "fed.clients_per_round")
        c, h, _ = data.input_shape
        model, spec = new_model(cfg.model.name, num_classes=data.num_classes, in_channels=c,
                                image_size=h, widths=cfg.model.widths, seed=cfg.seed)
        return cls(cfg, model, spec, num_clients=len(data.clients),
                   has_validation=[cl.val_y is not None and len(cl.val_y) > 0
                                   for cl in data.clients],
                   test_x=data.test_x, test_y=data.test_y,
                   max_client_size=max(len(cl) for cl in data.clients), on_round=on_round)

    # ------------------------------------------------------------------ run

    def begin(self, run: OpenedRun | None = None) -> None:
        """Write into ``run``, the run directory opened (and locked, until :meth:`close`) by
        :meth:`fedprune.rundir.RunDir.open`: its ``config.json``, or, when it resumes,
        continue from its checkpoint.  Without one, nothing is written."""
        if run is None:
            return
        self.run_dir, self._run = run.run_dir, run
        try:
            if run.resume:
                self.restore()
            else:
                run.write_config(self.cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory's lock (idempotent; the engines call it when the run
        ends, finished or not)."""
        if self._run is not None:
            self._run.close()
            self._run = None

    def start_clock(self, started: float | None = None) -> None:
        """Count the run's wall time from ``started`` (a ``time.perf_counter()`` value) or
        now; a resumed run adds the seconds of the interrupted one."""
        self.t0 = time.perf_counter() if started is None else started

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    @property
    def budget_mode(self) -> bool:
        return isinstance(self.pruner, BudgetServer)

    # ------------------------------------------------------------------ one round

    def trial(self) -> list[tuple[nn.Module, ModelSpec]]:
        """The models the sampled clients train this round beside :attr:`model`, with the
        same batches (the automatic method's candidate and reference; usually none); their
        replies go to :meth:`aggregate`'s ``trial_replies``, one list per model."""
        return self.pruner.trial()

    def sample(self, rnd: int) -> list[int]:
        """The clients of round ``rnd`` (sorted), from the sampling stream."""
        self.outcome = RoundOutcome()
        self.query_bytes = [0, 0]
        m = self.cfg.fed.clients_per_round
        self.sampled = sorted(int(c) for c in self.sample_rng.choice(self.num_clients, size=m,
                                                                      replace=False))
        return list(self.sampled)

    def bytes_down(self, sent: int) -> int:
        """Bytes of sending the current model (weights, and the spec when pruning) to ``sent``
        clients, with the trial models of the round (candidate, reference) and their specs."""
        spec_bytes = len(self.spec.to_json().encode()) if self.cfg.prune.enabled else 0
        per_client = self.payload_bytes(self.model.state_dict()) + spec_bytes
        for model, spec in self.trial():
            per_client += self.payload_bytes(model.state_dict()) + len(spec.to_json().encode())
        return sent * per_client

    def payload_bytes(self, state: StateDict) -> int:
        """Bytes of sending ``state``'s float tensors as ``fed.payload_dtype``."""
        return payload_bytes(state, element_bytes(self.payload_dtype))

    def aggregate(self, rnd: int, replies: Sequence[tuple[StateDict, int]],
                  versions: Sequence[int] | None = None,
                  trial_replies: Sequence[Sequence[StateDict | None]] | None = None,
                  clients: Sequence[int] | None = None) -> RoundOutcome:
        """Screen ``replies`` (in client order) and average the valid ones into the model.

        ``versions`` (the architecture version each reply trained) are checked against
        :attr:`arch_version`.  Fewer valid replies than ``fed.min_replies`` skip the round.
        The valid replies are averaged by
        :func:`~fedprune.federated.aggregate.robust_aggregate` with ``fed.clip_factor``,
        ``fed.aggregator`` and ``fed.trim_fraction``: each update is bounded against the
        round's median update norm, so that no single client moves the model far; the
        clipped replies are listed in the round's ``clipped``.  ``clients`` names the client
        (partition) id of each reply for the records; default: the round's sampled clients,
        in order (one reply each).

        ``trial_replies`` holds, for each model of :meth:`trial`, each client's trained copy
        of it, aligned with ``replies`` (None: the client sent none back).  A trial model is
        averaged over the clients whose reply to the global model was accepted, by the same
        rule (clipped against the median of its own copies' updates), so that every model of
        the round learns from the same clients in the same way; a missing or unfit copy is
        listed in the round's ``trial_rejected``, a clipped one in ``trial_clipped``; in a
        skipped round no model is averaged.  An engine must pass them whenever :meth:`trial`
        is not empty.
        """
        trial = self.trial()
        if trial and (trial_replies is None or len(trial_replies) != len(trial)):
            raise ValueError(f"round {rnd}: {len(trial)} trial models were sent, but the "
                             "replies hold no trained copies of them")
        if clients is None:
            clients = self.sampled
        if len(clients) != len(replies):
            raise ValueError(f"round {rnd}: {len(replies)} replies but {len(clients)} client "
                             "ids; pass aggregate(clients=...) with one id per reply")
        if self.payload_dtype != "float32":  # the replies as they arrive
            replies = [(round_trip(s, self.payload_dtype), n) for s, n in replies]
            trial_replies = [[None if c is None else round_trip(c, self.payload_dtype)
                              for c in copies] for copies in trial_replies or []]
        accepted, rejected = screen_replies(
            replies, self.model.state_dict(), versions=versions,
            arch_version=self.arch_version if versions is not None else None,
            max_samples=self.max_client_size)
        bad = {r.index for r in rejected}
        kept = [i for i in range(len(replies)) if i not in bad]  # accepted's reply indices
        skipped = len(accepted) < self.cfg.fed.min_replies
        clips: list[Clip] = []
        if skipped:
            logger.warning("round %d skipped: %d valid replies, fed.min_replies = %d", rnd,
                           len(accepted), self.cfg.fed.min_replies)
        else:
            clips = [c._replace(index=kept[c.index])
                     for c in self._average_into(self.model, accepted)]
            self._log_clips(rnd, "the model", clips, len(accepted), clients)
        trial_rejected: list[Rejection] = []
        trial_clips: list[tuple[int, Clip]] = []
        if not skipped:
            for t, ((model, _), copies) in enumerate(zip(trial, trial_replies or [],
                                                         strict=True)):
                unfit, clipped = self._aggregate_trial(t, model, copies, replies, bad)
                trial_rejected += unfit
                trial_clips += [(t, c) for c in clipped]
                self._log_clips(rnd, f"trial model {t}", clipped, len(replies) - len(bad),
                                clients)
        self.outcome = RoundOutcome(clients=0 if skipped else len(accepted), skipped=skipped,
                                    rejections=rejected, trial_rejections=trial_rejected,
                                    client_ids=[int(c) for c in clients], clips=clips,
                                    trial_clips=trial_clips)
        return self.outcome

    def _average_into(self, model: nn.Module, replies: Sequence[tuple[StateDict, int]]
                      ) -> list[Clip]:
        """Load the aggregate of ``replies`` (copies of ``model`` as sent) into ``model``;
        the clipped replies, by position in ``replies``."""
        fed = self.cfg.fed
        state, clips = robust_aggregate(replies, model.state_dict(), aggregator=fed.aggregator,
                                        clip_factor=fed.clip_factor,
                                        trim_fraction=fed.trim_fraction)
        model.load_state_dict(state)
        round_model(model, self.payload_dtype)  # what is sent next is the model itself
        return clips

    @staticmethod
    def _log_clips(rnd: int, what: str, clips: Sequence[Clip], n: int,
                   clients: Sequence[int]) -> None:
        if clips:
            logger.info("round %d: %s: clipped %d of %d updates to norm %.4g (clients %s, "
                        "norms %s)", rnd, what, len(clips), n, clips[0].bound,
                        [int(clients[c.index]) for c in clips],
                        ", ".join(f"{c.norm:.4g}" for c in clips))

    def _aggregate_trial(self, t: int, model: nn.Module, copies: Sequence[StateDict | None],
                         replies: Sequence[tuple[StateDict, int]], bad: set[int]
                         ) -> tuple[list[Rejection], list[Clip]]:
        """Average trial model ``t`` over the copies of the clients whose main reply was
        accepted (``bad``: the rejected ones), by the round's rule; the missing or unfit
        copies and the clipped ones, by client index."""
        rejected: list[Rejection] = []
        pairs = [(i, c) for i, c in enumerate(copies) if i not in bad]
        for i, c in pairs:
            if c is None:
                rejected.append(Rejection(i, f"trial model {t}: no trained copy in the reply"))
        present = [(i, c) for i, c in pairs if c is not None]
        ok, unfit = screen_replies([(c, replies[i][1]) for i, c in present],
                                   model.state_dict(), max_samples=self.max_client_size)
        rejected += [Rejection(present[r.index][0], f"trial model {t}: {r.reason}")
                     for r in unfit]
        clips: list[Clip] = []
        if ok:
            unfit_at = {r.index for r in unfit}
            fit = [i for j, (i, _) in enumerate(present) if j not in unfit_at]
            clips = [c._replace(index=fit[c.index]) for c in self._average_into(model, ok)]
        if rejected:
            logger.warning("trial model %d: %d of %d copies missing or unfit; averaged over "
                           "%d", t, len(rejected), len(pairs), len(ok))
        return sorted(rejected), clips

    def after_aggregate(self, rnd: int, validate: Validate) -> PruneStep:
        """The pruning step after an aggregated round (after a skipped one only what the
        pruner must still do: budget mode judges a candidate left at the last round).

        ``validate`` asks clients for a model's accuracy on their validation splits (budget
        mode's guard).  ``changed`` in the result: rebuild anything built for the old
        architecture.
        """
        last_round = rnd == self.cfg.fed.rounds
        validate = self._counted(validate)
        if self.outcome.skipped:
            skipped_step = self.pruner.after_skipped(rnd, self.model, self.spec, validate,
                                                     last_round=last_round)
            if skipped_step is None:
                return PruneStep(self.model, self.spec, False, False)
            step = skipped_step
        else:
            step = self.pruner.after_aggregate(rnd, self.model, self.spec, validate,
                                               last_round=last_round)
        self.model, self.spec = step.model, step.spec
        self.outcome.pruned, self.outcome.budget = step.pruned, step.record
        if step.changed:
            self.arch_version += 1
            logger.info("round %d: arch-version %d", rnd, self.arch_version)
        return step

    def _counted(self, validate: Validate) -> Validate:
        """``validate``, counting its queries' bytes into this round's traffic: the model
        and its spec to each asked client, :data:`VALIDATION_ANSWER_BYTES` back."""
        def counted(model: nn.Module, spec: ModelSpec, ids: Sequence[int]) -> Validation:
            self.query_bytes[0] += len(ids) * (self.payload_bytes(model.state_dict())
                                               + len(spec.to_json().encode()))
            self.query_bytes[1] += len(ids) * VALIDATION_ANSWER_BYTES
            return validate(model, spec, ids)
        return counted

    def finish_round(self, rnd: int, *, bytes_down: int, bytes_up: int,
                     rejected: list[dict[str, Any]] | None = None,
                     extra: dict[str, Any] | None = None) -> RoundRecord:
        """Evaluate when due, record the round, write it and the checkpoint.

        ``rejected`` lists the replies left out (default: the screening's ``{index,
        reason}``); ``extra`` adds engine fields to the record.  The traffic of the round's
        validation queries is added to ``bytes_down`` / ``bytes_up``.
        """
        out = self.outcome
        bytes_down += self.query_bytes[0]
        bytes_up += self.query_bytes[1]
        self.bytes_total += bytes_down + bytes_up
        self.bytes_total_dense += 2 * self.cfg.fed.clients_per_round * self.dense_payload
        evaluated = rnd % self.cfg.fed.eval_every == 0 or rnd == self.cfg.fed.rounds
        if evaluated:
            self.accuracy, self.loss = evaluate(self.model, self.test_x, self.test_y,
                                                device=self.device)
        macs = count_macs(self.model, self.example)
        if rejected is None:
            rejected = [r._asdict() for r in out.rejections]
        rec = RoundRecord(
            round=rnd, accuracy=self.accuracy if evaluated else None,
            loss=self.loss if evaluated else None, params=n_params(self.model), macs=macs,
            flops=2 * macs, widths=self.spec.widths_now(), bytes_down=bytes_down,
            bytes_up=bytes_up, bytes_cumulative=self.bytes_total, clients=out.clients,
            pruned=out.pruned, seconds=self.elapsed(),
            extra={"rejected": rejected, "skipped": out.skipped,
                   "clipped": [self._clip_entry(c) for c in out.clips],
                   **({"trial_rejected": [r._asdict() for r in out.trial_rejections]}
                      if out.trial_rejections else {}),
                   **({"trial_clipped": [{"trial": t, **self._clip_entry(c)}
                                         for t, c in out.trial_clips]}
                      if out.trial_clips else {}),
                   **(extra or {}),
                   **({"budget": out.budget} if self.budget_mode else {}),
                   **({"auto": out.budget} if isinstance(self.pruner, AutoPruner) else {})},
        )
        self.records.append(rec)
        self.rounds_done = rnd
        if self.run_dir is not None:
            self.run_dir.recorder().append(rec)
            self.checkpoint()
        if self.on_round is not None:
            self.on_round(rec)
        return rec

    def _clip_entry(self, clip: Clip) -> dict[str, Any]:
        """A clipped reply as the round's record lists it: client id, norm and bound."""
        return {"client": self.outcome.client_ids[clip.index], "norm": clip.norm,
                "bound": clip.bound}

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the server's JSON-able state, budget mode's snapshot or None)."""
        entries, snapshot = self.pruner.state_entries()
        return {**entries, "sample_rng": self.sample_rng.bit_generator.state,
                "bytes_total": self.bytes_total, "bytes_total_dense": self.bytes_total_dense,
                "accuracy": self.accuracy, "loss": self.loss, "seconds": self.elapsed(),
                "arch_version": self.arch_version}, snapshot

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt``: spec, weights, rounds done and :meth:`state`."""
        assert self.run_dir is not None
        state, snapshot = self.state()
        self.run_dir.save_checkpoint(self.spec, self.model, self.rounds_done, state,
                                     snapshot=snapshot)

    def restore(self) -> None:
        """Continue from the run directory's checkpoint; its later round records are dropped."""
        assert self.run_dir is not None
        rd = self.run_dir
        self.spec, self.model, done, state, snapshot = rd.load_resume_point()
        try:
            self.pruner.restore_entries(state, snapshot)
            self.sample_rng.bit_generator.state = state["sample_rng"]
            self.bytes_total = int(state["bytes_total"])
            self.bytes_total_dense = int(state["bytes_total_dense"])
            self.accuracy, self.loss = state["accuracy"], state["loss"]
            self.seconds_before = float(state["seconds"])
            self.arch_version = int(state.get("arch_version", 0))
        except KeyError as exc:
            raise ValueError(f"checkpoint in {rd.path}: its loop state lacks {exc} (written by "
                             "another fedprune version, or altered)") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint in {rd.path}: its loop state does not fit this run "
                             f"({exc})") from None
        fields = set(RoundRecord.__dataclass_fields__) - {"extra"}
        if not rd.rounds_file.is_file():
            raise ValueError(f"{rd.path} holds a checkpoint but no {rd.rounds_file.name}: the "
                             "run's round records are gone, so it cannot continue from it")
        rows = rd.truncate_rounds(done)
        if [r.get("round") for r in rows] != list(range(1, done + 1)):
            raise ValueError(f"{rd.rounds_file} does not hold the records of rounds 1 to {done}, "
                             f"where the checkpoint is: a record is missing or out of order, "
                             "so the run cannot continue from it")
        self.records = [RoundRecord(**{k: v for k, v in r.items() if k in fields},
                                    extra={k: v for k, v in r.items() if k not in fields})
                        for r in rows]
        self.rounds_done = done
        logger.info("resuming %s after round %d", rd.path, done)

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` keys every engine writes."""
        macs_final = count_macs(self.model, self.example)
        out = {
            "accuracy": self.accuracy, "loss": self.loss,
            "params_initial": self.params_initial, "params_final": n_params(self.model),
            "macs_initial": self.macs_initial, "macs_final": macs_final,
            "flops_initial": 2 * self.macs_initial, "flops_final": 2 * macs_final,
            "bytes_total": self.bytes_total, "bytes_total_dense": self.bytes_total_dense,
            "widths_initial": self.widths_initial, "widths_final": self.spec.widths_now(),
            "prune_stopped_round": None, "prune_steps": 0,
            "rounds": self.cfg.fed.rounds, "seconds": self.elapsed(),
            "config": self.cfg.to_dict(),
        }
        out.update(self.pruner.summary_entries(self.model))
        return out

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.run_dir is not None:
            self.run_dir.recorder().write_summary(summary)
