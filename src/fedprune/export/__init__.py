"""Export for phones: ONNX (verified with onnxruntime) and, optionally, ExecuTorch."""

from .bench import LatencyRow, bench_onnx_latency, format_rows
from .onnx import ATOL, RTOL, ExportError, ExportReport, export_onnx, ort_session
from .runs import RunModels, load_run

__all__ = [
    "ATOL",
    "RTOL",
    "ExportError",
    "ExportReport",
    "LatencyRow",
    "RunModels",
    "bench_onnx_latency",
    "export_onnx",
    "format_rows",
    "load_run",
    "ort_session",
]
