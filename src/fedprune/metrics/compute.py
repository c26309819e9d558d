"""The clients' compute, counted from what the server asks of them (the meter's rule,
:mod:`fedprune.federated.meter`; the methods that cap a client's work count with it too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ClientCompute"]


@dataclass(frozen=True)
class ClientCompute:
    """The clients' FLOPs, counted from what the server asks of them.

    ``train_sizes`` / ``val_sizes``: each client's training and validation samples;
    ``epochs``: local epochs per round.  Models are given by their forward FLOPs per sample
    (:func:`~fedprune.metrics.count_flops`).
    """

    train_sizes: Sequence[int]
    val_sizes: Sequence[int]
    epochs: int

    def train(self, forward_flops: Sequence[int], clients: Sequence[int]) -> int:
        """FLOPs of ``clients`` each training every model (given by its forward FLOPs) for
        one round: forward and backward over every training sample, every epoch."""
        samples = sum(self.train_sizes[c] for c in clients) * self.epochs
        return sum(3 * f * samples for f in forward_flops)

    def validate(self, forward_flops: int, clients: Sequence[int]) -> int:
        """FLOPs of ``clients`` each evaluating a model on its validation split."""
        return forward_flops * sum(self.val_sizes[c] for c in clients)

    def train_one(self, forward_flops: int, client: int) -> int:
        """FLOPs of ``client`` training one model (given by its forward FLOPs) for a round."""
        return 3 * forward_flops * self.train_sizes[client] * self.epochs

    def train_batches(self, forward_flops: Sequence[int], client: int, batch_size: int,
                      schedule: Sequence[int]) -> int:
        """FLOPs of ``client`` training one round batch by batch, each batch at the width
        ``schedule`` gives it (ordered dropout, :func:`~fedprune.pruning.widths.
        batch_schedule`: -1 is ``forward_flops[-1]``, its own width, else the index of a
        narrower width's): forward and backward over the batch's samples."""
        n = self.train_sizes[client]
        per_epoch = -(-n // batch_size)
        if len(schedule) != per_epoch * self.epochs:
            raise ValueError(f"{len(schedule)} batch widths for {per_epoch * self.epochs} "
                             "batches")
        total = 0
        for b, w in enumerate(schedule):
            i = b % per_epoch
            size = min(batch_size, n - i * batch_size)
            total += 3 * forward_flops[w] * size
        return total

    def validate_one(self, forward_flops: int, client: int, calibrate: int = 0) -> int:
        """FLOPs of ``client`` evaluating one model on its validation split (after forward
        passes over up to ``calibrate`` of its training samples to re-estimate batch-norm
        statistics)."""
        return forward_flops * (self.val_sizes[client]
                                + min(calibrate, self.train_sizes[client]))
