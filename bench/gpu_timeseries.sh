#!/usr/bin/env bash
# Device run for the timeseries recipe: speed vs the paper's architecture, and the long-sequence
# quality targets (sine 100 and 384, fast vs full sampling, longer-than-window generation).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
R=/tmp/runs; mkdir -p $R
ev() { timeout "$1" fusion evaluate "${@:2}" --no-tsne 2>&1 | grep -E "INFO|Error" | tail -4; }
[ "${SKIP_BENCH:-0}" = 1 ] || (cd bench && timeout 80 python3 timeseries.py --device cuda 2>&1 | grep -v Warn) | tee $OUT/ts_bench.log
{
  echo "== sine100"
  timeout 150 fusion run timeseries --preset sine100 run_dir=$R/sine100 train.progress=false train.steps=2000 \
    "eval.metrics=[disc,lds,pred]" eval.tsne=false 2>&1 | grep -E "INFO|Error" | tail -6
  echo "-- sine100 full 1000-step ancestral"; ev 80 $R/sine100 --tag full --sampler ddpm --steps 0 --n 1000 --metrics disc
  echo "-- sine100 windows cut from 4x-long series"; ev 60 $R/sine100 --tag long --metrics disc --long-factor 4 --n 1000
  echo "== sine384"
  timeout 170 fusion run timeseries --preset sine384 run_dir=$R/sine384 train.progress=false train.steps=2000 \
    "eval.metrics=[disc,lds]" eval.tsne=false 2>&1 | grep -E "INFO|Error" | tail -5
} 2>&1 | tee $OUT/ts_runs.log
cd /tmp && tar czf $OUT/ts_results.tgz runs/*/eval*.json runs/*/report*.md runs/*/*.png runs/*/train_time.json runs/*/metrics.jsonl 2>/dev/null
ls -la $OUT
