"""The README's notebook snippet runs as written and computes the NCFD."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ecf(x, t):
  """Complex ECF `[F]` of `x [N, D]` at `t [F, D]` in float64."""
  return np.exp(1j * (x @ t.T)).mean(axis=0)


def _ncfd64(phi_real, syn, t, alpha=0.5, beta=0.5):
  """eq. 7 in float64, amplitude and phase from the ECFs' moduli and angles."""
  phi_syn = _ecf(syn, t)
  amplitude = (np.abs(phi_real) - np.abs(phi_syn)) ** 2
  phase = 2 * np.abs(phi_real) * np.abs(phi_syn) * (
      1 - np.cos(np.angle(phi_real) - np.angle(phi_syn)))
  return np.mean(np.sqrt(np.maximum(alpha * amplitude + beta * phase, 1e-12))), phi_syn


def test_notebook_snippet_runs():
  text = open(os.path.join(ROOT, "README.md")).read()
  snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  scope = {}
  exec(compile(snippet, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert scope["grad_syn"].shape == (40, 2048)
  assert scope["amplitude"].shape == (4096,)
  # Its value, terms and gradient against float64 NumPy on the snippet's own arrays.
  real, syn, t = (np.asarray(scope[name], np.float64) for name in ("real", "syn", "t"))
  phi_real = _ecf(real, t)
  value, phi_syn = _ncfd64(phi_real, syn, t)
  assert float(scope["value"]) == pytest.approx(value, rel=1e-4)
  np.testing.assert_allclose(np.asarray(scope["amplitude"]) + np.asarray(scope["phase"]),
                             np.abs(phi_real - phi_syn) ** 2, rtol=1e-3, atol=1e-6)
  direction = np.random.default_rng(0).normal(size=syn.shape)
  eps = 1e-4
  slope = (_ncfd64(phi_real, syn + eps * direction, t)[0]
           - _ncfd64(phi_real, syn - eps * direction, t)[0]) / (2 * eps)
  grad = np.asarray(scope["grad_syn"], np.float64)
  assert np.sum(grad * direction) == pytest.approx(slope, rel=1e-2)
