"""Per-batch input transform for image tensors kept as uint8 (e.g. views of the cache).

The prepared cache stores pixels as ``uint8`` and clients hold views into it, so nothing is
converted up front.  Training and evaluation turn each batch into standardised float32 with
:func:`to_float_batch`: ``x / 255`` and then ``(x - mean) / std`` per channel, with the
dataset's mean and standard deviation (computed once, over the training split, when the cache
is built).  That :class:`PixelTransform` travels beside the uint8 tensors
(:attr:`fedprune.data.FederatedData.transform`) and is passed to every function that turns
their batches into model inputs.  A uint8 batch without a transform (``None``) is only scaled
to [0, 1]; float batches pass through unchanged, so the in-memory digits path behaves exactly
as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PixelTransform:
    """``uint8 -> float32``: ``x * scale[c] + shift[c]`` per channel ``c``."""

    mean: tuple[float, ...]  # per channel, of x / 255
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std need one value per channel")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be > 0 per channel, got {self.std}")
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=torch.float32)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)],
                             dtype=torch.float32)
        object.__setattr__(self, "_scale", scale.view(-1, 1, 1))
        object.__setattr__(self, "_shift", shift.view(-1, 1, 1))
        object.__setattr__(self, "_on", {})  # (scale, shift) per accelerator, copied once

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> PixelTransform:
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        out = xb.to(torch.float32)
        scale, shift = self._scale, self._shift  # type: ignore[attr-defined]
        if out.device != scale.device:  # a batch on an accelerator
            on = self._on  # type: ignore[attr-defined]
            if out.device not in on:
                on[out.device] = (scale.to(out.device), shift.to(out.device))
            scale, shift = on[out.device]
        return out.mul_(scale).add_(shift)


def to_float_batch(transform: PixelTransform | None, batch: torch.Tensor) -> torch.Tensor:
    """Model input for ``batch``, pixels of a dataset whose transform is ``transform``.

    Float batches are returned as they are; uint8 batches go through ``transform`` (or are
    scaled to [0, 1] when it is ``None``).
    """
    if batch.dtype != torch.uint8:
        return batch
    if transform is None:
        return batch.to(torch.float32).div_(255.0)
    return transform(batch)
