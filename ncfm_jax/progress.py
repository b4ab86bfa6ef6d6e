"""Compact progress lines for long phases: step, metrics, steps/s and ETA."""

from __future__ import annotations

import sys
import time


class Progress:
  """Prints `[desc] step s/total | k=v ... | 3.2 steps/s | ETA 1m05s` lines.

  Call `update(step, **metrics)` after each host call; a line is printed when at
  least `every_seconds` passed since the last one, and always at the end.
  """

  def __init__(self, desc: str, total: int, start: int = 0,
               every_seconds: float = 10.0, stream=None):
    self.desc = desc
    self.total = total
    self.every_seconds = every_seconds
    self.stream = stream or sys.stdout
    self._start_step = start
    self._start_time = time.perf_counter()
    self._last_print = -float("inf")

  def update(self, step: int, **metrics) -> None:
    now = time.perf_counter()
    if step < self.total and now - self._last_print < self.every_seconds:
      return
    self._last_print = now
    done = step - self._start_step
    elapsed = now - self._start_time
    rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
    print(f"[{self.desc}] step {step}/{self.total} | {shown} | "
          f"{rate:.2f} steps/s | ETA {format_seconds(eta)}",
          file=self.stream, flush=True)


def _fmt(value) -> str:
  value = float(value)
  return f"{value:.4g}"


def format_seconds(seconds: float) -> str:
  if seconds != seconds:  # NaN
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"
