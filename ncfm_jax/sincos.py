"""`sincos(x)`: sine and cosine of float32 `x` from one range reduction.

The empirical characteristic function needs `cos(<t, x>)` and `sin(<t, x>)` of every
projection (`[N, F]` per class and step). XLA:CPU evaluates `jnp.sin` and `jnp.cos`
one element at a time through separate range reductions: on the 2-core CPU, both on
1000 x 4096 projections take 25 ms, more than the matmul that made them. Here both
come from one Cody-Waite reduction to `[-pi/4, pi/4]` and two short polynomials
(the single-precision coefficients of Cephes' `sinf`/`cosf`), all elementwise
operations XLA vectorises and fuses: 2.6 ms for the same projections.

Accuracy (tests/test_sincos.py, against float64 NumPy on the same float32 inputs):
within 1e-7 absolute for |x| < 2^21 (XLA's own: 3.3e-8) where the compiler fuses the
reduction's multiply-subtracts into FMAs, as XLA:CPU does by default. Without FMAs
(e.g. `--xla_backend_optimization_level=0`) `y * DP1` rounds once `y` passes 2^16:
the error is 5e-7 for normal inputs of std 1e4 and 1.6e-2 for std 1e5 (float32
NumPy arithmetic, 2026-12-07); not yet measured on GPU or TPU. Beyond 2^22 the result is
bounded in [-1, 1] but is not the sine of x; there a float32 argument is itself
spaced 0.5 or more apart, and a projection that large has accumulated rounding
errors of whole periods in the matmul, so no sine of it carries information.
Non-finite inputs give NaN. Other dtypes than float32 go to `jnp.sin` / `jnp.cos`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# pi/4 = DP1 + DP2 + DP3, DP1 with 8 significant bits so that y * DP1 is exact for
# y < 2^16 (beyond, exact only inside an FMA).
_DP1, _DP2, _DP3 = 0.78515625, 2.4187564849853515625e-4, 3.77489497744594108e-8
_FOUR_OVER_PI = 1.27323954473516
# Keeps the quadrant index inside int32.
_MAX_REDUCED = 2.0**30


@jax.custom_jvp
def sincos(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(sin(x), cos(x))`, each shaped like `x`.

  With `j` the even integer nearest `|x| * 4 / pi`, `r = |x| - j pi/4` lies in
  `[-pi/4, pi/4]`; `sin r` and `cos r` are odd/even polynomials in `r`, and the
  quadrant `(j / 2) mod 4` swaps and negates them. The derivative is
  `(cos(x), -sin(x)) * dx`, from the values already computed.
  """
  x = jnp.asarray(x)
  if x.dtype != jnp.float32:
    return jnp.sin(x), jnp.cos(x)
  ax = jnp.minimum(jnp.abs(x), _MAX_REDUCED)
  j = (ax * _FOUR_OVER_PI).astype(jnp.int32)
  j = j + (j & 1)
  y = j.astype(jnp.float32)
  # Within pi/4 up to rounding of j; the clip only bounds what lies beyond 2^22.
  r = jnp.clip(((ax - y * _DP1) - y * _DP2) - y * _DP3, -np.pi / 2, np.pi / 2)
  r2 = r * r
  sin_r = r + r * r2 * (-1.6666654611e-1 + r2 * (8.3321608736e-3 + r2 * -1.9515295891e-4))
  cos_r = 1.0 - 0.5 * r2 + r2 * r2 * (4.166664568298827e-2 + r2 * (
      -1.388731625493765e-3 + r2 * 2.443315711809948e-5))
  quadrant = (j >> 1) & 3
  swap = (quadrant & 1) == 1
  sin_abs = jnp.where(swap, cos_r, sin_r)
  cos_x = jnp.where(swap, sin_r, cos_r)
  sin_abs = jnp.where(quadrant >= 2, -sin_abs, sin_abs)
  cos_x = jnp.where((quadrant == 1) | (quadrant == 2), -cos_x, cos_x)
  sin_x = jnp.where(x < 0, -sin_abs, sin_abs)
  finite = jnp.isfinite(x)
  return jnp.where(finite, sin_x, jnp.nan), jnp.where(finite, cos_x, jnp.nan)


@sincos.defjvp
def _sincos_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  sin_x, cos_x = sincos(x)
  return (sin_x, cos_x), (cos_x * dx, -sin_x * dx)
