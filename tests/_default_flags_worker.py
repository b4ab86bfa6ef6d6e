"""Worker: results whose last bits depend on XLA's backend optimisations, computed
with XLA's default flags (launch/test.sh compiles the tests' own programs at
``--xla_backend_optimization_level=0``, which compiles faster but, for instance,
does not contract multiply-adds into FMAs).

`python tests/_default_flags_worker.py golden OUT.npz`: 3 steps of each variant of
the batched step recorded in tests/data/batched_step_golden.npz (`<case>_images`).
`python tests/_default_flags_worker.py sincos OUT.npz`: `sincos` of
`sincos_inputs(scale)` for each of `SINCOS_SCALES` (`sin_<i>`, `cos_<i>`).
"""

import sys

import jax
import numpy as np

import _tiny
from ncfm_jax import execution
from ncfm_jax.sincos import sincos

GOLDEN_CASES = {"psi": {}, "separate": dict(calibration_mode="separate"),
                "blocks_host": dict(class_block=2, block_loop="host"),
                "mmd": dict(loss="mmd")}
"""The recorded variants: overrides of `_tiny.config()`."""
SINCOS_SCALES = (1.0, 30.0, 1e3, 1e5, 2.0**21 / 4)
"""Standard deviations of the normal inputs of the accuracy test."""


def sincos_inputs(scale: float) -> np.ndarray:
  """200,000 normal float32 values of std `scale`, plus quadrant edges, the float after
  each, signed zeros and tiny values (where a reduction's off-by-one shows)."""
  x = (np.random.default_rng(0).standard_normal(200_000) * scale).astype(np.float32)
  edges = np.arange(-16, 17, dtype=np.float64) * np.pi / 4
  return np.concatenate([x, edges.astype(np.float32), np.nextafter(edges, 100).astype(
      np.float32), np.float32([0.0, -0.0, 1e-30, -1e-38])])


def golden() -> dict:
  out = {}
  for case, overrides in GOLDEN_CASES.items():
    cfg = _tiny.config(**overrides)
    tiny = _tiny.setup(cfg)
    state, _ = execution.make_run_steps(tiny.step, cfg, 3).run(tiny.state, tiny.pool, tiny.data)
    out[f"{case}_images"] = np.asarray(state.syn_images)
  return out


def sincos_values() -> dict:
  out = {}
  for i, scale in enumerate(SINCOS_SCALES):
    out[f"sin_{i}"], out[f"cos_{i}"] = map(np.asarray, jax.jit(sincos)(sincos_inputs(scale)))
  return out


if __name__ == "__main__":
  what, out_path = sys.argv[1:]
  np.savez(out_path, **{"golden": golden, "sincos": sincos_values}[what]())
