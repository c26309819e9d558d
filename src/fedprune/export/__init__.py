"""Export for phones: ONNX (verified with onnxruntime) and, optionally, ExecuTorch."""

from ..rundir import LATENCY_FILE
from .bench import LatencyRow, bench_onnx_latency, format_rows, run_latency_record
from .onnx import ATOL, RTOL, ExportError, ExportReport, export_onnx, ort_session
from .runs import RunModels, load_run

__all__ = [
    "ATOL",
    "LATENCY_FILE",
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
    "run_latency_record",
]
