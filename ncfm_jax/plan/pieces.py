"""The jitted pieces of one distillation step, built from abstract shapes: what XLA
plans for their memory at compile time (`Footprint`) and how long they take on random
data. No data and no plan choice here (`planner.py` chooses)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import distill
from ncfm_jax import execution
from ncfm_jax import train as train_lib
from ncfm_jax.data import sampling
from ncfm_jax.plan.spec import Plan, StepSpec

TIMED_CALLS = 3
"""Calls of a candidate's step (or host-loop block) when timing it; the fastest counts."""
TIMING_SECONDS = 120.0
"""No further call of a candidate once its calls took this long."""
PLAN_FREE_PIECES = ("begin", "zeros", "finish")
"""Pieces of the host block loop that no plan setting changes (compiled once)."""


def _nbytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


class StepInputs(NamedTuple):
  """Abstract arrays of one step's arguments (`abstract_inputs`)."""
  state: Any
  pool: Any
  source: Any  # what one step consumes: ClassIndexedData or a batch [C, B, ...]
  call_source: Any  # what one host call consumes (the scan's [T, C, B, ...] if streamed)
  streamed_bytes: int  # a loop's [T, C, B, ...] batches held besides the step's slice


def abstract_inputs(spec: StepSpec, d) -> StepInputs:
  """`jax.ShapeDtypeStruct`s of the state, pool and training data of `spec`'s step
  (distill config `d`)."""
  sds = jax.ShapeDtypeStruct
  shape = (spec.num_classes, int(d.ipc)) + spec.image_shape
  state = jax.eval_shape(lambda syn: distill.init_state(jax.random.PRNGKey(0), syn,
                                                        spec.feature_dim, d),
                         sds(shape, jnp.float32))
  example = jnp.zeros((1,) + spec.image_shape)
  variables = jax.eval_shape(
      lambda: train_lib.init_variables(jax.random.PRNGKey(0), spec.model, example))
  stacked = jax.tree.map(lambda x: sds((spec.pool_size,) + x.shape, x.dtype), variables)
  pool = distill.Pool(stacked, stacked)
  if spec.data_on_device:
    data = sampling.ClassIndexedData(
        sds((spec.train_images,) + spec.image_shape, jnp.uint8),
        sds((spec.num_classes, spec.largest_class), jnp.int32),
        sds((spec.num_classes,), jnp.int32))
    return StepInputs(state, pool, data, data, 0)
  batch = sds((spec.num_classes, int(d.batch_real)) + spec.image_shape, jnp.uint8)
  calls = sds((spec.steps_per_call,) + batch.shape, jnp.uint8)
  return StepInputs(state, pool, batch, calls, _nbytes(calls))


def random_like(abstract, key: jax.Array):
  """Random arrays of `abstract`'s shapes (content does not change a step's cost)."""
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, leaf in zip(keys, leaves):
    if leaf.dtype == jnp.uint8:
      # A training set's bytes drawn on the host: jax.random.bits of Tiny ImageNet's
      # 1.2e9 uint8 held over 22 GB on CPU (threefry's uint32 counters and outputs).
      seed = int(jax.random.randint(k, (), 0, 2**31 - 1))
      out.append(jnp.asarray(
          np.random.default_rng(seed).integers(0, 256, leaf.shape, dtype=np.uint8)))
    elif jnp.issubdtype(leaf.dtype, jnp.floating):
      out.append(0.05 * jax.random.normal(k, leaf.shape, leaf.dtype))
    else:
      out.append(jnp.zeros(leaf.shape, leaf.dtype))
  return jax.tree.unflatten(treedef, out)


class Piece(NamedTuple):
  """One jitted function of a step and its abstract arguments."""
  fn: Any  # a jax.jit function
  args: tuple  # abstract arguments
  held: int  # bytes alive meanwhile that are not its arguments
  steps: int = 1  # steps one call runs


class Footprint(NamedTuple):
  """A plan's planned bytes and the XLA figures of its peak piece.

  Attributes:
    planned_bytes: the most any piece needs (its own bytes plus what is held).
    peak_piece: the piece that needs it ("step" for one jitted step).
    xla: temp_bytes, argument_bytes, output_bytes, alias_bytes of the peak piece.
    pieces: name -> planned bytes while that piece runs.
    held: name -> bytes held meanwhile besides its arguments (in `pieces`).
    compile_seconds: spent compiling here (0 from the cache).
  """
  planned_bytes: int
  peak_piece: str
  xla: dict
  pieces: dict
  held: dict
  compile_seconds: float


def _xla(compiled) -> dict:
  m = compiled.memory_analysis()
  return {"temp_bytes": int(m.temp_size_in_bytes),
          "argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes),
          "alias_bytes": int(m.alias_size_in_bytes)}


def step_pieces(spec: StepSpec, inputs: StepInputs, distill_config, plan: Plan) -> dict[str, Piece]:
  """The jitted pieces `plan` runs one step with: "step" (one jitted step, or
  `steps_per_call` of them in a scan), or the host block loop's begin, zeros,
  block_gradients and finish (`execution.make_host_block_step`), each with the bytes
  the host holds meanwhile that are not its arguments."""
  d = plan.apply(distill_config, spec.num_classes)
  step = distill.make_distill_step(spec.model, d, spec.mean, spec.std, spec.feature_dim)
  state, pool, source = inputs.state, inputs.pool, inputs.source
  held_stream = inputs.streamed_bytes
  if execution.update_mode(d) == "per_class" and plan.block_loop == "host":
    return _class_pieces(step, d, inputs)
  if plan.class_block < spec.num_classes and plan.block_loop == "host":
    host = execution.make_host_block_step(step.blocks, int(d.batch_real), plan.class_block)
    draws = jax.eval_shape(host.begin, state, pool)
    summed = jax.eval_shape(host.zeros, state.syn_images, draws)
    block = jax.ShapeDtypeStruct((), jnp.int32)
    own = _nbytes(state.syn_images) + _nbytes((state.key, state.step))
    return {
        "begin": Piece(host.begin, (state, pool), _nbytes(source) + held_stream),
        "zeros": Piece(host.zeros, (state.syn_images, draws),
                       _nbytes((state, pool, source)) - _nbytes(state.syn_images)
                       + held_stream),
        "block_gradients": Piece(
            host.block_gradients,
            (summed, state.syn_images, source, state.key, state.step, draws, block),
            _nbytes((state, pool)) - own + held_stream),
        "finish": Piece(host.finish, (state, summed), _nbytes((pool, source)) + held_stream),
    }
  run = execution.make_run_steps(step, d, spec.steps_per_call)
  scan = execution.resolve_use_scan(d.use_scan)
  call_source = inputs.call_source if scan else source
  held = held_stream if call_source is source and not spec.data_on_device else 0
  return {"step": Piece(run.jitted(state, call_source), (state, pool, call_source), held,
                        spec.steps_per_call if scan else 1)}


def _class_pieces(step, d, inputs: StepInputs) -> dict[str, Piece]:
  """The pieces of the per-class iteration's host loop (`execution.make_host_class_step`)
  and what the host holds while each runs: the pool (its blend lives in the draws),
  the training set or the streamed batches."""
  host = execution.make_host_class_step(step.classes, int(d.batch_real),
                                        execution.fixed_real(d))
  state, pool, source = inputs.state, inputs.pool, inputs.source
  begun, draws, sums = jax.eval_shape(host.begin, state, pool)
  index = jax.ShapeDtypeStruct((), jnp.int32)
  held = _nbytes(pool) + inputs.streamed_bytes
  pieces = {
      "begin": Piece(host.begin, (state, pool), _nbytes(source) + inputs.streamed_bytes),
      "update": Piece(host.update, (begun, sums, source, draws, index), held),
      "finish": Piece(host.finish, (begun, sums), held + _nbytes(source)),
  }
  if step.classes.rounds:
    pieces["calibrate"] = Piece(host.calibrate, (begun, sums, draws, index, index),
                                held + _nbytes(source))
  return pieces


def compile_pieces(pieces: dict[str, Piece], temp_factor: int,
                   shared: dict[str, Any]) -> tuple[Footprint, dict[str, tuple]]:
  """Compiles each piece; returns the `Footprint` (a piece needs its temp bytes x
  `temp_factor` + argument + output - alias bytes + what is held meanwhile) and
  {name: (executable, abstract args, steps per call)}. `shared` memoizes the pieces
  of `PLAN_FREE_PIECES` across plans."""
  start = time.perf_counter()
  totals, figures, executables = {}, {}, {}
  for name, piece in pieces.items():
    if name in PLAN_FREE_PIECES and name in shared:
      compiled = shared[name]
    else:
      compiled = piece.fn.lower(*piece.args).compile()
      if name in PLAN_FREE_PIECES:
        shared[name] = compiled
    f = figures[name] = _xla(compiled)
    totals[name] = (piece.held + f["argument_bytes"] + temp_factor * f["temp_bytes"]
                    + f["output_bytes"] - f["alias_bytes"])
    executables[name] = (compiled, piece.args, piece.steps)
  peak = max(totals, key=totals.get)
  held = {name: piece.held for name, piece in pieces.items()}
  footprint = Footprint(int(totals[peak]), peak, figures[peak], totals, held,
                        time.perf_counter() - start)
  return footprint, executables


def time_pieces(executables: dict[str, tuple], spec: StepSpec, inputs: StepInputs,
                distill_config, plan: Plan, *, hopeless: float = float("inf")) -> float:
  """Seconds per step of `plan`'s compiled pieces on random data: the fastest of up
  to `TIMED_CALLS` calls of its step, or for the host loop begin + zeros + blocks x
  (the fastest block_gradients call) + finish. First calls page fresh memory in and
  ran up to 3x slower on the 2-core CPU; the minimum also resists other processes'
  load. Calls stop once `TIMING_SECONDS` are spent, or after the first when it puts
  the step over `hopeless` seconds."""
  rng = jax.random.PRNGKey(0)
  syn = jax.random.uniform(rng, inputs.state.syn_images.shape)
  state = distill.init_state(rng, syn, spec.feature_dim,
                             plan.apply(distill_config, spec.num_classes))
  pool = random_like(inputs.pool, jax.random.PRNGKey(1))

  def fastest(call, scale):
    times = []
    while len(times) < TIMED_CALLS and sum(times) < TIMING_SECONDS:
      times.append(_timed(call)[1])
      if scale * times[0] > hopeless:
        break
    return min(times)

  if "step" in executables:
    compiled, args, steps = executables["step"]
    source = _valid_indices(spec, random_like(args[2], jax.random.PRNGKey(2)))

    def step_call():
      nonlocal state
      state, metrics = compiled(state, pool, source)
      return state, metrics
    return fastest(step_call, 1.0 / steps) / steps

  run = {name: compiled for name, (compiled, _, _) in executables.items()}
  source = _valid_indices(spec, random_like(inputs.source, jax.random.PRNGKey(2)))
  if "update" in run:
    return _time_class_pieces(run, fastest, state, pool, source, spec.num_classes,
                              distill.calibration_rounds(distill_config))
  num_blocks = spec.num_classes // plan.class_block
  draws, t_begin = _timed(lambda: run["begin"](state, pool))
  summed, t_zeros = _timed(lambda: run["zeros"](state.syn_images, draws))
  calls = iter(range(10**9))

  def block_call():
    nonlocal summed
    summed = run["block_gradients"](summed, state.syn_images, source, state.key,
                                    state.step, draws, jnp.int32(next(calls) % num_blocks))
    return summed
  block = fastest(block_call, num_blocks)
  _, t_finish = _timed(lambda: run["finish"](state, summed))
  return t_begin + t_zeros + num_blocks * block + t_finish


def _time_class_pieces(run, fastest, state, pool, source, num_classes: int,
                       rounds: int) -> float:
  """Seconds of one per-class iteration: begin + C x (the fastest update) + rounds x C
  x (the fastest calibration update) + finish (the pieces donate the state)."""
  (state, draws, sums), t_begin = _timed(lambda: run["begin"](state, pool))
  calls = iter(range(10**9))

  def update_call():
    nonlocal state, sums
    state, sums = run["update"](state, sums, source, draws, jnp.int32(next(calls) % num_classes))
    return state, sums
  per_class = fastest(update_call, num_classes)
  calibration = 0.0
  if "calibrate" in run:
    def calibrate_call():
      nonlocal state, sums
      state, sums = run["calibrate"](state, sums, draws, jnp.int32(next(calls) % num_classes),
                                     jnp.int32(0))
      return state, sums
    calibration = rounds * num_classes * fastest(calibrate_call, rounds * num_classes)
  _, t_finish = _timed(lambda: run["finish"](state, sums))
  return t_begin + num_classes * per_class + calibration + t_finish


def _valid_indices(spec: StepSpec, source):
  """Random on-device data with index tables that point at real images."""
  if not isinstance(source, sampling.ClassIndexedData):
    return source
  index = jnp.arange(spec.num_classes * spec.largest_class, dtype=jnp.int32)
  index = (index % spec.train_images).reshape(source.class_index.shape)
  counts = jnp.full(source.class_counts.shape, spec.largest_class, jnp.int32)
  return source._replace(class_index=index, class_counts=counts)


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start
