"""How distillation steps run on this backend: pass sizes, scan or loop, devices.

One place owns every execution choice that changes speed or memory but not
what a step computes (docs/design.md, "Backend policy"):

* forward-pass sizes: real and synthetic images go through the extractor in
  cache-sized passes on CPU and all at once on GPU/TPU (`resolve_real_chunk`,
  `resolve_syn_chunk`);
* scan or loop (`resolve_use_scan`): `lax.scan` over the steps of one host
  call on GPU/TPU; on CPU a Python loop of one jitted step, because XLA:CPU runs
  convolutions inside `lax.scan` slowly (docs/design.md section 11);
* devices (`make_run_steps(..., mesh=...)`): with a mesh the same step runs
  data parallel (the real batch split along B) or class sharded (`sharding`);
* class blocks (`class_block_size`, `resolve_block_loop`, `make_host_block_step`):
  the gradient of K classes at a time, in one jitted step or a host loop.

The defaults here are per backend; `ncfm_jax.plan` chooses pass sizes and class
blocks for a memory budget from XLA's compile-time memory analysis.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ncfm_jax import sharding
from ncfm_jax.data import sampling

CPU_PASS_PIXELS = 128 * 32 * 32
"""Pixels per forward pass on CPU: 128 CIFAR-sized images, a cache-sized pass
(docs/benchmarks.md, "What made the CPU step faster")."""


def resolve_use_scan(use_scan: bool | None) -> bool:
  """None -> `lax.scan` on accelerators, a Python loop of jitted steps on CPU,
  where convolutions inside `lax.scan` run slowly (docs/design.md section 11)."""
  if use_scan is None:
    return jax.default_backend() != "cpu"
  return bool(use_scan)


def pass_size(per_class: int, num_classes: int, image_pixels: int, max_passes: int,
              pass_pixels: int = CPU_PASS_PIXELS) -> int:
  """Largest divisor c of `per_class` whose pass (c images of every class) holds at
  most `pass_pixels`, else the smallest divisor; at most `max_passes` passes."""
  divisors = [c for c in range(1, per_class + 1)
              if per_class % c == 0 and per_class // c <= max_passes]
  fits = [c for c in divisors if c * num_classes * image_pixels <= pass_pixels]
  return max(fits) if fits else min(divisors)


def resolve_real_chunk(real_chunk: int | None, batch_real: int, num_classes: int,
                       image_pixels: int) -> int:
  """Real images per class in one forward pass (`lax.map` over passes); 0: all at once.

  None picks cache-sized passes on CPU (`CPU_PASS_PIXELS`) and all at once on
  GPU/TPU (the memory planner sets it there when one pass would not fit).
  """
  if real_chunk is not None:
    return int(real_chunk)
  if jax.default_backend() != "cpu":
    return 0
  return pass_size(batch_real, num_classes, image_pixels, max_passes=batch_real)


def resolve_syn_chunk(syn_chunk: int | None, images_per_class: int, num_classes: int,
                      image_pixels: int, max_passes: int = 8) -> int:
  """Decoded synthetic images per class in one forward/backward pass; 0: all at once.

  Unrolled passes (a `lax.map` made the backward pass slower than one big batch on
  XLA:CPU) are at most `max_passes`; `distill.remat_syn` loops over them and lifts
  the cap. None picks cache-sized passes on CPU (cifar10_ipc10's 400 images: 4
  passes of 100) and all at once on GPU/TPU.
  """
  if syn_chunk is not None:
    return int(syn_chunk)
  if jax.default_backend() != "cpu":
    return 0
  return pass_size(images_per_class, num_classes, image_pixels, max_passes)


class StepKeys(NamedTuple):
  """The independent PRNG keys of one distillation step, one per consumer."""
  sample: jax.Array  # the real batch drawn on the device
  member: jax.Array  # the pool member and its blend weight b
  augment: jax.Array  # the per-class siamese augmentation draws
  frequencies: jax.Array  # t from psi or N(0, I)
  calibration: jax.Array  # the augmentation of a separate calibration update


def step_keys(base_key: jax.Array, step: jax.Array) -> StepKeys:
  """Keys of step `step`: a split of `fold_in(base_key, step)` into five, so no
  consumer sees another's key (a `fold_in(., 1)` of a key equals its second split
  under the partitionable threefry PRNG, so those are never mixed)."""
  return StepKeys(*jax.random.split(jax.random.fold_in(base_key, step), len(StepKeys._fields)))


class RunSteps(NamedTuple):
  """What `make_run_steps` builds.

  Attributes:
    run: `(state, pool, source) -> (state, metrics [num_steps])`; the state is
      donated.
    jitted: `(state, source, single_step=False) -> jax.jit function` that `run`
      calls for this kind of source (the whole scan, or the one step of the
      loop), or the one-step function with `single_step`: lower it for XLA's
      cost and memory analysis.
  """
  run: Callable[..., tuple[Any, dict]]
  jitted: Callable[..., Any]


def resolve_block_loop(block_loop: str | None) -> str:
  """How class blocks run: None -> "scan" (one jitted step) on accelerators, "host"
  (a host loop of jitted block steps) on CPU, where convolutions inside
  `lax.scan` run slowly (docs/design.md section 11)."""
  if block_loop is None:
    return "scan" if jax.default_backend() != "cpu" else "host"
  if block_loop not in ("scan", "host"):
    raise ValueError(f"distill.block_loop must be scan or host, got {block_loop!r}")
  return block_loop


def class_block_size(distill_config, num_classes: int) -> int:
  """Classes per block (`distill.class_block`; 0 or None: all classes at once)."""
  block = int(distill_config.get("class_block") or 0)
  if block <= 0 or block >= num_classes:
    return num_classes
  if num_classes % block:
    raise ValueError(f"distill.class_block={block} must divide the class count "
                     f"({num_classes})")
  return block


class HostBlockStep(NamedTuple):
  """One step as a host loop over class blocks: every piece jitted on its own, so
  only one block's activations exist at a time (what XLA:CPU runs fastest).

  Between the pieces the host holds the state, the pool, the source, the step's
  draws and the running sum of the blocks' gradients (`syn` `[C, ...]`, the rest
  summed); a block's real images are drawn inside its piece (the same images as
  the step's whole batch: `sampling.sample_class_block`), so the `[C, B, ...]`
  batch never exists when the training set sits on the device.
  """
  begin: Callable  # (state, pool) -> StepDraws
  zeros: Callable  # (syn_images, draws) -> summed BlockGradients of zeros
  block_gradients: Callable  # (summed, syn_images, source_item, key, step, draws, block)
  #                            -> summed + this block's gradients; donates summed
  finish: Callable  # (state, summed BlockGradients) -> (state, metrics); donates state
  step: Callable  # (state, pool, source_item) -> (state, metrics)


def real_block(source_item, base_key, step, batch_real: int, start, size: int,
               fixed: bool = False):
  """uint8 `[size, B, H, W, Ch]` real images of classes start .. start + size - 1 of
  step `step`: drawn on the device from a `ClassIndexedData` (the same images as
  the step's whole batch), or sliced from a streamed batch `[C, B, ...]`."""
  if isinstance(source_item, sampling.ClassIndexedData):
    return sampling.sample_class_block(step_keys(base_key, step).sample, source_item,
                                       batch_real, start, size, fixed=fixed)
  return jax.lax.dynamic_slice_in_dim(source_item, start, size)


def make_host_block_step(blocks, batch_real: int, block_size: int,
                         fixed_real: bool = False) -> HostBlockStep:
  """`blocks` (a `distill.ClassBlocks`) run block by block from the host."""

  def accumulate(summed, syn_images, source_item, base_key, step, draws, block):
    start = block * block_size
    real = real_block(source_item, base_key, step, batch_real, start, block_size, fixed_real)
    grads = blocks.block_gradients(syn_images, real, draws, block, block_size)
    added = jax.tree.map(jnp.add, summed._replace(syn=None), grads._replace(syn=None))
    return added._replace(syn=jax.lax.dynamic_update_slice_in_dim(
        summed.syn, grads.syn.astype(summed.syn.dtype), start, 0))

  begin = jax.jit(blocks.begin)
  zeros = jax.jit(blocks.zeros)
  block_gradients = jax.jit(accumulate, donate_argnums=(0,))
  finish = jax.jit(blocks.finish, donate_argnums=(0,))

  def step(state, pool, source_item):
    draws = begin(state, pool)
    summed = zeros(state.syn_images, draws)
    for b in range(state.syn_images.shape[0] // block_size):
      summed = block_gradients(summed, state.syn_images, source_item, state.key, state.step,
                               draws, jnp.int32(b))
    del draws  # not alive during finish (the planner counts it so)
    return finish(state, summed)

  return HostBlockStep(begin, zeros, block_gradients, finish, step)


class HostClassStep(NamedTuple):
  """The per-class iteration (`distill.ClassUpdates`) as a host loop of jitted
  pieces: one class's activations at a time, the state donated from piece to piece."""
  begin: Callable  # (state, pool) -> (state, draws, sums); donates state
  update: Callable  # (state, sums, source_item, draws, c) -> (state, sums); donates both
  calibrate: Callable  # (state, sums, draws, c, round) -> (state, sums); donates both
  finish: Callable  # (state, sums) -> (state, metrics); donates state
  step: Callable  # (state, pool, source_item) -> (state, metrics)


def make_host_class_step(classes, batch_real: int, fixed_real: bool = False) -> HostClassStep:
  """`classes` (a `distill.ClassUpdates`) run class by class from the host."""

  def update(state, sums, source_item, draws, c):
    real = real_block(source_item, state.key, state.step, batch_real, c, 1, fixed_real)
    return classes.update(state, sums, real, draws, c)

  begin = jax.jit(classes.begin, donate_argnums=(0,))
  update = jax.jit(update, donate_argnums=(0, 1))
  calibrate = jax.jit(classes.calibrate, donate_argnums=(0, 1))
  finish = jax.jit(classes.finish, donate_argnums=(0,))

  def step(state, pool, source_item):
    state, draws, sums = begin(state, pool)
    num_classes = state.syn_images.shape[0]
    for c in range(num_classes):
      state, sums = update(state, sums, source_item, draws, jnp.int32(c))
    for r in range(classes.rounds):
      for c in range(num_classes):
        state, sums = calibrate(state, sums, draws, jnp.int32(c), jnp.int32(r))
    del draws
    return finish(state, sums)

  return HostClassStep(begin, update, calibrate, finish, step)


def update_mode(distill_config) -> str:
  """`distill.update_mode`: "per_class" (the release's iteration) or "batched"."""
  return distill_config.get("update_mode", "batched")


def fixed_real(distill_config) -> bool:
  """`distill.real_sampling="first"`: every step the same first B images per class
  (the release's loader), instead of a fresh draw."""
  return distill_config.get("real_sampling", "fresh") == "first"


def make_run_steps(distill_step, distill_config, num_steps: int, *,
                   mesh=None, class_sharded: bool = False) -> RunSteps:
  """Runs `num_steps` of `distill_step(state, pool, real_batch)` per host call.

  `distill_step` is a `distill.DistillStep` (or a bare step function). `source`
  is either a `ClassIndexedData` (real batches sampled on the device inside the
  loop: no host round trip) or a uint8 array `[num_steps, C, B, H, W, Ch]` of
  batches streamed from the host. `distill_config.use_scan` (None: by backend)
  runs the steps in `lax.scan`, otherwise in a Python loop over a jitted step.
  `distill_config.class_block` splits the classes into blocks (`distill.ClassBlocks`):
  in one jitted step with `block_loop="scan"`, block by block from the host with
  `"host"` (without a mesh). With a `mesh` the real batch is split along B over
  its devices and, with `class_sharded`, the synthetic images along C
  (`sharding.state_shardings`); inputs placed with `sharding.shard_state` /
  `sharding.replicate` avoid a copy.

  Raises:
    ValueError: with a mesh, `batch_real` (or, class sharded, the class count at
      the first call) not divisible by the device count.
  """
  batch_real = int(distill_config.batch_real)
  use_scan = resolve_use_scan(distill_config.use_scan)
  unroll = int(distill_config.unroll)
  blocks = getattr(distill_step, "blocks", None)
  classes = getattr(distill_step, "classes", None)
  distill_step = getattr(distill_step, "step", distill_step)
  per_class = update_mode(distill_config) == "per_class"
  # The per-class iteration is blocks of one class by construction.
  requested_block = 0 if per_class else int(distill_config.get("class_block") or 0)
  block_loop = resolve_block_loop(distill_config.get("block_loop"))
  fixed = fixed_real(distill_config)
  if requested_block and blocks is None:  # a bare step would silently run all classes
    raise ValueError(f"distill.class_block={requested_block} needs the DistillStep of "
                     "distill.make_distill_step (its blocks), not a bare step function")
  if per_class and classes is not None and block_loop == "host" and mesh is None:
    return _host_run_steps(lambda num_classes: make_host_class_step(classes, batch_real, fixed),
                           num_steps)
  if requested_block and blocks is not None and block_loop == "host" and mesh is None:
    return _host_run_steps(lambda num_classes: make_host_block_step(
        blocks, batch_real, class_block_size(distill_config, num_classes), fixed), num_steps)
  if requested_block and blocks is not None:
    def distill_step(state, pool, real_batch, batched=distill_step):  # pylint: disable=function-redefined
      size = class_block_size(distill_config, state.syn_images.shape[0])
      if size == state.syn_images.shape[0]:
        return batched(state, pool, real_batch)
      return blocks.step(state, pool, real_batch, size)
  if mesh is not None:
    sharding.check_divisible(mesh, batch_real=batch_real)
    distill_step = sharding.constrain_real_batch(distill_step, mesh)

  def one(state, pool, source_item):
    if isinstance(source_item, sampling.ClassIndexedData):
      source_item = sampling.sample_class_batches(
          step_keys(state.key, state.step).sample, source_item, batch_real, fixed=fixed)
    return distill_step(state, pool, source_item)

  def scanned(state, pool, source):
    if isinstance(source, sampling.ClassIndexedData):
      return jax.lax.scan(lambda s, _: one(s, pool, source), state, None,
                          length=num_steps, unroll=unroll)
    return jax.lax.scan(lambda s, batch: one(s, pool, batch), state, source, unroll=unroll)

  cache: dict[tuple[bool, bool], Callable] = {}

  def jitted(state, source, single_step: bool = False):
    indexed = isinstance(source, sampling.ClassIndexedData)
    single = single_step or not use_scan
    if (indexed, single) not in cache:
      fn = one if single else scanned
      if mesh is None:
        cache[indexed, single] = jax.jit(fn, donate_argnums=(0,))
      else:
        state_sh = sharding.state_shardings(state, mesh, class_sharded)
        rep = sharding.replicated(mesh)
        # A scan consumes [T, C, B, ...]; the loop feeds one [C, B, ...].
        source_sh = rep if indexed else sharding.real_batch_sharding(mesh, 0 if single else 1)
        cache[indexed, single] = jax.jit(fn, in_shardings=(state_sh, rep, source_sh),
                                         out_shardings=(state_sh, rep), donate_argnums=(0,))
    return cache[indexed, single]

  def run(state, pool, source):
    if mesh is not None and class_sharded:
      sharding.check_divisible(mesh, num_classes=int(state.syn_images.shape[0]),
                               class_sharded=True)
    fn = jitted(state, source)
    if use_scan:
      return fn(state, pool, source)
    return loop_steps(fn, state, pool, source, num_steps)

  return RunSteps(run, jitted)


def _host_run_steps(make_host_step: Callable[[int], Any], num_steps: int) -> RunSteps:
  """`make_run_steps` for a step run as a host loop of jitted pieces (CPU):
  `make_host_step(num_classes)` builds it (`.step`) once per class count."""
  host_steps: dict[int, Any] = {}

  def host_step(state):
    classes = state.syn_images.shape[0]
    if classes not in host_steps:
      host_steps[classes] = make_host_step(classes)
    return host_steps[classes]

  def run(state, pool, source):
    return loop_steps(host_step(state).step, state, pool, source, num_steps)

  def jitted(state, source, single_step: bool = False):
    del state, source, single_step
    raise ValueError("a step run from the host has one jitted function per piece: "
                     "lower those of execution.make_host_block_step / make_host_class_step")

  return RunSteps(run, jitted)


def loop_steps(step_fn, state, pool, source, num_steps: int):
  """Python loop of `step_fn(state, pool, item)`; metrics stacked to `[num_steps]`.

  `source` is a ClassIndexedData (passed to every step) or `[num_steps, ...]` batches."""
  history = []
  for i in range(num_steps):
    item = source if isinstance(source, sampling.ClassIndexedData) else source[i]
    state, metrics = step_fn(state, pool, item)
    history.append(metrics)
  return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)


def real_batch_source(images, labels, num_classes: int, *, batch_real: int, seed: int,
                      device_limit_bytes: int, mesh=None,
                      fixed: bool = False) -> Callable[[int, int], Any]:
  """`source_for(step, n)`: what `RunSteps.run` consumes for steps step..step+n-1.

  A training set of at most `device_limit_bytes` sits on the device(s) as a
  `ClassIndexedData` and batches are sampled there; a larger one stays in host
  memory and `n` batches are sampled on the host (seeded by `(seed, step)`) and
  streamed per call.
  """
  if sampling.fits_on_device(images.nbytes, device_limit_bytes):
    data = sampling.make_class_indexed(images, labels, num_classes)
    if mesh is not None:
      data = sharding.replicate(data, mesh)
    return lambda step, n: data
  sampler = sampling.HostClassSampler(images, labels, num_classes, seed=seed, fixed=fixed)

  def streamed(step, n):
    batches = sampler.sample_many(n, batch_real, start_step=step)
    return jnp.asarray(batches) if mesh is None else sharding.put_streamed(batches, mesh)
  return streamed


def distill_in_calls(distill_step: Callable, distill_config, state, pool,
                     source_for: Callable[[int, int], Any], *, mesh=None,
                     class_sharded: bool = False):
  """Runs steps `state.step` .. `distill_config.steps - 1`; yields `(state, metrics)`
  after each host call.

  A call runs at most `steps_per_call` steps and ends on a multiple of
  `checkpoint_every`, so a checkpoint never falls inside a call. With a mesh the
  state is sharded and the pool replicated on it first.
  """
  d = distill_config
  per_call = max(1, int(d.steps_per_call))
  if mesh is not None:
    state = sharding.shard_state(state, mesh, class_sharded)
    pool = sharding.replicate(pool, mesh)
  runs: dict[int, Callable] = {}
  step = int(state.step)
  while step < d.steps:
    n = min(per_call, d.steps - step, d.checkpoint_every - step % d.checkpoint_every)
    if n not in runs:
      runs[n] = make_run_steps(distill_step, d, n, mesh=mesh, class_sharded=class_sharded).run
    state, metrics = runs[n](state, pool, source_for(step, n))
    step += n
    yield state, metrics
