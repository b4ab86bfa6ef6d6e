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
  # Pool: 20 members x 60 epochs x (50000 // 128 = 390) steps; eval: 2000 epochs x
  # ceil(400 / 128) = 4 steps, 10 networks per architecture (the release's budget).
  assert parts["pool"] == pytest.approx(20 * 60 * 390 * 0.01)
  assert parts["distill"] == pytest.approx(20000 * 0.5)
  assert parts["eval resnet18"] == pytest.approx(10 * 8000 * 0.05)
  assert set(parts) == {"pool", "distill", "eval convnet", "eval alexnet", "eval vgg11",
                        "eval resnet18"}
  line = estimate.estimate_line(p, SECONDS, parts)
  assert "pool 20 x 23400 steps x 0.01 s = 1h18m" in line
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
  assert set(seconds) == {"pretrain", "distill", "eval", "compile"}
  for timed in (seconds, seconds["compile"]):
    assert list(timed["eval"]) == ["convnet"]
    for value in (timed["pretrain"], timed["distill"], timed["eval"]["convnet"]):
      assert 0 < value < 120
  line = estimate.estimate_line(p, seconds, estimate.extrapolate(p.config, "fashion_mnist",
                                                                   seconds))
  # 2 members x 600 training images (3 classes x 200, the config's cap) // 64 a batch.
  assert line.startswith("fashion_mnist_ipc1_tiny: pool 2 x 9 steps x ")
