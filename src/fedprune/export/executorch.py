"""ExecuTorch export (``.pte``, XNNPACK backend), verified through ExecuTorch's Python runtime.

Optional: ``pip install 'fedprune[executorch]'`` (ExecuTorch 1.5.1, which runs beside torch
2.13.0).  The program takes one float32 NCHW tensor of the export's fixed shape (batch 1) and
returns the logits.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .onnx import ATOL, RTOL, ExportError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PteReport:
    path: Path
    bytes: int
    max_abs_diff: float


def _require_executorch() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise ExportError(
            "ExecuTorch is not installed: pip install 'fedprune[executorch]' "
            "(executorch 1.5.1, compatible with torch 2.13.0)"
        ) from None


def export_executorch(
    model: nn.Module, example_input: torch.Tensor, path: Path, *, seed: int = 0
) -> PteReport:
    """Lower ``model`` to XNNPACK, write ``path`` (.pte), check parity in the runtime."""
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        x0 = example_input[:1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(model, (x0,))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            path.write_bytes(lowered.to_executorch().buffer)
        x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        method = Runtime.get().load_program(str(path)).load_method("forward")
        got = method.execute([x])[0]
        with torch.no_grad():
            ref = model(x)
    finally:
        model.train(was_training)
    diff = float((got - ref).abs().max())
    if got.shape != ref.shape or not torch.allclose(got, ref, atol=ATOL, rtol=RTOL):
        raise ExportError(f"{path}: ExecuTorch output differs from PyTorch (max |diff| "
                          f"{diff:.3g}, tolerance atol={ATOL} rtol={RTOL})")
    return PteReport(path, path.stat().st_size, diff)


def pte_runner(path: Path, example_input: torch.Tensor):  # noqa: ANN201
    """A zero-argument callable running the program once on ``example_input`` (for timing)."""
    _require_executorch()
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    x = example_input[:1].contiguous()
    return lambda: method.execute([x])
