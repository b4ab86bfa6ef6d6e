"""The memory planner: how one distillation step runs within a memory budget.

Modules: `spec` (what a plan is, the step's shapes, the budget), `pieces` (the
step's jitted pieces from abstract shapes: compile-time memory, timing), `planner`
(candidates and the choice; `--mode=plan`), `cache` (analyses and timings on disk).

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
a JSON file (`cache.PlanCache`), so a second run plans without compiling. Explicit
`class_block`, `real_chunk`, `syn_chunk` (with `remat_syn`), `freq_chunk` and
`block_loop` settings are kept; the planner only fills in the others.
"""

from ncfm_jax.plan.cache import default_cache_path
from ncfm_jax.plan.pieces import Footprint
from ncfm_jax.plan.pieces import random_like
from ncfm_jax.plan.planner import ACCELERATOR_PASS_PIXELS
from ncfm_jax.plan.planner import FREQ_CHUNK
from ncfm_jax.plan.planner import PlanChoice
from ncfm_jax.plan.planner import Planner
from ncfm_jax.plan.planner import choose
from ncfm_jax.plan.planner import plan_from_registry
from ncfm_jax.plan.spec import GB
from ncfm_jax.plan.spec import Plan
from ncfm_jax.plan.spec import StepSpec
from ncfm_jax.plan.spec import block_ladder
from ncfm_jax.plan.spec import budget_bytes
from ncfm_jax.plan.spec import capped_distill_config
from ncfm_jax.plan.spec import default_budget_bytes
from ncfm_jax.plan.spec import make_spec
from ncfm_jax.plan.spec import temp_factor

__all__ = [
    "ACCELERATOR_PASS_PIXELS",
    "FREQ_CHUNK",
    "Footprint",
    "GB",
    "Plan",
    "PlanChoice",
    "Planner",
    "StepSpec",
    "block_ladder",
    "budget_bytes",
    "capped_distill_config",
    "choose",
    "default_budget_bytes",
    "default_cache_path",
    "make_spec",
    "plan_from_registry",
    "random_like",
    "temp_factor",
]
