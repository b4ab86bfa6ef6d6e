"""The estimate of a paper cell's time: the extrapolation's arithmetic, and a real
measurement of every phase of a tiny cell."""

import pytest

import _tiny
from ncfm_jax import estimate
from ncfm_jax import paper
from ncfm_jax import reproduce

SECONDS = _tiny.CELL_SECONDS
pytestmark = pytest.mark.usefixtures("in_repository")


def test_extrapolation_by_hand():
  p = reproduce.plan(reproduce.CellSpec("cifar10", 10), fraction=1, num_eval=10,
                     cross_arch=True, passthrough=[])
  parts = estimate.extrapolate(p.config, "cifar10", SECONDS)
  # Pool: 20 members x 60 epochs x (50000 // 256 = 195) steps; eval: 4000 epochs x
  # ceil(400 / 256) = 2 steps, 10 networks per architecture (the release's budget:
  # config/ipc10/cifar10.yaml, batch_size 256, evaluation_epochs 4000).
  assert parts["pool"] == pytest.approx(20 * 60 * 195 * 0.01)
  assert parts["distill"] == pytest.approx(20000 * 0.5)
  assert parts["eval resnet18"] == pytest.approx(10 * 8000 * 0.05)
  assert set(parts) == {"pool", "distill", "eval convnet", "eval alexnet", "eval vgg11",
                        "eval resnet18"}
  line = estimate.estimate_line(p, SECONDS, parts)
  assert "pool 20 x 11700 steps x 0.01 s = 39m00s" in line
  assert "distill 20000 steps x 0.5 s = 2h46m" in line
  # Compilation: once per pool member, once for distillation, once per evaluation run.
  first = {"pretrain": 2.0, "distill": 30.0, "eval": dict.fromkeys(paper.CROSS_ARCHS, 1.0)}
  compiled = estimate.extrapolate(p.config, "cifar10", dict(SECONDS, compile=first))
  assert compiled["compile"] == pytest.approx(20 * 2.0 + 30.0 + 10 * 4 * 1.0)
  assert "compilation x 61 = 1m50s" in estimate.estimate_line(p, SECONDS, compiled)


@pytest.mark.slow
def test_the_estimate_times_every_phase_of_the_cell():
  p = reproduce.plan(reproduce.CellSpec("fashion_mnist", 1, ("tiny",)), fraction=1,
                     num_eval=1, cross_arch=False, passthrough=[])
  seconds = estimate.measure(p.config, "fashion_mnist", steps=1)
  assert set(seconds) == {"pretrain", "distill", "eval", "compile", "plan"}
  for timed in (seconds, seconds["compile"]):
    assert list(timed["eval"]) == ["convnet"]
    for value in (timed["pretrain"], timed["distill"], timed["eval"]["convnet"]):
      assert 0 < value < 120
  line = estimate.estimate_line(p, seconds, estimate.extrapolate(p.config, "fashion_mnist",
                                                                   seconds))
  # 2 members x 600 training images (3 classes x 200, the config's cap) // 64 a batch.
  assert line.startswith("fashion_mnist_ipc1_tiny: pool 2 x 9 steps x ")


def test_the_estimate_times_the_planned_step_of_the_capped_batch():
  """A cell whose unplanned step does not fit its budget: the estimate caps
  batch_real at the smallest class and takes the planner's plan, as the run does."""
  from ncfm_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  p = reproduce.plan(reproduce.CellSpec("fashion_mnist", 1, ("tiny",)), fraction=1,
                     num_eval=1, cross_arch=False, passthrough=[])
  config = p.config
  config.distill.batch_real = 10_000  # above the 200 images per class of the tiny cell
  config.distill.update_mode, config.distill.calibration_mode = "batched", "folded"
  mean, std = (0.5,), (0.25,)
  d, _ = estimate.planned_distill(config, "fashion_mnist", mean, std)
  assert d.batch_real == 200
  spec = plan_lib.make_spec(config, num_classes=3, image_shape=(28, 28, 1),
                            train_images=600, largest_class=200, mean=mean, std=std)
  planner = plan_lib.Planner(spec, d, cache_path="", log=None)
  unplanned = planner.evaluate(planner.unbounded()).planned_bytes
  config.distill.memory_budget_gb = 0.7 * unplanned / plan_lib.GB
  d, described = estimate.planned_distill(config, "fashion_mnist", mean, std)
  assert described != planner.unbounded().describe(3)
  plan = plan_lib.Plan(d.class_block or 3, d.block_loop, d.real_chunk, d.syn_chunk,
                       d.remat_syn, d.freq_chunk)
  assert planner.evaluate(plan).planned_bytes <= 0.7 * unplanned
