#!/usr/bin/env bash
# fedprune on one CUDA GPU: the CUDA tests and the simulation-speed benchmark, figures in one file.
#
#     bash benchmarks/gpu_check.sh [OUT_FILE]        # default gpu_check.txt; under 5 minutes
#
# Run on a machine with one NVIDIA GPU.  It uses $PYTHON (default python3) when its torch is
# a CUDA build and fedprune imports; otherwise it makes .venv-gpu and installs torch 2.13.0
# from PyPI (whose Linux wheel is the CUDA build) and fedprune[test] (GPU_CHECK_INSTALL=0:
# never install).
# Then, each step with its own time limit so that the whole stays under 5 minutes:
#   1. nvidia-smi and torch's view of the GPU;
#   2. pytest -m cuda: tests/test_cuda.py (training, evaluation, resume and the ClientApp on
#      the GPU; fp32, bf16 and fp16 with loss scaling) -- these skip where no GPU is seen;
#   3. benchmarks/sim_speed.py on the GPU: the plain per-client loop (fp32) beside the batched
#      engine in fp32, bf16 and fp16, at the initial width [32, 64] and at [6, 12] (50 clients x
#      200 samples x 5 local epochs, medians of 3 rounds, side by side in one process);
# and writes everything to OUT_FILE (the benchmark's JSON beside it, OUT_FILE.json).
set -uo pipefail

OUT=${1:-gpu_check.txt}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
: > "$OUT"
log() { echo "$@" | tee -a "$OUT"; }

PY=${PYTHON:-python3}
# install unless torch (a CUDA build), fedprune and pytest import; GPU_CHECK_INSTALL=0: never
if [ "${GPU_CHECK_INSTALL:-1}" != 0 ] && ! "$PY" -c \
        'import torch, fedprune, pytest; assert torch.version.cuda' 2>/dev/null; then
    log "== installing: torch 2.13.0 (CUDA wheel from PyPI) and fedprune[test] into .venv-gpu"
    "$PY" -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    "$PY" -m pip install -q --upgrade pip >/dev/null
    timeout 240 "$PY" -m pip install -q "torch==2.13.0" >>"$OUT" 2>&1 || log "torch install failed"
    timeout 120 "$PY" -m pip install -q -e ".[test]" >>"$OUT" 2>&1 || log "fedprune install failed"
fi

log "== $(date -u +%FT%TZ) fedprune gpu check, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
log "== nvidia-smi"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi") | tee -a "$OUT"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device 0: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

log "== pytest -m cuda (tests/test_cuda.py)"
timeout 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py -rs 2>&1 | tail -25 | tee -a "$OUT"
log "pytest exit status: ${PIPESTATUS[0]}"

log "== benchmarks/sim_speed.py on the GPU (plain fp32 loop vs batched fp32/bf16/fp16)"
timeout 120 "$PY" benchmarks/sim_speed.py --device cuda --widths 32,64 6,12 --reps 3 \
    --precisions fp32 bf16 fp16 --no-flower --threads 1 --json "$OUT.json" 2>&1 | tee -a "$OUT"
log "benchmark exit status: ${PIPESTATUS[0]}"

log "== done $(date -u +%FT%TZ); figures in $OUT"
