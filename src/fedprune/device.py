"""Where local training runs and in which precision: the ``device`` and ``train.precision``
settings.

``device`` names a torch device: ``cpu``, ``cuda`` (the current CUDA device), ``cuda:N``,
``mps``, or ``auto`` (CUDA when this machine's torch sees a GPU, else the CPU).  It is
resolved on the machine that trains -- the in-process loop's machine, or each Flower
SuperNode (whose node config may set its own ``device``) -- by :func:`resolve_device`, which
says clearly what is missing when the device asked for is not there.

``train.precision`` is ``fp32`` (plain float32), ``bf16`` (autocast to bfloat16: matrix
products and convolutions in bfloat16, weights, optimizer state and gradients' updates in
float32) or ``fp16`` (autocast to float16 with dynamic loss scaling, CUDA only).  Aggregation
is float32 whatever the precision; what travels is set by ``fed.payload_dtype``
(:mod:`fedprune.federated.wire`).

Only CPU float32 is bit-reproducible across runs, engines and resumes (the engine-equality
and resume tests hold there); bf16 and CUDA runs are reproducible only up to the order of
floating-point reductions, which oneDNN and cuDNN choose per machine.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence

import torch

__all__ = ["DEVICE_NAMES", "PRECISIONS", "LossScaler", "autocast", "check_device_name",
           "check_precision", "loss_scaler", "resolve_device", "to_device"]

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceError(ValueError):
    """The device or precision asked for is not available on this machine."""


def check_device_name(name: str) -> bool:
    """True when ``name`` is one of the device names fedprune accepts (syntax only)."""
    return isinstance(name, str) and _DEVICE_RE.match(name) is not None


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` means on this machine; :class:`DeviceError` when it is not
    here (a CPU-only torch, no GPU visible, an index past the GPUs, no MPS)."""
    if not check_device_name(name):
        raise DeviceError(f"device = {name!r} is not a device: use one of "
                          f"{', '.join(DEVICE_NAMES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device = 'mps' but this machine has no usable Apple MPS "
                              "backend (torch.backends.mps.is_available() is False); use "
                              "device = 'cpu' or 'auto'")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA support"
               if torch.version.cuda is None else
               f"no CUDA GPU is visible to torch {torch.__version__} (CUDA "
               f"{torch.version.cuda}; check the driver and CUDA_VISIBLE_DEVICES)")
        raise DeviceError(f"device = {name!r} but {why}; use device = 'cpu', or 'auto' to "
                          "take a GPU only where there is one")
    dev = torch.device(name)
    count = torch.cuda.device_count()
    if dev.index is None:  # the current device, named (a model there is on "cuda:0")
        return torch.device("cuda", torch.cuda.current_device())
    if dev.index >= count:
        raise DeviceError(f"device = {name!r} but torch sees {count} CUDA device"
                          f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    return dev


def check_precision(device: torch.device, precision: str) -> None:
    """:class:`DeviceError` when ``train.precision`` cannot run on ``device``."""
    if precision not in PRECISIONS:
        raise DeviceError(f"train.precision = {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError(f"train.precision = 'fp16' needs a CUDA device (this run trains on "
                          f"{device.type}); on the CPU use 'bf16', which needs no loss scaling")
    if (precision == "bf16" and device.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise DeviceError(f"train.precision = 'bf16' but {torch.cuda.get_device_name(device)} "
                          "has no native bfloat16; use 'fp16' or 'fp32'")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device`` (itself when it is there already), keeping its pixel transform."""
    from .data.transform import attach_transform, get_transform  # data imports config

    if x.device == device:
        return x
    return attach_transform(x.to(device), get_transform(x))


class LossScaler:
    """Dynamic loss scaling for fp16 training, as ``torch.amp.GradScaler`` does it.

    The loss is multiplied by :attr:`scale` before the backward pass; :meth:`unscale` divides
    the gradients back and says whether they are all finite.  A step with a non-finite
    gradient is skipped (the optimizer does not step, its step count does not advance) and
    the scale halves; after ``growth_interval`` finite steps in a row it doubles.  Used by
    both local-training engines; ``enabled=False`` (fp32, bf16) makes every method a no-op.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16,
                 growth_interval: int = 2000) -> None:
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_interval = growth_interval
        self._good = 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale(self, grads: Sequence[torch.Tensor]) -> bool:
        """Divide ``grads`` in place by the scale; True when every value is finite."""
        if not self.enabled:
            return True
        inv = 1.0 / self.scale
        torch._foreach_mul_(list(grads), inv)
        return all(bool(torch.isfinite(g).all()) for g in grads)

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale = max(self.scale / 2.0, 2.0**-24)
            self._good = 0
            return
        self._good += 1
        if self._good >= self.growth_interval and math.isfinite(self.scale * 2.0):
            self.scale *= 2.0
            self._good = 0


def loss_scaler(precision: str) -> LossScaler:
    """The loss scaler of ``precision``: active for fp16 only."""
    return LossScaler(enabled=precision == "fp16")

