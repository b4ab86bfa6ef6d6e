"""Timing of the full jitted distillation step (`python -m ncfm_jax.bench step`).

Random uint8 images stand in for the dataset and randomly initialised ConvNets
for the pool: the content of either does not change the cost of a step. The step
runs as the pipeline runs it: with the memory planner's plan (`ncfm_jax.plan`,
budget `distill.memory_budget_gb`, default half the RAM on CPU) through
`execution.make_run_steps` (on CPU, class blocks as a host loop of jitted pieces);
`plan=False` runs the config as given (all classes in one step).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax import execution
from ncfm_jax import models
from ncfm_jax import plan as plan_lib
from ncfm_jax import train as train_lib
from ncfm_jax.data import sampling


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  classes: int
  image_size: int
  channels: int
  depth: int
  ipc: int
  batch_real: int
  num_freqs: int = 4096
  width: int = 128
  factor: int = 2
  psi: bool = False
  pool_size: int = 2
  images_per_class: int = 300  # of random "real" data to sample from


WORKLOADS = {
    "cifar10_ipc10": Workload("cifar10_ipc10", 10, 32, 3, 3, 10, 256),
    "cifar10_ipc10_psi": Workload("cifar10_ipc10_psi", 10, 32, 3, 3, 10, 256, psi=True),
    "cifar100_ipc50": Workload("cifar100_ipc50", 100, 32, 3, 3, 50, 256),
    "imagenette_ipc10": Workload("imagenette_ipc10", 10, 128, 3, 5, 10, 128),
}


def small_variant(workload: Workload) -> Workload:
  """The CPU-sized variant: batch_real 64 per class."""
  return dataclasses.replace(workload, name=workload.name + "_small", batch_real=64,
                             images_per_class=80)


def distill_config(workload: Workload, **overrides):
  config = config_lib.base_config().distill
  config.ipc = workload.ipc
  config.factor = workload.factor
  config.batch_real = workload.batch_real
  config.num_freqs = workload.num_freqs
  config.sampler = "psi" if workload.psi else "gaussian"
  config.calibration_weight = 1.0
  config.augment = "color_crop_cutout"
  for key, value in overrides.items():
    config[key] = value
  return config


def setup(workload: Workload, config):
  """(state, pool, data, step_fn) for `workload` with random content."""
  model = models.get_model("convnet", workload.classes, width=workload.width,
                           depth=workload.depth, norm="instance",
                           image_size=workload.image_size, channels=workload.channels)
  shape = (workload.image_size, workload.image_size, workload.channels)
  example = jnp.zeros((1,) + shape)
  members = [(train_lib.init_variables(jax.random.PRNGKey(2 * i), model, example),
              train_lib.init_variables(jax.random.PRNGKey(2 * i + 1), model, example))
             for i in range(workload.pool_size)]
  pool = distill.stack_pool(members)
  feature_dim = int(model.apply(members[0][0], example)[0].shape[-1])
  rng = np.random.default_rng(0)
  n = workload.images_per_class
  images = rng.integers(0, 256, (workload.classes * n,) + shape, dtype=np.uint8)
  labels = np.repeat(np.arange(workload.classes), n)
  data = sampling.make_class_indexed(images, labels, workload.classes)
  syn = jax.random.uniform(jax.random.PRNGKey(1), (workload.classes, workload.ipc) + shape)
  state = distill.init_state(jax.random.PRNGKey(0), syn, feature_dim, config)
  mean, std = (0.5,) * workload.channels, (0.25,) * workload.channels
  step_fn = distill.make_distill_step(model, config, mean, std, feature_dim)
  return state, pool, data, step_fn


def matmul_gflops(size: int | None = None, repeats: int = 10) -> float:
  """Dense float32 matmul rate of this device (XLA's default precision, i.e. TF32
  on NVIDIA GPUs), median of `repeats` runs; 2048^2 on CPU, 8192^2 elsewhere."""
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / float(np.median(times)) / 1e9


def peak_memory_mb() -> float:
  """Peak device memory on accelerators, peak host RSS on CPU (since the last
  `reset_peak_memory`, where Linux allows it)."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if device.platform != "cpu" and stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  hwm = _proc_status_kib("VmHWM")
  if hwm is not None:
    return hwm / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _proc_status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def reset_peak_memory() -> None:
  """Starts the CPU peak RSS afresh (Linux: VmHWM reset to the current RSS), so the
  planner's own trials do not count in the step's peak."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def workload_spec(workload: Workload, config) -> plan_lib.StepSpec:
  """The planner's view of `workload` (its random training set sits on the device)."""
  full = config_lib.base_config()
  full.model.width, full.model.depth = workload.width, workload.depth
  full.pretrain.num_models = workload.pool_size
  full.distill = config
  return plan_lib.make_spec(
      full, num_classes=workload.classes,
      image_shape=(workload.image_size, workload.image_size, workload.channels),
      train_images=workload.classes * workload.images_per_class,
      largest_class=workload.images_per_class, mean=(0.5,) * workload.channels,
      std=(0.25,) * workload.channels)


def flops_per_step(run_steps: execution.RunSteps, state, pool, data) -> float:
  """FLOPs of ONE step from XLA's cost analysis of the lowered (not yet compiled)
  step: the same count on every backend (after compilation, GPU convolutions
  become cuDNN calls that the analysis does not count), and no extra compile.
  The single step is analysed: a scan's loop body would be counted once. The
  step must be one jitted function (all classes at once: the host block loop
  has one per piece)."""
  cost = run_steps.jitted(state, data, single_step=True).lower(state, pool, data).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def _plan_only(workload: Workload, config: dict) -> None:
  config = ml_collections.ConfigDict(config)
  plan_lib.choose(workload_spec(workload, config), config)


def run(workload: Workload, steps_per_call: int, repeats: int, use_scan: bool,
        unroll: int = 1, plan: bool = True, **overrides) -> dict:
  """Times `repeats` calls of `steps_per_call` steps after one warm-up call, with
  the planner's plan for the budget (`plan`), else the config as given."""
  config = distill_config(workload, steps_per_call=steps_per_call,
                          use_scan=use_scan, unroll=unroll, **overrides)
  choice = None
  if plan:
    if plan_lib.default_cache_path():
      # Compile and time the candidates in a child process, so that neither their
      # memory (kept by the allocator) nor their compiled code counts in this
      # process's peak; the choice below then comes from the cache.
      child = multiprocessing.get_context("spawn").Process(
          target=_plan_only, args=(workload, config.to_dict()))
      child.start()
      child.join()
    choice = plan_lib.choose(workload_spec(workload, config), config)
    print(choice.summary(), flush=True)
    config = choice.plan.apply(config, workload.classes)
  reset_peak_memory()
  state, pool, data, step_fn = setup(workload, config)
  run_fn = execution.make_run_steps(step_fn, config, steps_per_call).run
  # lax.map bodies are counted once: count the same math unchunked, all classes in
  # one step (and without remat_syn's recomputation, which is not useful work).
  unchunked = distill_config(workload, steps_per_call=steps_per_call, use_scan=use_scan,
                             **dict(overrides, real_chunk=0, syn_chunk=0, freq_chunk=None,
                                    remat_syn=False, class_block=0))
  _, _, _, plain_step = setup(workload, unchunked)
  flops = flops_per_step(execution.make_run_steps(plain_step, unchunked, 1), state, pool, data)

  start = time.perf_counter()
  state, metrics = run_fn(state, pool, data)  # warm-up: compiles the run function
  jax.block_until_ready((state, metrics))
  first_call = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = run_fn(state, pool, data)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps_per_call)
  median = float(np.median(times))
  matmul = matmul_gflops()
  achieved = flops / median / 1e9
  return {
      "workload": workload.name,
      "device": str(jax.devices()[0].device_kind),
      "steps_per_call": steps_per_call,
      "use_scan": use_scan,
      "seconds_per_step": {"median": median, "min": float(min(times)),
                           "max": float(max(times))},
      "first_call_seconds": first_call,  # compile + one call
      "gflops_per_step": flops / 1e9,
      "achieved_gflops": achieved,
      "matmul_gflops": matmul,
      "fraction_of_matmul": achieved / matmul,
      "peak_memory_mb": peak_memory_mb(),
      "final_loss": float(np.asarray(metrics["loss"])[-1]),
      "plan": None if choice is None else choice.to_json(),
      "planned_gb": None if choice is None else choice.footprint.planned_bytes / plan_lib.GB,
  }
