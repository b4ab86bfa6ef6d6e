#!/usr/bin/env bash
# Creates/updates .venv, installs ncfm-jax[test] and Fashion-MNIST, runs the test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k ncfd`.
set -euo pipefail
EXTRAS="test" source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# tcmalloc preloaded into the test process too: faster XLA:CPU (ncfm_jax/allocator.py).
exec "$VENV/bin/python" -m ncfm_jax.allocator "$VENV/bin/python" -m pytest -q "$@"
