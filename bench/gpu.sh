#!/usr/bin/env bash
# The device session's one prepared run: CUDA checks + the attention benchmark. Writes logs to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
cd bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 240 python3 gpu_check.py 2>&1 | grep -v Warning | tee "$OUT/gpu_check.log"
timeout 300 python3 attention.py --device cuda 2>&1 | grep -v Warning | tee "$OUT/attention_cuda.log"
