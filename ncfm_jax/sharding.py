"""Scaling out with JAX's SPMD machinery: one `Mesh` axis and `NamedSharding`s on `jax.jit`.

The mesh has ONE axis, ``"data"``, over every (global) device. Two layouts of
the distillation (docs/design.md, "Many devices"):

* data parallel (default): the real batch ``[C, B, H, W, Ch]`` is split along
  ``B`` (each device embeds ``B / n`` real images of every class); the synthetic
  images, psi, both optimizer states, the pool and the device-resident
  training set are replicated. XLA turns the means over ``B`` inside the NCFD
  (the empirical characteristic functions) into all-reduces, so the loss and
  every gradient are the single-device ones up to float32 summation order. The
  synthetic images' forward/backward is computed redundantly on every device.
  (The real forward stays split because the step flattens ``[C, B]``
  B-major before the model; see `constrain_real_batch`.)
* class sharded (``class_sharded=True``): as above, and the synthetic images
  and their Adam moments are split along the class axis ``C``: each device
  decodes, augments, embeds and updates the synthetic images of its ``C / n``
  classes; the real characteristic functions ``[C, F]`` (all-reduced over
  ``B``), the loss sum and psi's gradients cross devices. Needs ``C`` divisible
  by the device count too.

The step is the SAME function that `distill.make_distill_step` returns, run by
the same loop (`execution.make_run_steps(..., mesh=mesh)`); this module gives
the `with_sharding_constraint` on the real batch right after it is sampled (the
batch is gathered from the replicated training set, so nothing else tells XLA
to split it) and the in/out shardings for `jax.jit`.

Multi-process (`ncfm_jax.distributed.maybe_initialize`): every process builds the
same host values (same seeds); `put` turns them into global arrays with
`jax.make_array_from_callback`, each process filling only its own shards.

Example::

  mesh = make_mesh()
  run = execution.make_run_steps(step_fn, distill_config, 10, mesh=mesh).run
  state = shard_state(state, mesh)
  pool, data = replicate(pool, mesh), replicate(data, mesh)
  state, metrics = run(state, pool, data)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
"""Name of the mesh's only axis."""


# ----------------------------------------------------------------------- mesh


def make_mesh(devices=None) -> Mesh:
  """A 1-d mesh with axis ``"data"`` over ``devices`` (default: all global devices).

  The axis type is ``Auto`` (sharding propagated by XLA, constraints via
  `with_sharding_constraint`); `jax.make_mesh` orders the devices for the
  physical topology (TPU rings).
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device")
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_axis_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
  """An array of rank ``ndim`` split along ``axis`` over the ``"data"`` axis."""
  if not 0 <= axis < ndim:
    raise ValueError(f"axis {axis} out of range for rank {ndim}")
  spec = [None] * ndim
  spec[axis] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def real_batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Sharding of a real batch ``[..., C, B, H, W, Ch]``: split along ``B``.

  ``leading_axes`` counts extra axes in front, e.g. 1 for the streamed
  ``[T, C, B, H, W, Ch]``.
  """
  return batch_axis_sharding(mesh, leading_axes + 5, leading_axes + 1)


def check_divisible(mesh: Mesh, *, batch_real: int | None = None,
                    num_classes: int | None = None,
                    class_sharded: bool = False) -> None:
  """ValueError unless the sharded axes divide evenly over the mesh's devices."""
  n = mesh.size
  if batch_real is not None and batch_real % n:
    raise ValueError(f"distill.batch_real={batch_real} is not divisible by the "
                     f"device count ({n}); use a multiple of {n}")
  if class_sharded and num_classes is not None and num_classes % n:
    raise ValueError(f"class_sharded needs the number of classes ({num_classes}) "
                     f"divisible by the device count ({n})")


# ----------------------------------------------------------------- placement


def _put_leaf(x, sharding: NamedSharding) -> jax.Array:
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  # Multi-process: every process holds the same host-global value and fills
  # only the shards of its own devices.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put(tree: Any, shardings: Any) -> Any:
  """Places ``tree`` with ``shardings`` (a matching tree, or one sharding for all).

  Leaves are host-global values (numpy, Python scalars, or single-process jax
  arrays), identical on every process in a multi-process run.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: _put_leaf(x, shardings), tree)
  return jax.tree.map(_put_leaf, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every leaf of ``tree`` (a Pool, ClassIndexedData, ...) replicated on ``mesh``."""
  return put(tree, replicated(mesh))


def state_shardings(state, mesh: Mesh, class_sharded: bool = False):
  """A `distill.DistillState` of NamedShardings for `state`.

  Replicated everywhere, except with ``class_sharded`` the synthetic images
  ``[C, ipc, H, W, Ch]`` and the image optimizer leaves of that same shape (the
  Adam moments), split along ``C``.
  """
  rep = replicated(mesh)
  if not class_sharded:
    return jax.tree.map(lambda _: rep, state)
  syn_shape = tuple(state.syn_images.shape)
  check_divisible(mesh, num_classes=syn_shape[0], class_sharded=True)
  by_class = batch_axis_sharding(mesh, len(syn_shape), 0)
  image_opt = jax.tree.map(
      lambda x: by_class if tuple(np.shape(x)) == syn_shape else rep,
      state.image_opt_state)
  shardings = jax.tree.map(lambda _: rep, state)
  return shardings._replace(syn_images=by_class, image_opt_state=image_opt)


def shard_state(state, mesh: Mesh, class_sharded: bool = False):
  """Places a `distill.DistillState` on ``mesh`` (see `state_shardings`)."""
  return put(state, state_shardings(state, mesh, class_sharded))


def abstract_arrays(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of ``tree`` carrying ``shardings`` (a tree or one sharding).

  The restore target of an Orbax checkpoint that should come back placed on a
  mesh (in a multi-process run every restored array must have a sharding).
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)


def to_host(tree: Any) -> Any:
  """numpy copy of every leaf, gathered across processes where a leaf is split."""
  def leaf(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(leaf, tree)


# -------------------------------------------------------------- distillation


def constrain_real_batch(distill_step: Callable, mesh: Mesh) -> Callable:
  """``distill_step`` with its real batch ``[C, B, H, W, Ch]`` split along ``B``.

  The constraint makes XLA partition the sampling gather, the real forward pass
  and the NCFD's means over ``B``; everything else follows by propagation. The
  real forward stays split because `distill.make_distill_step` flattens
  ``[B, C]`` (B-major) before the model; a C-major flatten of a B-split batch
  makes XLA all-gather it (same result, no speed-up).
  """
  batch_sharding = real_batch_sharding(mesh)

  def step(state, pool, real_batch):
    real_batch = jax.lax.with_sharding_constraint(real_batch, batch_sharding)
    return distill_step(state, pool, real_batch)

  return step


def put_streamed(batches, mesh: Mesh) -> jax.Array:
  """Host batches uint8 ``[T, C, B, H, W, Ch]`` (same on every process) -> global array."""
  if np.ndim(batches) != 6:
    raise ValueError(f"streamed batches must be [T, C, B, H, W, Ch], got {np.shape(batches)}")
  return put(batches, real_batch_sharding(mesh, leading_axes=1))


# ------------------------------------------------------- classifier training


def shard_batch_axis(x, mesh: Mesh, axis: int = 0) -> jax.Array:
  """Places a host-global array split along ``axis`` (e.g. batch indices ``[S, B]``, axis 1)."""
  size = np.shape(x)[axis]
  if size % mesh.size:
    raise ValueError(f"batch axis {axis} of size {size} is not divisible by the "
                     f"device count ({mesh.size})")
  return put(x, batch_axis_sharding(mesh, np.ndim(x), axis))


def data_parallel_train_chunk(chunk_fn: Callable, mesh: Mesh,
                              batch_size: int | None = None, *,
                              batch_axis: int = 1) -> Callable:
  """A `train.make_train_chunk` chunk (or its single step), data parallel on ``mesh``.

  ``fn(state, images, targets, batch_idx, keys, teacher_variables) -> (state, losses)``
  with ``batch_idx`` ``[S, B]`` (a chunk, ``batch_axis=1``) or ``[B]`` (one step,
  ``batch_axis=0``): the training state, images, targets, keys and the soft-label
  teacher's variables (None without one) replicated,
  ``batch_idx`` split along ``B``, so the gathered batch, its forward/backward
  and the batch-norm statistics are split (XLA all-reduces the means: the same
  step as on one device); outputs replicated. The state is donated.
  ``batch_size`` (B), when given, is checked to divide over the devices.
  """
  if batch_size is not None and batch_size % mesh.size:
    raise ValueError(f"batch_size={batch_size} is not divisible by the device count "
                     f"({mesh.size})")
  rep = replicated(mesh)
  return jax.jit(chunk_fn,
                 in_shardings=(rep, rep, rep,
                               batch_axis_sharding(mesh, batch_axis + 1, batch_axis), rep,
                               rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))
