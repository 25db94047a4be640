#!/usr/bin/env bash
# Device run for the timeseries recipe: speed vs the paper's architecture, and the long-sequence
# quality targets (sine 100 / 384, S&P 500 24 / 128, fast vs full sampling, longer-than-window).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
R=/tmp/runs; mkdir -p $R
run() { name=$1; shift; timeout ${T:-150} fusion run timeseries "$@" run_dir=$R/$name train.progress=false 2>&1 | grep -E "INFO|Error|error" | tail -12; }
(cd bench && timeout 120 python3 timeseries.py --device cuda 2>&1 | grep -v Warn) | tee $OUT/ts_bench.log
{
  echo "== sine100"; run sine100 --preset sine100
  timeout 100 fusion evaluate $R/sine100 --tag full --sampler ddpm --steps 0 --metrics disc --no-tsne 2>&1 | grep INFO | tail -2
  timeout 100 fusion evaluate $R/sine100 --tag long --metrics disc --long-factor 4 --no-tsne 2>&1 | grep INFO | tail -2
  echo "== sine384"; T=200 run sine384 --preset sine384
  echo "== stocks24"; T=100 run stocks24 --preset stocks train.steps=3000 train.batch_size=128
  echo "== stocks128"; T=120 run stocks128 --preset stocks128
} 2>&1 | tee $OUT/ts_runs.log
for r in $R/*; do n=$(basename $r); for f in $r/eval*.json $r/report*.md $r/*.png; do [ -f "$f" ] && cp "$f" "$R/../pack_${n}_$(basename $f)"; done; done
tar czf $OUT/ts_results.tgz -C /tmp $(cd /tmp && ls pack_* 2>/dev/null) 2>/dev/null
ls -la $OUT
