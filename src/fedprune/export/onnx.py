"""ONNX export, verified: ``onnx.checker`` plus an onnxruntime parity check against PyTorch.

The file takes one input named ``input`` (float32, NCHW, batch dimension dynamic) and returns
``logits`` (float32, ``[batch, num_classes]``).  The legacy TorchScript exporter is used: it
needs no extra packages, and every model in the registry exports with it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 17
ATOL = 1e-4  # parity tolerance against PyTorch (absolute, on logits) ...
RTOL = 1e-3  # ... plus this relative part


class ExportError(RuntimeError):
    """An exported file failed its check or does not match PyTorch within tolerance."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    bytes: int
    max_abs_diff: float  # onnxruntime vs PyTorch on the parity batch


def ort_session(path: Path, threads: int = 1):  # noqa: ANN201 - onnxruntime type
    """A CPU onnxruntime session pinned to ``threads`` intra-op threads, sequential."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: Path,
    *,
    parity_batch: int = 4,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> ExportReport:
    """Export ``model`` (eval mode) to ``path`` and verify it; raise :class:`ExportError`."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example_input,), str(path), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["logits"], external_data=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        try:
            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{path}: onnx.checker rejected the export: {exc}") from None
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((parity_batch, *example_input.shape[1:]), generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = ort_session(path).run(["logits"], {"input": x.numpy()})[0]
    finally:
        model.train(was_training)
    diff = float(np.max(np.abs(got - ref)))
    if got.shape != ref.shape or not np.allclose(got, ref, atol=atol, rtol=rtol):
        raise ExportError(
            f"{path}: onnxruntime output differs from PyTorch (max |diff| {diff:.3g}, "
            f"tolerance atol={atol} rtol={rtol})"
        )
    logger.info("exported %s (%d bytes, max |diff| %.3g)", path, path.stat().st_size, diff)
    return ExportReport(path, path.stat().st_size, diff)
