#!/usr/bin/env bash
# One prepared device run (a GPU is lent for minutes, so everything is in one script with hard
# time limits). Logs go to $OUT. Sections, chosen by the arguments (default: mm launch lmce, < 8 min):
#   check  CUDA correctness: flex vs SDPA gradients, compiled blocks vs eager, the denoiser replayed
#          as a CUDA graph vs eager (and whether it was captured), the chunked LM loss vs plain (gpu_check.py)
#   attn   attention benchmark (attention.py)
#   mm     training throughput at rows of 4096, alone on the GPU: the 0.16B preset (bare loop with
#          flex and compiled blocks, also as CUDA graphs (reduce-overhead); the Trainer collating in
#          the loop and with 2 workers; 8 rows) and the 0.76B preset (bare and Trainer, MFU)
#   ts     time series: runs trained on the CPU and carried in runs/ (gitignored), scored on the
#          GPU: runs/sine100 with DPM-Solver-50 (disc + LDS) and DDPM-1000 (disc), the fast-sampling
#          target; runs/sine384 with disc + LDS (the full 2000-step classifiers)
#   tsb    bench/timeseries.py compiled, ours vs the paper's architecture
#   launch README command 1's job on the GPU (bench/ts_launch.py): Trainer steps eager / compiled /
#          compiled with reduce-overhead (CUDA graphs), projected to 4000 steps; sampling 3000 series
#          eager vs sample.cuda_graphs (goals: training <= 30 s, sampling <= 5 s)
#   tsl    the long-sequence scores (LDS, LPS, Context-FID, 3 repeats, with the real-vs-real floor)
#          of benchmark runs trained on the CPU and carried in runs/ (stocks100, stocks384, air100,
#          air384: model/, config.yaml, data.npz): hours per run on 2 CPU cores
#   lmce   LM-head cross-entropy, plain vs chunked (bench/lm_loss.py), at the 0.76B width with a
#          32 K and a 128 K vocabulary, 8192 scored positions (half of 4 rows of 4096)
# Runs under ./runs (gitignored) are carried to the device by the caller.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__)" | tee -a "$OUT/gpu.txt"
sections=${*:-mm launch lmce}
quiet() { grep -v -e Warning -e warn; }
for s in $sections; do case $s in
  check) (cd bench && timeout 150 python3 gpu_check.py 2>&1 | quiet | tee "$OUT/gpu_check.log") ;;
  attn)  (cd bench && timeout 300 python3 attention.py --device cuda 2>&1 | quiet | tee "$OUT/attention_cuda.log") ;;
  mm)    (cd bench && timeout 270 python3 multimodal.py --device cuda --only-cuda --rows 4 \
            --presets transfusion-0.16b transfusion-0.76b 2>&1 | quiet | tee "$OUT/multimodal_cuda.log") ;;
  ts)  # scores of runs trained on the CPU and carried here (runs/, gitignored), two jobs side by side
    ev() { local t=$1 log=$2; shift 2; timeout "$t" fusion evaluate "$@" eval.tsne=false > "$OUT/$log" 2>&1;
           echo "== $* (exit $?)"; grep -E "INFO|Error" "$OUT/$log" | tail -8; }
    export OMP_NUM_THREADS=6
    { ev 110 ev_sine100_fast.log runs/sine100 "eval.metrics=[disc,lds]" eval.repeats=3 --tag fast
      ev 120 ev_sine100_full.log runs/sine100 sample.sampler=ddpm sample.steps=1000 "eval.metrics=[disc]" eval.repeats=3 --tag full
    } > "$OUT/ts_a.log" 2>&1 &
    { [ -d runs/sine384 ] && ev 220 ev_sine384.log runs/sine384 "eval.metrics=[disc,lds]" eval.repeats=2; } > "$OUT/ts_b.log" 2>&1 &
    wait
    cat "$OUT"/ts_a.log "$OUT"/ts_b.log
    tar czf "$OUT/ts_runs.tgz" runs/*/eval*.json runs/*/report*.md runs/*/*.png --ignore-failed-read 2>/dev/null ;;
  tsb)   (cd bench && timeout 130 python3 timeseries.py --device cuda --compile 2>&1 | quiet | tee "$OUT/ts_bench_cuda.log") ;;
  tsl)   for r in runs/stocks100 runs/stocks384 runs/air100 runs/air384; do [ -d "$r" ] || continue
           n=$(basename "$r"); timeout 150 fusion evaluate "$r" "eval.metrics=[lds,lps,fid]" eval.reference=true \
             eval.tsne=false --tag gpu > "$OUT/ev_$n.log" 2>&1; echo "== $n (exit $?)"; grep -E "INFO|Error" "$OUT/ev_$n.log" | tail -8
           cp "$r"/report-gpu.md "$OUT/${n}_report-gpu.md" 2>/dev/null; done | tee "$OUT/tsl.log" ;;
  launch) (cd bench && timeout 140 python3 ts_launch.py --device cuda 2>&1 | quiet | tee "$OUT/ts_launch_cuda.log") ;;
  lmce)  (cd bench && for v in 32768 131072; do timeout 30 python3 lm_loss.py --device cuda --rows 8192 --dim 1536 \
            --vocab $v --chunk 2048 --iters 5 2>&1 | quiet; done | tee "$OUT/lm_loss_cuda.log") ;;
esac; done
ls -la "$OUT"
