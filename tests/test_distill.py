"""The min-max distillation step on tiny shapes (tests/_tiny.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _default_flags_worker
import _spawn
import _tiny
from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax import execution
from ncfm_jax import parameterize
from ncfm_jax import sampler as sampler_lib
from ncfm_jax import train as train_lib
from ncfm_jax.data import sampling

CLASSES, IPC, SIZE = _tiny.CLASSES, _tiny.IPC, _tiny.SIZE
MEAN, STD = _tiny.MEAN, _tiny.STD


def _config(**overrides):
  # psi at the release's learning rate unless a test asks for more.
  return _tiny.config(**{"psi_lr": config_lib.base_config().distill.psi_lr, **overrides})


def _setup(**overrides):
  config = _config(**overrides)
  tiny = _tiny.setup(config)
  return config, tiny.state, tiny.pool, tiny.data, tiny.step


def test_step_updates_images_in_range_and_jits_once():
  config, start, pool, data, step = _setup()
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  jitted = jax.jit(step.step)
  state = start
  for _ in range(3):
    state, metrics = jitted(state, pool, batch)
  assert jitted._cache_size() == 1  # no recompilation across calls
  assert int(state.step) == 3
  assert float(state.syn_images.min()) >= 0.0 and float(state.syn_images.max()) <= 1.0
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  # Adam moves a pixel with a nonzero gradient by about lr per step: most moved.
  moved = np.abs(np.asarray(state.syn_images) - np.asarray(start.syn_images)) > config.lr
  assert np.mean(moved) > 0.5, np.mean(moved)


def test_images_descend_the_match_loss_with_gaussian_frequencies():
  # Without psi, the loss of some images at the randomness of steps 0..3 (member,
  # blend, augmentation, frequencies) is a fixed objective: 6 steps on one real
  # batch must lower its mean.
  config, start, pool, data, step = _setup(sampler="gaussian", calibration_weight=0.0,
                                           lr=1e-2)
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  evaluate = jax.jit(step.evaluate)

  def mean_match(images):
    return np.mean([float(evaluate(start._replace(syn_images=images, step=jnp.int32(s)),
                                   pool, batch).match) for s in range(4)])

  state, jitted = start, jax.jit(step.step)
  for _ in range(6):
    state, _ = jitted(state, pool, batch)
  before, after = mean_match(start.syn_images), mean_match(state.syn_images)
  assert after < 0.9 * before, (before, after)


def test_psi_ascends_and_images_descend_the_same_loss():
  config, state, pool, data, step = _setup(psi_lr=0.05, lr=1e-3, calibration_weight=0.0)
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  evaluate = jax.jit(step.evaluate)
  for _ in range(3):
    before = float(evaluate(state, pool, batch)[0])
    new_state, _ = jax.jit(step.step)(state, pool, batch)
    # Same step (same randomness), one player moved at a time.
    psi_moved = state._replace(psi_params=new_state.psi_params)
    images_moved = state._replace(syn_images=new_state.syn_images)
    assert float(evaluate(psi_moved, pool, batch)[0]) > before
    assert float(evaluate(images_moved, pool, batch)[0]) < before
    state = new_state


@pytest.mark.parametrize("overrides", [dict(loss="mmd"), dict(sampler="gaussian")])
def test_variants_without_psi_leave_no_psi_state(overrides):
  config, state, pool, data, step = _setup(**overrides)
  assert state.psi_params == {}
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  new_state, metrics = jax.jit(step.step)(state, pool, batch)
  assert np.isfinite(float(metrics["loss"]))
  assert not np.allclose(new_state.syn_images, state.syn_images)


def test_scan_and_python_loop_agree():
  _, state, pool, data, step = _setup()
  scanned = execution.make_run_steps(step.step, _config(use_scan=True), 2).run
  looped = execution.make_run_steps(step.step, _config(use_scan=False), 2).run
  copy = lambda s: jax.tree.map(jnp.array, s)
  s_scan, m_scan = scanned(copy(state), pool, data)
  s_loop, m_loop = looped(copy(state), pool, data)
  np.testing.assert_allclose(m_scan["loss"], m_loop["loss"], rtol=1e-4)
  np.testing.assert_allclose(s_scan.syn_images, s_loop.syn_images, atol=1e-5)


@pytest.mark.parametrize("chunks", [dict(real_chunk=1), dict(real_chunk=4),
                                    dict(syn_chunk=2, remat_syn=True)])
def test_chunked_forward_passes_match_one_batch(chunks):
  _, state, pool, data, step = _setup(real_chunk=0, syn_chunk=0)
  _, _, _, _, chunked_step = _setup(**chunks)
  batch = sampling.sample_class_batches(jax.random.PRNGKey(3), data, 8)
  reference, reference_metrics = jax.jit(step.step)(state, pool, batch)
  _, state, _, _, _ = _setup()  # the step donates nothing here, but start afresh
  chunked, chunked_metrics = jax.jit(chunked_step.step)(state, pool, batch)
  np.testing.assert_allclose(chunked_metrics["loss"], reference_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(chunked.syn_images, reference.syn_images, atol=1e-6)


def test_mmd_is_dms_loss_on_raw_features_without_the_scale():
  # One member whose init and trained weights coincide: the blend is that network.
  config = _config(loss="mmd", augment="none", factor=1, calibration_weight=0.0)
  model = _tiny.tiny_model()
  variables = train_lib.init_variables(jax.random.PRNGKey(4), model,
                                       jnp.zeros((1, SIZE, SIZE, 1)))
  pool = distill.stack_pool([(variables, variables)])
  feature_dim = model.apply(variables, jnp.zeros((1, SIZE, SIZE, 1)))[0].shape[-1]
  syn = jax.random.uniform(jax.random.PRNGKey(7), (CLASSES, IPC, SIZE, SIZE, 1))
  state = distill.init_state(jax.random.PRNGKey(0), syn, feature_dim, config)
  real = jax.random.randint(jax.random.PRNGKey(8), (CLASSES, 8, SIZE, SIZE, 1), 0, 256
                            ).astype(jnp.uint8)
  step = distill.make_distill_step(model, config, MEAN, STD, feature_dim)
  match = jax.jit(step.evaluate)(state, pool, real).match

  def mean_features(images):
    x = (np.asarray(images, np.float32) - MEAN[0]) / STD[0]
    return np.asarray(model.apply(variables, x)[0], np.float64).mean(axis=0)
  want = sum(np.sum((mean_features(np.asarray(real[c]) / 255.0) - mean_features(syn[c]))**2)
             for c in range(CLASSES))
  assert float(match) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("block_loop", ["scan", "host"])
@pytest.mark.parametrize("overrides", [dict(), dict(loss="mmd"), dict(sampler="gaussian")])
def test_class_blocks_give_the_all_classes_step(block_loop, overrides):
  _, state, pool, data, step = _setup(**overrides)
  copy = lambda s: jax.tree.map(jnp.array, s)
  batched = execution.make_run_steps(step, _config(use_scan=False, **overrides), 2).run
  blocked = execution.make_run_steps(
      step, _config(use_scan=False, class_block=1, block_loop=block_loop, **overrides), 2).run
  want, want_metrics = batched(copy(state), pool, data)
  got, got_metrics = blocked(copy(state), pool, data)
  np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(got_metrics["calibration"], want_metrics["calibration"],
                             rtol=1e-5)
  np.testing.assert_allclose(got.syn_images, want.syn_images, atol=1e-6)
  assert not np.allclose(got.syn_images, state.syn_images)
  for a, b, before in zip(jax.tree.leaves(got.psi_params), jax.tree.leaves(want.psi_params),
                          jax.tree.leaves(state.psi_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  if state.psi_params:
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(got.psi_params),
                                                     jax.tree.leaves(state.psi_params)))


@pytest.mark.parametrize("sampler", ["psi", "gaussian"])
def test_a_block_differentiates_the_frequencies_only_for_psi(sampler):
  config, state, pool, data, step = _setup(sampler=sampler)
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  draws = jax.jit(step.blocks.begin)(state, pool)
  grads = jax.jit(step.blocks.block_gradients, static_argnums=4)(
      state.syn_images, batch[:1], draws, jnp.int32(0), 1)
  want = draws.t.shape if sampler == "psi" else (0, draws.t.shape[1])
  assert grads.t.shape == want
  assert jax.eval_shape(step.blocks.zeros, state.syn_images, draws).t.shape == want
  if sampler == "psi":
    assert float(jnp.abs(grads.t).max()) > 0


def test_psi_free_plateau_monitor_ignores_psi_and_none_keeps_the_lr():
  config, state, pool, data, step = _setup(plateau_monitor="fixed_ncfd")
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  evaluate = jax.jit(step.evaluate)
  terms = evaluate(state, pool, batch)
  moved_psi = state._replace(psi_params=jax.tree.map(lambda x: x + 0.5, state.psi_params))
  moved_terms = evaluate(moved_psi, pool, batch)
  assert float(moved_terms.match) != pytest.approx(float(terms.match), rel=1e-4)
  assert float(moved_terms.monitor) == pytest.approx(float(terms.monitor), rel=1e-6)
  assert float(terms.monitor) > 0 and float(terms.monitor) != float(terms.match)
  moved_images = state._replace(syn_images=jnp.clip(state.syn_images + 0.3, 0, 1))
  assert float(evaluate(moved_images, pool, batch).monitor) != float(terms.monitor)

  _, state, pool, data, step = _setup(plateau_monitor="none", plateau_patience=1)
  run = execution.make_run_steps(step, _config(plateau_monitor="none", plateau_patience=1,
                                               use_scan=False), 6).run
  _, metrics = run(state, pool, data)
  np.testing.assert_array_equal(metrics["lr_scale"], 1.0)
  _, state, pool, data, step = _setup(plateau_patience=1)
  _, metrics = execution.make_run_steps(step, _config(plateau_patience=1, use_scan=False),
                                        6).run(state, pool, data)
  assert float(np.min(metrics["lr_scale"])) < 1.0  # the default does reduce


@pytest.mark.parametrize("overrides", [dict(calibration_mode="separate"),
                                       dict(frequency_draw="per_class")])
def test_release_behaviours_run_and_differ_from_the_defaults(overrides):
  config, state, pool, data, step = _setup()
  _, _, _, _, variant = _setup(**overrides)
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), data, config.batch_real)
  want, want_metrics = jax.jit(step.step)(state, pool, batch)
  got, got_metrics = jax.jit(variant.step)(state, pool, batch)
  assert np.isfinite(float(got_metrics["loss"])) and np.isfinite(
      float(got_metrics["calibration"]))
  assert not np.allclose(got.syn_images, want.syn_images)
  if "frequency_draw" in overrides:  # other frequencies per class, same calibration
    assert float(got_metrics["loss"]) != pytest.approx(float(want_metrics["loss"]), rel=1e-4)
    assert float(got_metrics["calibration"]) == pytest.approx(
        float(want_metrics["calibration"]), rel=1e-5)
  else:  # the match loss is the same; the calibration has its own draw and update
    assert float(got_metrics["loss"]) == pytest.approx(float(want_metrics["loss"]), rel=1e-5)
    assert float(got_metrics["calibration"]) != pytest.approx(
        float(want_metrics["calibration"]), rel=1e-4)


def _hand_calibration(model, variables, syn_images, factor, labels=None):
  """sum_c mean_i CE(logits of decoded image i of class c, labels[c]) in float64,
  without augmentation; labels: one per class (default: c)."""
  classes, ipc = syn_images.shape[:2]
  labels = np.arange(classes) if labels is None else np.asarray(labels)
  decoded = parameterize.decode(syn_images.reshape((classes * ipc,) + syn_images.shape[2:]),
                                factor)
  x = (np.asarray(decoded) - MEAN[0]) / STD[0]
  logits = np.asarray(model.apply(variables, x)[1], np.float64).reshape(classes, -1, CLASSES)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.sum(np.exp(logits - top), -1, keepdims=True))
  ce = -np.take_along_axis(log_probs, labels[:, None, None], axis=-1)[..., 0]
  return float(np.sum(np.mean(ce, axis=1)))


def test_calibration_is_the_trained_members_cross_entropy_on_class_labels():
  config = _config(augment="none", calibration_weight=1.0)
  tiny = _tiny.setup(config)
  init, trained = tiny.members[0]
  pool = distill.stack_pool([(init, trained)])  # one member: no draw of which
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), tiny.data, config.batch_real)
  calibration = float(jax.jit(tiny.step.evaluate)(tiny.state, pool, batch).calibration)
  syn = tiny.state.syn_images
  want = _hand_calibration(tiny.model, trained, syn, config.factor)
  assert calibration == pytest.approx(want, rel=1e-4)
  # Far from the other candidates: the init weights, a blend, other labels.
  blend = jax.tree.map(lambda i, t: 0.5 * i + 0.5 * t, init, trained)
  for variables, labels in ((init, None), (blend, None), (trained, [0] * CLASSES),
                            (trained, np.arange(CLASSES)[::-1])):
    other = _hand_calibration(tiny.model, variables, syn, config.factor, labels)
    assert abs(other - want) > 1e-3 * want, (labels, other, want)


def test_real_and_synthetic_images_of_a_class_share_one_augmentation_draw():
  # The synthetic set is the real batch itself (factor 1, ipc = batch_real): with ONE
  # augmentation draw per class for both sides the two feature sets coincide and the
  # match loss sits at the NCFD's floor (300 * 4 classes * sqrt(1e-12) = 1.2e-3).
  config = _config(factor=1, ipc=8, calibration_weight=0.0)
  assert config.augment == "color_crop_cutout"
  tiny = _tiny.setup(config)
  evaluate = jax.jit(tiny.step.evaluate)
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), tiny.data, config.batch_real)
  state = distill.init_state(jax.random.PRNGKey(0), batch.astype(jnp.float32) / 255.0,
                             tiny.feature_dim, config)
  for s in range(4):  # four steps' draws
    match = float(evaluate(state._replace(step=jnp.int32(s)), tiny.pool, batch).match)
    assert match < 0.05, (s, match)
  # Not vacuous: a 3-pixel shift of the synthetic images (what a crop draw does to
  # one side only) is far above that.
  shifted = state._replace(syn_images=jnp.roll(state.syn_images, 3, axis=3))
  assert float(evaluate(shifted, tiny.pool, batch).match) > 1.0


def test_blend_pairs_init_and_trained_weights_of_the_same_member():
  # Members whose init and trained weights are equal: any blend of a member's own
  # pair is that member, so the 2-member pool gives the loss of one of the two
  # single-member pools (same step key: same b, augmentation and frequencies).
  config = _config(calibration_weight=0.0)
  tiny = _tiny.setup(config)
  a, b = tiny.members[0][1], tiny.members[1][1]
  batch = sampling.sample_class_batches(jax.random.PRNGKey(1), tiny.data, config.batch_real)
  evaluate = jax.jit(tiny.step.evaluate)
  pools = {name: distill.stack_pool(members) for name, members in (
      ("a", [(a, a)]), ("b", [(b, b)]), ("paired", [(a, a), (b, b)]),
      ("crossed", [(a, b), (b, a)]))}  # init and trained swapped across the members
  for s in range(3):  # three draws of member and b
    state = tiny.state._replace(step=jnp.int32(s))
    match = {name: float(evaluate(state, pool, batch).match) for name, pool in pools.items()}
    scale = match["a"]
    assert abs(match["a"] - match["b"]) > 1e-4 * scale, match
    assert min(abs(match["paired"] - match["a"]),
               abs(match["paired"] - match["b"])) <= 1e-6 * scale, match
    # A blend of a and b is neither (float32 noise of the loss: about 1e-7 * scale).
    assert min(abs(match["crossed"] - match["a"]),
               abs(match["crossed"] - match["b"])) > 1e-5 * scale, match


# ---------------------------------------------------------------- the per-class update


def _reference_per_class(cfg, tiny, num_steps: int):
  """The release's iteration (condenser/compute_loss.py:33-137, Condenser.py:256-342
  @2d7cdafb) as a plain loop of optax calls: clamp once; per class its loss, its
  gradient and one update of the WHOLE tensor (zeros elsewhere) with one optimizer,
  psi ascending on the same loss; then per class the calibration updates; the
  plateau sees the iteration's mean loss per class. Only the losses come from
  `distill` (its `real_features`, `class_terms`, `calibration_loss`)."""
  ctx = distill.StepContext(tiny.model, cfg, MEAN, STD, tiny.feature_dim)
  adam = optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
  plateau = optax.contrib.reduce_on_plateau(factor=cfg.plateau_factor,
                                            patience=cfg.plateau_patience)
  psi_tx = optax.sgd(cfg.psi_lr, momentum=cfg.psi_momentum)
  state = tiny.state
  images, psi = state.syn_images, state.psi_params
  adam_state, plateau_state, psi_state = adam.init(images), plateau.init(images), psi_tx.init(psi)
  psi_on = bool(psi)

  @jax.jit
  def class_grad(syn_class, psi, real_class, draws, c, k_freq):
    real_feats = distill.real_features(ctx, draws.blended, real_class, draws.aug_keys[c][None])

    def loss(syn_class, psi):
      t = (sampler_lib.sample(psi, state.psi_batch_stats, k_freq, num_freqs=cfg.num_freqs,
                              dim=tiny.feature_dim, **distill.psi_settings(cfg))
           if psi_on else draws.t)
      return distill.class_terms(ctx, syn_class, t, real_feats, draws,
                                 draws.aug_keys[c][None], c[None]).match
    return jax.value_and_grad(loss, argnums=(0, 1))(syn_class, psi)

  @jax.jit
  def calibration_grad(syn_class, trained, key, c):
    return jax.value_and_grad(distill.calibration_loss, argnums=1)(
        ctx, syn_class, trained, key, c[None])

  def update(images, adam_state, grads):
    updates, adam_state = adam.update(grads, adam_state, images)
    return images + plateau_state.scale * updates, adam_state

  classes = images.shape[0]
  for s in range(num_steps):
    images = jnp.clip(images, 0.0, 1.0)
    keys = execution.step_keys(state.key, jnp.int32(s))
    draws = distill.step_draws(ctx, state._replace(syn_images=images, psi_params=psi,
                                                   step=jnp.int32(s)), tiny.pool)
    real = sampling.sample_class_batches(keys.sample, tiny.data, cfg.batch_real)
    match_total = calibration_total = 0.0
    for c in range(classes):
      loss, (g, g_psi) = class_grad(images[c:c + 1], psi, real[c:c + 1], draws,
                                    jnp.int32(c), keys.frequencies)
      images, adam_state = update(images, adam_state, jnp.zeros_like(images).at[c].set(g[0]))
      if psi_on:
        psi_updates, psi_state = psi_tx.update(jax.tree.map(jnp.negative, g_psi), psi_state,
                                               psi)
        psi = optax.apply_updates(psi, psi_updates)
      match_total += loss
    for r in range(cfg.calibration_iters):
      for c in range(classes):
        key = jax.random.fold_in(keys.calibration, r * classes + c)
        loss, g = calibration_grad(images[c:c + 1], draws.trained, key, jnp.int32(c))
        grads = jnp.zeros_like(images).at[c].set(cfg.calibration_weight * g[0])
        images, adam_state = update(images, adam_state, grads)
        calibration_total += loss
    mean_loss = (match_total + cfg.calibration_weight * calibration_total) / classes
    _, plateau_state = plateau.update(jnp.zeros(()), plateau_state, value=mean_loss)
  return images, psi


@pytest.mark.parametrize("overrides, loops", [
    (dict(sampler="psi", calibration_iters=1), ("host", "scan")),
    (dict(sampler="gaussian", calibration_iters=2, plateau_patience=1), ("host",)),
])
def test_per_class_update_is_the_releases_loop(overrides, loops):
  cfg = _config(update_mode="per_class", calibration_mode="separate", psi_lr=0.05,
                **overrides)
  tiny = _tiny.setup(cfg)
  copy = lambda s: jax.tree.map(jnp.array, s)
  want_images, want_psi = _reference_per_class(cfg, tiny, 3)
  for loop in loops:  # a host loop of jitted pieces (CPU), one jitted lax.scan (GPU/TPU)
    run = execution.make_run_steps(tiny.step, _config(**dict(cfg, block_loop=loop)), 3).run
    got, metrics = run(copy(tiny.state), tiny.pool, tiny.data)
    np.testing.assert_allclose(got.syn_images, want_images, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got.psi_params), jax.tree.leaves(want_psi)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert int(got.step) == 3 and metrics["loss"].shape == (3,)
  if cfg.sampler == "psi":  # psi moved, one ascent step per class
    assert not np.allclose(_tiny.flat_psi(got), _tiny.flat_psi(tiny.state))
  else:  # the batched update is another trajectory
    batched_cfg = _config(**dict(cfg, update_mode="batched"))
    batched = execution.make_run_steps(_tiny.setup(batched_cfg).step, batched_cfg, 3).run
    other, _ = batched(copy(tiny.state), tiny.pool, tiny.data)
    assert np.max(np.abs(np.asarray(other.syn_images) - want_images)) > 1e-3


def test_per_class_update_moves_every_class_at_every_class_step():
  # With Adam, class 0's pixels keep moving through the first moment while the
  # other classes take their steps: after one iteration they moved more than one
  # Adam step (about lr) would move them.
  cfg = _config(update_mode="per_class", calibration_weight=0.0, sampler="gaussian", lr=1e-2,
                augment="none")
  tiny = _tiny.setup(cfg)
  run = execution.make_run_steps(tiny.step, cfg, 1).run
  got, _ = run(jax.tree.map(jnp.array, tiny.state), tiny.pool, tiny.data)
  moved = np.abs(np.asarray(got.syn_images) - np.asarray(jnp.clip(tiny.state.syn_images, 0, 1)))
  assert np.median(moved[0]) > 2 * cfg.lr, np.median(moved[0])


# ---------------------------------------------------------------- before / after


_GOLDEN = os.path.join(os.path.dirname(__file__), "data", "batched_step_golden.npz")


def _recorded_here(recorded: dict) -> bool:
  """The golden file was written with this jax on this CPU model (XLA:CPU's kernels,
  hence the last bits of float sums, depend on both)."""
  cpu = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  return recorded["jax"] == jax.__version__ and recorded["cpu"] == cpu


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
  """The recorded variants run now, compiled with XLA's default flags as recorded."""
  return _spawn.default_flags_results("golden", tmp_path_factory)


@pytest.mark.parametrize("case", sorted(_default_flags_worker.GOLDEN_CASES))
def test_the_batched_step_is_what_it_was_before_it_became_module_functions(golden_run, case):
  """tests/data/batched_step_golden.npz: the images after 3 steps of the batched step's
  variants, recorded with the closure-factory distill.py (commit 2d73e23). Bitwise
  equal where recorded (same jax, same CPU model), within 1e-6 elsewhere."""
  golden = np.load(_GOLDEN)
  recorded = json.loads(str(golden["recorded"]))
  got, want = golden_run[f"{case}_images"], golden[f"{case}_images"]
  if _recorded_here(recorded):
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_per_class_update_on_the_host_runs_class_pieces():
  """block_loop="host" (CPU's default) runs `execution.make_host_class_step`, one jitted
  piece per class update, not the classes' `lax.scan`."""
  cfg = _config(update_mode="per_class", block_loop="host")
  tiny = _tiny.setup(cfg)
  with pytest.raises(ValueError, match="from the host"):
    execution.make_run_steps(tiny.step, cfg, 1).jitted(tiny.state, tiny.data)
  scanned = execution.make_run_steps(tiny.step, _config(**dict(cfg, block_loop="scan")), 1)
  assert callable(scanned.jitted(tiny.state, tiny.data))
