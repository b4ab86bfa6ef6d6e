#!/usr/bin/env bash
# NCFM on a Cloud TPU VM pod slice: the same command on every worker (one process per host).
#
#   launch/tpu_vm.sh NAME ZONE setup            # once: copy the repository, install jax[tpu]
#   launch/tpu_vm.sh NAME ZONE run [FLAGS...]   # python -m ncfm_jax.main FLAGS on all workers
#
#   e.g. launch/tpu_vm.sh my-v4-32 us-central2-b run \
#          --config=configs/imagenette.py:ipc=10 --workdir=/mnt/shared/ncfm/imagenette_ipc10
#
# `run` sets NCFM_DISTRIBUTED=1, so ncfm_jax.distributed.maybe_initialize() calls
# jax.distributed.initialize() and jax finds the slice's workers, this worker's id and
# the coordinator (worker 0) in the TPU VM metadata. The workdir must be on storage
# every worker shares (a Filestore/NFS mount or gcsfuse bucket): Orbax writes one
# checkpoint from all hosts; worker 0 writes the json/npz/png outputs.
#
# Environment: NCFM_PROJECT (gcloud --project, optional), NCFM_REMOTE_DIR (repository
# directory on the workers, default ncfm-jax in the home directory).
set -euo pipefail

if [[ $# -lt 3 || ! "$3" =~ ^(setup|run)$ ]]; then
  echo "usage: $0 TPU_NAME ZONE setup|run [python -m ncfm_jax.main flags...]" >&2
  exit 2
fi
name="$1"
zone="$2"
action="$3"
shift 3
remote_dir="${NCFM_REMOTE_DIR:-ncfm-jax}"
project=()
[[ -n "${NCFM_PROJECT:-}" ]] && project=(--project="$NCFM_PROJECT")
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${project[@]+"${project[@]}"}" \
    --worker=all --command="$1"
}

case "$action" in
  setup)
    archive="$(mktemp -d)/ncfm-jax.tar.gz"
    tar -C "$root" --exclude=.venv --exclude=.git --exclude=workdirs -czf "$archive" .
    gcloud compute tpus tpu-vm scp "$archive" "$name":ncfm-jax.tar.gz --zone="$zone" \
      "${project[@]+"${project[@]}"}" --worker=all
    on_all_workers "mkdir -p $remote_dir && tar -xzf ncfm-jax.tar.gz -C $remote_dir && \
      cd $remote_dir && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  run)
    quoted=""
    for arg in "$@"; do quoted+=" $(printf '%q' "$arg")"; done
    on_all_workers "cd $remote_dir && NCFM_DISTRIBUTED=1 .venv/bin/python -m ncfm_jax.main$quoted"
    ;;
esac
