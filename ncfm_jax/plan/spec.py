"""What a plan is and what it plans for: `Plan` (the execution settings the planner
picks), `StepSpec` (the shapes of one distillation step) and the memory budget."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import numpy as np

from ncfm_jax import data as data_lib
from ncfm_jax import models
from ncfm_jax.data import sampling
from ncfm_jax.errors import InputError

GB = 2**30
"""Bytes per GB in budgets and reports (binary, as the allocators report)."""

ACCELERATOR_BUDGET_FRACTION = 0.9
CPU_BUDGET_FRACTION = 0.5

PLAN_FIELDS = ("class_block", "block_loop", "real_chunk", "syn_chunk", "remat_syn",
               "freq_chunk")
"""The distill config keys a plan sets."""


class Plan(NamedTuple):
  """How one step runs: the settings the planner picks (`ncfm_jax.plan`'s docstring).

  Attributes:
    class_block: classes per block K (the class count: all classes at once).
    block_loop: "host" (a host loop of jitted pieces) or "scan" (one jitted step).
    real_chunk: real images per class per forward pass (0: all at once).
    syn_chunk: decoded synthetic images per class per pass (0: all at once).
    remat_syn: synthetic passes one after another, recomputed in the backward pass.
    freq_chunk: frequencies per NCFD block (None: all at once).
  """
  class_block: int
  block_loop: str
  real_chunk: int
  syn_chunk: int
  remat_syn: bool
  freq_chunk: int | None

  def apply(self, distill_config, num_classes: int):
    """A copy of `distill_config` that runs this plan (class_block 0 for all classes)."""
    config = distill_config.copy_and_resolve_references()
    with config.unlocked():
      for field in PLAN_FIELDS:
        config[field] = getattr(self, field)
      config.class_block = 0 if self.class_block >= num_classes else self.class_block
    return config

  def describe(self, num_classes: int) -> str:
    """One line, e.g. "blocks of 5/100 classes (host), real passes of 25, syn 2 x 100"."""
    blocks = ("all classes at once" if self.class_block >= num_classes else
              f"blocks of {self.class_block}/{num_classes} classes ({self.block_loop})")
    real = f"real passes of {self.real_chunk}" if self.real_chunk else "real at once"
    syn = (f"syn passes of {self.syn_chunk}" if self.syn_chunk else "syn at once")
    syn += " recomputed" if self.remat_syn else ""
    freqs = f", F in blocks of {self.freq_chunk}" if self.freq_chunk else ""
    return f"{blocks}, {real}, {syn}{freqs}"

  def short(self, num_classes: int) -> str:
    """Compact form for tables, e.g. "K=5 r25 s100", "K=25 r5 s5+remat F512" (K: classes
    per block; r/s: real/synthetic images per class per pass, * all at once; F:
    frequencies per NCFD block; "/scan": blocks in one jitted step)."""
    text = f"K={self.class_block}"
    if self.class_block < num_classes and self.block_loop == "scan":
      text += "/scan"
    text += f" r{self.real_chunk or '*'} s{self.syn_chunk or '*'}"
    text += "+remat" if self.remat_syn else ""
    return text + (f" F{self.freq_chunk}" if self.freq_chunk else "")



class StepSpec(NamedTuple):
  """The shapes of one distillation step, whatever the plan.

  Attributes:
    model: the Flax extractor (`models.get_model`).
    num_classes: C.
    image_shape: (H, W, Ch).
    feature_dim: D.
    mean, std: normalisation statistics (constants of the step).
    pool_size: pool members P (each an init and a trained variable set on the device).
    train_images: N, the training set's images (held on the device when it fits).
    largest_class: images of the largest class (the on-device index table's width).
    data_on_device: the training set sits on the device (`data.device_limit_mb`),
      else each call streams `steps_per_call` batches `[C, B, H, W, Ch]`.
    steps_per_call: steps per host call (the streamed batches held at once).
    model_config: JSON-able description of the model (for the cache key).
  """
  model: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  feature_dim: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  pool_size: int
  train_images: int
  largest_class: int
  data_on_device: bool
  steps_per_call: int
  model_config: dict


def make_spec(config, *, num_classes: int, image_shape, train_images: int,
              largest_class: int, mean=None, std=None) -> StepSpec:
  """The `StepSpec` of `config` (model, pool, data and distill sections) for a
  training set of these shapes."""
  m = config.model
  model = models.get_model(m.name, num_classes, width=m.width, depth=m.depth, norm=m.norm,
                           image_size=image_shape[0], channels=image_shape[2])
  channels = image_shape[2]
  d = config.distill
  data_bytes = int(train_images) * int(np.prod(image_shape))
  return StepSpec(
      model=model, num_classes=int(num_classes), image_shape=tuple(int(s) for s in image_shape),
      feature_dim=models.feature_dim(model, image_shape[0], channels),
      mean=tuple(mean or (0.5,) * channels), std=tuple(std or (0.25,) * channels),
      pool_size=int(config.pretrain.num_models), train_images=int(train_images),
      largest_class=int(largest_class),
      data_on_device=sampling.fits_on_device(data_bytes, int(config.data.device_limit_mb) * 2**20),
      steps_per_call=max(1, min(int(d.steps_per_call), int(d.checkpoint_every),
                                max(1, int(d.steps)))),
      model_config={k: m[k] for k in ("name", "width", "depth", "norm")})


def capped_distill_config(distill_config, class_counts, *, tag: str = "distill"):
  """`distill_config` with `batch_real` capped at the smallest class (as the release
  slices each class's permutation; `data.effective_batch_real`), said once when it caps.

  Raises:
    InputError: an explicit `real_chunk` does not divide the capped batch.
  """
  d = distill_config.copy_and_resolve_references()
  capped = data_lib.effective_batch_real(d.batch_real, class_counts)
  if capped < d.batch_real:
    print(f"[{tag}] distill.batch_real={d.batch_real} capped at {capped}, the "
          f"smallest class's training images", flush=True)
    d.batch_real = capped
    if d.real_chunk and capped % d.real_chunk:
      raise InputError(f"distill.real_chunk={d.real_chunk} must divide the capped "
                       f"distill.batch_real={capped}")
  return d


def default_budget_bytes(backend: str | None = None) -> int:
  """90% of the first device's memory on GPU/TPU, half the physical RAM on CPU."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
      return int(ACCELERATOR_BUDGET_FRACTION * stats["bytes_limit"])
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(CPU_BUDGET_FRACTION * ram)


def budget_bytes(distill_config) -> int:
  """`distill.memory_budget_gb` in bytes, or `default_budget_bytes()`."""
  gb = distill_config.get("memory_budget_gb")
  if gb is None:
    return default_budget_bytes()
  if gb <= 0:
    raise InputError(f"distill.memory_budget_gb must be > 0, got {gb}")
  return int(float(gb) * GB)


def block_ladder(num_classes: int) -> list[int]:
  """Block sizes to try: C, then the largest divisors of C under C/2, C/4, ..., 1.

  >>> block_ladder(100)
  [100, 50, 25, 10, 5, 2, 1]
  """
  divisors = [k for k in range(1, num_classes + 1) if num_classes % k == 0]
  out, bound = [], float(num_classes)
  while not out or out[-1] > 1:
    k = max(x for x in divisors if x <= bound)
    if k not in out:
      out.append(k)
    bound /= 2
  return out


def temp_factor(backend: str | None = None) -> int:
  """Temporary buffers' worth of memory a piece holds: 2 on CPU with tcmalloc
  preloaded (`ncfm_jax.allocator`), else 1.

  tcmalloc keeps a freed temporary buffer mapped and the next call of the same
  piece maps another; glibc's malloc returns it, and maps it afresh (slower) every
  call. docs/benchmarks.md, "Memory plan", gives the measurement.
  """
  if (backend or jax.default_backend()) != "cpu":
    return 1
  return 2 if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else 1
