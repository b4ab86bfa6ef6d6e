"""The memory planner: how one distillation step runs within a memory budget.

(Over 400 lines: candidate generation, the compile-time footprint of the host
block loop's pieces, timing and its cache, and --mode=plan belong together; to be
split at the next change.)

Four execution settings change how much memory a step needs but not what it
computes (only the order of floating-point sums; all are runtime settings,
`workdir.RUNTIME_KEYS`):

* `distill.class_block` K: the step takes the gradient of K classes at a time
  (`distill.ClassBlocks`), so one block's activations are alive instead of all;
* `distill.real_chunk`: real images per class in one forward pass (`lax.map`);
* `distill.syn_chunk` and `distill.remat_syn`: synthetic images per class in one
  forward/backward pass, unrolled (every pass's activations kept for the backward
  pass) or one after another and recomputed (one pass's activations);
* `distill.freq_chunk`: frequencies per NCFD block.

`Planner` picks them for a budget (`distill.memory_budget_gb`; None: 90% of the
accelerator's memory, half the RAM on CPU). Candidate plans are lowered and
compiled from abstract shapes (`jax.ShapeDtypeStruct`: no data) and measured by
XLA's compile-time memory analysis:

* one jitted step (all classes at once, or the blocks in one `lax.scan`): temp +
  argument + output - alias bytes (the donated state counts once);
* the host block loop (`execution.make_host_block_step`, XLA:CPU's default): for
  each jitted piece (begin, zeros, block_gradients, finish) its own temp +
  argument + output - alias bytes plus every array the host holds meanwhile
  that is not its argument (state, pool, training set, the step's draws, the
  gradient sum); the plan needs the largest of these;
* on CPU with tcmalloc preloaded the temp bytes count twice (`temp_factor`: the
  allocator keeps a freed temporary mapped while the next call maps its own).

Not counted: the host's copy of the dataset, compiled code, the runtime's own
allocations (on CPU these all share the RAM with the plan).

Candidates: for each pass policy, fastest first on this backend (CPU: unrolled
cache-sized passes, then recomputed passes with chunked frequencies; GPU/TPU: all
at once, then the real forward in passes with chunked frequencies, then the
synthetic passes recomputed too), the largest block size K of a ladder of
divisors of C (C, ~C/2, ~C/4, ..., 1) that fits, by bisection (memory falls with
K); a slower policy's plan is kept only when it allows a larger K than every
faster one (on CPU the smallest such K: the host loop's cost per block is small,
and a small block is quick to time), and on CPU the fastest policy is also tried
at the largest smaller K whose synthetic passes are cache-sized. When several
fit, each is timed once on random data (the fastest of a few calls of its
compiled step, or for the host loop of its pieces: begin + zeros + blocks x
block_gradients + finish) and the fastest wins: on CPU a cache-sized block can
beat one big batch, so "fewest blocks" is not assumed. Without timing (several
devices, `bench memory`) the first candidate is taken.
Analyses and timings are cached per (config, shapes, plan, device kind, code) in
a JSON file (`cache_path`), so a second run plans without compiling. Explicit
`class_block`, `real_chunk`, `syn_chunk` (with `remat_syn`), `freq_chunk` and
`block_loop` settings are kept; the planner only fills in the others.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ncfm_jax import data as data_lib
from ncfm_jax import distill
from ncfm_jax import execution
from ncfm_jax import models
from ncfm_jax import train as train_lib
from ncfm_jax.data import sampling
from ncfm_jax.errors import InputError

GB = 2**30
"""Bytes per GB in budgets and reports (binary, as the allocators report)."""

ACCELERATOR_BUDGET_FRACTION = 0.9
CPU_BUDGET_FRACTION = 0.5
FREQ_CHUNK = 512
"""Frequencies per NCFD block in the memory-frugal policies."""
TIMED_CALLS = 3
"""Calls of a candidate's step (or host-loop block) when timing it; the fastest counts."""
TIMING_SECONDS = 120.0
"""No further call of a candidate once its calls took this long."""
ACCELERATOR_PASS_PIXELS = 1024 * 32 * 32
"""Pixels per bounded forward pass on GPU/TPU (1024 CIFAR-sized images)."""

_PLAN_FIELDS = ("class_block", "block_loop", "real_chunk", "syn_chunk", "remat_syn",
                "freq_chunk")
# Pieces of the host block loop that no plan setting changes.
_PLAN_FREE_PIECES = ("begin", "zeros", "finish")
# Files whose code decides a step's memory and speed: a change invalidates the cache.
_CODE_FILES = ("plan.py", "execution.py", "distill.py", "ncfd.py", "augment.py",
               "parameterize.py", "sampler.py", "data/sampling.py", "models")


class Plan(NamedTuple):
  """How one step runs: the settings the planner picks (see the module docstring).

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
      for field in _PLAN_FIELDS:
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
  call. README, "Memory plans", gives the measurement.
  """
  if (backend or jax.default_backend()) != "cpu":
    return 1
  return 2 if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else 1


# ------------------------------------------------------------------ abstract inputs
def _nbytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


class _Inputs(NamedTuple):
  state: Any
  pool: Any
  source: Any  # what one step consumes: ClassIndexedData or a batch [C, B, ...]
  call_source: Any  # what one host call consumes (the scan's [T, C, B, ...] if streamed)
  streamed_bytes: int  # a loop's [T, C, B, ...] batches held besides the step's slice


def _abstract_inputs(spec: StepSpec, d) -> _Inputs:
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
    return _Inputs(state, pool, data, data, 0)
  batch = sds((spec.num_classes, int(d.batch_real)) + spec.image_shape, jnp.uint8)
  calls = sds((spec.steps_per_call,) + batch.shape, jnp.uint8)
  return _Inputs(state, pool, batch, calls, _nbytes(calls))


def _concrete(abstract, key: jax.Array):
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


# ---------------------------------------------------------------- compiled pieces
class _Piece(NamedTuple):
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


class Planner:
  """Evaluates and chooses plans for one step (`spec`, `distill_config` with its
  `batch_real` already capped); evaluations are memoized, so one planner answers
  several budgets with each candidate compiled once.

  Args:
    spec: the step's shapes (`make_spec`).
    distill_config: the `distill` config section.
    cache_path: JSON cache of analyses and timings (None: `default_cache_path()`;
      "" disables it).
    log: a print-like function for progress lines (None: silent).
  """

  def __init__(self, spec: StepSpec, distill_config, *, cache_path: str | None = None,
               log: Callable[[str], None] | None = print):
    self.spec = spec
    self.config = distill_config.copy_and_resolve_references()
    self.backend = jax.default_backend()
    self.cache = _Cache(default_cache_path() if cache_path is None else cache_path)
    self.log = log or (lambda _: None)
    self._evaluated: dict[Plan, Footprint] = {}
    self._compiled: dict[Plan, dict] = {}
    self._shared: dict[str, Any] = {}
    self._inputs = _abstract_inputs(spec, self.config)
    self.temp_factor = temp_factor(self.backend)

  # ------------------------------------------------------------- candidates
  def ladder(self) -> list[int]:
    """`block_ladder` of C, or only the configured `distill.class_block`."""
    if self.config.get("class_block"):
      return [execution.class_block_size(self.config, self.spec.num_classes)]
    return block_ladder(self.spec.num_classes)

  def policies(self) -> list[Callable[[int], Plan]]:
    """Pass policies, fastest first on this backend: each maps K to a plan."""
    d, spec = self.config, self.spec
    batch, per_class = int(d.batch_real), int(d.ipc) * int(d.factor) ** 2
    pixels = spec.image_shape[0] * spec.image_shape[1]
    loop = execution.resolve_block_loop(d.get("block_loop"))
    freq_chunk = FREQ_CHUNK if d.loss == "ncfd" and int(d.num_freqs) > FREQ_CHUNK else None
    cpu = self.backend == "cpu"
    budget = execution.CPU_PASS_PIXELS if cpu else ACCELERATOR_PASS_PIXELS

    def passes(n, k, max_passes):
      return execution.pass_size(n, k, pixels, max_passes, budget)

    def make(k, real, syn, remat, freqs):
      # One pass of everything is "all at once" (0, no recomputation): equal plans
      # are compiled once.
      real = 0 if real >= batch else real
      syn, remat = (0, False) if syn >= per_class else (syn, remat)
      freqs = None if freqs is not None and freqs >= int(d.num_freqs) else freqs
      explicit_syn = d.get("syn_chunk") is not None
      return Plan(
          class_block=k, block_loop=loop,
          real_chunk=int(d.real_chunk) if d.get("real_chunk") is not None else real,
          syn_chunk=int(d.syn_chunk) if explicit_syn else syn,
          remat_syn=bool(d.get("remat_syn")) if explicit_syn else remat,
          freq_chunk=d.freq_chunk if d.get("freq_chunk") is not None else freqs)

    frugal = lambda k: make(k, passes(batch, k, batch), passes(per_class, k, per_class), True,
                            freq_chunk)
    if cpu:  # cache-sized passes; unrolled, then recomputed
      return [lambda k: make(k, passes(batch, k, batch), passes(per_class, k, 8), False, None),
              frugal]
    # GPU/TPU: all at once; then the real forward in passes and F in blocks; then
    # the synthetic passes recomputed too.
    return [lambda k: make(k, 0, 0, False, None),
            lambda k: make(k, passes(batch, k, batch), 0, False, freq_chunk),
            frugal]

  def unbounded(self) -> Plan:
    """All classes, every pass all at once, frequencies unchunked (no planning)."""
    loop = execution.resolve_block_loop(self.config.get("block_loop"))
    return Plan(self.spec.num_classes, loop, 0, 0, False, None)

  # ------------------------------------------------------------- evaluation
  def _pieces(self, plan: Plan) -> dict[str, _Piece]:
    spec, inputs = self.spec, self._inputs
    d = plan.apply(self.config, spec.num_classes)
    step = distill.make_distill_step(spec.model, d, spec.mean, spec.std, spec.feature_dim)
    state, pool, source = inputs.state, inputs.pool, inputs.source
    held_stream = inputs.streamed_bytes
    if plan.class_block < spec.num_classes and plan.block_loop == "host":
      host = execution.make_host_block_step(step.blocks, int(d.batch_real), plan.class_block)
      draws = jax.eval_shape(host.begin, state, pool)
      summed = jax.eval_shape(host.zeros, state.syn_images, draws)
      block = jax.ShapeDtypeStruct((), jnp.int32)
      own = _nbytes(state.syn_images) + _nbytes((state.key, state.step))
      return {
          "begin": _Piece(host.begin, (state, pool), _nbytes(source) + held_stream),
          "zeros": _Piece(host.zeros, (state.syn_images, draws),
                          _nbytes((state, pool, source)) - _nbytes(state.syn_images)
                          + held_stream),
          "block_gradients": _Piece(
              host.block_gradients,
              (summed, state.syn_images, source, state.key, state.step, draws, block),
              _nbytes((state, pool)) - own + held_stream),
          "finish": _Piece(host.finish, (state, summed),
                           _nbytes((pool, source)) + held_stream),
      }
    run = execution.make_run_steps(step, d, spec.steps_per_call)
    call_source = inputs.call_source if execution.resolve_use_scan(d.use_scan) else source
    scan = execution.resolve_use_scan(d.use_scan)
    held = held_stream if call_source is source and not spec.data_on_device else 0
    return {"step": _Piece(run.jitted(state, call_source), (state, pool, call_source), held,
                           spec.steps_per_call if scan else 1)}

  def evaluate(self, plan: Plan, *, compile_: bool = False) -> Footprint:
    """The plan's `Footprint`, from the cache or compiled from abstract shapes (the
    executables are kept for timing until `choose` returns); `compile_`: compile
    even when cached."""
    if plan in self._evaluated and (plan in self._compiled or not compile_):
      return self._evaluated[plan]
    cached = self.cache.get(self._key(plan))
    if cached is not None and "planned_bytes" in cached and not compile_:
      footprint = Footprint(cached["planned_bytes"], cached["peak_piece"], cached["xla"],
                            cached["pieces"], cached["held"], 0.0)
      self._evaluated[plan] = footprint
      return footprint
    start = time.perf_counter()
    totals, figures, executables = {}, {}, {}
    pieces = self._pieces(plan)
    for name, piece in pieces.items():
      # The host loop's begin, zeros and finish do not depend on the plan: compiled once.
      shared = name in _PLAN_FREE_PIECES
      if shared and name in self._shared:
        compiled = self._shared[name]
      else:
        compiled = piece.fn.lower(*piece.args).compile()
        if shared:
          self._shared[name] = compiled
      figures[name] = _xla(compiled)
      f = figures[name]
      totals[name] = (piece.held + f["argument_bytes"] + self.temp_factor * f["temp_bytes"]
                      + f["output_bytes"] - f["alias_bytes"])
      executables[name] = (compiled, piece.args, piece.steps)
    seconds = time.perf_counter() - start
    peak = max(totals, key=totals.get)
    held = {name: piece.held for name, piece in pieces.items()}
    footprint = Footprint(int(totals[peak]), peak, figures[peak], totals, held, seconds)
    self._evaluated[plan] = footprint
    self._compiled[plan] = executables
    self.cache.update(self._key(plan), planned_bytes=footprint.planned_bytes,
                      peak_piece=peak, xla=footprint.xla, pieces=totals, held=held)
    self.log(f"[plan] {plan.describe(self.spec.num_classes)}: "
             f"{footprint.planned_bytes / GB:.2f} GB (compiled in {seconds:.1f}s)")
    return footprint

  def compile_stats(self) -> tuple[int, float]:
    """(plans compiled here, seconds spent compiling them)."""
    compiled = [f.compile_seconds for f in self._evaluated.values() if f.compile_seconds]
    return len(compiled), float(sum(compiled))

  def _largest_fitting(self, policy: Callable[[int], Plan], budget: int) -> Plan | None:
    """The plan of the largest K on the ladder that fits `budget` (bisection: memory
    falls with K), or None."""
    ladder = self.ladder()
    fits = lambda i: self.evaluate(policy(ladder[i])).planned_bytes <= budget
    if fits(0):
      return policy(ladder[0])
    lo, hi = 1, len(ladder)  # the first fitting index is in [lo, hi] (hi: none fits)
    while lo < hi:
      mid = (lo + hi) // 2
      if fits(mid):
        hi = mid
      else:
        lo = mid + 1
    return policy(ladder[lo]) if lo < len(ladder) else None

  def candidates(self, budget: int) -> list[Plan]:
    """The fitting plans worth timing, in the order tried: the fastest policy at its
    largest fitting K (on CPU then also at the largest smaller K whose synthetic
    passes are cache-sized, when that differs), then a slower policy's plan only
    when its K is larger than every earlier one's. On CPU, where the host loop's cost per
    block is small, a slower policy is tried at the smallest such K (the first
    fitting one above), which is also the cheapest to time."""
    out, best_k = [], 0
    cpu = self.backend == "cpu"
    for i, policy in enumerate(self.policies()):
      if i > 0 and cpu and best_k:
        plan = self._smallest_fitting_above(policy, best_k, budget)
      else:
        plan = self._largest_fitting(policy, budget)
      if plan is None or plan.class_block <= best_k or plan in out:
        continue
      out.append(plan)
      if i == 0 and cpu:
        cached = self._cache_sized(policy, plan.class_block)
        if (cached is not None and cached != plan
            and self.evaluate(cached).planned_bytes <= budget):
          out.append(cached)
      best_k = plan.class_block
    return out

  def _smallest_fitting_above(self, policy: Callable[[int], Plan], k: int,
                              budget: int) -> Plan | None:
    """`policy` at the smallest ladder K > `k`, if it fits (a larger K needs more)."""
    above = [x for x in self.ladder() if x > k]
    if not above:
      return None
    plan = policy(min(above))
    return plan if self.evaluate(plan).planned_bytes <= budget else None

  def _cache_sized(self, policy: Callable[[int], Plan], largest: int) -> Plan | None:
    """`policy` at the largest ladder K <= `largest` whose synthetic pass (syn_chunk
    images of K classes) holds at most `execution.CPU_PASS_PIXELS`."""
    pixels = self.spec.image_shape[0] * self.spec.image_shape[1]
    per_class = int(self.config.ipc) * int(self.config.factor) ** 2
    for k in self.ladder():
      plan = policy(k)
      if k <= largest and (plan.syn_chunk or per_class) * k * pixels <= execution.CPU_PASS_PIXELS:
        return plan
    return None

  def smallest(self) -> tuple[Plan, Footprint]:
    """The most frugal plan tried (the last policy at the smallest K)."""
    plan = self.policies()[-1](self.ladder()[-1])
    return plan, self.evaluate(plan)

  # ---------------------------------------------------------------- timing
  def seconds_per_step(self, plan: Plan, *, stop_above: float | None = None) -> float:
    """Seconds per step of `plan` on random data (cached): the fastest of up to
    `TIMED_CALLS` calls of its compiled step, or for the host loop begin + zeros +
    blocks x (the fastest block_gradients call) + finish. First calls page fresh
    memory in and ran up to 3x slower on the 2-core CPU; the minimum also resists
    other processes' load. Calls stop once `TIMING_SECONDS` are spent.

    `stop_above`: when the first call already puts the plan at over 3x this, stop
    and return that figure (not cached): a hopeless candidate costs one call.
    """
    key = self._key(plan)
    cached = self.cache.get(key) or {}
    if cached.get("seconds_per_step") is not None:
      return cached["seconds_per_step"]
    hopeless = 3 * stop_above if stop_above is not None else float("inf")
    if cached.get("one_call_seconds_per_step", 0) > hopeless:
      return cached["one_call_seconds_per_step"]  # already seen to be hopeless
    self.evaluate(plan, compile_=True)
    executables = self._compiled.pop(plan)
    spec, inputs = self.spec, self._inputs
    rng = jax.random.PRNGKey(0)
    syn = jax.random.uniform(rng, inputs.state.syn_images.shape)
    state = distill.init_state(rng, syn, spec.feature_dim,
                               plan.apply(self.config, spec.num_classes))
    pool = _concrete(inputs.pool, jax.random.PRNGKey(1))

    def fastest(call, scale):
      times = []
      while len(times) < TIMED_CALLS and sum(times) < TIMING_SECONDS:
        times.append(_timed(call)[1])
        if scale * times[0] > hopeless:
          break
      return min(times)

    if "step" in executables:
      compiled, args, steps = executables["step"]
      source = self._valid_indices(_concrete(args[2], jax.random.PRNGKey(2)))

      def step_call():
        nonlocal state
        state, metrics = compiled(state, pool, source)
        return state, metrics
      seconds = fastest(step_call, 1.0 / steps) / steps
    else:
      run = {name: compiled for name, (compiled, _, _) in executables.items()}
      source = self._valid_indices(_concrete(inputs.source, jax.random.PRNGKey(2)))
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
      seconds = t_begin + t_zeros + num_blocks * block + t_finish
    if seconds > hopeless:
      self.cache.update(key, one_call_seconds_per_step=seconds)
      self.log(f"[plan] {plan.describe(spec.num_classes)}: about {seconds:.3g} s/step "
               f"from one call (timing stopped: over 3x the best, {stop_above:.3g})")
      return seconds
    self.cache.update(key, seconds_per_step=seconds)
    self.log(f"[plan] {plan.describe(spec.num_classes)}: {seconds:.3g} s/step (timed)")
    return seconds

  def _valid_indices(self, source):
    if not isinstance(source, sampling.ClassIndexedData):
      return source
    index = jnp.arange(self.spec.num_classes * self.spec.largest_class, dtype=jnp.int32)
    index = (index % self.spec.train_images).reshape(source.class_index.shape)
    counts = jnp.full(source.class_counts.shape, self.spec.largest_class, jnp.int32)
    return source._replace(class_index=index, class_counts=counts)

  # ---------------------------------------------------------------- choice
  def choose(self, budget: int, *, timed: bool = True) -> "PlanChoice":
    """The fastest fitting candidate (`timed`), or the first one tried.

    Raises:
      InputError: no plan fits `budget` (says what the smallest needs).
    """
    found = self.candidates(budget)
    if not found:
      plan, footprint = self.smallest()
      raise InputError(
          f"distill.memory_budget_gb={budget / GB:.3g} fits no plan for this step: the "
          f"smallest ({plan.describe(self.spec.num_classes)}) needs "
          f"{footprint.planned_bytes / GB:.3g} GB")
    seconds = {}
    if timed and len(found) > 1:
      for plan in found:  # in the order tried: the likely fastest first
        seconds[plan] = self.seconds_per_step(plan, stop_above=min(seconds.values(),
                                                                   default=None))
      chosen = min(found, key=seconds.get)
      self._compiled.clear()  # the executables served the timing
    else:
      chosen = found[0]
    rows = [{"plan": p._asdict(), "planned_gb": self.evaluate(p).planned_bytes / GB,
             "seconds_per_step": seconds.get(p)} for p in found]
    footprint = self.evaluate(chosen)
    return PlanChoice(chosen, footprint, budget, self.backend, rows, int(self.config.batch_real),
                      self.spec.num_classes, self.temp_factor)

  # ---------------------------------------------------------------- cache key
  def _key(self, plan: Plan) -> str:
    device = jax.devices()[0]
    d = json.loads(self.config.to_json_best_effort())
    for field in ("steps", "checkpoint_every", "keep_checkpoints", "memory_budget_gb",
                  *_PLAN_FIELDS):
      d.pop(field, None)
    spec = self.spec._asdict()
    spec.pop("model")
    identity = {"backend": self.backend, "device": device.device_kind, "jax": jax.__version__,
                "temp_factor": self.temp_factor,
                "code": _code_hash(), "spec": spec, "distill": d, "plan": plan._asdict()}
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class PlanChoice(NamedTuple):
  """The chosen plan, its footprint and the fitting candidates."""
  plan: Plan
  footprint: Footprint
  budget_bytes: int
  backend: str
  candidates: list
  batch_real: int
  num_classes: int
  temp_factor: int

  def to_json(self) -> dict:
    """plan.json: budget_gb, planned_gb, plan, backend, xla (of the peak piece), ..."""
    return {"budget_gb": self.budget_bytes / GB,
            "planned_gb": self.footprint.planned_bytes / GB,
            "plan": self.plan._asdict(),
            "backend": self.backend,
            "xla": self.footprint.xla,
            "peak_piece": self.footprint.peak_piece,
            "temp_factor": self.temp_factor,
            "pieces_gb": {k: v / GB for k, v in self.footprint.pieces.items()},
            "batch_real": self.batch_real,
            "candidates": self.candidates,
            "described": self.plan.describe(self.num_classes)}

  def summary(self) -> str:
    return (f"[plan] {self.plan.describe(self.num_classes)}: "
            f"{self.footprint.planned_bytes / GB:.2f} GB of a {self.budget_bytes / GB:.2f} GB "
            f"budget ({self.backend}, batch_real {self.batch_real})")


def choose(spec: StepSpec, distill_config, budget: int | None = None, *, timed: bool = True,
           cache_path: str | None = None, log=print) -> PlanChoice:
  """`Planner(spec, distill_config).choose(budget)`; budget None: `budget_bytes(config)`."""
  budget = budget_bytes(distill_config) if budget is None else budget
  return Planner(spec, distill_config, cache_path=cache_path, log=log).choose(budget, timed=timed)


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


# --------------------------------------------------------------------- cache
def default_cache_path() -> str:
  """$NCFM_PLAN_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/ncfm_jax/plans.json."""
  if "NCFM_PLAN_CACHE" in os.environ:
    return os.environ["NCFM_PLAN_CACHE"]
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "ncfm_jax", "plans.json")


_CODE_HASH: list[str] = []


def _code_hash() -> str:
  if not _CODE_HASH:
    root = pathlib.Path(__file__).parent
    digest = hashlib.sha1()
    for name in _CODE_FILES:
      path = root / name
      for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    _CODE_HASH.append(digest.hexdigest()[:16])
  return _CODE_HASH[0]


class _Cache:
  """A JSON file of {key: entry}; read on every lookup, merged on every write."""

  def __init__(self, path: str):
    self.path = path

  def _read(self) -> dict:
    if not self.path:
      return {}
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def get(self, key: str) -> dict | None:
    return self._read().get(key)

  def update(self, key: str, **fields) -> None:
    if not self.path:
      return
    entries = self._read()
    entry = dict(entries.get(key, {}), **fields)
    entry["written"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries[key] = entry
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, self.path)


def plan_from_registry(config) -> dict:
  """The plan of one distillation step of `config` from the dataset registry's
  shapes (nothing loaded), as plan.json holds it (with the dataset's shape)."""
  shape = data_lib.dataset_shape(config.data)
  d = capped_distill_config(config.distill, [shape.smallest_class], tag="plan")
  known = data_lib.DATASETS.get(shape.name)
  spec = make_spec(config, num_classes=shape.num_classes, image_shape=shape.image_shape,
                   train_images=shape.train_images, largest_class=shape.largest_class,
                   mean=known.mean if known else None, std=known.std if known else None)
  print(f"[plan] {shape.name}: {shape.num_classes} classes of {shape.image_shape}, "
        f"{shape.train_images} training images ({shape.source}); training set "
        f"{'on the device' if spec.data_on_device else 'streamed from the host'}", flush=True)
  choice = choose(spec, d)
  print(choice.summary(), flush=True)
  return dict(choice.to_json(), dataset=shape._asdict())
