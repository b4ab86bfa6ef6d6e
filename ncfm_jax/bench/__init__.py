"""Benchmarks: ``python -m ncfm_jax.bench {ncfd,step,scaling,memory,norm,blocks} [--json PATH]``.

One module per subcommand (`ncfd`, `step`, `scaling`, `memory`, `norm`, `blocks`), each with
``add_arguments(parser)`` and ``run_from_args(args) -> list[dict]``; the
command line (``__main__``) imports only the one asked for. What they share
(environment, timing, child processes, memory, tables, the library's run
functions) is in `common`. The measured figures and the commands that
reproduce them are in docs/benchmarks.md.
"""


def main(argv=None) -> int:
  """``python -m ncfm_jax.bench`` with `argv` (a list of strings); returns 0."""
  # Imported here, not at the top: ``python -m ncfm_jax.bench`` runs __main__
  # as a fresh module after importing this package, and a copy imported here
  # first would make runpy warn.
  from ncfm_jax.bench import __main__ as cli  # pylint: disable=g-import-not-at-top
  return cli.main(argv)
