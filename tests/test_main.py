"""The command line's errors: input a user can fix is one line and exit 2."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from ncfm_jax import config_lib
from ncfm_jax import main as main_lib
from ncfm_jax import pipeline
from ncfm_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", NCFM_TCMALLOC="0")
  return subprocess.run([sys.executable, "-m", "ncfm_jax.main", *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, message", [
    (["--config=configs/fashion_mnist.py:tiny", "--config.distill.ipcc=2"],
     "--config.distill.ipcc: the config has no field 'ipcc' (Did you mean \"ipc\""),
    (["--config=configs/fashion_mnist.py:tiny", "--config.nosection.x=2"],
     "--config.nosection.x: the config has no field 'nosection'"),
    (["--config=configs/cifar10.py:ipc=abc"], "config argument ipc='abc' is not an int"),
    (["--config=configs/fashion_mnist.py:tiny", "extra"], "unexpected arguments: ['extra']"),
    (["--config=configs/cifar10.py:ipc=1,foo=2"], "unknown config argument 'foo'; valid: ['ipc']"),
    (["--config=configs/nosuchfile.py"], "--config: config 'configs/nosuchfile.py': no such file"),
    (["--config=configs/cifar10.py", "--mode=foo"], "flag --mode=foo: value should be one of"),
    (["--config=configs/fashion_mnist.py:tiny", "--config.distill.ipc=abc"],
     "flag --config.distill.ipc=abc"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, flags, message):
  workdir = tmp_path / "run"
  result = _cli(*flags, f"--workdir={workdir}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not workdir.exists()


def test_input_errors_exit_2_and_bugs_keep_their_traceback(monkeypatch, capsys):
  main_lib.parse_flags(["prog", "--config=configs/fashion_mnist.py:tiny", "--workdir=/tmp/x"])
  monkeypatch.setattr(main_lib.allocator, "reexec_with_tcmalloc", lambda: None)

  def fails_with(err):
    def run(*args):
      raise err
    monkeypatch.setattr(pipeline, "run", run)

  fails_with(InputError("distill.ipc must be >= 1"))
  with pytest.raises(SystemExit) as exit_info:
    main_lib.main(["prog"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: distill.ipc must be >= 1\n"
  fails_with(ValueError("a shape bug inside JAX"))
  with pytest.raises(ValueError, match="shape bug"):
    main_lib.main(["prog"])


def test_batch_real_is_capped_at_the_smallest_class_once(capsys):
  config = config_lib.base_config()
  config.distill.batch_real = 500
  labels = np.repeat(np.arange(3), [12, 40, 40])
  run = types.SimpleNamespace(config=config, num_classes=3,
                              dataset=types.SimpleNamespace(train_labels=labels))
  capped = pipeline.Run.distill_config(run)
  assert capped.batch_real == 12 and config.distill.batch_real == 500
  assert capsys.readouterr().out.count("capped at 12") == 1
  config.distill.batch_real = 8
  assert pipeline.Run.distill_config(run).batch_real == 8
  assert "capped" not in capsys.readouterr().out


def test_without_workdir_the_run_uses_the_configs_default_and_resumes(separable_idx_dir,
                                                                       tmp_path):
  """`python -m ncfm_jax.main --config=configs/fashion_mnist.py:tiny` as written: the
  run goes to workdirs/fashion_mnist_tiny (said first), and the same command again
  finds its work there."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", NCFM_TCMALLOC="0")
  command = [sys.executable, "-m", "ncfm_jax.main", "--config=configs/fashion_mnist.py:tiny",
             f"--config.data.data_dir={separable_idx_dir}", "--config.data.source=idx",
             "--config.pretrain.num_models=1", "--mode=pretrain"]
  os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
  runs = [subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300) for _ in range(2)]
  for run in runs:
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0].startswith("[workdir] workdirs/fashion_mnist_tiny ")
  assert (tmp_path / "workdirs" / "fashion_mnist_tiny" / "pool").is_dir()
  assert "[pretrain] member 0" in runs[0].stdout
  assert "[pretrain]" not in runs[1].stdout  # found done
