"""Client-side work: local training from the global weights, and evaluation."""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import seeds
from ..config import TrainConfig
from ..data.transform import PixelTransform, to_float_batch
from ..device import LossScaler, loss_scaler, precision_context, to_device
from ..pruning.widths import batch_schedule, has_batchnorm

StateDict = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh optimizer for one client's local training (no state leaks between clients)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


@dataclass(frozen=True)
class Dropout:
    """Ordered dropout per batch in one client's round: ``schedule[b]`` is -1 for a batch
    that trains the whole model, else the index in ``masks`` of the narrower width it trains
    (:func:`~fedprune.pruning.widths.batch_schedule`); ``masks[j]``: per floating state
    entry, 1 where width ``j`` keeps the value (:func:`~fedprune.pruning.widths.
    dropout_masks`)."""

    schedule: tuple[int, ...]
    masks: tuple[dict[str, torch.Tensor], ...]

    def __post_init__(self) -> None:
        bad = [w for w in self.schedule if not -1 <= w < len(self.masks)]
        if bad:
            raise ValueError(f"ordered dropout: batch widths {bad[:3]} are not -1 or one of "
                             f"the {len(self.masks)} narrower widths")


def dropout_schedule(seed: int, rnd: int, client: int, n: int, cfg: TrainConfig,
                     narrower: int) -> tuple[int, ...]:
    """The batch widths of ``client``'s round ``rnd`` (``n`` training samples) under ordered
    dropout per batch with ``narrower`` narrower widths: what the client trains and what the
    server counts (:func:`~fedprune.pruning.widths.batch_schedule`)."""
    return tuple(batch_schedule(seeds.batch_widths(seed, rnd, client), n, cfg.batch_size,
                                cfg.local_epochs, narrower))


def _narrow_forward(model: nn.Module, masks: dict[str, torch.Tensor], xb: torch.Tensor
                    ) -> torch.Tensor:
    """``model``'s forward as its narrower width ``masks`` (its parameters times the masks:
    the values outside the width get no gradient); running statistics outside the width are
    left as they were.  The arithmetic is the held width's (see :class:`Slices`)."""
    params = {k: p * masks[k] for k, p in model.named_parameters()}
    # running statistics are updated on copies (the graph may hold them), then kept where
    # the width holds them
    stats = {k: b.detach().clone() for k, b in model.named_buffers()
             if k in masks and b.is_floating_point()}
    out = functional_call(model, {**params, **stats}, (xb,))
    with torch.no_grad():
        for k, b in model.named_buffers():
            if k in stats:
                b.copy_(torch.where(masks[k].bool(), stats[k], b))
    return out


@dataclass(frozen=True)
class Slices:
    """A narrower width as the sub-model it is: per floating state entry, the flat indices
    of the values it keeps (in the sub-model's order) and the sub-model's shape of it.

    A batch at a narrower width then runs the sub-model itself (:func:`_sliced_forward`):
    the FLOPs the meter counts for it, where the masked held width (:func:`_narrow_forward`)
    spends the held width's."""

    index: dict[str, torch.Tensor]
    shape: dict[str, tuple[int, ...]]

    @staticmethod
    def of(masks: dict[str, torch.Tensor]) -> Slices | None:
        """The slices of a width's masks; ``None`` where a mask is not a block of whole rows
        and columns (it cannot be a sub-model's entry)."""
        index, shape = {}, {}
        for k, m in masks.items():
            keep = m != 0
            dims = tuple(
                int(keep.amax(dim=tuple(e for e in range(keep.dim()) if e != d)).sum())
                if keep.dim() > 1 else int(keep.sum()) for d in range(keep.dim()))
            if math.prod(dims) != int(keep.sum()):
                return None
            index[k] = keep.reshape(-1).nonzero().reshape(-1)
            shape[k] = dims
        return Slices(index, shape)


def _sliced_forward(model: nn.Module, sl: Slices, xb: torch.Tensor) -> torch.Tensor:
    """``model``'s forward as the sub-model ``sl`` (its parameters gathered into the
    sub-model's shapes: gradients flow back to the kept values only, at the sub-model's
    cost); running statistics outside the width are left as they were."""
    params = {k: p.reshape(-1)[sl.index[k]].view(sl.shape[k])
              for k, p in model.named_parameters()}
    stats = {k: b.reshape(-1)[sl.index[k]].view(sl.shape[k]) for k, b in model.named_buffers()
             if k in sl.index and b.is_floating_point()}  # gathered: copies
    out = functional_call(model, {**params, **stats}, (xb,))
    with torch.no_grad():
        for k, b in model.named_buffers():
            if k in stats:
                b.view(-1).index_copy_(0, sl.index[k], stats[k].reshape(-1))
    return out


@torch.no_grad()
def _runs_sliced(model: nn.Module, masks: dict[str, torch.Tensor], sl: Slices | None,
                 xb: torch.Tensor) -> bool:
    """Whether ``model`` computes its narrower width ``masks`` as the sub-model ``sl``: the
    same output as the masked held width on one sample (a forward that depends on the
    widths in other ways -- grouped convs, fixed reshapes -- fails or differs; it then runs
    masked, with a warning)."""
    if sl is None:
        return False
    was = model.training
    model.eval()  # no statistics move
    try:
        with precision_context(xb.device, "fp32"):  # IEEE float32 on CUDA too
            want = _narrow_forward(model, masks, xb[:1])
            got = _sliced_forward(model, sl, xb[:1])
        ok = got.shape == want.shape and bool(torch.allclose(
            got.float(), want.float(), rtol=1e-3, atol=1e-4 * (1 + float(want.abs().max()))))
    except Exception as exc:  # noqa: BLE001 (a user model may raise anything on other shapes)
        logger.debug("ordered dropout: sliced forward failed: %s", exc)
        ok = False
    finally:
        model.train(was)
    return ok


def _masked_instead(w: int, why: str) -> None:
    """Say (once per width and reason: the warnings filter's default) that narrower width
    ``w`` trains as the masked held width."""
    warnings.warn(f"ordered dropout: this model does not run narrower width {w} as its "
                  f"sub-model ({why}); its batches train the masked held width (the held "
                  "width's FLOPs, more than counted)", RuntimeWarning, stacklevel=3)


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: LossScaler | None = None,
    transform: PixelTransform | None = None,
    dropout: Dropout | None = None,
) -> tuple[StateDict, int, dict[str, float]]:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs; return a copy of its weights.

    Batches are drawn from ready tensors with a seeded permutation per epoch.  A uint8 ``x``
    (a view of the prepared cache) is turned into float32 one batch at a time, through
    ``transform``, its dataset's pixel transform (``fedprune.data.transform``; ``None``: scaled
    to [0, 1]); float tensors pass unchanged.
    Training runs on the device of ``model``'s parameters (``x`` and ``y`` are moved there
    if they are elsewhere) in ``cfg.precision`` (:mod:`fedprune.device`).
    Returns ``(state_dict, n_examples, {"train_loss": mean loss of the last epoch})``, the
    weights as float32 CPU tensors.  ``optimizer`` (built by :func:`make_optimizer` on
    ``model``) is reused with its state cleared, which is the same as a fresh one; ``None``
    builds one.  ``scaler`` (fp16): the engine's loss scaler, kept across clients; ``None``
    makes one for this call.  ``dropout``: ordered dropout per batch (:class:`Dropout`; its
    schedule holds one entry per batch of the round).
    """
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("a client with no training samples cannot train")
    device = next(model.parameters()).device
    x, y = to_device(x, device), to_device(y, device)
    if scaler is None:
        scaler = loss_scaler(cfg.precision)
    skipped_before = scaler.skipped
    if optimizer is None:
        opt = make_optimizer(model, cfg)
    else:
        opt = optimizer
        opt.state.clear()
    masks: list[dict[str, torch.Tensor]] = []
    # each narrower width runs as its sub-model once checked to compute it; else masked
    sliced: dict[int, Slices | None] = {}
    if dropout is not None:
        batches = cfg.local_epochs * math.ceil(n / cfg.batch_size)
        if len(dropout.schedule) != batches:
            raise ValueError(f"ordered dropout: {len(dropout.schedule)} batch widths for "
                             f"{batches} batches")
        masks = [{k: v.to(device) for k, v in m.items()} for m in dropout.masks]
    model.train()
    last_loss = math.nan
    b = 0
    for _ in range(cfg.local_epochs):
        perm = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        perm = perm.to(device)  # itself on the CPU
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            xb, yb = to_float_batch(transform, x[idx]), y[idx]
            opt.zero_grad(set_to_none=True)
            w = dropout.schedule[b] if dropout is not None else -1
            b += 1
            if w >= 0 and w not in sliced:
                sl = Slices.of(masks[w])
                sliced[w] = sl if _runs_sliced(model, masks[w], sl, xb) else None
                if sliced[w] is None:
                    _masked_instead(w, "its forward fails or differs sliced")
            with precision_context(device, cfg.precision):
                if w < 0:
                    logits = model(xb)
                else:
                    sl = sliced[w]
                    try:
                        logits = (_sliced_forward(model, sl, xb) if sl is not None else
                                  _narrow_forward(model, masks[w], xb))
                    except Exception as exc:  # a path only training takes: masked from now
                        if sl is None:
                            raise
                        sliced[w] = None
                        _masked_instead(w, f"its training forward fails sliced: {exc}")
                        logits = _narrow_forward(model, masks[w], xb)
            loss = F.cross_entropy(logits.float(), yb)
            scaler.scaled(loss).backward()  # the loss itself unless fp16
            finite = scaler.unscale(p.grad for p in model.parameters())
            if finite:  # fp16: a step whose gradients overflow is skipped
                opt.step()
            scaler.update(finite)
            total += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        last_loss = total / seen
    if scaler.skipped > skipped_before:
        logger.info("fp16: %d steps of this client skipped (gradient overflow); loss scale "
                    "now %g", scaler.skipped - skipped_before, scaler.scale)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return state, n, {"train_loss": last_loss}


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
    device: torch.device | None = None, transform: PixelTransform | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``, in eval mode, float32.

    A uint8 ``x`` is converted batch by batch through ``transform``, as in
    :func:`train_local`.  Runs on
    ``device`` (a copy of ``model`` is moved there when it is elsewhere), by default on the
    device of ``model``'s parameters; batches of ``x`` elsewhere are moved there.
    """
    here = next(model.parameters()).device
    if device is not None and device != here:
        model = copy.deepcopy(model).to(device)
    else:
        device = here
    y = to_device(y, device)
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        with precision_context(device, "fp32"):  # IEEE float32 on CUDA too
            for start in range(0, int(y.shape[0]), batch_size):
                xb = to_float_batch(transform, x[start : start + batch_size]).to(device)
                yb = y[start : start + batch_size]
                logits = model(xb)
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    n = int(y.shape[0])
    return correct / n, loss_sum / n


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, samples: int, batch_size: int,
                        transform: PixelTransform | None = None) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated from its
    first ``samples`` rows of ``x`` (forward passes in training mode, batches of
    ``batch_size``, each batch weighted alike: PyTorch's cumulative average); the weights
    are untouched.  ``model`` itself is returned when it has no batch norm or ``samples`` is
    0.

    A nested width's sub-model shares its running statistics with every wider width (they
    were accumulated while clients trained the full width and the others), which are not
    its own: measured with them, a narrow width looks worse than it is (US-Nets' "BN
    calibration", Yu and Huang, ICCV 2019).
    """
    samples = min(int(samples), int(x.shape[0]))
    if samples <= 0 or not has_batchnorm(model):
        return model
    net = copy.deepcopy(model)
    device = next(net.parameters()).device
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    net.train()
    with precision_context(device, "fp32"):
        for start in range(0, samples, batch_size):
            net(to_float_batch(transform, x[start : min(start + batch_size, samples)])
                .to(device))
    return net.eval()


def evaluate_widths(nets: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                    train_x: torch.Tensor | None = None, calibrate: int = 0,
                    batch_size: int = 32, transform: PixelTransform | None = None
                    ) -> list[tuple[float, float]]:
    """What a client answers a validation query with: accuracy and loss of each of ``nets``
    (the model, then its sub-models) on its validation split ``(x, y)``, each net's
    batch-norm statistics first re-estimated on up to ``calibrate`` of its training
    samples ``train_x`` when asked (:func:`calibrate_batchnorm`)."""
    out = []
    for net in nets:
        if calibrate > 0 and train_x is not None:
            net = calibrate_batchnorm(net, train_x, calibrate, batch_size, transform)
        out.append(evaluate(net, x, y, transform=transform))
    return out


class PerClientTrainer:
    """Trains clients one after another on one reused worker model and optimizer.

    The worker is built once per architecture (rebuild the trainer after a pruning step) and
    loads each client's starting weights in place, so no model is constructed per client.
    Same interface as :class:`fedprune.federated.batched.BatchedTrainer`.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig,
                 device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.worker = copy.deepcopy(model)
        if device is not None:
            self.worker.to(device)
        self.optimizer = make_optimizer(self.worker, cfg)
        self.scaler = loss_scaler(cfg.precision)

    def train(self, global_state: StateDict, jobs: Sequence[Any]
              ) -> list[tuple[StateDict, int, dict[str, float]]]:
        """Train each :class:`~fedprune.federated.batched.ClientJob` from ``global_state``."""
        out = []
        for job in jobs:
            self.worker.load_state_dict(global_state)
            out.append(train_local(self.worker, job.x, job.y, self.cfg, job.generator,
                                   self.optimizer, self.scaler, job.transform, job.dropout))
        return out
