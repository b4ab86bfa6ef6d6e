"""Tests of ncfm_jax.ncfd against a float64 NumPy reference and the CFD's properties."""

import functools
import json

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import bench
from ncfm_jax.ncfd import (class_mmd, class_ncfd, empirical_cf, gaussian_frequencies, mmd,
                           ncfd, ncfd_terms)

SETTINGS = hypothesis.settings(max_examples=4, deadline=None, derandomize=True)

# Jitted once per shape: eager calls of the chunked path re-trace lax.map every time.
_NCFD = jax.jit(ncfd, static_argnames="freq_chunk")
_GRAD_ALL = jax.jit(jax.grad(ncfd, argnums=(0, 1, 2)), static_argnames="freq_chunk")


# ---------------------------------------------------------------- helpers


def _unit_rows(rng, n, d, shift=0.0, dtype=np.float32):
  x = rng.normal(size=(n, d)) + shift
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _problem(seed=0, n=64, m=10, d=32, f=48, dtype=np.float32):
  rng = np.random.default_rng(seed)
  real = _unit_rows(rng, n, d, dtype=dtype)
  syn = _unit_rows(rng, m, d, shift=0.3, dtype=dtype)
  t = rng.normal(size=(f, d)).astype(dtype)
  return real, syn, t


def _np_ecf(x, t):
  """Complex ECF [F] in float64."""
  proj = np.asarray(x, np.float64) @ np.asarray(t, np.float64).T
  return np.exp(1j * proj).mean(axis=0)


def _np_terms(x, y, t):
  phi_x, phi_y = _np_ecf(x, t), _np_ecf(y, t)
  amp = (np.abs(phi_x) - np.abs(phi_y)) ** 2
  # 2 |Phi_x||Phi_y| (1 - cos(a_x - a_y)) with the angles taken explicitly.
  pha = 2 * np.abs(phi_x) * np.abs(phi_y) * (1 - np.cos(np.angle(phi_x) - np.angle(phi_y)))
  return amp, np.maximum(pha, 1e-12), phi_x, phi_y


def _np_ncfd(x, y, t, alpha=0.5, beta=0.5):
  amp, pha, _, _ = _np_terms(x, y, t)
  return np.mean(np.sqrt(alpha * amp + beta * pha))


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


# ---------------------------------------------------------------- reference values


def test_empirical_cf_matches_numpy():
  real, _, t = _problem()
  re, im = empirical_cf(real, t)
  assert re.shape == im.shape == (t.shape[0],)
  assert re.dtype == jnp.float32
  phi = _np_ecf(real, t)
  assert _rel_err(re, phi.real) < 1e-5
  assert _rel_err(im, phi.imag) < 1e-5


def test_empirical_cf_hand_value():
  # One feature (1, 0), frequencies pi/2 e_1 and pi e_1: Phi = j and -1.
  re, im = empirical_cf(jnp.array([[1.0, 0.0]]), jnp.array([[np.pi / 2, 5.0], [np.pi, 0.0]]))
  np.testing.assert_allclose(re, [0.0, -1.0], atol=1e-6)
  np.testing.assert_allclose(im, [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (1.0, 1.0), (0.8, 0.2), (1.0, 0.0)])
@pytest.mark.parametrize("freq_chunk", [None, 7])
def test_ncfd_matches_numpy(alpha, beta, freq_chunk):
  for seed in range(3):
    real, syn, t = _problem(seed)
    got = _NCFD(real, syn, t, alpha=alpha, beta=beta, freq_chunk=freq_chunk)
    assert got.shape == () and got.dtype == jnp.float32
    want = _np_ncfd(real, syn, t, alpha, beta)
    assert abs(float(got) - want) / want < 1e-5, (seed, float(got), want)


def test_ncfd_terms_match_numpy():
  real, syn, t = _problem(1)
  amp, pha = ncfd_terms(real, syn, t)
  want_amp, want_pha, _, _ = _np_terms(real, syn, t)
  np.testing.assert_allclose(amp, want_amp, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(pha, want_pha, rtol=1e-4, atol=1e-7)
  assert float(jnp.min(pha)) >= 1e-12


def test_mmd_hand_value_and_numpy():
  real = jnp.array([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0)
  syn = jnp.array([[0.0, 1.0]])  # mean (0, 1)
  assert float(mmd(real, syn)) == pytest.approx(2.0)
  real, syn, _ = _problem(2)
  want = np.sum((real.astype(np.float64).mean(0) - syn.astype(np.float64).mean(0)) ** 2)
  assert float(mmd(real, syn)) == pytest.approx(want, rel=1e-5)


def test_gaussian_frequencies():
  key = jax.random.PRNGKey(3)
  t = gaussian_frequencies(key, 4096, 8, scale=2.0)
  assert t.shape == (4096, 8) and t.dtype == jnp.float32
  np.testing.assert_array_equal(t, gaussian_frequencies(key, 4096, 8, scale=2.0))
  assert not np.allclose(t, gaussian_frequencies(jax.random.PRNGKey(4), 4096, 8, 2.0))
  assert float(jnp.std(t)) == pytest.approx(2.0, rel=0.05)
  assert float(jnp.abs(jnp.mean(t))) < 0.1
  with pytest.raises(ValueError, match="num_freqs"):
    gaussian_frequencies(key, 0, 8)


# ---------------------------------------------------------------- the CFD's structure


def test_identity_alpha_beta_one_is_squared_ecf_difference():
  """Paper eq. 7: amplitude + phase = |Phi_x - Phi_y|^2 at every frequency."""
  for seed in range(3):
    real, syn, t = _problem(seed)
    amp, pha = ncfd_terms(real, syn, t)
    phi_x, phi_y = _np_ecf(real, t), _np_ecf(syn, t)
    np.testing.assert_allclose(amp + pha, np.abs(phi_x - phi_y) ** 2, rtol=1e-4, atol=1e-7)
    want = np.mean(np.abs(phi_x - phi_y))
    assert float(ncfd(real, syn, t, alpha=1.0, beta=1.0)) == pytest.approx(want, rel=1e-5)


def test_identical_sets_give_zero():
  real, _, t = _problem()
  # Floor: sqrt(PHASE_FLOOR) = 1e-6 per frequency.
  assert float(ncfd(real, real, t)) < 2e-6
  assert float(_NCFD(real, real[::-1], t, freq_chunk=5)) < 1e-5
  # Duplicating every sample does not change the distribution either.
  assert float(ncfd(real, np.concatenate([real, real]), t)) < 1e-5


def test_symmetry_and_permutation_invariance():
  real, syn, t = _problem(4)
  value = float(ncfd(real, syn, t))
  assert float(ncfd(syn, real, t)) == pytest.approx(value, rel=1e-6)
  rng = np.random.default_rng(0)
  perm_real, perm_syn = real[rng.permutation(len(real))], syn[rng.permutation(len(syn))]
  assert float(ncfd(perm_real, perm_syn, t)) == pytest.approx(value, rel=1e-5)
  # Permuting the frequencies is a permutation of the mean's terms.
  assert float(_NCFD(real, syn, t[rng.permutation(len(t))], freq_chunk=7)) == pytest.approx(value, rel=1e-5)


def test_triangle_inequality():
  rng = np.random.default_rng(5)
  t = rng.normal(size=(40, 16)).astype(np.float32)
  cfd = jax.jit(lambda x, y: ncfd(x, y, t, alpha=1.0, beta=1.0))
  for _ in range(20):
    a, b, c = (_unit_rows(rng, n, 16, shift=rng.normal(size=16)) for n in (7, 13, 4))
    assert float(cfd(a, c)) <= float(cfd(a, b)) + float(cfd(b, c)) + 1e-5


def test_chunk_invariance_of_value_and_gradient():
  real, syn, t = _problem(6, f=48)  # 48 = 6 * 7 + 6: a remainder block

  @functools.partial(jax.jit, static_argnums=0)
  def value_and_grads(chunk, *args):
    return jax.value_and_grad(ncfd, argnums=(0, 1, 2))(*args, freq_chunk=chunk)

  ref_value, ref_grads = value_and_grads(None, real, syn, t)
  for chunk in (1, 7, 48):
    value, grads = value_and_grads(chunk, real, syn, t)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-6)
    for grad, ref_grad in zip(grads, ref_grads):
      scale = float(jnp.abs(ref_grad).max())
      assert scale > 0
      # float32 noise: chunking changes the summation order and where sin/cos are
      # recomputed (sincos.py is within 1e-7, 3x XLA's error): 2.4e-6 measured.
      np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=5e-6 * scale)


def test_jit_matches_eager():
  real, syn, t = _problem(7)
  jitted = jax.jit(ncfd, static_argnames="freq_chunk")
  for chunk in (None, 7):
    np.testing.assert_allclose(jitted(real, syn, t, freq_chunk=chunk), ncfd(real, syn, t), rtol=1e-6)
  # alpha and beta may be traced.
  traced_weights = jax.jit(lambda a: ncfd(real, syn, t, alpha=a, beta=1.0 - a))
  np.testing.assert_allclose(traced_weights(0.3), ncfd(real, syn, t, alpha=0.3, beta=0.7), rtol=1e-6)
  np.testing.assert_allclose(
      ncfd(real, syn, t, precision="highest"), ncfd(real, syn, t), rtol=1e-5
  )
  re, im = jax.jit(empirical_cf)(real, t)
  np.testing.assert_allclose(re, empirical_cf(real, t)[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.jit(mmd)(real, syn), mmd(real, syn), rtol=1e-6)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("freq_chunk,alpha,beta", [(None, 0.5, 0.5), (3, 0.9, 0.1)])
def test_gradient_matches_finite_differences(x64, freq_chunk, alpha, beta):
  real, syn, t = _problem(8, n=12, m=4, d=5, f=10, dtype=np.float64)
  real, syn, t = jnp.asarray(real), jnp.asarray(syn), jnp.asarray(t)
  fn = lambda s, tt: ncfd(real, s, tt, alpha=alpha, beta=beta, freq_chunk=freq_chunk)
  grads = jax.jit(jax.grad(fn, argnums=(0, 1)))(syn, t)
  assert grads[0].dtype == jnp.float64
  step = 1e-6
  batched = jax.jit(jax.vmap(fn))
  args = (syn, t)
  for wrt, grad in enumerate(grads):
    # Central differences along every coordinate of args[wrt], in one batched call.
    arg = args[wrt]
    deltas = step * jnp.eye(arg.size, dtype=arg.dtype).reshape(-1, *arg.shape)
    def values(sign):
      stacked = [jnp.broadcast_to(a[None], (len(deltas),) + a.shape) for a in args]
      stacked[wrt] = stacked[wrt] + sign * deltas
      return batched(*stacked)
    numeric = (values(1.0) - values(-1.0)) / (2 * step)
    np.testing.assert_allclose(grad, numeric.reshape(arg.shape), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0)])
@pytest.mark.parametrize("freq_chunk", [None, 7])
def test_gradient_finite_at_identical_sets(alpha, beta, freq_chunk):
  real, _, t = _problem(9)
  grads = _GRAD_ALL(real, real, t, alpha=alpha, beta=beta, freq_chunk=freq_chunk)
  for g in grads:
    assert bool(jnp.all(jnp.isfinite(g)))
  # Also finite where one ECF is exactly 0: <t, x> in {0, 0, pi, -pi} at t = pi e_1.
  feats = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
  t_zero = jnp.array([[np.pi, 0.0], [1.0, 1.0]])
  re, im = empirical_cf(feats, t_zero)
  assert float(re[0]) == 0.0 and float(im[0]) == 0.0
  g = _GRAD_ALL(jnp.eye(2), feats, t_zero, alpha=alpha, beta=beta, freq_chunk=freq_chunk)[1]
  assert bool(jnp.all(jnp.isfinite(g)))


# ---------------------------------------------------------------- class-batched helpers


def test_class_ncfd_equals_loop():
  classes = [_problem(seed) for seed in (10, 11, 12)]  # the shapes of the other tests
  real, syn = np.stack([c[0] for c in classes]), np.stack([c[1] for c in classes])
  t = classes[0][2]
  want = [ncfd(real[c], syn[c], t, alpha=0.7, beta=0.3) for c in range(3)]
  jitted = jax.jit(class_ncfd, static_argnames="freq_chunk")
  for chunk in (None, 5):
    got = jitted(real, syn, t, alpha=0.7, beta=0.3, freq_chunk=chunk)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
  # The gradient of the summed loss w.r.t. one class's features is that class's gradient.
  grad = jax.jit(jax.grad(lambda s: class_ncfd(real, s, t, alpha=0.7, beta=0.3, freq_chunk=5).sum()))(syn)
  for c in range(3):
    want_grad = _GRAD_ALL(real[c], syn[c], t, alpha=0.7, beta=0.3, freq_chunk=None)[1]
    np.testing.assert_allclose(grad[c], want_grad, rtol=1e-4, atol=1e-6 * float(jnp.abs(want_grad).max()))


def test_class_mmd_equals_loop():
  rng = np.random.default_rng(11)
  real = rng.normal(size=(4, 9, 7)).astype(np.float32)
  syn = rng.normal(size=(4, 3, 7)).astype(np.float32)
  np.testing.assert_allclose(
      class_mmd(real, syn), [mmd(real[c], syn[c]) for c in range(4)], rtol=1e-6
  )


# ---------------------------------------------------------------- errors


def test_errors():
  real, syn, t = _problem()
  with pytest.raises(ValueError, match="feature dims differ"):
    ncfd(real, syn[:, :5], t)
  with pytest.raises(ValueError, match="t has dim"):
    ncfd(real, syn, t[:, :5])
  with pytest.raises(ValueError, match="real is an empty set"):
    ncfd(real[:0], syn, t)
  with pytest.raises(ValueError, match="syn is an empty set"):
    ncfd(real, syn[:0], t)
  with pytest.raises(ValueError, match="F=0"):
    ncfd(real, syn, t[:0])
  with pytest.raises(ValueError, match="syn contains non-finite"):
    ncfd(real, _with(syn, np.nan), t)
  with pytest.raises(ValueError, match="real contains non-finite"):
    mmd(_with(real, np.inf), syn)
  with pytest.raises(ValueError, match="t contains non-finite"):
    ncfd_terms(real, syn, _with(t, np.nan))
  with pytest.raises(ValueError, match="feats contains non-finite"):
    empirical_cf(_with(real, np.nan), t)
  with pytest.raises(ValueError, match="freq_chunk"):
    ncfd(real, syn, t, freq_chunk=0)
  with pytest.raises(ValueError, match="freq_chunk"):
    ncfd(real, syn, t, freq_chunk=2.5)
  with pytest.raises(ValueError, match="class counts differ"):
    class_ncfd(real[None].repeat(2, 0), syn[None], t)
  with pytest.raises(ValueError, match="floating"):
    ncfd(real.astype(np.int32), syn, t)
  with pytest.raises(AssertionError):  # chex rank assertion
    ncfd(real[None], syn, t)
  # Under jit the finiteness check is skipped (it would need concrete values).
  assert np.isnan(jax.jit(ncfd)(real, _with(syn, np.nan), t))


def _with(x, value):
  x = np.array(x)
  x[0, 0] = value
  return x


# ---------------------------------------------------------------- properties


@SETTINGS
@hypothesis.given(
    n=st.integers(1, 12),
    m=st.integers(1, 12),
    d=st.integers(1, 6),
    f=st.integers(1, 20),
    chunk=st.integers(1, 25),
    seed=st.integers(0, 2**16),
)
def test_properties_random_shapes(n, m, d, f, chunk, seed):
  rng = np.random.default_rng(seed)
  real = _unit_rows(rng, n, d)
  syn = _unit_rows(rng, m, d, shift=rng.normal(size=d))
  t = (2 * rng.normal(size=(f, d))).astype(np.float32)
  value = float(ncfd(real, syn, t))
  # amplitude + phase = |Phi_x - Phi_y|^2, so with alpha = beta the integrand is
  # sqrt(alpha) |Phi_x(t) - Phi_y(t)|. The union of the two sets has the ECF
  # (n Phi_x + m Phi_y) / (n + m), on the segment from Phi_x to Phi_y at every t:
  # the NCFD splits there in the ratio m : n (to the floor, 1e-6 per frequency).
  union = np.concatenate([real, syn])
  assert float(ncfd(real, union, t)) == pytest.approx(m / (n + m) * value, rel=1e-3, abs=1e-5)
  assert float(ncfd(union, syn, t)) == pytest.approx(n / (n + m) * value, rel=1e-3, abs=1e-5)
  assert float(ncfd(syn, real, t)) == pytest.approx(value, rel=1e-5)  # symmetric
  assert value == pytest.approx(_np_ncfd(real, syn, t), rel=1e-4, abs=1e-6)
  assert float(_NCFD(real, syn, t, freq_chunk=chunk)) == pytest.approx(value, rel=1e-5)
  # Translating both sets rotates both ECFs by the same phase: NCFD unchanged.
  shift = rng.normal(size=d).astype(np.float32)
  assert float(ncfd(real + shift, syn + shift, t)) == pytest.approx(value, rel=1e-3, abs=1e-5)
  re, im = empirical_cf(real, t)
  assert float(jnp.max(re**2 + im**2)) <= 1.0 + 1e-5
  # Conjugate symmetry: Phi(-t) = conj(Phi(t)).
  re_neg, im_neg = empirical_cf(real, -t)
  np.testing.assert_allclose(re_neg, re, atol=1e-6)
  np.testing.assert_allclose(im_neg, -im, atol=1e-6)


def test_bench_cli_smoke(tmp_path, capsys):
  out = tmp_path / "rows.json"
  argv = ["ncfd", "--num-real=8", "--num-syn=2", "--dim=4", "--freqs=20", "--chunks=none,7"]
  argv += ["--runs=2", "--warmup=0", "--in-process", f"--json={out}"]
  assert bench.main(argv) == 0
  rows = json.loads(out.read_text())
  assert [(r["F"], r["freq_chunk"]) for r in rows] == [(20, "none"), (20, 7)]
  assert all(r["median_ms"] > 0 and r["runs"] == 2 for r in rows)
  printed = capsys.readouterr().out
  assert "| F | freq_chunk |" in printed and "jax " + jax.__version__ in printed
