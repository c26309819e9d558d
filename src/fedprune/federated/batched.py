"""Batched local training: many clients trained at once, with the same results as one by one.

The per-client path (:func:`fedprune.federated.client.train_local`) runs every client's
batches through the model one client at a time.  At pruned widths (a few filters per layer)
each of those calls does little arithmetic, and the per-call overhead of PyTorch and Python
dominates.  Here the clients of a round are trained **together**: the client dimension is
folded into the channel dimension, so that

* a ``Conv2d(c_in, c_out, groups=g)`` of ``A`` clients becomes one grouped convolution
  ``Conv2d(A * c_in, A * c_out, groups=A * g)`` whose weight is the clients' weights stacked
  (channels-last layout, which oneDNN runs fastest on CPU);
* pooling and activations act per channel, so they apply unchanged;
* after ``Flatten`` the activations are ``(A, batch, features)`` and a ``Linear`` is one
  batched matrix product (``baddbmm``) of the clients' stacked weights;
* the loss is each client's own mean cross-entropy over its own batch, summed over clients,
  so each client's gradient is exactly its own;
* Adam / SGD run on the stacked parameters with the same update formulas as
  ``torch.optim`` (fresh state per client and round, as in the per-client path).

Every client keeps its own batch order (the same seeded permutations as the per-client path),
so the results equal the per-client path up to float rounding (tested).  Clients with fewer
batches than others simply stop: clients are ordered by their number of steps, and at each
step only the still-active prefix is computed.  A client whose batch at this step is partial
(the last batch of an epoch) is padded with zero images that carry zero weight in its loss.

One further rewrite is exact: ``ReLU`` directly followed by ``MaxPool2d`` is computed as
``MaxPool2d`` then ``ReLU`` (both commute, values and gradients alike, because ReLU is
monotone), which runs the activation on a quarter of the elements.

The engine runs on ``device`` (:mod:`fedprune.device`): the clients' samples, the stacked
parameters and the optimizer state live there, and the trained weights come back as float32
CPU tensors.  ``train.precision`` ``bf16`` / ``fp16`` autocast the forward pass (the
convolutions and batched products run in 16 bits; parameters, gradients and Adam's moments
stay float32); fp16 scales the loss, and a step whose gradients overflow is skipped for every
client of the chunk (the per-client path skips it for its one client).

Supported models expose ``as_sequence()``: the list of modules their ``forward`` applies in
order.  Modules allowed in it: ``Conv2d`` (zero padding), ``Linear``, ``ReLU``, ``MaxPool2d``,
``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten`` and ``Identity``; the model must have no
buffers (BatchNorm's batch statistics would see the padding).  Others (ResNet-7, Inception)
train with the per-client path; :func:`batched_support` says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.transform import PixelTransform, to_float_batch
from ..device import loss_scaler, precision_context
from .client import Dropout

StateDict = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)

_POINTWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
# Memory budget for one batched step's activations; the clients of a round are trained in
# chunks that fit it (activations, their gradients and the pooled/indices copies).
DEFAULT_MEMORY_MB = 1024


@dataclass(frozen=True)
class ClientJob:
    """One client's local training job: its data, its batch-order generator and the pixel
    transform of a uint8 ``x`` (``None``: float data, or uint8 scaled to [0, 1])."""

    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator
    transform: PixelTransform | None = None
    dropout: Dropout | None = None  # ordered dropout per batch (the automatic method)


@dataclass(frozen=True)
class _StepPlan:
    """A chunk's steps (clients longest first), ``(steps, clients, width)``: rows of the stacked
    samples (padding: the zero row), real or not, loss weights; clients active per step."""

    idx: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    active: list[int]


def batched_support(model: nn.Module) -> str | None:
    """``None`` when :class:`BatchedTrainer` can train ``model``, else the reason it cannot."""
    seq_fn = getattr(model, "as_sequence", None)
    if seq_fn is None:
        return f"{type(model).__name__} has no as_sequence() (not a plain feed-forward CNN)"
    if any(True for _ in model.buffers()):
        return f"{type(model).__name__} has buffers (BatchNorm statistics cannot be batched)"
    for mod in seq_fn():
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                return f"Conv2d with padding_mode={mod.padding_mode!r}"
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                return "Flatten other than Flatten(1, -1)"
        elif not isinstance(mod, (nn.Linear, *_POINTWISE)):
            return f"module {type(mod).__name__} is not supported by batched training"
    return None


def _ops(model: nn.Module) -> list[nn.Module]:
    """``as_sequence()`` with each ReLU that feeds a MaxPool2d moved after it (exact)."""
    seq = list(model.as_sequence())  # type: ignore[operator]
    out: list[nn.Module] = []
    i = 0
    while i < len(seq):
        if (i + 1 < len(seq) and isinstance(seq[i], nn.ReLU)
                and isinstance(seq[i + 1], nn.MaxPool2d)):
            out += [seq[i + 1], seq[i]]
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


class BatchedTrainer:
    """Trains the clients of a round together on one model architecture.

    Build one per architecture (after a pruning step, build a new one from the pruned model);
    :meth:`train` then takes the global weights and the clients' jobs and returns one
    ``(state_dict, n_examples, {"train_loss": ...})`` per job, in the jobs' order, like
    :func:`fedprune.federated.client.train_local` called per client.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig,
                 memory_mb: int = DEFAULT_MEMORY_MB, device: torch.device | None = None) -> None:
        reason = batched_support(model)
        if reason is not None:
            raise ValueError(f"batched training is not possible: {reason}")
        self.cfg = cfg
        self.device = device if device is not None else torch.device("cpu")
        self.scaler = loss_scaler(cfg.precision)  # fp16: one scale across chunks and rounds
        self.ops = _ops(model)
        names = {id(p): n for n, p in model.named_parameters()}
        # per op: (kind, module, weight name, bias name)
        self.plan: list[tuple[str, nn.Module, str | None, str | None]] = []
        for mod in self.ops:
            if isinstance(mod, nn.Conv2d):
                kind = "conv"
            elif isinstance(mod, nn.Linear):
                kind = "linear"
            elif isinstance(mod, nn.Flatten):
                kind = "flatten"
            else:
                kind = "pointwise"
            w = names[id(mod.weight)] if kind in ("conv", "linear") else None
            b = names[id(mod.bias)] if kind in ("conv", "linear") and mod.bias is not None \
                else None
            self.plan.append((kind, mod, w, b))
        used = {n for _, _, w, b in self.plan for n in (w, b) if n is not None}
        self.names = [n for n, _ in model.named_parameters()]
        missing = set(self.names) - used
        if missing:
            raise ValueError(f"batched training is not possible: parameters {sorted(missing)} "
                             "are not used by as_sequence()")
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.input_shape = tuple(model.input_shape)  # type: ignore[attr-defined]
        self.memory_mb = memory_mb
        self.sample_numel = self._sample_numel(model)
        self.clients_per_chunk = self._chunk_size(cfg.batch_size)  # at full batches

    # ------------------------------------------------------------------ planning

    def _sample_numel(self, model: nn.Module) -> int:
        """Activation values one sample produces in a forward pass (all ops)."""
        numel = 0
        h = torch.zeros(1, *self.input_shape)
        with torch.no_grad():
            for mod in self.ops:
                h = mod(h)
                numel += h.numel()
        return numel

    def _chunk_size(self, width: int) -> int:
        """How many clients one batched step of ``width`` samples per client may hold within
        the memory budget of activations."""
        per_client = 4 * 4 * self.sample_numel * width  # value, grad, copies; float32
        return max(1, int(self.memory_mb * 2**20 // max(per_client, 1)))

    def step_width(self, jobs: Sequence[ClientJob]) -> int:
        """Samples per client in one batched step: ``train.batch_size``, or the largest
        client's size when every client holds fewer (a step is never padded wider than the
        largest batch a client really has)."""
        return max(1, min(self.cfg.batch_size, max(int(j.y.shape[0]) for j in jobs)))

    # ------------------------------------------------------------------ forward

    def _forward(self, params: dict[str, torch.Tensor], h: torch.Tensor, a: int) -> torch.Tensor:
        """Logits ``(a, batch, classes)`` of ``a`` clients; ``h`` is ``(batch, a*C, H, W)``."""
        bsz = h.shape[0]
        flat = False
        for kind, mod, w, b in self.plan:
            if kind == "conv":
                conv: nn.Conv2d = mod  # type: ignore[assignment]
                weight = params[w].reshape(a * conv.out_channels, *conv.weight.shape[1:])
                bias = params[b].reshape(-1) if b is not None else None
                h = F.conv2d(h, weight, bias, conv.stride, conv.padding, conv.dilation,
                             conv.groups * a)
            elif kind == "flatten":
                # (batch, a*C, H, W) -> (a, batch, C*H*W), each client's own C,H,W order
                h = h.reshape(bsz, a, -1, *h.shape[2:]).transpose(0, 1).reshape(a, bsz, -1)
                flat = True
            elif kind == "linear":
                if not flat:
                    raise ValueError("a Linear before Flatten cannot be batched")
                weight = params[w].transpose(1, 2)
                h = (torch.baddbmm(params[b].unsqueeze(1), h, weight) if b is not None
                     else torch.bmm(h, weight))
            else:
                h = mod(h)
        if not flat:
            raise ValueError("as_sequence() must end in Flatten and Linear layers")
        return h

    # ------------------------------------------------------------------ data

    def _schedule(self, jobs: Sequence[ClientJob], width: int) -> list[torch.Tensor]:
        """Per job, its batches as rows of a ``(steps, width)`` index tensor (-1 = padding).

        Each epoch draws ``torch.randperm(n, generator=job.generator)``, exactly as the
        per-client path does, so both see the same batches in the same order (batches of
        ``train.batch_size``; ``width`` is that, or more than every client holds).
        """
        bsz = self.cfg.batch_size
        out = []
        for job in jobs:
            n = int(job.y.shape[0])
            if n == 0:
                raise ValueError("a client with no training samples cannot train")
            spe = math.ceil(n / bsz)
            rows = []
            for _ in range(self.cfg.local_epochs):
                perm = torch.randperm(n, generator=job.generator)
                # width < batch_size only when every client holds at most width samples:
                # then each epoch is one batch of all n
                padded = torch.full((spe * width,), -1, dtype=torch.int64)
                padded[:n] = perm
                rows.append(padded.view(spe, width))
            out.append(torch.cat(rows))
        return out

    # ------------------------------------------------------------------ training

    def train(self, global_state: StateDict, jobs: Sequence[ClientJob]
              ) -> list[tuple[StateDict, int, dict[str, float]]]:
        """Local training of every job from ``global_state``; results in the jobs' order."""
        results: list[tuple[StateDict, int, dict[str, float]] | None] = [None] * len(jobs)
        if not jobs:
            return []
        per_chunk = self._chunk_size(self.step_width(jobs))
        for start in range(0, len(jobs), per_chunk):
            chunk = list(range(start, min(start + per_chunk, len(jobs))))
            for i, res in zip(chunk, self._train_chunk(global_state, [jobs[i] for i in chunk]),
                              strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def _train_chunk(self, global_state: StateDict, jobs: Sequence[ClientJob]
                     ) -> list[tuple[StateDict, int, dict[str, float]]]:
        bsz = self.step_width(jobs)  # samples per client per step, padding included
        schedules = self._schedule(jobs, bsz)  # randperm draws in job order, as per client
        steps = [s.shape[0] for s in schedules]
        # Longest first: at step t the active clients are a prefix of this order.
        order = sorted(range(len(jobs)), key=lambda i: -steps[i])
        x_all, y_all, offsets = self._stack_samples(jobs, order)
        plan = self._step_plan([schedules[i] for i in order], offsets, bsz, len(y_all) - 1)
        params = {n: global_state[n].detach().to(self.device, torch.float32).unsqueeze(0)
                  .repeat(len(order), *([1] * len(self.shapes[n]))).contiguous()
                  for n in self.names}
        dropout = self._dropout([jobs[i] for i in order], [steps[i] for i in order])
        loss_sums = self._run_steps(params, x_all, y_all, plan, bsz, dropout)
        results: list[tuple[StateDict, int, dict[str, float]] | None] = [None] * len(order)
        for k, i in enumerate(order):  # the loss of the last epoch, the weights on the CPU
            n, spe = int(jobs[i].y.shape[0]), steps[i] // self.cfg.local_epochs
            last = float(loss_sums[steps[i] - spe : steps[i], k].sum()) / n
            results[i] = ({name: params[name][k].to("cpu", copy=True) for name in self.names},
                          n, {"train_loss": last})
        return results  # type: ignore[return-value]

    def _dropout(self, jobs: Sequence[ClientJob], steps: Sequence[int]
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """Ordered dropout per batch for the (sorted) ``jobs``: per parameter, its masks
        stacked (the narrower widths', then all ones for the client's own width), and per
        step and client the row to use (``(steps, clients)``); None without dropout."""
        given = [j.dropout for j in jobs]
        if all(d is None for d in given):
            return None
        first = given[0]
        if any(d is None or len(d.masks) != len(first.masks) for d in given) or any(
                not torch.equal(m[n], f[n]) for d in given[1:] for m, f in
                zip(d.masks, first.masks, strict=True) for n in self.names):
            raise ValueError("batched training: the clients of one width must drop the same "
                             "narrower widths")
        own = len(first.masks)
        bank = {n: torch.stack([m[n] for m in first.masks]
                               + [torch.ones(self.shapes[n])]).to(self.device)
                for n in self.names}
        rows = torch.full((max(steps), len(jobs)), own, dtype=torch.int64)
        for k, (d, s) in enumerate(zip(given, steps, strict=True)):
            if len(d.schedule) != s:
                raise ValueError(f"ordered dropout: {len(d.schedule)} batch widths for {s} "
                                 "batches")
            rows[:s, k] = torch.tensor([own if w < 0 else w for w in d.schedule])
        return bank, rows.to(self.device)

    def _stack_samples(self, jobs: Sequence[ClientJob], order: Sequence[int]
                       ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Samples (float NHWC) and labels in ``order`` on the device, a zero row last; offsets."""
        dev = self.device
        xs, ys, offsets, off = [], [], [], 0
        for job in (jobs[i] for i in order):
            xf = to_float_batch(job.transform, job.x).to(dev)
            if tuple(xf.shape[1:]) != self.input_shape:
                raise ValueError(f"client data of shape {tuple(xf.shape[1:])} does not fit the "
                                 f"model input {self.input_shape}")
            xs.append(xf.permute(0, 2, 3, 1))
            ys.append(job.y.to(dev))
            offsets.append(off)
            off += int(job.y.shape[0])
        cin, hh, ww = self.input_shape
        x_all = torch.cat(xs + [torch.zeros(1, hh, ww, cin, device=dev)])
        y_all = torch.cat(ys + [torch.zeros(1, dtype=torch.int64, device=dev)])
        return x_all, y_all, offsets

    def _step_plan(self, schedules: Sequence[torch.Tensor], offsets: Sequence[int], bsz: int,
                   pad_row: int) -> _StepPlan:
        """Every step's rows, from the sorted clients' schedules and their first rows."""
        s_max = schedules[0].shape[0]
        idx = torch.full((s_max, len(schedules), bsz), -1, dtype=torch.int64)
        for k, sched in enumerate(schedules):
            idx[: sched.shape[0], k] = torch.where(sched >= 0, sched + offsets[k], -1)
        valid = idx >= 0
        counts = valid.sum(dim=2)  # (s_max, c)
        inv = torch.where(counts > 0, 1.0 / counts.clamp(min=1).to(torch.float32),
                          torch.zeros(()))
        weights = valid.to(torch.float32) * inv.unsqueeze(2)  # per-sample loss weight
        idx = torch.where(valid, idx, torch.full_like(idx, pad_row))
        active = [sum(1 for s in schedules if s.shape[0] > t) for t in range(s_max)]
        to = self.device  # the tensors themselves on the CPU
        return _StepPlan(idx.to(to), valid.to(to), weights.to(to), active)

    def _run_steps(self, params: dict[str, torch.Tensor], x_all: torch.Tensor,
                   y_all: torch.Tensor, plan: _StepPlan, bsz: int,
                   dropout: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """Train the stacked ``params`` in place; each step's summed loss per client
        (``dropout``: :meth:`_dropout`, each client's parameters times its step's mask)."""
        (cin, hh, ww), cfg, dev = self.input_shape, self.cfg, self.device
        opt = _StackedOptimizer(cfg, [params[n] for n in self.names])
        scaler, skipped_before = self.scaler, self.scaler.skipped
        loss_sums = torch.zeros(len(plan.active), plan.idx.shape[1], device=dev)
        for t, a in enumerate(plan.active):
            rows = plan.idx[t, :a].reshape(-1)
            xb = x_all[rows].view(a, bsz, hh, ww, cin).permute(1, 2, 3, 0, 4).contiguous()
            xb = xb.view(bsz, hh, ww, a * cin).permute(0, 3, 1, 2)  # channels-last
            yb = y_all[rows].view(a, bsz)
            leaves = {n: params[n][:a].detach().requires_grad_() for n in self.names}
            used = leaves if dropout is None else {
                n: leaf * dropout[0][n][dropout[1][t, :a]] for n, leaf in leaves.items()}
            with precision_context(dev, cfg.precision):
                logits = self._forward(used, xb, a)
            ce = F.cross_entropy(logits.float().reshape(a * bsz, -1), yb.reshape(-1),
                                 reduction="none").view(a, bsz)
            loss = (ce * plan.weights[t, :a]).sum()
            grads = torch.autograd.grad(scaler.scaled(loss), [leaves[n] for n in self.names])
            with torch.no_grad():
                loss_sums[t, :a] = (ce.detach() * plan.valid[t, :a]).sum(dim=1)
                finite = scaler.unscale(grads)
                if finite:  # fp16: a step with an overflow is skipped for every client
                    opt.step(grads, a)
                scaler.update(finite)
        if scaler.skipped > skipped_before:
            logger.info("fp16: %d batched steps skipped (gradient overflow); loss scale now %g",
                        scaler.skipped - skipped_before, scaler.scale)
        return loss_sums


class _StackedOptimizer:
    """``torch.optim.Adam`` / ``SGD`` on parameters stacked over clients (leading dim).

    All clients start fresh (step 0, zero moments).  :meth:`step` updates the first ``a``
    clients only; those are the clients still training, which all took the same number of
    steps, so the bias corrections are one scalar for all of them.  The update formulas are
    those of ``torch.optim``'s foreach implementations (lerp for the first moment, ...).
    """

    def __init__(self, cfg: TrainConfig, params: list[torch.Tensor]) -> None:
        self.cfg = cfg
        self.params = params
        self.t = 0
        if cfg.optimizer == "adam":
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        else:
            self.buf = [torch.zeros_like(p) for p in params] if cfg.momentum else []

    def step(self, grads: Sequence[torch.Tensor], a: int) -> None:
        cfg = self.cfg
        self.t += 1
        ps = [p[:a] for p in self.params]
        if cfg.optimizer == "adam":
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            ms = [m[:a] for m in self.m]
            vs = [v[:a] for v in self.v]
            torch._foreach_lerp_(ms, list(grads), 1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, list(grads), list(grads), 1 - beta2)
            bc1 = 1 - beta1 ** self.t
            bc2_sqrt = (1 - beta2 ** self.t) ** 0.5
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, ms, denom, -(cfg.lr / bc1))
        elif cfg.momentum:
            bufs = [b[:a] for b in self.buf]
            if self.t == 1:
                torch._foreach_copy_(bufs, list(grads))
            else:
                torch._foreach_mul_(bufs, cfg.momentum)
                torch._foreach_add_(bufs, list(grads))
            torch._foreach_add_(ps, bufs, alpha=-cfg.lr)
        else:
            torch._foreach_add_(ps, list(grads), alpha=-cfg.lr)
