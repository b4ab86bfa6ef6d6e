#!/usr/bin/env bash
# Runs notebooks/ncfd_tour.ipynb on the CPU and stores it with its outputs (the
# figures a reader sees on the web). Sets up .venv first (launch/_setup.sh).
set -euo pipefail
EXTRAS="test" source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec "$VENV/bin/python" -m ncfm_jax.allocator "$VENV/bin/jupyter" execute --inplace \
  --timeout=600 "$ROOT/notebooks/ncfd_tour.ipynb"
