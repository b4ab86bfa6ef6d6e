#!/usr/bin/env bash
# Creates/updates .venv, installs ncfm-jax[test] and Fashion-MNIST, runs the test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k ncfd`.
# Two pytest workers, one test file each at a time (pytest-xdist --dist loadfile): much
# of the suite is XLA compilation, which is single-threaded, so 2 workers on 2 cores
# took it from 517 to 407 s (2026-12-03). NCFM_TEST_WORKERS=0 runs in one process.
set -euo pipefail
EXTRAS="test" source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# The tests' programs are tiny and compiled once each: XLA's backend optimisations
# cost more compile time than they save (the suite 626 -> 484 s on 2 cores, 3 workers
# 657 s, 2026-12-07). The workers the tests start get the same flag, except the two
# results whose bits depend on it (tests/_default_flags_worker.py).
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
WORKERS="${NCFM_TEST_WORKERS:-2}"
PARALLEL=()
[ "$WORKERS" = 0 ] || PARALLEL=(-n "$WORKERS" --dist loadfile)
# One XLA compilation cache shared by this run's test processes (the CLI tests start
# many subprocesses compiling the same programs): tests/test_pipeline.py 184 -> 143 s
# (2026-12-03). Emptied at each start, so no run reuses another's; the size cap makes
# JAX lock it (filelock), so concurrent processes never read a half-written entry.
export JAX_COMPILATION_CACHE_DIR="$ROOT/.jax_test_cache"
rm -rf "$JAX_COMPILATION_CACHE_DIR"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_COMPILATION_CACHE_MAX_SIZE=$((8 * 1024 * 1024 * 1024))
# tcmalloc preloaded into the test processes too: faster XLA:CPU (ncfm_jax/allocator.py).
exec "$VENV/bin/python" -m ncfm_jax.allocator "$VENV/bin/python" -m pytest -q "${PARALLEL[@]}" "$@"
