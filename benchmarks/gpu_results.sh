#!/usr/bin/env bash
# The book's one GPU job: on a machine with one CUDA GPU, measure the training-loop epoch time and run
# every chapter's `full` profile, writing results/<experiment>_full.json and the GPU rows of
# benchmarks/README.md.  Sized to finish within 9 minutes on one H100/H200-class GPU: each experiment
# gets what is left of the budget, the most important first, and one that would overrun is stopped
# and reported rather than holding the others back.
#
#   bash benchmarks/gpu_results.sh                  # python3 with torch; Fashion-MNIST via $FASHION_MNIST_DIR
#   GPU_BUDGET_S=300 bash benchmarks/gpu_results.sh # a shorter budget
#   SMOKE=1 bash benchmarks/gpu_results.sh          # the same code path at toy scale (CPU is fine), into /tmp
#   GPU_EXPERIMENTS="ntk lpm" bash benchmarks/gpu_results.sh   # only these, in this order
#   GPU_PARALLEL=1 bash benchmarks/gpu_results.sh   # all experiments side by side on the one GPU
#   BOOK_COMMIT=<sha> ...                           # the commit to record where the copy has no .git
#
# Needs: python3 with torch and the pure-Python packages of requirements.txt (cvxpy, clarabel, scs,
# scikit-learn, tqdm, ...; carry them as wheels where the machine has no network), and Fashion-MNIST's
# four IDX .gz files in $FASHION_MNIST_DIR (e.g. a copy of /usr/share/datasets/fashion-mnist).
# If $OUT is set (a folder that is copied back), the JSON files and the log are copied there too.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_BUDGET_S:-540}
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
EXPERIMENTS=(equi_separation neural_collapse minority_collapse noisy_labels ntk local_elasticity deep_linear representation lpm)
if [ -n "${GPU_EXPERIMENTS:-}" ]; then read -r -a EXPERIMENTS <<<"$GPU_EXPERIMENTS"; fi
EPOCH_TIME_S=${EPOCH_TIME_S:-90}
extra=()
results=results
if [ "${SMOKE:-0}" = 1 ]; then
  extra=(--smoke)
  results=$(mktemp -d)
fi
log=$results/gpu_results.log
start=$(date +%s)
echo "gpu_results: $(date -u +%FT%TZ), budget ${BUDGET}s, $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')" | tee "$log"

if [ "${SMOKE:-0}" != 1 ] && [ "$EPOCH_TIME_S" -gt 0 ]; then
  timeout "$EPOCH_TIME_S" $PY benchmarks/epoch_time.py --epochs 2 --devices ${EPOCH_TIME_DEVICES:-cpu cuda} 2>&1 | tee -a "$log" || echo "epoch_time: failed or over $EPOCH_TIME_S s" | tee -a "$log"
fi
run_one() {  # experiment, seconds allowed, log file
  local t0; t0=$(date +%s)
  if timeout "$2" $PY -m utils.reproduce "$1" --profile full --no-progress "${extra[@]}" \
       --out "$results/${1}_full.json" >>"$3" 2>&1; then
    echo "$1: ok in $(( $(date +%s) - t0 )) s"
  else
    echo "$1: FAILED or stopped after $(( $(date +%s) - t0 )) s (see $log)"
  fi
}
if [ "${GPU_PARALLEL:-0}" = 1 ]; then
  # Side by side on the one GPU: most of these runs are many small kernels, so the GPU has room for
  # several; each process gets a few CPU threads and the whole budget.  Their `seconds` are then
  # wall-clock times on a shared GPU, not a lone run's.
  left=$(( BUDGET - ($(date +%s) - start) ))
  for exp in "${EXPERIMENTS[@]}"; do
    OMP_NUM_THREADS=${PARALLEL_THREADS:-3} run_one "$exp" "$left" "$results/$exp.log" | tee -a "$log" &
  done
  wait
  for exp in "${EXPERIMENTS[@]}"; do
    { echo "--- $exp"; cat "$results/$exp.log"; } >>"$log"; rm -f "$results/$exp.log"
  done
else
  for exp in "${EXPERIMENTS[@]}"; do
    left=$(( BUDGET - ($(date +%s) - start) ))
    if [ "$left" -lt 20 ]; then echo "$exp: skipped, budget spent" | tee -a "$log"; continue; fi
    run_one "$exp" "$left" "$log" | tee -a "$log"
  done
fi
$PY benchmarks/gpu_summary.py "$results" | tee -a "$log"
if [ "${SMOKE:-0}" != 1 ]; then
  $PY benchmarks/gpu_summary.py "$results" --write-readme
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$log" "$OUT"/
  for exp in "${EXPERIMENTS[@]}"; do cp "$results/${exp}_full.json" "$OUT"/ 2>/dev/null; done
  cp benchmarks/README.md "$OUT"/benchmarks_README.md 2>/dev/null
fi
echo "gpu_results: done in $(( $(date +%s) - start )) s" | tee -a "$log"
