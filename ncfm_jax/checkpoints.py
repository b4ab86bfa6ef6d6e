"""Orbax bookkeeping of a workdir: the pool members and the distillation state.

`pool/<member>/`         one step per pool member: `{"init", "trained"}` variables.
`distill_ckpt/<step>/`   one composite item per kept step: `state` (the
                         DistillState) and `history` (the per-step loss curves), saved
                         together, so a kill can never leave them disagreeing.

An unreadable latest distillation checkpoint falls back, with a warning, to the
previous kept one, and is moved aside to `distill_ckpt_unreadable/<step>` (so the
resumed run can save that step again; nothing is deleted); only when none is
readable does the run stop (InputError).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from ncfm_jax import distill as distill_lib
from ncfm_jax import distributed
from ncfm_jax import preemption
from ncfm_jax import sharding
from ncfm_jax.errors import InputError
from ncfm_jax.errors import writing

EMPTY_HISTORY = {"loss": [], "calibration": [], "seconds": 0.0}


def _first_line(err: Exception) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _manager(directory: str, max_to_keep: int | None) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


# ----------------------------------------------------------------------- pool


def saved_members(directory: str) -> set[int]:
  """Pool members already saved under `directory` (none when it does not exist)."""
  if not os.path.isdir(directory):
    return set()
  with _manager(directory, None) as manager:
    return set(manager.all_steps())


def save_member(directory: str, member: int, init: Any, trained: Any) -> None:
  """Saves one member's (init, trained) variables (host numpy: the same on every
  process, which a multi-process save accepts)."""
  with writing(os.path.join(directory, str(member))), _manager(directory, None) as manager:
    manager.save(member, args=ocp.args.StandardSave(
        sharding.to_host({"init": init, "trained": trained})))
    manager.wait_until_finished()


def load_pool(directory: str, abstract_variables: Any, num_members: int) -> distill_lib.Pool:
  """Members 0..num_members-1 stacked on a leading [P] axis; InputError naming the
  first unreadable member."""
  target = {"init": abstract_variables, "trained": abstract_variables}
  members = []
  with _manager(directory, None) as manager:
    for member in range(num_members):
      try:
        restored = manager.restore(member, args=ocp.args.StandardRestore(target))
      except Exception as err:  # orbax raises several types for bad files
        raise InputError(f"pool checkpoint {member} in {directory} is unreadable "
                         f"({_first_line(err)})") from err
      members.append((restored["init"], restored["trained"]))
  return distill_lib.stack_pool(members)


# --------------------------------------------------------------- distillation


class DistillCheckpoints:
  """The distillation state and its loss history, saved and restored together."""

  def __init__(self, directory: str, max_to_keep: int):
    self.directory = directory
    self._max_to_keep = max_to_keep
    self._manager = _manager(directory, max_to_keep)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> DistillCheckpoints:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def save(self, step: int, state: distill_lib.DistillState, history: dict) -> None:
    with writing(os.path.join(self.directory, str(step))):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)))
      self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _restore(self, step: int, abstract_state):
    path = os.path.join(self.directory, str(step))
    if (os.path.isdir(os.path.join(path, "default"))
        and not os.path.isdir(os.path.join(path, "state"))):
      raise InputError(
          f"{path} was written by an older ncfm-jax (one-item checkpoint layout, "
          f"history kept apart); finish that run with the version that started it, "
          f"or use another --workdir")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), history=ocp.args.JsonRestore()))
    return distill_lib.DistillState(*restored["state"]), dict(restored["history"])

  def restore_latest(self, like: distill_lib.DistillState, *, mesh=None,
                     class_sharded: bool = False):
    """(state, history) of the newest readable checkpoint, placed like `like` (or on
    `mesh`); None when there is none. Unreadable ones are skipped with a warning."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    if mesh is not None:  # restore straight onto this run's mesh
      abstract = sharding.abstract_arrays(
          like, sharding.state_shardings(like, mesh, class_sharded))
    steps = sorted(self._manager.all_steps(), reverse=True)
    for tried, step in enumerate(steps):
      try:
        restored = self._restore(step, abstract)
      except InputError:
        raise
      except Exception as err:  # orbax raises several types for bad files
        print(f"[distill] WARNING: checkpoint {step} in {self.directory} is unreadable "
              f"({_first_line(err)}); trying the previous one", file=sys.stderr, flush=True)
        continue
      self._move_aside(steps[:tried])
      return restored
    if steps:
      raise InputError(f"no readable distillation checkpoint in {self.directory} (tried "
                       f"steps {', '.join(map(str, steps))}); use another --workdir")
    return None

  def _move_aside(self, steps) -> None:
    """Moves unreadable steps to `<directory>_unreadable/` (orbax never overwrites a
    step, so the resumed run could not save them again)."""
    if not steps:
      return
    self._manager.close()
    aside = self.directory.rstrip("/") + "_unreadable"
    if distributed.is_primary():
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        shutil.move(os.path.join(self.directory, str(step)),
                    os.path.join(aside, f"{step}"))
        print(f"[distill] moved unreadable checkpoint {step} to {aside}", file=sys.stderr,
              flush=True)
    distributed.barrier("ncfm:unreadable checkpoints moved")
    self._manager = _manager(self.directory, self._max_to_keep)


# ------------------------------------------------------------ training part-way


class TrainingCheckpoint:
  """A classifier's training stopped part-way (a pool member, an evaluation run):
  its `train.TrainState` and a JSON note (`done` steps and the caller's extras) in
  one composite item at `directory`, kept until `remove`."""

  def __init__(self, directory: str):
    self.directory = directory

  def restore(self, like) -> tuple[Any, dict] | None:
    """(state shaped like `like`, note) of the saved item; None when there is none."""
    if not os.path.isdir(self.directory):
      return None
    with _manager(self.directory, 1) as manager:
      step = manager.latest_step()
      if step is None:
        return None
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), note=ocp.args.JsonRestore()))
      except Exception as err:  # orbax raises several types for bad files
        raise InputError(f"training checkpoint {self.directory} is unreadable "
                         f"({_first_line(err)}); delete it to start that training "
                         f"afresh") from err
    return type(like)(*restored["state"]), dict(restored["note"])

  def save(self, state, note: dict) -> None:
    """Saves `state` after `note["done"]` steps (the previous item is replaced once
    this one is written)."""
    path = os.path.join(self.directory, str(note["done"]))
    with writing(path), _manager(self.directory, 1) as manager:
      manager.save(int(note["done"]), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), note=ocp.args.JsonSave(note)))
      manager.wait_until_finished()

  def remove(self) -> None:
    """Deletes the item once the training it belongs to is saved whole (and its
    parent directory when that is left empty)."""
    if distributed.is_primary() and os.path.isdir(self.directory):
      shutil.rmtree(self.directory)
      parent = os.path.dirname(self.directory)
      if not os.listdir(parent):
        os.rmdir(parent)
    distributed.barrier(f"ncfm:removed {self.directory}")

  def hooks(self, where: str, extras=dict):
    """`(resume, after_chunk)` for `train.train_classifier`: resume from this item,
    and at every chunk's end ask `preemption.stop_here()`; when the run must stop,
    save the state with `extras()` in its note and raise `preemption.Preempted`."""
    def resume(fresh):
      restored = self.restore(fresh)
      return None if restored is None else (restored[0], int(restored[1]["done"]))

    def after_chunk(state, done):
      if preemption.stop_here():
        self.save(state, dict(extras(), done=int(done)))
        raise preemption.stopped(f"{where} at step {done}",
                                 f"its training state is saved in {self.directory}")
    return resume, after_chunk
