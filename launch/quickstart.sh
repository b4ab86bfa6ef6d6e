#!/usr/bin/env bash
# One command from a fresh Debian machine with Python + pip to a distilled
# Fashion-MNIST set: creates .venv, installs ncfm-jax, installs the Debian
# package dataset-fashion-mnist when missing, then runs pretrain -> distill ->
# evaluate (distilled set vs random-real and initial-set baselines) on the CPU
# preset. Re-running resumes; pass another workdir as $1 for a fresh run.
set -euo pipefail
EXTRAS="" source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
WORKDIR="${1:-workdirs/fashion_mnist_quick}"
shift || true
exec "$VENV/bin/python" -m ncfm_jax.main --config=configs/fashion_mnist.py:quick \
  --workdir="$WORKDIR" "$@"
