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
extra=()
results=results
if [ "${SMOKE:-0}" = 1 ]; then
  extra=(--smoke)
  results=$(mktemp -d)
fi
log=$results/gpu_results.log
start=$(date +%s)
echo "gpu_results: $(date -u +%FT%TZ), budget ${BUDGET}s, $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')" | tee "$log"

if [ "${SMOKE:-0}" != 1 ]; then
  timeout 90 $PY benchmarks/epoch_time.py --epochs 2 2>&1 | tee -a "$log" || echo "epoch_time: failed or over 90 s" | tee -a "$log"
fi
for exp in "${EXPERIMENTS[@]}"; do
  left=$(( BUDGET - ($(date +%s) - start) ))
  if [ "$left" -lt 20 ]; then echo "$exp: skipped, budget spent" | tee -a "$log"; continue; fi
  t0=$(date +%s)
  if timeout "$left" $PY -m utils.reproduce "$exp" --profile full --no-progress "${extra[@]}" \
       --out "$results/${exp}_full.json" >>"$log" 2>&1; then
    echo "$exp: ok in $(( $(date +%s) - t0 )) s" | tee -a "$log"
  else
    echo "$exp: FAILED or stopped after $(( $(date +%s) - t0 )) s (see $log)" | tee -a "$log"
  fi
done
$PY benchmarks/gpu_summary.py "$results" | tee -a "$log"
if [ "${SMOKE:-0}" != 1 ]; then
  $PY benchmarks/gpu_summary.py "$results" --write-readme
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$results"/*_full.json "$log" "$OUT"/ 2>/dev/null
  cp benchmarks/README.md "$OUT"/benchmarks_README.md 2>/dev/null
fi
echo "gpu_results: done in $(( $(date +%s) - start )) s" | tee -a "$log"
