"""ncfm-jax: Neural Characteristic Function Matching (CVPR 2025) in JAX.

The public API for notebooks and other code; everything is a pure function::

  import ncfm_jax as ncfm
  t = ncfm.gaussian_frequencies(key, num_freqs=1024, dim=2048)
  loss = jax.jit(ncfm.ncfd)(real_feats, syn_feats, t, alpha=0.5, beta=0.5)

  config = ncfm.distill_config(ipc=2, num_freqs=256, update_mode="batched")
  step = ncfm.make_distill_step(model, config, mean, std, feature_dim).step
  state, metrics = jax.jit(step)(state, pool, real_batch)

The math lives in `ncfm_jax.ncfd` (import its other names with
``from ncfm_jax.ncfd import ...``: the package attribute ``ncfm_jax.ncfd`` is the
function), psi in `ncfm_jax.sampler`, the min-max step in `ncfm_jax.distill`.
The layout and design are in docs/design.md.
"""

from ncfm_jax.augment import normalize
from ncfm_jax.config_lib import distill_config
from ncfm_jax.data import load_dataset
from ncfm_jax.data import make_class_indexed
from ncfm_jax.data import sample_class_batches
from ncfm_jax.distill import DistillState
from ncfm_jax.distill import init_state
from ncfm_jax.distill import make_distill_step
from ncfm_jax.distill import Pool
from ncfm_jax.distill import stack_pool
from ncfm_jax.models import feature_dim
from ncfm_jax.models import get_model
from ncfm_jax.ncfd import class_mmd
from ncfm_jax.ncfd import class_ncfd
from ncfm_jax.ncfd import empirical_cf
from ncfm_jax.ncfd import gaussian_frequencies
from ncfm_jax.ncfd import mmd
from ncfm_jax.ncfd import ncfd
from ncfm_jax.ncfd import ncfd_terms
from ncfm_jax.sampler import init_sampler
from ncfm_jax.sampler import sample
from ncfm_jax.train import init_variables

__all__ = [
    "DistillState", "Pool", "class_mmd", "class_ncfd", "distill_config", "empirical_cf",
    "feature_dim", "gaussian_frequencies", "get_model", "init_sampler", "init_state",
    "init_variables", "load_dataset", "make_class_indexed", "make_distill_step", "mmd",
    "ncfd", "ncfd_terms", "normalize", "sample", "sample_class_batches", "stack_pool",
]
