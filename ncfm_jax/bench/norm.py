"""Instance norm implementations on the distillation pass: `python -m ncfm_jax.bench norm`.

Implementations (`IMPLEMENTATIONS`), all with parameters `scale` and `bias` and
epsilon `models.common.NORM_EPSILON`:

* ``plain``: `PlainInstanceNorm`, written with plain reductions over H, W (the
  library's instance norm until flax's measured as fast, below);
* ``flax``: `flax.linen.InstanceNorm` as flax defaults it (``use_fast_variance=True``:
  var = E[x^2] - E[x]^2, clipped at 0);
* ``flax_two_pass``: `flax.linen.InstanceNorm(use_fast_variance=False)`: var =
  E[(x - E[x])^2], the formula of ``plain``.

Two cases, both forward + gradient w.r.t. the INPUT (the distillation pass: the
extractor is frozen, the images are the variables), loss ``<output, w>`` for a fixed
random ``w``:

* ``convnet``: ConvNet-D features (default ConvNet-3, width 128) on ``[B, S, S, C]``
  images (default 100 x 32 x 32 x 3);
* ``layer``: one norm layer on ``[B, S, S, width]`` activations (mean 3, std 2).

Before timing, every implementation is checked against the first of ``--impls`` on the
same random input and parameters (norm scales and biases perturbed away from 1 and 0):
outputs must agree within ``--tolerance`` (default 1e-5) or the run stops; the rows
record the largest output and input-gradient differences. (A ReLU input within
rounding of 0 may switch sides between implementations; in ConvNet-3 that changes the
input gradient of the image it belongs to at the percent level.)

Each function is compiled ahead of time and warmed up; then the implementations take
turns for ``--repeats`` rounds so that a change in the machine's load hits them alike.
Rows give the median, min and max milliseconds per call and the median over rounds of
the time relative to the first implementation in the same round.

The network builds the implementation under test because `models.common.InstanceNorm`
is swapped while the function is traced (``_instance_norm``); the compiled executable
keeps it, and a check stops the run if two implementations trace to the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncfm_jax import models
from ncfm_jax.bench import common as bench_common
from ncfm_jax.errors import InputError
from ncfm_jax.models import common

class PlainInstanceNorm(nn.Module):
  """Instance norm with plain reductions over H, W of `[B, H, W, C]` (two-pass variance)."""
  epsilon: float = common.NORM_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    centered = x - mean
    var = jnp.mean(jnp.square(centered), axis=(1, 2), keepdims=True)
    return centered * jax.lax.rsqrt(var + self.epsilon) * scale + bias


IMPLEMENTATIONS: dict[str, Callable[..., nn.Module]] = {
    "plain": PlainInstanceNorm,
    "flax": functools.partial(nn.InstanceNorm, epsilon=common.NORM_EPSILON),
    "flax_two_pass": functools.partial(nn.InstanceNorm, epsilon=common.NORM_EPSILON,
                                       use_fast_variance=False),
}
"""Name -> module class (called with ``name=...``) of each implementation."""

CASES = ("convnet", "layer")


@contextlib.contextmanager
def _instance_norm(impl: str) -> Iterator[None]:
  """Makes `models.common.normalize(..., "instance")` build `IMPLEMENTATIONS[impl]`."""
  saved = common.InstanceNorm
  common.InstanceNorm = IMPLEMENTATIONS[impl]
  try:
    yield
  finally:
    common.InstanceNorm = saved


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _environment() -> dict[str, Any]:
  env = bench_common.environment()
  env.update(cpu_model=_cpu_model(), flax=importlib.metadata.version("flax"),
             command="python -m ncfm_jax.bench norm " + " ".join(sys.argv[1:]))
  return env


def _perturb_affine(variables: Any, key: jax.Array) -> Any:
  """`variables` with every `scale` and `bias` leaf shifted by 0.1 N(0, 1), so that
  the norms' affine maps are exercised (they start at exactly 1 and 0)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(key, len(leaves))
  out = [leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
         if getattr(path[-1], "key", None) in ("scale", "bias") else leaf
         for (path, leaf), k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, out)


def _case_functions(case: str, args: argparse.Namespace):
  """(forward, inputs) of a case: `forward(x, variables) -> output` and the
  `(x, variables, cotangent)` it is timed on (one parameter tree serves every
  implementation: their parameters have the same names and shapes)."""
  key_x, key_p, key_w = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  if case == "convnet":
    model = models.get_model("convnet", 10, width=args.width, depth=args.depth,
                             norm="instance", image_size=args.image_size,
                             channels=args.channels)
    x = jax.random.normal(key_x, (args.batch, args.image_size, args.image_size,
                                  args.channels))
    forward = lambda x, variables: model.apply(variables, x)[0]
    variables = model.init(key_p, x[:1])
    out_shape = (args.batch, models.feature_dim(model, args.image_size, args.channels))
  elif case == "layer":
    # common.InstanceNorm is looked up when traced, so _instance_norm swaps it.
    forward = lambda x, variables: common.InstanceNorm().apply(variables, x)
    x = 3.0 + 2.0 * jax.random.normal(
        key_x, (args.batch, args.image_size, args.image_size, args.width))
    variables = common.InstanceNorm().init(key_p, x[:1])
    out_shape = x.shape
  else:
    raise InputError(f"unknown case {case!r}; valid: {', '.join(CASES)}")
  variables = _perturb_affine(variables, key_p)
  # No jax.eval_shape(forward, ...) here: JAX caches the trace of `forward`, and a
  # trace made outside _instance_norm would be reused inside it.
  cotangent = jax.random.normal(key_w, out_shape)
  return forward, (x, variables, cotangent)


def _value_and_input_grad(forward):
  def loss(x, variables, cotangent):
    return jnp.vdot(forward(x, variables), cotangent)
  return jax.value_and_grad(loss, argnums=0)


def _compile(fn, inputs, impl: str):
  """AOT-compiles `fn` with `impl` swapped in; returns (executable, seconds, jaxpr text)."""
  with _instance_norm(impl):
    start = time.perf_counter()
    jaxpr = str(jax.make_jaxpr(fn)(*inputs))
    compiled = jax.jit(fn).lower(*inputs).compile()
    seconds = time.perf_counter() - start
  return compiled, seconds, jaxpr


def _max_abs_diff(a: Any, b: Any) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_case(case: str, impls: Sequence[str], args: argparse.Namespace) -> list[dict[str, Any]]:
  """Checks `impls` against `impls[0]` on `case`, then times them; one row per impl."""
  compiled, reference, rows = {}, None, []
  for impl in impls:
    # Fresh functions per impl: JAX caches traces by function object, so tracing the
    # same one again would reuse the first impl's program.
    forward, inputs = _case_functions(case, args)
    x, variables, _ = inputs
    exe, compile_s, jaxpr = _compile(_value_and_input_grad(forward), inputs, impl)
    fwd, _, fwd_jaxpr = _compile(forward, inputs[:2], impl)
    output = jax.block_until_ready(fwd(x, variables))
    value_grad = jax.block_until_ready(exe(*inputs))
    if reference is None:
      reference = (output, value_grad, (jaxpr, fwd_jaxpr))
    elif jaxpr in reference[2] or fwd_jaxpr in reference[2]:
      raise RuntimeError(f"{case}: {impl} traced to the same program as {impls[0]}: "
                         "the implementation swap did not take effect")
    output_diff = _max_abs_diff(output, reference[0])
    grad_diff = _max_abs_diff(value_grad[1], reference[1][1])
    grad_rel = float(jnp.linalg.norm(value_grad[1] - reference[1][1])
                     / jnp.linalg.norm(reference[1][1]))
    if output_diff > args.tolerance:
      raise RuntimeError(f"{case}: {impl} differs from {impls[0]} by {output_diff:.3g} "
                         f"> {args.tolerance} on the same input and parameters")
    compiled[impl] = exe
    rows.append({"case": case, "impl": impl, "compile_s": compile_s,
                 "max_abs_diff_output": output_diff, "max_abs_diff_input_grad": grad_diff,
                 "rel_l2_diff_input_grad": grad_rel,
                 "input_shape": list(x.shape)})
  for exe in compiled.values():
    for _ in range(args.warmup):
      jax.block_until_ready(exe(*inputs))
  times = {impl: [] for impl in impls}
  for _ in range(args.repeats):
    for impl in impls:  # take turns
      start = time.perf_counter()
      jax.block_until_ready(compiled[impl](*inputs))
      times[impl].append(1e3 * (time.perf_counter() - start))
  reference_times = times[impls[0]]
  for row in rows:
    t = times[row["impl"]]
    # Same-round ratios cancel most of a load change that lasts longer than a round.
    ratios = [a / b for a, b in zip(t, reference_times)]
    row.update(median_ms=statistics.median(t), min_ms=min(t), max_ms=max(t),
               median_ratio_vs_reference=statistics.median(ratios), reference=impls[0],
               times_ms=[round(v, 2) for v in t], repeats=args.repeats, warmup=args.warmup)
  return rows


_COLUMNS = ("case", "impl", "median_ms", "min_ms", "max_ms", "median_ratio_vs_reference",
            "compile_s", "max_abs_diff_output", "max_abs_diff_input_grad",
            "rel_l2_diff_input_grad")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `python -m ncfm_jax.bench norm`."""
  parser.add_argument("--cases", default=",".join(CASES), help="comma list of cases.")
  parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS),
                      help="comma list; the first is the reference of the checks.")
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=9, help="timed calls per impl.")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--tolerance", type=float, default=1e-5,
                      help="largest output difference accepted against the reference.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="write the rows here.")


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Runs the cases the flags ask for, prints a table, returns (and saves) the rows."""
  impls = args.impls.split(",")
  unknown = [i for i in impls if i not in IMPLEMENTATIONS]
  if unknown:
    raise InputError(f"unknown impls {unknown}; valid: {', '.join(IMPLEMENTATIONS)}")
  env = _environment()
  rows = []
  for case in args.cases.split(","):
    rows += run_case(case, impls, args)
  for row in rows:
    row.update(env)
  print(bench_common.markdown_table(rows, _COLUMNS), flush=True)
  print(f"({env['date']}, {env['cpu_model']} x {env['cpu_count']}, jax {env['jax']}, "
        f"flax {env['flax']}, load {env['load_avg_1m']:.1f})", flush=True)
  bench_common.write_json(rows, args.json)
  return rows

