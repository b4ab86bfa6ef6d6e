"""``python -m ncfm_jax.bench <subcommand> [flags]``: the benchmarks' command line.

Each subcommand is a module of this package with ``add_arguments(parser)`` and
``run_from_args(args) -> list[dict]`` (the rows it measured). Only the module of
the subcommand asked for is imported, so ``--help`` is quick, and a subcommand
whose module this installation lacks is left out of the listing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NamedTuple

from ncfm_jax.errors import InputError


class Subcommand(NamedTuple):
  module: str  # imported only when the subcommand is asked for
  help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "ncfd": Subcommand(
        "ncfm_jax.bench.ncfd", "NCFD value_and_grad time and memory vs F and freq_chunk."),
    "step": Subcommand(
        "ncfm_jax.bench.step",
        "Full distillation step: s/step, FLOPs, GFLOP/s vs matmul, peak memory."),
    "scaling": Subcommand(
        "ncfm_jax.bench.scaling",
        "Sharded step on 1, 2, 4 forced host devices; overhead vs the plain step."),
    # Its module may be absent from an installation: then it is not listed.
    "norm": Subcommand("ncfm_jax.bench.norm",
                       "InstanceNorm implementations (ours, flax's) on the distillation pass."),
    "memory": Subcommand("ncfm_jax.bench.memory",
                         "The memory planner's plans of the paper's cells per budget "
                         "(XLA's compile-time analysis)."),
    "blocks": Subcommand("ncfm_jax.bench.blocks",
                         "ConvNet per block: forward and input-gradient time vs FLOPs."),
}


def available() -> dict[str, Subcommand]:
  """The subcommands whose module is present (found, not imported)."""
  return {name: command for name, command in SUBCOMMANDS.items()
          if importlib.util.find_spec(command.module) is not None}


def main(argv: Sequence[str] | None = None) -> int:
  """Parses `argv` (default ``sys.argv[1:]``), runs the subcommand; 0 on success,
  2 with one line on stderr for bad input (an `InputError`)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m ncfm_jax.bench",
                                   description="Micro-benchmarks of ncfm_jax.")
  subparsers = parser.add_subparsers(dest="command", required=True)
  # The first word that is not an option names the subcommand (the top-level
  # parser has no option taking a value).
  chosen = next((word for word in argv if not word.startswith("-")), None)
  for name, command in available().items():
    sub = subparsers.add_parser(name, help=command.help)
    if name == chosen:
      module = importlib.import_module(command.module)
      module.add_arguments(sub)
      sub.set_defaults(run=module.run_from_args)
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except InputError as err:
    print(f"python -m ncfm_jax.bench {args.command}: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
