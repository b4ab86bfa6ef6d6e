#!/usr/bin/env bash
# The memory-planned step on one GPU at the paper's Table 3 cells: s/step and peak
# device memory for CIFAR-100 ipc 10 / 50 and Tiny ImageNet ipc 10 / 50 at the
# release's real batch (1024 per class, capped at the 500 training images), with
# the default plan (budget: 90% of the device's memory) and, for the comparison with
# the paper's 1.6 / 2.0 / 6.5 / 8.7 GB, with the budget set to those figures.
# Random data stands in for the datasets: content does not change the cost.
#
#   bash launch/gpu_bench.sh [OUT_DIR]        # default results/
#
# Each measurement is its own `bench step` call writing its own JSON, the default
# plans first, so a loan that ends early keeps what was measured; a call that runs
# past CELL_TIMEOUT seconds (default 150) is stopped and the next one starts.
# Needs a Python with ncfm-jax and jax[cuda12] (pip install -e ".[cuda12]"); set
# NCFM_PYTHON to use one other than .venv/bin/python. Writes
# OUT_DIR/gpu_bench_step_<cell>_<date>.json (bench step rows) and gpu_bench_<date>.log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${NCFM_PYTHON:-$ROOT/.venv/bin/python}"
OUT="${1:-results}"
CELL_TIMEOUT="${CELL_TIMEOUT:-150}"
mkdir -p "$OUT"
STAMP="$(date -u +%Y-%m-%d)"
LOG="$OUT/gpu_bench_$STAMP.log"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak_bytes_in_use = what the step holds

"$PY" -c "import jax; d = jax.devices()[0]; assert d.platform == 'gpu', d; print(d.device_kind)" \
  | tee "$LOG"
bench() {  # json name, bench step flags
  local name="$1"; shift
  local status=0
  timeout "$CELL_TIMEOUT" "$PY" -m ncfm_jax.bench step --steps-per-call=1 --repeats=5 \
    --json="$OUT/$name" "$@" 2>&1 | tee -a "$LOG" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "gpu_bench: $name: exit $status (124: past ${CELL_TIMEOUT} s); going on" | tee -a "$LOG"
  fi
}
for workload in cifar100_ipc10_release cifar100_ipc50_release \
                tinyimagenet_ipc10_release tinyimagenet_ipc50_release; do
  bench "gpu_bench_step_${workload}_$STAMP.json" --workload="$workload"
done
# The paper's Table 3 memory per cell as the budget.
for cell in cifar100_ipc10_release:1.6 cifar100_ipc50_release:2.0 \
            tinyimagenet_ipc10_release:6.5 tinyimagenet_ipc50_release:8.7; do
  bench "gpu_bench_step_${cell%%:*}_budget${cell##*:}_$STAMP.json" --workload="${cell%%:*}" \
    --set="memory_budget_gb=${cell##*:}"
done
echo "wrote $OUT/gpu_bench_step_*_$STAMP.json and $LOG"
