"""The reproduction driver: cells, budgets, the estimate's arithmetic, the table, resume.

Most tests replace the CLI runs (`grid.run_cli`) and the estimate's child
process (`estimate.run_measurement`) by fakes; `test_end_to_end_on_generated_idx`
runs the real ones on tiny generated IDX files.
"""

import json
import os
import time

import numpy as np
import pytest

import _tiny
from ncfm_jax import estimate
from ncfm_jax import grid
from ncfm_jax import paper
from ncfm_jax import reproduce

SECONDS = _tiny.CELL_SECONDS
pytestmark = pytest.mark.usefixtures("in_repository")


def _fake_cli(calls):
  """Writes the metrics.json the CLI would: 70 % + 1 per architecture index."""
  def run_cli(workdir, config, flags, env, log_path, mode="all"):
    calls.append((os.path.basename(workdir), config, tuple(flags)))
    archs = [f.split("=", 1)[1] for f in flags if f.startswith("--config.eval.archs=")]
    steps = [int(f.split("=")[1]) for f in flags if f.startswith("--config.distill.steps=")]
    num_eval = [int(f.split("=")[1]) for f in flags if f.startswith("--config.eval.num_eval=")]
    evals = {arch: {"mean": 70.0 + i, "std": 0.25, "runs": [70.0 + i] * num_eval[-1]}
             for i, arch in enumerate(archs)}
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump({"eval": evals, "distill": {"steps": (steps or [20000])[-1]}}, f)
  return run_cli


@pytest.fixture
def fakes(monkeypatch):
  """(CLI calls, measurement calls) with both replaced by fakes."""
  calls, measured = [], []

  def run_measurement(argv, names, steps):
    measured.append(list(names))
    return "cpu (2 cores)", {name: SECONDS for name in names}, None

  monkeypatch.setattr(grid, "run_cli", _fake_cli(calls))
  monkeypatch.setattr(estimate, "run_measurement", run_measurement)
  return calls, measured


# ------------------------------------------------------------------ cells


def test_cells_parse_with_further_config_arguments():
  assert reproduce.parse_cells("cifar10:ipc=10, cifar100:ipc=50,fashion_mnist:ipc=1,tiny") == [
      reproduce.CellSpec("cifar10", 10), reproduce.CellSpec("cifar100", 50),
      reproduce.CellSpec("fashion_mnist", 1, ("tiny",))]
  cell = reproduce.parse_cells("imagenette:source=folder,ipc=1")[0]
  assert cell.config_spec == "configs/imagenette.py:ipc=1,source=folder"
  assert cell.name(1.0) == "imagenette_ipc1_sourcefolder"
  assert cell.name(0.01) == "imagenette_ipc1_sourcefolder_f0.01"


@pytest.mark.parametrize("cells, message", [
    ("cifar11:ipc=10", "unknown dataset 'cifar11'"),
    ("cifar10:ipc=20", "cifar10 has no paper cell at ipc=20; valid ipc: 1, 10, 50"),
    ("imagenette:ipc=50", "valid ipc: 1, 10"),
    ("cifar10", "'cifar10' needs one ipc=N"),
    ("cifar10:ipc=1,cifar10:ipc=1", "listed twice"),
    ("fashion_mnist:ipc=1,bogus", "unknown config argument 'bogus'"),
])
def test_a_bad_cell_is_one_line_and_exit_2(cells, message, tmp_path, capsys, fakes):
  assert reproduce.main([f"--cells={cells}", f"--out={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
  assert fakes == ([], [])  # nothing ran


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, fakes):
  for argv, message in [(["--config.distill.stepz=3"],
                         "--config.distill.stepz: the config has no field 'stepz' (Did you mean"),
                        (["--bogus"], "unknown argument '--bogus'"),
                        (["--fraction=0"], "--fraction must be in (0, 1]")]:
    assert reproduce.main(["--cells=cifar10:ipc=10", f"--out={tmp_path}", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
  mine = tmp_path / "table.md"
  mine.write_text("mine")
  assert reproduce.main(["--cells=cifar10:ipc=10", f"--out={mine}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"--out {mine} is not a directory" in err, err
  assert mine.read_text() == "mine" and fakes == ([], [])


# ------------------------------------------------------------------ budget


def test_a_fraction_scales_steps_and_epochs_rounded_at_least_one():
  p = reproduce.plan(reproduce.CellSpec("cifar10", 10), fraction=0.01, num_eval=3,
                     cross_arch=False, passthrough=["--config.pretrain.max_steps=150"])
  assert p.cell.name == "cifar10_ipc10_f0.01"
  assert p.cell.flags == (
      "--config.distill.ipc=10", "--config.eval.archs=convnet", "--config.eval.num_eval=3",
      "--config.eval.baselines=False", "--config.pretrain.max_steps=150",
      "--config.distill.steps=200", "--config.pretrain.max_steps=2",
      "--config.eval.epochs=40")
  assert p.config.eval.archs == ("convnet",)  # the cifar10 config's default is all four
  budget = reproduce.budget(p, 0.01)
  assert budget["distill_steps"] == [200, 20000]
  assert budget["pool"] == [20, 2, 150, "steps"]
  # The release's cifar10 ipc 10: 4000 epochs of batch 256, ceil(10 x 40 / 256) steps each.
  assert budget["eval"] == [40, 4000, "epochs", 40 * 2]
  assert paper.budget_text(budget) == (
      "distill 200/20000 steps; pool 20 x 2/150 steps; eval 40/4000 epochs (80 steps); "
      "fraction 0.01")


def test_the_cells_ipc_wins_over_a_presets():
  p = reproduce.plan(reproduce.CellSpec("fashion_mnist", 1, ("tiny",)), fraction=1,
                     num_eval=1, cross_arch=True, passthrough=[])
  assert p.config.distill.ipc == 1  # the tiny preset alone sets 2
  assert p.config.eval.archs == paper.CROSS_ARCHS


# ------------------------------------------------------------------ the table and resume


def test_table_has_paper_values_ours_budget_device_and_cross_arch(tmp_path, fakes):
  calls, measured = fakes
  code = reproduce.main(["--cells=cifar10:ipc=10,tinyimagenet:ipc=1", f"--out={tmp_path}",
                         "--fraction=0.1", "--num-eval=3", "--cross-arch"])
  assert code == 0
  assert [name for name, _, _ in calls] == ["cifar10_ipc10_f0.1", "tinyimagenet_ipc1_f0.1"]
  assert measured == [["cifar10_ipc10_f0.1", "tinyimagenet_ipc1_f0.1"]]
  table = (tmp_path / "table.md").read_text()
  row = next(l for l in table.splitlines() if l.startswith("| cifar10_ipc10_f0.1 |"))
  assert row.startswith("| cifar10_ipc10_f0.1 | 71.8 +- 0.3 | 68.9 | 70.0 +- 0.2 (n=3) | - | "
                        "distill 2000/20000 steps; pool 20 x 6/60 epochs; eval 400/4000 "
                        "epochs (800 steps); fraction 0.1 | cpu (2 cores) | ")
  assert "(estimate " in row
  assert "| tinyimagenet_ipc1_f0.1 | 18.2 +- 0.5 | 12.0 | 70.0 +- 0.2 (n=3) |" in table
  assert ("| cifar10_ipc10_f0.1 | 70.0 +- 0.2 (n=3) (71.8 +- 0.3) | 71.0 +- 0.2 (n=3) "
          "(67.9 +- 0.5) |") in table
  assert "| tinyimagenet_ipc1_f0.1 | 70.0 +- 0.2 (n=3) (-) |" in table


def test_a_failed_cell_reruns_in_its_workdir_and_adds_its_wall_time(tmp_path, monkeypatch,
                                                                     fakes):
  calls, _ = fakes
  fake = grid.run_cli

  def failing(workdir, *args, **kwargs):
    time.sleep(0.05)
    raise RuntimeError("cifar10_ipc1 failed (exit 1): killed -- log: ...")

  argv = ["--cells=cifar10:ipc=1,cifar100:ipc=1", f"--out={tmp_path}"]
  monkeypatch.setattr(grid, "run_cli", failing)
  assert reproduce.main(argv) == 1
  table = (tmp_path / "table.md").read_text()
  assert "| cifar10_ipc1 | 49.5 +- 0.3 | - | - |" in table  # listed, no result yet
  first = json.loads((tmp_path / "cifar10_ipc1" / "reproduce.json").read_text())
  assert first["wall_seconds"] >= 0.05

  monkeypatch.setattr(grid, "run_cli", fake)
  assert reproduce.main(argv) == 0
  assert [name for name, _, _ in calls] == ["cifar10_ipc1", "cifar100_ipc1"]
  again = json.loads((tmp_path / "cifar10_ipc1" / "reproduce.json").read_text())
  assert again["wall_seconds"] > first["wall_seconds"]
  assert again["device"] == "cpu (2 cores)"  # one device, named once
  assert "| cifar100_ipc1 | 34.4 +- 0.5 | - | 70.0 +- 0.2 (n=10) |" in (
      tmp_path / "table.md").read_text()


def test_estimate_only_runs_nothing(tmp_path, capsys, fakes):
  calls, measured = fakes
  assert reproduce.main(["--cells=cifar100:ipc=50", f"--out={tmp_path}",
                         "--estimate-only"]) == 0
  assert calls == [] and measured == [["cifar100_ipc50"]]
  out = capsys.readouterr().out
  assert "estimate on this device (cpu (2 cores))" in out
  assert "cifar100_ipc50: pool 20 x 23400 steps" in out and "total" in out


# ------------------------------------------------------------------ end to end


def _idx(array: np.ndarray) -> bytes:
  return bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + (
      array.astype(np.uint8).tobytes())


def _write_fashion_mnist(directory, per_class_train=20, per_class_test=10):
  """Random 28x28 IDX files with 10 classes, as the fashion_mnist config reads them."""
  rng = np.random.default_rng(0)
  directory.mkdir()
  for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
    labels = np.repeat(np.arange(10), per_class)
    images = rng.integers(0, 256, (labels.size, 28, 28))
    (directory / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
    (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))


def test_end_to_end_on_generated_idx(tmp_path, capsys, monkeypatch):
  _write_fashion_mnist(tmp_path / "idx")
  out = tmp_path / "out"
  argv = ["--cells=fashion_mnist:ipc=1,tiny", f"--out={out}", "--num-eval=1",
          f"--config.data.data_dir={tmp_path / 'idx'}", "--config.data.source=idx",
          "--config.pretrain.num_models=1", "--estimate-steps=0"]  # the device only
  assert reproduce.main(argv) == 0, capsys.readouterr()
  assert "estimate on this device" not in capsys.readouterr().out
  table = (out / "table.md").read_text()
  row = next(l for l in table.splitlines() if l.startswith("| fashion_mnist_ipc1_tiny |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1:3] == ["-", "-"]  # no paper value for Fashion-MNIST
  assert cells[3].endswith("(n=1)") and 0 <= float(cells[3].split()[0]) <= 100
  assert cells[4].endswith("(n=1)")  # the best of its checkpoints, as the release reports
  assert float(cells[4].split()[0]) >= float(cells[3].split()[0])
  assert cells[5] == ("distill 6/6 steps; pool 1 x 1/1 epochs; eval 10/10 steps "
                      "(10 steps); fraction 1")
  assert cells[6].startswith("cpu (") and cells[7] != "-"
  metrics = json.loads((out / "fashion_mnist_ipc1_tiny" / "metrics.json").read_text())
  assert metrics["ipc"] == 1 and list(metrics["eval"]) == ["convnet"]
  assert "baseline_random_real" not in metrics

  # A re-run reads the finished cell back: no CLI run, no measurement.
  def refuse(*args, **kwargs):
    raise AssertionError("ran again")
  monkeypatch.setattr(grid, "run_cli", refuse)
  monkeypatch.setattr(estimate, "run_measurement", refuse)
  assert reproduce.main(argv) == 0
  assert "fashion_mnist_ipc1_tiny: finished earlier, read back" in capsys.readouterr().out
  assert row in (out / "table.md").read_text()


def test_as_released_turns_on_the_releases_behaviours_in_their_own_workdir():
  ours = reproduce.plan(reproduce.CellSpec("cifar10", 10), fraction=1, num_eval=10,
                        cross_arch=False, passthrough=[])
  released = reproduce.plan(reproduce.CellSpec("cifar10", 10), fraction=1, num_eval=10,
                            cross_arch=False, passthrough=[], as_released=True)
  assert released.cell.name == ours.cell.name + "_released"
  d = released.config.distill
  assert (d.sampler, d.frequency_draw, d.real_sampling, d.update_mode,
          d.calibration_mode) == ("gaussian", "per_class", "first", "per_class", "separate")
  assert (ours.config.distill.sampler, ours.config.distill.real_sampling) == ("psi", "fresh")
