"""The workdir's config guard across versions of the config."""

import json

import pytest

from ncfm_jax import config_lib
from ncfm_jax import workdir as wd


def _store(tmp_path, stored: dict) -> None:
  (tmp_path / "config.json").write_text(json.dumps(stored))


def test_older_workdirs_keep_resuming_and_other_runs_are_refused(tmp_path):
  config = config_lib.base_config()
  stored = wd.result_defining(config)
  # Written before a field existed, and with a field that is now a runtime setting.
  stored.pop("distill.psi_hidden_dim")
  stored["distill.class_block"] = 5
  _store(tmp_path, stored)
  assert wd.check_config(str(tmp_path), config) is True

  stored["distill.ipc"] = config.distill.ipc + 1
  _store(tmp_path, stored)
  with pytest.raises(wd.WorkdirError, match="distill.ipc"):
    wd.check_config(str(tmp_path), config)

  # A new field set away from its default in this config: another run.
  stored["distill.ipc"] = config.distill.ipc
  _store(tmp_path, stored)
  config.distill.psi_hidden_dim = 32
  with pytest.raises(wd.WorkdirError, match="psi_hidden_dim"):
    wd.check_config(str(tmp_path), config)
