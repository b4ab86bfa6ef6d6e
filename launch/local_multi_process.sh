#!/usr/bin/env bash
# Runs N copies of a command on this machine as ONE multi-process JAX job.
#
#   launch/local_multi_process.sh N COMMAND [ARGS...]
#   e.g. launch/local_multi_process.sh 2 .venv/bin/python -m ncfm_jax.main \
#          --config=configs/fashion_mnist.py:tiny --workdir=/tmp/ncfm_2proc
#
# Process i gets NCFM_COORDINATOR=localhost:$NCFM_PORT, NCFM_NUM_PROCESSES=N and
# NCFM_PROCESS_ID=i; ncfm_jax.distributed.maybe_initialize() reads them and calls
# jax.distributed.initialize (on CPU the processes talk over Gloo/TCP). Each process
# sees its own local devices (CPU: 1, or XLA_FLAGS=--xla_force_host_platform_device_count=K;
# GPUs: all of them unless you set CUDA_VISIBLE_DEVICES per process). Only process 0
# writes the workdir's outputs; all of them write their checkpoint shards.
#
# NCFM_PORT defaults to a random port in [20000, 40000). When one process fails the
# others (which would wait for it in a collective) are stopped, and the script exits
# with the first failure's status.
set -uo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
num_processes="$1"
shift
port="${NCFM_PORT:-$((20000 + RANDOM % 20000))}"

pids=()
for ((i = 0; i < num_processes; i++)); do
  NCFM_COORDINATOR="localhost:${port}" NCFM_NUM_PROCESSES="${num_processes}" \
    NCFM_PROCESS_ID="${i}" PYTHONUNBUFFERED=1 "$@" &
  pids+=("$!")
done

status=0
remaining=("${pids[@]}")
while ((${#remaining[@]} > 0)); do
  wait -n -p finished "${remaining[@]}"
  code=$?
  still=()
  for pid in "${remaining[@]}"; do
    [[ "$pid" != "$finished" ]] && still+=("$pid")
  done
  remaining=("${still[@]+"${still[@]}"}")
  if ((code != 0 && status == 0)); then
    status=$code
    echo "[local_multi_process] process pid ${finished} exited with ${code}; stopping the others" >&2
    for pid in "${remaining[@]+"${remaining[@]}"}"; do
      kill "$pid" 2>/dev/null
    done
  fi
done
exit "$status"
