"""Stopping a run on SIGTERM or SIGINT at a step boundary, the same one in every process.

Preemptible GPU and TPU machines send SIGTERM some seconds before they stop a job.
Inside `watch()`, the phases ask `stop_here()` at every boundary where they can
save (after each host call of distillation steps, of a training run's steps);
when it answers True they write a checkpoint of where they are and raise
`Preempted`, which the CLI prints as one line (exit 143 for SIGTERM, 130 for
SIGINT). Re-running the same command resumes from that checkpoint.

One process: a handler sets a flag, read at the next boundary. Several processes
(`jax.distributed`): JAX's preemption service catches SIGTERM in the process that
gets it and tells the others, and `multihost_utils.reached_preemption_sync_point`
answers True at the same boundary in every process (boundaries are counted, so
each process must pass the same ones: the phases are SPMD). SIGINT is turned into
SIGTERM there, so Ctrl-C takes the same path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
"""Exit status after a stop (128 + the signal's number, as a shell reports a kill)."""


class Preempted(Exception):
  """The run stopped on a signal after saving where it was; `str()` is the line to
  print (where it stopped, what was saved, how to resume)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.exit_code = EXIT_CODES.get(signum, 143)


class _State:
  def __init__(self):
    self.signum: int | None = None  # the first signal received (one process)
    self.boundaries = 0  # stop_here() calls: the sync point's step id
    self.active = False


_STATE = _State()


def _several_processes() -> bool:
  return jax.process_count() > 1


def _on_signal(signum, frame):  # pylint: disable=unused-argument
  if _several_processes():
    if signum != signal.SIGTERM:  # JAX's preemption notifier listens for SIGTERM
      os.kill(os.getpid(), signal.SIGTERM)
    return
  if _STATE.signum is None:
    _STATE.signum = signum
    print(f"\n[stop] {signal.Signals(signum).name} received: finishing the step in "
          f"flight, then saving (send it again to kill at once)", flush=True)
  else:  # a second signal: the user insists
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def watch():
  """Handles SIGTERM and SIGINT as stop requests while the block runs (main thread
  only; elsewhere, or nested, it changes nothing). With several processes SIGTERM
  is left to JAX's preemption service."""
  if _STATE.active or threading.current_thread() is not threading.main_thread():
    yield
    return
  signals = [signal.SIGINT] + ([] if _several_processes() else [signal.SIGTERM])
  previous = {s: signal.signal(s, _on_signal) for s in signals}
  _STATE.active, _STATE.signum, _STATE.boundaries = True, None, 0
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _STATE.active = False


def stop_here() -> bool:
  """True when the run must stop at this boundary: every process gets the same
  answer at the same boundary. Cheap (a flag, or the preemption service's local
  state); call it at every boundary, in the same order in every process."""
  _STATE.boundaries += 1
  if _several_processes():
    return multihost_utils.reached_preemption_sync_point(_STATE.boundaries)
  return _STATE.signum is not None


def signal_received() -> int:
  """The signal that stopped the run (SIGTERM when it came through JAX's service)."""
  return _STATE.signum or signal.SIGTERM


def stopped(where: str, saved: str) -> Preempted:
  """The exception to raise after saving: ``stopped during <where>; <saved>; re-run
  the same command to resume``."""
  name = signal.Signals(signal_received()).name
  return Preempted(f"stopped by {name} during {where}; {saved}; re-run the same command "
                   f"to resume", signal_received())
