"""Grids of pipeline runs: one ``python -m ncfm_jax.main`` child process per cell.

A `Cell` is a workdir name, a config spec (``path.py[:arg]``, found by
`config_lib.resolve_config`: a file as given, else the installed package's copy)
and CLI flags. `run_grid` runs cells `parallel` at a time, each in its own
workdir ``OUT/<name>`` with its output in ``OUT/<name>/log.txt``. After every
finished cell it collects the cell's ``metrics.json`` into ``OUT/results.json``
(cell name -> metrics) and rewrites the caller's markdown tables, so an
interrupted grid keeps what it finished. Re-running resumes: a cell whose
workdir records a finished run of the same command (``OUT/<name>/cell.json``)
is read back instead of run; any other cell is run again, and the CLI itself
resumes from the workdir's checkpoints.

The accuracy study (`ncfm_jax.study`) is such a grid.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ncfm_jax import config_lib
from ncfm_jax.errors import InputError

RESULTS = "results.json"
_RECORD = "cell.json"  # in a cell's workdir: the command that finished there


@dataclasses.dataclass(frozen=True)
class Cell:
  """One CLI run: ``python -m ncfm_jax.main --config=CONFIG --workdir=OUT/NAME --mode=MODE FLAGS``."""
  name: str  # its workdir under the grid's directory, and its key in results.json
  config: str  # spec path.py[:arg]
  flags: tuple[str, ...] = ()  # e.g. ("--config.distill.ipc=10",)
  mode: str = "all"


class GridResult(NamedTuple):
  results: dict[str, dict[str, Any]]  # cell name -> its metrics.json (earlier runs too)
  failures: list[str]  # one message per failed cell


def check_overrides(passthrough: Sequence[str]) -> None:
  """Raises InputError on an argument a grid would pass on to the CLI that is not a
  ``--config.SECTION.FIELD=VALUE`` override."""
  unknown = [a for a in passthrough if not a.startswith("--config.")]
  if unknown:
    raise InputError(f"unknown argument {unknown[0]!r} (config overrides are "
                     f"--config.SECTION.FIELD=VALUE)")


def child_env(parallel: int) -> dict[str, str]:
  """This process's environment for CLI children, `parallel` of them at a time."""
  env = dict(os.environ)
  if parallel > 1:  # several processes on one accelerator: no memory grab each
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / parallel:.3f}")
  return env


def run_cli(workdir: str, config: str, flags: Sequence[str], env: dict[str, str],
            log_path: str, mode: str = "all") -> None:
  """Runs the CLI on `workdir` in a child process, its output appended to `log_path`.

  Relative paths in `flags` are relative to this process's working directory,
  which the child inherits.

  Raises:
    RuntimeError: the child failed; the message quotes its ``error:`` (or
      last) line and names the log.
  """
  command = [sys.executable, "-m", "ncfm_jax.main", f"--config={config}",
             f"--workdir={workdir}", f"--mode={mode}", *flags]
  with open(log_path, "a") as log:
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                          check=False)
  if done.returncode:
    with open(log_path) as log:
      lines = log.read().strip().splitlines() or [""]
    reason = next((l for l in reversed(lines) if l.startswith(("error:", "FATAL"))), lines[-1])
    raise RuntimeError(f"{os.path.basename(workdir)} failed (exit {done.returncode}): "
                       f"{reason} -- log: {log_path}")


def read_json(path: str, default: Any) -> Any:
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def write_json(path: str, value: Any) -> None:
  """Writes through a temporary file: a kill mid-write leaves the old file whole."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".tmp", path)


def _record(cell: Cell) -> dict[str, Any]:
  """What `cell` runs, as its workdir's record of a finished run holds it."""
  return {"config": config_lib.resolve_config(cell.config), "flags": list(cell.flags),
          "mode": cell.mode}


def finished(cell: Cell, out: str) -> bool:
  """Whether ``out/<name>`` records a finished run of exactly this cell."""
  return read_json(os.path.join(out, cell.name, _RECORD), None) == _record(cell)


def run_cell(cell: Cell, out: str, env: dict[str, str]) -> dict[str, Any]:
  """Runs `cell` in ``out/<name>`` unless it `finished` there; returns its metrics.

  Returns:
    The workdir's ``metrics.json`` ({} where the mode writes none, e.g. pretrain).

  Raises:
    RuntimeError: from `run_cli`.
    FileNotFoundError: the config spec names no config.
  """
  workdir = os.path.abspath(os.path.join(out, cell.name))
  if not finished(cell, out):
    record = _record(cell)
    os.makedirs(workdir, exist_ok=True)
    run_cli(workdir, record["config"], record["flags"], env,
            os.path.join(workdir, "log.txt"), cell.mode)
    write_json(os.path.join(workdir, _RECORD), record)
  return read_json(os.path.join(workdir, "metrics.json"), {})


def run_grid(cells: Sequence[Cell], out: str, *, parallel: int = 1,
             tables: Callable[[dict], dict[str, str]] | None = None,
             describe: Callable[[dict], str] | None = None,
             prefix: str = "[grid]") -> GridResult:
  """Runs `cells` (`run_cell`) `parallel` at a time; results and tables kept current.

  Args:
    cells: distinct names; in the order to start them (longest first lets
      parallel workers finish together).
    out: the grid's directory; ``results.json`` there keeps the results of
      earlier runs (e.g. other cells of the same study).
    parallel: CLI children at a time (>= 1).
    tables: results -> {file name: markdown}, written to `out` after every
      finished cell.
    describe: metrics -> a short text for the progress line of a finished cell.
    prefix: of the progress lines.

  Returns:
    The results (every cell of ``results.json``) and a message per failed cell;
    the other cells still run when one fails.
  """
  if parallel < 1:
    raise ValueError(f"parallel must be >= 1, got {parallel}")
  os.makedirs(out, exist_ok=True)
  results_path = os.path.join(out, RESULTS)
  results = read_json(results_path, {})
  env = child_env(parallel)
  lock = threading.Lock()
  start = time.time()

  def publish() -> None:
    write_json(results_path, results)
    for name, text in (tables(results) if tables else {}).items():
      with open(os.path.join(out, name), "w") as f:
        f.write(text)

  def one(cell: Cell) -> None:
    cell_start = time.time()
    status = "read back (finished earlier)" if finished(cell, out) else "start"
    print(f"{prefix} {status} {cell.name}: {' '.join(cell.flags)}", flush=True)
    metrics = run_cell(cell, out, env)
    with lock:
      results[cell.name] = metrics
      publish()
    what = f"{describe(metrics)} " if describe else ""
    print(f"{prefix} done  {cell.name}: {what}in {time.time() - cell_start:.0f} s "
          f"(all {time.time() - start:.0f} s)", flush=True)

  failures = []
  with concurrent.futures.ThreadPoolExecutor(parallel) as executor:
    futures = [executor.submit(one, cell) for cell in cells]
    for future in concurrent.futures.as_completed(futures):
      if future.exception() is not None:
        failures.append(str(future.exception()))
        print(f"{prefix} {future.exception()}", file=sys.stderr, flush=True)
  with lock:
    publish()
  return GridResult(results, failures)
