"""The accuracy-study driver: which runs it plans, how it tabulates them.

The CLI runs themselves (`grid.run_cli`) are replaced by a fake that writes what
the CLI would (tests/test_pipeline.py runs the real CLI).
"""

import json
import os

import pytest

from ncfm_jax import config_lib
from ncfm_jax import grid
from ncfm_jax import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = config_lib.load_config(
    os.path.join(ROOT, "configs/fashion_mnist.py:gpu")).distill.to_dict()


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
  monkeypatch.chdir(ROOT)  # the specs below are relative to it


def test_plan_merges_cells_that_distil_the_same_thing():
  cells, rows = study.plan(study.GROUPS, [1, 10, 50], DEFAULTS)
  names = [c.name for c in cells]
  # alpha 0.5, F 4096 and the plateau/release defaults are ipc10_ncfm; psi off is
  # ipc10_ncfm_nopsi: plateau and release add two cells each; the update group two
  # (its batched update at lr 1e-2 is the preset's: ipc10_ncfm).
  assert len(names) == len(set(names)) == 9 + 4 + 4 + 2 + 2 + 2
  by_name = {c.name: c for c in cells}
  assert {l: n for l, n, _ in rows["alpha"]}["alpha 0.5, beta 0.5"] == "ipc10_ncfm"
  assert dict((label, name) for label, name, _ in rows["freqs"])["F 4096"] == "ipc10_ncfm"
  assert by_name["ipc10_ncfm"].archs == study.ARCHS  # cross-architecture on that cell
  assert [c.name for c in cells if c.baselines] == [
      "ipc10_ncfm", "ipc50_ncfm", "ipc10_per_class_lr0.001", "ipc1_ncfm"]
  assert by_name["ipc50_dm"].flags() == [
      "--config.distill.ipc=50", "--config.distill.loss=mmd",
      "--config.eval.archs=convnet", "--config.eval.baselines=False"]


def test_plan_of_a_cpu_preset_merges_its_own_default_frequencies():
  quick = config_lib.load_config("configs/fashion_mnist.py:quick").distill.to_dict()
  _, rows = study.plan(["methods", "freqs"], [10], quick)
  freqs = {label: name for label, name, _ in rows["freqs"]}
  assert freqs["F 1024"] == "ipc10_ncfm"  # quick's default F
  assert freqs["F 4096"] == "ipc10_freqs4096"


def test_with_ipc_appends_to_the_config_argument():
  assert study.with_ipc("configs/fashion_mnist.py", 50) == "configs/fashion_mnist.py:ipc=50"
  assert study.with_ipc("configs/fashion_mnist.py:gpu", 1) == "configs/fashion_mnist.py:gpu,ipc=1"


def _fake_cli(calls):
  def run_cli(workdir, config, flags, env, log_path, mode="all"):
    calls.append((os.path.basename(workdir), config, mode))
    if mode == "pretrain":
      os.makedirs(os.path.join(workdir, "pool"), exist_ok=True)
      with open(os.path.join(workdir, "pool_accuracy.json"), "w") as f:
        json.dump([88.0], f)
      return
    assert os.path.isdir(os.path.join(workdir, "pool")), "pool not copied"
    accuracy = 80.0 + (10.0 if "--config.distill.loss=mmd" not in flags else 0.0)
    metrics = {"eval": {"convnet": {"mean": accuracy, "std": 0.5, "runs": [accuracy] * 3}}}
    if "--config.eval.baselines=True" in flags:
      metrics["baseline_random_real"] = {"convnet": {"mean": 70.0, "std": 1.0,
                                                     "runs": [70.0] * 3}}
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(metrics, f)
  return run_cli


def test_main_runs_each_cell_once_and_writes_tables(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(grid, "run_cli", _fake_cli(calls))
  out = tmp_path / "study"
  code = study.main([f"--out={out}", "--config=configs/fashion_mnist.py:gpu",
                     "--group=methods,alpha", "--ipcs=10", "--parallel=2",
                     "--config.data.data_dir=/somewhere"])
  assert code == 0
  config = os.path.join(ROOT, "configs/fashion_mnist.py")
  assert calls[0] == ("pool", config + ":gpu", "pretrain")
  ran = sorted(name for name, _, _ in calls[1:])
  assert ran == sorted(["ipc10_dm", "ipc10_ncfm_nopsi", "ipc10_ncfm", "ipc10_alpha0.001",
                        "ipc10_alpha0.1", "ipc10_alpha0.9", "ipc10_alpha0.999"])
  assert all(spec == config + ":gpu,ipc=10" for _, spec, _ in calls[1:])
  results = json.loads((out / "results.json").read_text())
  assert set(results) == set(ran)
  methods = (out / "methods.md").read_text()
  assert "| 10 | random real | 70.0 +- 1.0 (n=3) |" in methods
  assert "| 10 | DM (mmd) | 80.0 +- 0.5 (n=3) |" in methods
  assert "| 10 | NCFM | 90.0 +- 0.5 (n=3) |" in methods
  assert "--config.data.data_dir=/somewhere" in methods  # the header names the budget
  assert "| alpha 0.5, beta 0.5 | 90.0 +- 0.5 (n=3) |" in (out / "alpha.md").read_text()


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, monkeypatch):
  calls = []
  fake = _fake_cli(calls)

  def failing(workdir, config, flags, env, log_path, mode="all"):
    if os.path.basename(workdir) == "ipc10_dm":
      raise RuntimeError("ipc10_dm failed (exit 2): error: boom")
    fake(workdir, config, flags, env, log_path, mode)

  monkeypatch.setattr(grid, "run_cli", failing)
  code = study.main([f"--out={tmp_path}", "--config=configs/fashion_mnist.py:gpu",
                     "--group=methods", "--ipcs=10"])
  assert code == 1
  assert "| 10 | DM (mmd) | - |" in (tmp_path / "methods.md").read_text()
  assert "| 10 | NCFM | 90.0 +- 0.5 (n=3) |" in (tmp_path / "methods.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--group=methods,typo"], "unknown --group 'typo'"),
    (["--ipcs=1,ten"], "--ipcs and --seeds take comma lists of integers"),
    (["--seeds=0,x"], "--ipcs and --seeds take comma lists of integers"),
    (["--typo=1"], "unknown argument '--typo=1'"),
])
def test_bad_arguments_are_refused(capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    study.main(["--out=/tmp/unused", *argv])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
  mine = tmp_path / "notes.txt"
  mine.write_text("mine")
  with pytest.raises(SystemExit) as exit_info:
    study.main([f"--out={mine}"])
  assert exit_info.value.code == 2
  assert f"--out {mine} is not a directory" in capsys.readouterr().err
  assert mine.read_text() == "mine"


def test_a_rerun_reads_finished_cells_back(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(grid, "run_cli", _fake_cli(calls))
  argv = [f"--out={tmp_path}", "--config=configs/fashion_mnist.py:gpu", "--group=methods",
          "--ipcs=10"]
  assert study.main(argv) == 0
  methods = (tmp_path / "methods.md").read_text()
  calls.clear()
  assert study.main(argv) == 0
  assert calls == []  # neither the pool nor any cell ran again
  assert (tmp_path / "methods.md").read_text() == methods
  assert study.main(argv + ["--config.data.data_dir=/elsewhere"]) == 0
  assert len(calls) == 1 + 3  # another command: the pool and the three cells rerun


def test_plateau_and_release_groups_and_seed_folding():
  defaults = {"ipc": 10, "plateau_monitor": "loss", "calibration_mode": "folded",
              "frequency_draw": "shared", "sampler": "psi"}
  cells, rows = study.plan(["plateau", "release"], [10], defaults)
  names = [c.name for c in cells]
  # The default setting is shared by both groups: one cell.
  assert len(names) == len(set(names)) == 1 + 2 + 3
  assert rows["plateau"][0][1] == rows["release"][0][1]
  results = {
      "a_seed0": {"eval": {"convnet": {"mean": 70.0, "runs": [69.0, 71.0]}}},
      "a_seed1": {"eval": {"convnet": {"mean": 74.0, "runs": [74.0]}}},
  }
  folded = study.over_seeds(results, [0, 1])["a"]["eval"]["convnet"]
  assert folded["mean"] == 72.0 and folded["std"] == 2.0 and folded["runs"] == [70.0, 74.0]
  assert study.over_seeds(results, [None]) is results
