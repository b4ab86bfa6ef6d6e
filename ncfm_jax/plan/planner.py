"""The planner: the fastest plan of one distillation step that fits a memory budget
(`ncfm_jax.plan`'s docstring tells how candidates are made, measured and chosen)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, NamedTuple

import jax

from ncfm_jax import data as data_lib
from ncfm_jax import execution
from ncfm_jax.errors import InputError
from ncfm_jax.plan.cache import PlanCache, code_hash, default_cache_path
from ncfm_jax.plan.pieces import (Footprint, abstract_inputs, compile_pieces, step_pieces,
                                  time_pieces)
from ncfm_jax.plan.spec import (GB, PLAN_FIELDS, Plan, StepSpec, block_ladder, budget_bytes,
                                capped_distill_config, make_spec, temp_factor)

FREQ_CHUNK = 512
"""Frequencies per NCFD block in the memory-frugal policies."""
ACCELERATOR_PASS_PIXELS = 1024 * 32 * 32
"""Pixels per bounded forward pass on GPU/TPU (1024 CIFAR-sized images)."""


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
    self.cache = PlanCache(default_cache_path() if cache_path is None else cache_path)
    self.log = log or (lambda _: None)
    self._evaluated: dict[Plan, Footprint] = {}
    self._compiled: dict[Plan, dict] = {}
    self._shared: dict[str, Any] = {}
    self._inputs = abstract_inputs(spec, self.config)
    self.temp_factor = temp_factor(self.backend)

  # ------------------------------------------------------------- candidates
  def ladder(self) -> list[int]:
    """Class blocks to try: `block_ladder` of C, or only the configured
    `distill.class_block`. The per-class update is blocks of one class; the batched
    update with the release's separate calibration or per-class frequency draws
    has no block step, so it keeps all classes (a budget that this does not fit
    is refused, naming what it needs)."""
    d, classes = self.config, self.spec.num_classes
    if execution.update_mode(d) == "per_class":
      return [1]
    if (d.get("calibration_mode", "folded") == "separate"
        or d.get("frequency_draw", "shared") == "per_class"):
      return [classes]
    if d.get("class_block"):
      return [execution.class_block_size(d, classes)]
    return block_ladder(classes)

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
    """The largest block (all classes; the per-class update: one), every pass all at
    once, frequencies unchunked (no planning)."""
    loop = execution.resolve_block_loop(self.config.get("block_loop"))
    return Plan(self.ladder()[0], loop, 0, 0, False, None)

  # ------------------------------------------------------------- evaluation
  def evaluate(self, plan: Plan, *, compile_: bool = False) -> Footprint:
    """The plan's `Footprint`, from the cache or compiled from abstract shapes (the
    executables are kept for timing until `choose` returns); `compile_`: compile
    even when cached."""
    if plan in self._evaluated and (plan in self._compiled or not compile_):
      return self._evaluated[plan]
    cached = self.cache.get(self.key(plan))
    if cached is not None and "planned_bytes" in cached and not compile_:
      footprint = Footprint(cached["planned_bytes"], cached["peak_piece"], cached["xla"],
                            cached["pieces"], cached["held"], 0.0)
      self._evaluated[plan] = footprint
      return footprint
    pieces = step_pieces(self.spec, self._inputs, self.config, plan)
    footprint, self._compiled[plan] = compile_pieces(pieces, self.temp_factor, self._shared)
    self._evaluated[plan] = footprint
    self.cache.update(self.key(plan), planned_bytes=footprint.planned_bytes,
                      peak_piece=footprint.peak_piece, xla=footprint.xla,
                      pieces=footprint.pieces, held=footprint.held)
    self.log(f"[plan] {plan.describe(self.spec.num_classes)}: "
             f"{footprint.planned_bytes / GB:.2f} GB "
             f"(compiled in {footprint.compile_seconds:.1f}s)")
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
    """The plan needing the fewest bytes: every policy at the smallest K (memory
    falls with K), the least of them. Not always the last policy's: one large pass
    of a class can need less than smaller recomputed ones."""
    plans = [policy(self.ladder()[-1]) for policy in self.policies()]
    footprints = [self.evaluate(plan) for plan in plans]
    least = min(range(len(plans)), key=lambda i: footprints[i].planned_bytes)
    return plans[least], footprints[least]

  # ---------------------------------------------------------------- timing
  def seconds_per_step(self, plan: Plan, *, stop_above: float | None = None) -> float:
    """Seconds per step of `plan` on random data (`pieces.time_pieces`; cached).

    `stop_above`: when the first call already puts the plan at over 3x this, stop
    and return that figure (not cached): a hopeless candidate costs one call.
    """
    key = self.key(plan)
    cached = self.cache.get(key) or {}
    if cached.get("seconds_per_step") is not None:
      return cached["seconds_per_step"]
    hopeless = 3 * stop_above if stop_above is not None else float("inf")
    if cached.get("one_call_seconds_per_step", 0) > hopeless:
      return cached["one_call_seconds_per_step"]  # already seen to be hopeless
    self.evaluate(plan, compile_=True)
    seconds = time_pieces(self._compiled.pop(plan), self.spec, self._inputs, self.config,
                          plan, hopeless=hopeless)
    described = plan.describe(self.spec.num_classes)
    if seconds > hopeless:
      self.cache.update(key, one_call_seconds_per_step=seconds)
      self.log(f"[plan] {described}: about {seconds:.3g} s/step from one call (timing "
               f"stopped: over 3x the best, {stop_above:.3g})")
      return seconds
    self.cache.update(key, seconds_per_step=seconds)
    self.log(f"[plan] {described}: {seconds:.3g} s/step (timed)")
    return seconds

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
  def key(self, plan: Plan) -> str:
    """The cache key of `plan`: backend, device kind, jax, code, shapes, the distill
    config without its plan and run-length keys."""
    device = jax.devices()[0]
    d = json.loads(self.config.to_json_best_effort())
    for field in ("steps", "checkpoint_every", "keep_checkpoints", "memory_budget_gb",
                  "plan_timing", *PLAN_FIELDS):
      d.pop(field, None)
    spec = self.spec._asdict()
    spec.pop("model")
    identity = {"backend": self.backend, "device": device.device_kind, "jax": jax.__version__,
                "temp_factor": self.temp_factor,
                "code": code_hash(), "spec": spec, "distill": d, "plan": plan._asdict()}
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
  choice = choose(spec, d, timed=bool(d.get("plan_timing", True)))
  print(choice.summary(), flush=True)
  return dict(choice.to_json(), dataset=shape._asdict())
