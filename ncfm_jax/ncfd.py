"""Neural Characteristic Function Discrepancy (NCFD) and the MMD baseline.

(Over 400 lines: mostly the public functions' docstrings and input validation.)

Everything here is a pure, jittable function of feature matrices and frequencies
(NCFM, CVPR 2025, section 4.2; docs/design.md section 2). Features are passed already
L2-normalised by the caller; nothing here normalises them.

Notation: real features ``x`` ``[N, D]``, synthetic features ``y`` ``[M, D]``,
frequencies ``t`` ``[F, D]``; the empirical characteristic function (ECF) is
``Phi_x(t) = mean_i exp(j <t, x_i>)``.

Cost is linear in N, M and F: one ``[N, D] x [D, F]`` and one ``[M, D] x [D, F]``
product. ``ncfd(..., freq_chunk=k)`` bounds the memory to ``O((N + M) k)`` in the
forward AND the backward pass (each block is rematerialised in the backward pass,
keeping only its small ``[k]`` ECFs), and gives the same value and gradient for
every k.
"""

from __future__ import annotations

import functools
import numbers

import chex
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.typing import ArrayLike

from ncfm_jax.sincos import sincos

# Lower bound of the phase term and of the square root's argument: keeps the
# gradient of sqrt finite when the two ECFs coincide (docs/design.md section 2).
PHASE_FLOOR = 1e-12

# Name under which each frequency block saves its ECFs for the backward pass.
_ECF_CHECKPOINT_NAME = "ncfd_ecf"


# --------------------------------------------------------------------------
# Input validation (public boundary only).


def _is_concrete(x: jax.Array) -> bool:
  return not isinstance(x, jax.core.Tracer)


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x))


def _check_finite(name: str, x: jax.Array) -> None:
  # Only for concrete inputs: a data-dependent check cannot run on tracers.
  if not _is_concrete(x) or not x.size:
    return
  # A concrete array closed over by a jitted function is still checked, once,
  # at trace time: evaluate eagerly instead of staging the check into the graph.
  with jax.ensure_compile_time_eval():
    finite = bool(_all_finite(x))
  if not finite:
    raise ValueError(f"{name} contains non-finite values (NaN or inf).")


def _check_floating(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {x.dtype}.")


def _validate_sets(
    real: jax.Array, syn: jax.Array, *, class_axis: bool
) -> None:
  """Shapes, dtypes and finiteness of ``real`` and ``syn``."""
  rank = 3 if class_axis else 2  # [C, N, D] or [N, D]
  chex.assert_rank([real, syn], rank)
  _check_floating("real", real)
  _check_floating("syn", syn)
  if real.shape[-1] != syn.shape[-1]:
    raise ValueError(
        f"feature dims differ: real {real.shape} vs syn {syn.shape} (last axis)."
    )
  if class_axis and real.shape[0] != syn.shape[0]:
    raise ValueError(
        f"class counts differ: real {real.shape} vs syn {syn.shape} (axis 0)."
    )
  if real.shape[-2] == 0:
    raise ValueError(f"real is an empty set (N=0): shape {real.shape}.")
  if syn.shape[-2] == 0:
    raise ValueError(f"syn is an empty set (M=0): shape {syn.shape}.")
  _check_finite("real", real)
  _check_finite("syn", syn)


def _validate_frequencies(t: jax.Array, dim: int) -> None:
  chex.assert_rank(t, 2)
  _check_floating("t", t)
  if t.shape[0] == 0:
    raise ValueError(f"t has no frequencies (F=0): shape {t.shape}.")
  if t.shape[1] != dim:
    raise ValueError(
        f"t has dim {t.shape[1]} but the features have dim {dim}: t {t.shape}."
    )
  _check_finite("t", t)


def _validate_freq_chunk(freq_chunk: int | None) -> int | None:
  """Returns ``freq_chunk`` as a Python int (a static, hashable jit argument)."""
  if freq_chunk is None:
    return None
  if (
      isinstance(freq_chunk, bool)
      or not isinstance(freq_chunk, numbers.Integral)
      or freq_chunk <= 0
  ):
    raise ValueError(
        f"freq_chunk must be a positive int or None, got {freq_chunk!r}."
    )
  return int(freq_chunk)


# --------------------------------------------------------------------------
# Core math (unchecked, shapes as documented).


def _ecf(
    feats: jax.Array, t: jax.Array, precision: jax.lax.PrecisionLike
) -> tuple[jax.Array, jax.Array]:
  """ECF of ``feats [N, D]`` at ``t [F, D]``: ``(re [F], im [F])``."""
  proj = jnp.matmul(feats, t.T, precision=precision)  # [N, F]
  sin_proj, cos_proj = sincos(proj)
  return cos_proj.mean(axis=0), sin_proj.mean(axis=0)


def _safe_abs(re: jax.Array, im: jax.Array) -> jax.Array:
  """``sqrt(re^2 + im^2)`` with gradient 0 (not NaN) at the origin."""
  sq = re * re + im * im
  positive = sq > 0
  # Double `where`: the untaken branch must not produce NaN gradients either.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _terms_from_ecfs(
    re_x: jax.Array, im_x: jax.Array, re_y: jax.Array, im_y: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Amplitude and phase terms ``[F]`` from two ECFs ``[F]`` each."""
  abs_x = _safe_abs(re_x, im_x)
  abs_y = _safe_abs(re_y, im_y)
  amplitude = jnp.square(abs_x - abs_y)
  mag = abs_x * abs_y
  dot = re_x * re_y + im_x * im_y  # |Phi_x||Phi_y| cos(a_x - a_y)
  cross = re_x * im_y - im_x * re_y  # |Phi_x||Phi_y| sin(a_y - a_x)
  # pha = 2 (mag - dot). When the phases are close (dot > 0) that difference
  # cancels catastrophically in float32; use mag^2 = dot^2 + cross^2, i.e.
  # mag - dot = cross^2 / (mag + dot), which is exact and stable there.
  close = dot > 0
  denom = jnp.where(close, mag + dot, 1.0)
  phase = 2.0 * jnp.where(close, jnp.square(cross) / denom, mag - dot)
  return amplitude, jnp.maximum(phase, PHASE_FLOOR)


def _integrand(
    amplitude: jax.Array, phase: jax.Array, alpha: ArrayLike, beta: ArrayLike
) -> jax.Array:
  # The floor also covers beta = 0 (amplitude-only ablation) at equal ECFs.
  return jnp.sqrt(jnp.maximum(alpha * amplitude + beta * phase, PHASE_FLOOR))


def _block_integrand(
    real: jax.Array,
    syn: jax.Array,
    t_block: jax.Array,
    alpha: ArrayLike,
    beta: ArrayLike,
    precision: jax.lax.PrecisionLike,
) -> jax.Array:
  """``sqrt(alpha amp + beta pha)`` at each frequency of ``t_block [k, D]``."""
  # Two products, not one over concat(real, syn): when only syn is
  # differentiated (the distillation step) the real side has no backward pass.
  ecf_real = checkpoint_name(
      _ecf(real, t_block, precision), _ECF_CHECKPOINT_NAME
  )
  ecf_syn = checkpoint_name(
      _ecf(syn, t_block, precision), _ECF_CHECKPOINT_NAME
  )
  amplitude, phase = _terms_from_ecfs(*ecf_real, *ecf_syn)
  return _integrand(amplitude, phase, alpha, beta)


@functools.partial(jax.jit, static_argnames=("freq_chunk", "precision"))
def _ncfd_unchecked(
    real: jax.Array,
    syn: jax.Array,
    t: jax.Array,
    alpha: ArrayLike,
    beta: ArrayLike,
    freq_chunk: int | None,
    precision: jax.lax.PrecisionLike,
) -> jax.Array:
  """NCFD without validation; ``freq_chunk`` already validated.

  Jitted so that eager calls compile once per shape instead of re-tracing the
  block loop on every call; inside a caller's jit it is simply inlined.
  """
  num_freqs, dim = t.shape
  block_fn = functools.partial(
      _block_integrand, real, syn, alpha=alpha, beta=beta, precision=precision
  )
  if freq_chunk is None or freq_chunk >= num_freqs:
    return block_fn(t).mean()
  # Rematerialise each block in the backward pass, saving only its four [k]
  # ECFs: peak memory O((N + M) k) instead of O((N + M) F) residuals.
  block_fn = jax.checkpoint(
      block_fn,
      policy=jax.checkpoint_policies.save_only_these_names(_ECF_CHECKPOINT_NAME),
  )
  num_blocks = num_freqs // freq_chunk
  split = num_blocks * freq_chunk
  blocks = t[:split].reshape(num_blocks, freq_chunk, dim)
  pieces = [jax.lax.map(block_fn, blocks).reshape(split)]
  if split < num_freqs:  # the remainder is one smaller block, nothing padded
    pieces.append(block_fn(t[split:]))
  return jnp.concatenate(pieces).mean()


# --------------------------------------------------------------------------
# Public API.


def empirical_cf(
    feats: ArrayLike,
    t: ArrayLike,
    *,
    precision: jax.lax.PrecisionLike = None,
) -> tuple[jax.Array, jax.Array]:
  """Empirical characteristic function of a feature set at given frequencies.

  ``Phi_x(t_f) = (1/N) sum_i exp(j <t_f, x_i>)``, returned as its real part
  ``re_f = mean_i cos(<t_f, x_i>)`` and imaginary part
  ``im_f = mean_i sin(<t_f, x_i>)``.

  Example:
    >>> re, im = empirical_cf(jnp.zeros((3, 2)), jnp.ones((4, 2)))
    >>> re.tolist(), im.tolist()
    ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])

  Args:
    feats: features ``[N, D]``, N >= 1.
    t: frequencies ``[F, D]``.
    precision: matmul precision of ``feats @ t.T`` (None: backend default).

  Returns:
    ``(re [F], im [F])``.

  References:
    NCFM (CVPR 2025), eq. 5 and the empirical estimate below it.
  """
  feats = jnp.asarray(feats)
  t = jnp.asarray(t)
  chex.assert_rank(feats, 2)
  _check_floating("feats", feats)
  if feats.shape[0] == 0:
    raise ValueError(f"feats is an empty set (N=0): shape {feats.shape}.")
  _check_finite("feats", feats)
  _validate_frequencies(t, feats.shape[1])
  return _ecf(feats, t, precision)


def ncfd_terms(
    real: ArrayLike,
    syn: ArrayLike,
    t: ArrayLike,
    *,
    precision: jax.lax.PrecisionLike = None,
) -> tuple[jax.Array, jax.Array]:
  """Amplitude and phase terms of the NCFD at each frequency.

  With ``Phi_x = |Phi_x| exp(j a_x)`` the ECFs of ``real`` and ``syn``:

    ``amplitude(t) = (|Phi_x(t)| - |Phi_y(t)|)^2``                 (diversity)
    ``phase(t) = 2 |Phi_x||Phi_y| (1 - cos(a_x - a_y))``
    ``         = 2 (|Phi_x||Phi_y| - re_x re_y - im_x im_y)``       (realism)

  and ``amplitude + phase = |Phi_x(t) - Phi_y(t)|^2``. The phase term is
  computed in a cancellation-free form and clamped below at ``PHASE_FLOOR``
  (1e-12) so that ``sqrt`` has a finite gradient when the ECFs coincide.

  Args:
    real: real features ``[N, D]`` (L2-normalised by the caller).
    syn: synthetic features ``[M, D]``.
    t: frequencies ``[F, D]``.
    precision: matmul precision (None: backend default).

  Returns:
    ``(amplitude [F], phase [F])``.

  References:
    NCFM (CVPR 2025), eq. 7.
  """
  real, syn, t = jnp.asarray(real), jnp.asarray(syn), jnp.asarray(t)
  _validate_sets(real, syn, class_axis=False)
  _validate_frequencies(t, real.shape[-1])
  return _terms_from_ecfs(*_ecf(real, t, precision), *_ecf(syn, t, precision))


def ncfd(
    real: ArrayLike,
    syn: ArrayLike,
    t: ArrayLike,
    *,
    alpha: ArrayLike = 0.5,
    beta: ArrayLike = 0.5,
    freq_chunk: int | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """Neural characteristic function discrepancy between two feature sets.

  ``NCFD = (1/F) sum_f sqrt(alpha * amplitude(t_f) + beta * phase(t_f))``

  with the terms of :func:`ncfd_terms`. With ``alpha = beta = 1`` the integrand
  is ``|Phi_x(t) - Phi_y(t)|`` and NCFD is the CFD of eq. 6, a metric. The
  paper writes the weights as ``alpha`` and ``1 - alpha``; the defaults 0.5,
  0.5 are the release's.

  Example:
    >>> x = jnp.eye(4)[:3]
    >>> float(ncfd(x, x, jnp.ones((8, 4)))) < 1e-5
    True

  Args:
    real: real features ``[N, D]``, N >= 1 (L2-normalised by the caller).
    syn: synthetic features ``[M, D]``, M >= 1.
    t: frequencies ``[F, D]``.
    alpha: weight of the amplitude term (scalar, may be traced).
    beta: weight of the phase term (scalar, may be traced).
    freq_chunk: process the frequencies in blocks of this many (a ``lax.map``
      across blocks, each block rematerialised in the backward pass) so that
      peak memory is ``O((N + M) freq_chunk)``; None: one block. Value and
      gradient do not depend on it (up to float summation order).
    precision: matmul precision (None: backend default, e.g. TF32 on recent
      NVIDIA GPUs; pass ``"highest"`` for full float32).

  Returns:
    Scalar NCFD (the release's match loss per class is ``300 * NCFD``).

  References:
    NCFM (CVPR 2025), sections 4.2.1 and 4.2.3, eqs. 6-7.
  """
  real, syn, t = jnp.asarray(real), jnp.asarray(syn), jnp.asarray(t)
  _validate_sets(real, syn, class_axis=False)
  _validate_frequencies(t, real.shape[-1])
  freq_chunk = _validate_freq_chunk(freq_chunk)
  return _ncfd_unchecked(real, syn, t, alpha, beta, freq_chunk, precision)


def class_ncfd(
    real: ArrayLike,
    syn: ArrayLike,
    t: ArrayLike,
    *,
    alpha: ArrayLike = 0.5,
    beta: ArrayLike = 0.5,
    freq_chunk: int | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """Per-class NCFD, all classes in one batched computation.

  ``out[c] = ncfd(real[c], syn[c], t, alpha=alpha, beta=beta, freq_chunk=freq_chunk)``; every class
  shares the same frequencies ``t`` (as in one distillation step), so each
  frequency block is one product over all classes' features.

  Args:
    real: real features ``[C, N, D]``.
    syn: synthetic features ``[C, M, D]``.
    t: frequencies ``[F, D]``, shared by all classes.
    alpha, beta, freq_chunk, precision: as in :func:`ncfd`.

  Returns:
    ``[C]`` NCFD per class.

  References:
    NCFM (CVPR 2025), section 4.2.3; docs/design.md section 4 step 3.
  """
  real, syn, t = jnp.asarray(real), jnp.asarray(syn), jnp.asarray(t)
  _validate_sets(real, syn, class_axis=True)
  _validate_frequencies(t, real.shape[-1])
  freq_chunk = _validate_freq_chunk(freq_chunk)
  per_class = functools.partial(
      _ncfd_unchecked,
      t=t,
      alpha=alpha,
      beta=beta,
      freq_chunk=freq_chunk,
      precision=precision,
  )
  return jax.vmap(per_class)(real, syn)


def mmd(real: ArrayLike, syn: ArrayLike) -> jax.Array:
  """Linear-kernel MMD of distribution matching (DM): ``||mean x - mean y||^2``.

  Example:
    >>> float(mmd(jnp.array([[0.0, 0.0], [2.0, 0.0]]), jnp.array([[0.0, 1.0]])))
    2.0

  Args:
    real: real features ``[N, D]``.
    syn: synthetic features ``[M, D]``.

  Returns:
    Scalar ``sum_d (mean_i x_id - mean_j y_jd)^2``.

  References:
    NCFM (CVPR 2025), eq. 3; Zhao & Bilen, "Dataset Condensation with
    Distribution Matching" (WACV 2023).
  """
  real, syn = jnp.asarray(real), jnp.asarray(syn)
  _validate_sets(real, syn, class_axis=False)
  return jnp.sum(jnp.square(real.mean(axis=0) - syn.mean(axis=0)))


def class_mmd(real: ArrayLike, syn: ArrayLike) -> jax.Array:
  """Per-class :func:`mmd`: ``real [C, N, D]``, ``syn [C, M, D]`` -> ``[C]``."""
  real, syn = jnp.asarray(real), jnp.asarray(syn)
  _validate_sets(real, syn, class_axis=True)
  return jnp.sum(jnp.square(real.mean(axis=1) - syn.mean(axis=1)), axis=-1)


def gaussian_frequencies(
    key: jax.Array,
    num_freqs: int,
    dim: int,
    scale: ArrayLike = 1.0,
    *,
    dtype: jax.typing.DTypeLike = jnp.float32,
) -> jax.Array:
  """Frequencies ``t ~ N(0, scale^2 I)`` (the "w/o psi" sampler, fresh per step).

  With L2-normalised features and ``scale = 1`` each ``<t, x>`` is ``N(0, 1)``.

  Args:
    key: PRNG key.
    num_freqs: F >= 1.
    dim: D >= 1.
    scale: standard deviation of every coordinate.
    dtype: floating dtype of the result.

  Returns:
    ``t [F, D]``.

  References:
    NCFM (CVPR 2025), section 4.2.2; docs/design.md section 3 (release default).
  """
  if num_freqs < 1 or dim < 1:
    raise ValueError(
        f"num_freqs and dim must be >= 1, got num_freqs={num_freqs}, dim={dim}."
    )
  return scale * jax.random.normal(key, (num_freqs, dim), dtype=dtype)
