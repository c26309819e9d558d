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

On the CPU a run resumes bit-identically in float32 and in bf16 (tested), and the two
engines agree to float rounding; float32 runs are the same bit for bit as before these
settings existed.  On CUDA, runs agree with the CPU's and with themselves only up to the order
of floating-point reductions, which cuDNN chooses (tested to rounding, not bit for bit).

Each entry point of a run (the in-process :func:`fedprune.federated.run_simulation`, the
Flower ServerApp and ClientApp) sets torch's CPU thread count from ``threads`` through
:func:`use_threads`, resolves ``device`` once and hands the :class:`torch.device` down; the
clients' tensors are moved there once by :class:`DeviceData`, which both engines share.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from .config import ExperimentConfig, check_device_name

if TYPE_CHECKING:  # data imports config, as this module does
    from .data import FederatedData
    from .data.transform import PixelTransform

__all__ = ["DEVICE_NAMES", "PRECISIONS", "DeviceData", "DeviceError", "LossScaler",
           "check_device_name", "check_precision", "loss_scaler", "precision_context",
           "resolve_device", "to_device", "use_threads"]

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """The device or precision asked for is not available on this machine."""


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The torch device ``name`` means on this machine; :class:`DeviceError` when it is no
    device name or not here (a CPU-only torch, no GPU visible, an index past the GPUs, no
    MPS).  ``key`` names the setting in the messages (a SuperNode's "node config device")."""
    if not check_device_name(name):
        raise DeviceError(f"{key} = {name!r} is not a device: use one of "
                          f"{', '.join(DEVICE_NAMES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"{key} = 'mps' but this machine has no usable Apple MPS "
                              "backend (torch.backends.mps.is_available() is False); use "
                              "device = 'cpu' or 'auto'")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA support"
               if torch.version.cuda is None else
               f"no CUDA GPU is visible to torch {torch.__version__} (CUDA "
               f"{torch.version.cuda}; check the driver and CUDA_VISIBLE_DEVICES)")
        raise DeviceError(f"{key} = {name!r} but {why}; use device = 'cpu', or 'auto' to "
                          "take a GPU only where there is one")
    dev = torch.device(name)
    count = torch.cuda.device_count()
    if dev.index is None:  # the current device, named (a model there is on "cuda:0")
        return torch.device("cuda", torch.cuda.current_device())
    if dev.index >= count:
        raise DeviceError(f"{key} = {name!r} but torch sees {count} CUDA device"
                          f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    return dev


def use_threads(cfg: ExperimentConfig) -> None:
    """Set this process's torch CPU thread count to ``cfg.threads`` (0: leave torch's
    default).  Called once per process by each entry point of a run."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def check_precision(device: torch.device, precision: str) -> None:
    """:class:`DeviceError` when ``train.precision`` cannot run on ``device``."""
    if precision not in PRECISIONS:
        raise DeviceError(f"train.precision = {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError(f"train.precision = 'fp16' needs a CUDA device (this run trains on "
                          f"{device.type}); on the CPU use 'bf16', which needs no loss scaling")
    if (precision == "bf16" and device.type == "cuda"
            and torch.cuda.get_device_capability(device) < (8, 0)):
        raise DeviceError(f"train.precision = 'bf16' but {torch.cuda.get_device_name(device)} "
                          "(compute capability below 8.0) has no native bfloat16; use 'fp16' "
                          "or 'fp32'")


def precision_context(device: torch.device, precision: str
                      ) -> contextlib.AbstractContextManager:
    """The arithmetic of ``precision`` on ``device``: autocast for bf16 / fp16; for fp32,
    nothing on the CPU and IEEE float32 on CUDA (convolutions and matrix products without
    TF32, which torch otherwise lets cuDNN use for float32 convolutions)."""
    if precision == "fp32":
        return _ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device`` (itself when it is there already)."""
    return x if x.device == device else x.to(device)


class DeviceData:
    """The clients' tensors of ``data`` on the training ``device``, each moved there once (on
    first use) and kept; on the CPU, the tensors themselves.  Batches of a uint8 tensor
    become model inputs through :attr:`transform`, ``data``'s pixel transform."""

    def __init__(self, data: FederatedData, device: torch.device) -> None:
        self.data, self.device = data, device
        self._moved: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def transform(self) -> PixelTransform | None:
        return self.data.transform

    def get(self, cid: int, name: str) -> torch.Tensor:
        t = getattr(self.data.clients[cid], name)
        if self.device.type == "cpu" or t is None:
            return t
        key = (cid, name)
        if key not in self._moved:
            self._moved[key] = to_device(t, self.device)
        return self._moved[key]


class LossScaler:
    """Dynamic loss scaling for fp16 training, as ``torch.amp.GradScaler`` does it.

    The loss is multiplied by :attr:`scale` before the backward pass; :meth:`unscale` divides
    the gradients back and says whether they are all finite.  A step with a non-finite
    gradient is skipped (the optimizer does not step, its step count does not advance) and
    the scale halves; after ``growth_interval`` finite steps in a row it doubles.  Used by
    both local-training engines, which keep one scaler across their clients and rounds (the
    scale settles once, not per client) and log the skipped steps; ``enabled=False`` (fp32,
    bf16) makes every method a no-op.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16,
                 growth_interval: int = 2000) -> None:
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_interval = growth_interval
        self._good = 0
        self.steps = self.skipped = 0  # steps taken through this scaler, and those skipped

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale(self, grads: Iterable[torch.Tensor | None]) -> bool:
        """Divide ``grads`` (None: a parameter without one) in place by the scale; True when
        every value is finite.  Disabled, it reads nothing and says True."""
        if not self.enabled:
            return True
        present = [g for g in grads if g is not None]
        torch._foreach_mul_(present, 1.0 / self.scale)
        return bool(torch.stack([torch.isfinite(g).all() for g in present]).all())

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        self.steps += 1
        if not finite:
            self.skipped += 1
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

