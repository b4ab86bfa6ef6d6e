"""The memory planner on tiny shapes: budgets honoured, the planned step equals the
unbounded one, explicit settings kept, the cache, and --mode=plan without data."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncfm_jax import config_lib
from ncfm_jax import distill
from ncfm_jax import execution
from ncfm_jax import pipeline
from ncfm_jax import plan as plan_lib
from ncfm_jax import train as train_lib
from ncfm_jax.bench import common
from ncfm_jax.data import sampling
from ncfm_jax.data import sources
from ncfm_jax.errors import InputError

CLASSES, SIZE, PER_CLASS = 4, 16, 20


def _config(**distill_overrides):
  config = config_lib.base_config()
  config.model.width, config.model.depth = 8, 2
  config.pretrain.num_models = 2
  d = config.distill
  d.ipc, d.factor, d.batch_real, d.num_freqs, d.steps_per_call = 2, 2, 8, 64, 1
  d.augment = "none"  # a smaller program to compile (blocks with DSA: test_distill)
  # The batched update's class blocks (the per-class update: its own tests).
  d.update_mode, d.calibration_mode = "batched", "folded"
  for key, value in distill_overrides.items():
    d[key] = value
  return config


def _spec(config):
  return plan_lib.make_spec(config, num_classes=CLASSES, image_shape=(SIZE, SIZE, 1),
                            train_images=CLASSES * PER_CLASS, largest_class=PER_CLASS,
                            mean=(0.5,), std=(0.25,))


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
  config = _config()
  cache = str(tmp_path_factory.mktemp("cache") / "plans.json")
  return plan_lib.Planner(_spec(config), config.distill, cache_path=cache, log=None)


def test_the_ladder_halves_through_divisors(planner):
  assert planner.ladder() == [4, 2, 1]
  assert plan_lib.block_ladder(100) == [100, 50, 25, 10, 5, 2, 1]
  assert plan_lib.block_ladder(200) == [200, 100, 50, 25, 10, 5, 2, 1]
  assert plan_lib.block_ladder(7) == [7, 1]


def test_a_small_budget_is_honoured_and_its_step_equals_the_unbounded_step(planner):
  unbounded = planner.evaluate(planner.unbounded()).planned_bytes
  budget = int(0.6 * unbounded)
  choice = planner.choose(budget, timed=False)
  assert choice.footprint.planned_bytes <= budget
  assert choice.plan.class_block < CLASSES  # only blocks fit
  assert choice.to_json()["planned_gb"] <= budget / plan_lib.GB
  assert set(choice.to_json()["xla"]) == {"temp_bytes", "argument_bytes", "output_bytes",
                                          "alias_bytes"}
  # The host loop holds the state, the pool and the training set across its pieces:
  # what a piece does not take as an argument is added to its own bytes.
  inputs = planner._inputs  # pylint: disable=protected-access
  nbytes = lambda *trees: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trees))
  held = choice.footprint.held
  assert held["finish"] == nbytes(inputs.pool, inputs.source)
  assert held["begin"] == nbytes(inputs.source)
  assert held["block_gradients"] == nbytes(inputs.state, inputs.pool) - nbytes(
      inputs.state.syn_images, inputs.state.key, inputs.state.step)
  assert choice.footprint.planned_bytes == max(choice.footprint.pieces.values())
  peak = choice.footprint.xla
  assert choice.footprint.planned_bytes == (
      held[choice.footprint.peak_piece] + peak["argument_bytes"]
      + planner.temp_factor * peak["temp_bytes"] + peak["output_bytes"] - peak["alias_bytes"])

  # One step of the chosen plan == one unbounded step (float32 summation order only).
  spec, d = planner.spec, planner.config
  example = jnp.zeros((1, SIZE, SIZE, 1))
  pool = distill.stack_pool([(train_lib.init_variables(jax.random.PRNGKey(2 * i), spec.model,
                                                       example),
                              train_lib.init_variables(jax.random.PRNGKey(2 * i + 1),
                                                       spec.model, example))
                             for i in range(spec.pool_size)])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (CLASSES * PER_CLASS, SIZE, SIZE, 1), dtype=np.uint8)
  data = sampling.make_class_indexed(images, np.repeat(np.arange(CLASSES), PER_CLASS), CLASSES)
  syn = jax.random.uniform(jax.random.PRNGKey(7), (CLASSES, d.ipc, SIZE, SIZE, 1))

  def one_step(plan):
    config = plan.apply(d, CLASSES)
    step = distill.make_distill_step(spec.model, config, spec.mean, spec.std,
                                     spec.feature_dim)
    state = distill.init_state(jax.random.PRNGKey(0), jnp.array(syn), spec.feature_dim,
                               config)  # a copy: the step donates the state
    return execution.make_run_steps(step, config, 1).run(state, pool, data)

  want, want_metrics = one_step(planner.unbounded())
  got, got_metrics = one_step(choice.plan)
  np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(got.syn_images, want.syn_images, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got.psi_params), jax.tree.leaves(want.psi_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_budget_no_plan_fits_is_one_input_error_naming_the_smallest_need(planner):
  with pytest.raises(InputError, match=r"fits no plan .* the smallest \(blocks of 1/4 "
                                       r"classes .*\) needs [0-9.e-]+ GB") as err:
    planner.choose(1000)
  assert "\n" not in str(err.value)



def test_the_smallest_need_named_is_the_least_of_the_policies(planner, monkeypatch):
  # Two policies whose last (recomputed passes) needs more than the first.
  frugal = lambda k: plan_lib.Plan(k, "host", 2, 0, False, None)
  recomputed = lambda k: plan_lib.Plan(k, "host", 2, 1, True, None)
  monkeypatch.setattr(planner, "policies", lambda: [frugal, recomputed])
  bytes_of = lambda plan: plan_lib.GB * (1 if plan.remat_syn is False else 2)
  monkeypatch.setattr(planner, "evaluate", lambda plan, **_: plan_lib.Footprint(
      bytes_of(plan), "step", {}, {}, {}, 0.0))
  with pytest.raises(InputError, match=r"needs 1 GB") as err:
    planner.choose(plan_lib.GB // 2, timed=False)
  assert frugal(1).describe(4) in str(err.value)

def test_a_host_plan_is_timed_once_and_the_time_cached(planner):
  # Before the next test: its timed choice drops the executables compiled so far.
  plan = planner.policies()[0](2)
  seconds = planner.seconds_per_step(plan)
  assert 0 < seconds < 60
  again = plan_lib.Planner(planner.spec, planner.config, cache_path=planner.cache.path,
                           log=None)
  assert again.seconds_per_step(plan) == seconds


def test_the_fastest_fitting_candidate_wins_and_a_second_planner_reads_the_cache(
    planner, monkeypatch):
  budget = planner.evaluate(planner.unbounded()).planned_bytes * 10
  fast = planner.candidates(budget)[0]
  slow_first = planner.policies()[0](1)
  monkeypatch.setattr(planner, "candidates", lambda b: [fast, slow_first])
  times = {fast: 2.0, slow_first: 1.0}
  monkeypatch.setattr(planner, "seconds_per_step", lambda plan, stop_above=None: times[plan])
  assert planner.choose(budget).plan == slow_first  # measured, not assumed
  assert planner.choose(budget, timed=False).plan == fast  # untimed: the first tried

  lines = []
  again = plan_lib.Planner(planner.spec, planner.config, cache_path=planner.cache.path,
                           log=lines.append)
  assert again.evaluate(fast) == planner.evaluate(fast)._replace(compile_seconds=0.0)
  assert not lines  # nothing compiled


def test_explicit_settings_are_kept():
  config = _config(class_block=2, real_chunk=4, syn_chunk=2, remat_syn=True, freq_chunk=32)
  planner = plan_lib.Planner(_spec(config), config.distill, cache_path="", log=None)
  assert planner.ladder() == [2]
  for policy in planner.policies():
    plan = policy(2)
    assert (plan.class_block, plan.real_chunk, plan.syn_chunk, plan.remat_syn,
            plan.freq_chunk) == (2, 4, 2, True, 32)


def test_pass_policies_per_backend_go_from_fast_to_frugal():
  config = _config(batch_real=64, ipc=10, num_freqs=4096)
  spec = plan_lib.make_spec(config, num_classes=CLASSES, image_shape=(32, 32, 3),
                            train_images=CLASSES * 80, largest_class=80)
  planner = plan_lib.Planner(spec, config.distill, cache_path="", log=None)
  planner.backend = "cpu"  # 4 classes x 64 real, x 40 synthetic CIFAR-sized images
  fast, frugal = (policy(4) for policy in planner.policies())
  assert (fast.real_chunk, fast.syn_chunk, fast.remat_syn, fast.freq_chunk) == (
      32, 20, False, None)  # passes of 128 and 80 images
  assert (frugal.syn_chunk, frugal.remat_syn, frugal.freq_chunk) == (
      20, True, plan_lib.FREQ_CHUNK)
  planner.backend = "gpu"
  whole, passes, recomputed = (policy(4) for policy in planner.policies())
  assert (whole.real_chunk, whole.syn_chunk, whole.freq_chunk) == (0, 0, None)
  assert (passes.syn_chunk, passes.remat_syn, passes.freq_chunk) == (0, False,
                                                                    plan_lib.FREQ_CHUNK)
  assert not recomputed.remat_syn  # 160 images fit one accelerator pass: none to recompute
  assert whole.class_block == passes.class_block == recomputed.class_block == 4


def test_temporaries_count_twice_on_cpu_under_tcmalloc(monkeypatch):
  monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
  assert plan_lib.temp_factor("cpu") == 2 and plan_lib.temp_factor("gpu") == 1
  monkeypatch.setenv("LD_PRELOAD", "")
  assert plan_lib.temp_factor("cpu") == 1


def test_mode_plan_writes_plan_json_from_the_registry_without_loading_data(
    tmp_path, monkeypatch):
  config = _fashion_tiny()
  config.distill.batch_real = 1024  # capped at the 200 images of a class
  config.distill.memory_budget_gb = 0.5
  monkeypatch.setattr(pipeline.data_lib, "load_dataset", _must_not_run)
  monkeypatch.setenv("NCFM_PLAN_CACHE", "")
  result = pipeline.run(config, str(tmp_path), mode="plan")
  written = json.loads((tmp_path / "plan.json").read_text())
  assert written == json.loads(json.dumps(result))
  assert written["budget_gb"] == 0.5 and written["planned_gb"] <= 0.5
  assert written["batch_real"] == 200 and written["backend"] == jax.default_backend()
  assert set(written["plan"]) == {"class_block", "block_loop", "real_chunk", "syn_chunk",
                                  "remat_syn", "freq_chunk"}
  assert written["xla"]["argument_bytes"] > 3 * 200 * 28 * 28  # the training set on device


def _fashion_tiny():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "fashion_mnist_config", pipeline.__file__.rsplit("/ncfm_jax/", 1)[0]
      + "/configs/fashion_mnist.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def _must_not_run(*args, **kwargs):
  raise AssertionError("called where nothing may run")


def test_the_registry_and_a_folder_listing_give_the_shapes(tmp_path):
  shape = sources.dataset_shape({"name": "cifar100"})
  assert (shape.num_classes, shape.image_shape, shape.smallest_class, shape.train_images) == (
      100, (32, 32, 3), 500, 50000)
  tiny = sources.dataset_shape({"name": "tiny_imagenet", "image_size": 64,
                                "classes": [0, 5], "max_train_per_class": 100})
  assert (tiny.num_classes, tiny.image_shape, tiny.train_images, tiny.smallest_class) == (
      2, (64, 64, 3), 200, 100)
  assert sources.dataset_shape({"name": "imagewoof"}).num_classes == 10
  for split, counts in (("train", (3, 5)), ("test", (1, 1))):
    for name, count in zip(("ant", "bee"), counts):
      (tmp_path / split / name).mkdir(parents=True)
      for i in range(count):
        (tmp_path / split / name / f"{i}.png").write_bytes(b"not decoded")
  folder = sources.dataset_shape({"name": "bugs", "data_dir": str(tmp_path),
                                  "image_size": 24})
  assert (folder.num_classes, folder.image_shape, folder.train_images,
          folder.smallest_class, folder.largest_class) == (2, (24, 24, 3), 8, 3, 5)
  with pytest.raises(InputError, match="registry does not describe"):
    sources.dataset_shape({"name": "bugs"})


def test_a_run_whose_budget_fits_no_plan_stops_before_any_work(tmp_path, monkeypatch):
  if not (pathlib.Path("/usr/share/datasets/fashion-mnist")).is_dir():
    pytest.skip("Fashion-MNIST IDX files missing (apt-get install dataset-fashion-mnist)")

  def no_plan_fits(*args, **kwargs):
    raise InputError("distill.memory_budget_gb=1e-06 fits no plan for this step")
  monkeypatch.setattr(pipeline.plan_lib, "choose", no_plan_fits)
  monkeypatch.setattr(pipeline.Run, "pretrain", _must_not_run)
  workdir = tmp_path / "run"
  with pytest.raises(InputError, match="fits no plan"):
    pipeline.run(_fashion_tiny(), str(workdir), mode="all")
  assert not workdir.exists() or not any(workdir.iterdir())


def test_random_training_set_holds_only_its_bytes():
  """The timing's stand-in training set: Tiny ImageNet's 1.2e9 uint8 drawn with
  jax.random.bits held over 22 GB on CPU (killed by the OOM killer)."""
  size = 200_000_000
  plan_lib.random_like(jax.ShapeDtypeStruct((8,), jnp.uint8), jax.random.PRNGKey(1))  # warm-up
  with common.RssWindow() as window:
    data = jax.block_until_ready(
        plan_lib.random_like(jax.ShapeDtypeStruct((size,), jnp.uint8), jax.random.PRNGKey(0)))
  if not window.exact:
    pytest.skip("peak RSS cannot be reset here")
  assert data.dtype == jnp.uint8 and data.shape == (size,)
  assert window.increase_bytes < 4 * size, window.increase_bytes / size


def test_the_per_class_update_is_planned_as_blocks_of_one_class(tmp_path):
  config = _config(update_mode="per_class", calibration_mode="separate")
  planner = plan_lib.Planner(_spec(config), config.distill, cache_path="", log=None)
  assert planner.ladder() == [1]
  choice = planner.choose(2**40, timed=False)
  assert choice.plan.class_block == 1
  assert set(choice.footprint.pieces) == {"begin", "update", "calibrate", "finish"}
  # The pool is not an argument of an update: the host holds it meanwhile.
  inputs = planner._inputs  # pylint: disable=protected-access
  nbytes = lambda *trees: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trees))
  assert choice.footprint.held["update"] == nbytes(inputs.pool)
  assert planner.seconds_per_step(choice.plan) > 0  # the host loop's pieces time


@pytest.mark.parametrize("overrides", [dict(calibration_mode="separate"),
                                       dict(frequency_draw="per_class")])
def test_batched_steps_without_a_block_step_keep_all_classes(overrides):
  """The batched update with the release's separate calibration or per-class
  frequencies has no class-block step: the planner keeps all classes, and a budget
  only blocks would fit is refused naming what the plan needs."""
  config = _config(**overrides)
  planner = plan_lib.Planner(_spec(config), config.distill, cache_path="", log=None)
  assert planner.ladder() == [CLASSES]
  assert planner.choose(2**40, timed=False).plan.class_block == CLASSES
  need = planner.evaluate(planner.unbounded()).planned_bytes
  with pytest.raises(InputError, match="fits no plan"):
    planner.choose(int(0.5 * need), timed=False)
