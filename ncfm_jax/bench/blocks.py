"""Where ConvNet's distillation pass spends its time: `python -m ncfm_jax.bench blocks`.

ConvNet-D (docs/design.md section 9) is `depth` blocks of [3x3 conv -> instance
norm -> ReLU -> 2x2 average pool]. Block d sees `[B, S / 2^d, S / 2^d, C_d]`
(C_0 = the image channels, C_d = width after), so each block alone is a ConvNet-1 on
that shape. For every block and for the whole network, on random inputs:

* ``forward``: the features `[B, D]` (the real images' pass, no gradient);
* ``forward+input_grad``: the features and the gradient of `<features, w>` w.r.t.
  the input, `w` a fixed random `[B, D]` (the synthetic images' pass: the network is
  frozen, the images are the variables).

FLOPs come from XLA's cost analysis of each compiled function; each timed call is
followed by a dense matmul, and a row's ``fraction_of_matmul`` is the median over
its calls of (FLOP rate / the matmul rate timed right after). ``share_of_time`` and
``share_of_flops`` compare a block with the sum of the blocks, so the block that
holds the whole network below the matmul rate stands out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import jax
import jax.numpy as jnp

from ncfm_jax.bench import common
from ncfm_jax.errors import InputError
from ncfm_jax.models.convnet import ConvNet

PASSES = ("forward", "forward+input_grad")


def block_shapes(image_size: int, channels: int, width: int, depth: int
                 ) -> list[tuple[int, int, int]]:
  """`(side, in_channels, index)` of each block's input: side `S // 2^d`."""
  return [(image_size // 2**d, channels if d == 0 else width, d) for d in range(depth)]


def _pass_functions(depth: int, width: int):
  """`{pass: fn(variables, x, w)}` of a ConvNet-`depth` of `width` channels."""
  model = ConvNet(num_classes=1, width=width, depth=depth, first_conv_padding=1)

  def features(variables, x):
    return model.apply(variables, x)[0]

  def with_input_grad(variables, x, w):
    return jax.value_and_grad(lambda x: jnp.vdot(features(variables, x), w))(x)

  return model, {"forward": lambda variables, x, w: features(variables, x),
                 "forward+input_grad": with_input_grad}


def measure(label: str, depth: int, width: int, shape: tuple[int, ...], repeats: int,
            seed: int = 0, matmul_size: int | None = None) -> list[dict[str, Any]]:
  """Rows (one per pass) of a ConvNet-`depth` on inputs of `shape` `[B, S, S, C]`;
  `matmul_size`: side of the reference matmul (None: `common.matmul_probe`'s)."""
  key_x, key_p, key_w = jax.random.split(jax.random.PRNGKey(seed), 3)
  model, passes = _pass_functions(depth, width)
  x = jax.random.normal(key_x, shape)
  variables = model.init(key_p, x[:1])
  w = jax.random.normal(key_w, jax.eval_shape(lambda: passes["forward"](variables, x, None)).shape)
  matmul_fn, matmul_flops = common.matmul_probe(matmul_size, count=2)
  rows = []
  for name, fn in passes.items():
    compiled = jax.jit(fn).lower(variables, x, w).compile()
    flops = float(compiled.cost_analysis()["flops"])
    timing = common.time_interleaved(
        {"pass": lambda: compiled(variables, x, w), "matmul": matmul_fn}, repeats, warmup=2)
    rates = [matmul_flops / s / 1e9 for s in timing["matmul"].times]
    fractions = [flops / s / 1e9 / r for s, r in zip(timing["pass"].times, rates)]
    rows.append({"block": label, "pass": name, "input_shape": list(shape),
                 "gflops": flops / 1e9, "median_ms": 1e3 * timing["pass"].median,
                 "achieved_gflops": flops / timing["pass"].median / 1e9,
                 "matmul_gflops": statistics.median(rates),
                 "fraction_of_matmul": statistics.median(fractions),
                 "times_ms": [round(1e3 * s, 3) for s in timing["pass"].times]})
  return rows


def add_shares(rows: list[dict[str, Any]]) -> None:
  """Adds each block row's ``share_of_time`` / ``share_of_flops`` within its pass
  (against the sum over the blocks; the whole-network row gets none)."""
  for name in PASSES:
    blocks = [r for r in rows if r["pass"] == name and r["block"] != "network"]
    total_ms = sum(r["median_ms"] for r in blocks)
    total_flops = sum(r["gflops"] for r in blocks)
    for r in blocks:
      r["share_of_time"] = r["median_ms"] / total_ms
      r["share_of_flops"] = r["gflops"] / total_flops


_COLUMNS = ("block", "pass", "input_shape", "gflops", "median_ms", "achieved_gflops",
            "matmul_gflops", "fraction_of_matmul", "share_of_time", "share_of_flops")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `python -m ncfm_jax.bench blocks`."""
  parser.add_argument("--batch", type=int, default=125,
                      help="images per pass (125: one synthetic pass of cifar100_ipc50).")
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=9, help="timed calls per pass.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--matmul-size", type=int, default=None,
                      help="side of the reference matmul (default 2048 on CPU, 8192 else).")
  parser.add_argument("--json", default=None, help="write the rows here.")


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Measures every block and the network, prints a table, returns (and saves) rows."""
  for flag in ("batch", "width", "depth", "image_size", "channels", "repeats"):
    if getattr(args, flag) < 1:
      raise InputError(f"--{flag.replace('_', '-')} must be >= 1, "
                       f"got {getattr(args, flag)}")
  if args.image_size < 2**args.depth:
    raise InputError(f"--image-size {args.image_size} is too small for "
                     f"--depth {args.depth}")
  env = common.environment()
  env["command"] = "python -m ncfm_jax.bench blocks " + " ".join(sys.argv[2:])
  rows = []
  for side, in_channels, d in block_shapes(args.image_size, args.channels, args.width,
                                           args.depth):
    rows += measure(f"block{d}", 1, args.width, (args.batch, side, side, in_channels),
                    args.repeats, args.seed, args.matmul_size)
  rows += measure("network", args.depth, args.width,
                  (args.batch, args.image_size, args.image_size, args.channels),
                  args.repeats, args.seed, args.matmul_size)
  add_shares(rows)
  for row in rows:
    row.update(env)
  print(common.markdown_table(rows, _COLUMNS), flush=True)
  print(f"({env['date']}, {env['device']}, jax {env['jax']}, load {env['load_avg_1m']:.1f})",
        flush=True)
  common.write_json(rows, args.json)
  return rows
