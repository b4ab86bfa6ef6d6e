"""notebooks/ncfd_tour.ipynb runs end to end and finds what it says it shows.

The notebook runs in a fresh ipykernel started from this interpreter (a temporary
kernelspec whose argv is ``sys.executable``), with this checkout first on
``PYTHONPATH``, so the kernel imports the ``ncfm_jax`` under test, not an installed one.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from ncfm_jax.data import idx

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
from jupyter_client.manager import AsyncKernelManager  # pylint: disable=g-import-not-at-top

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "ncfd_tour.ipynb"
KERNEL_NAME = "ncfm-test-python"

# Appended to the executed copy only: which interpreter and package the kernel used.
_PROBE = ("import json, sys, ncfm_jax\n"
          "print(json.dumps({'executable': sys.executable, 'package': ncfm_jax.__file__}))")


def _kernel_manager(kernel_dir: Path) -> AsyncKernelManager:
  """A kernel manager for a kernelspec that runs this interpreter on this checkout."""
  spec_dir = kernel_dir / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
  spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "ncfm-jax test kernel",
      "language": "python",
      "env": {"PYTHONPATH": pythonpath,
              "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
  return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def _stdout_json(cell) -> dict:
  """The last JSON line the cell printed."""
  text = "".join(out.get("text", "") for out in cell.outputs
                 if out.output_type == "stream" and out.name == "stdout")
  return json.loads(text.strip().splitlines()[-1])


def run_notebook(tmp_path: Path, replace: tuple[str, str] | None = None):
  """Executes the notebook (with one source substitution, if given) plus the probe
  cell; returns (the summary dict of its last cell, the probe's dict)."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  if replace is not None:
    hits = [c for c in nb.cells if c.cell_type == "code" and replace[0] in c.source]
    assert len(hits) == 1, f"{replace[0]!r} is in {len(hits)} code cells"
    hits[0].source = hits[0].source.replace(replace[0], replace[1])
  nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
  client = nbclient.NotebookClient(
      nb, km=_kernel_manager(tmp_path / "kernels"), timeout=180,
      resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  return _stdout_json(code_cells[-2]), _stdout_json(code_cells[-1])


def _check_summary(summary: dict) -> None:
  # Distillation lowered the NCFD against the real features ...
  assert summary["ncfd_distilled"] < 0.8 * summary["ncfd_initial"], summary
  assert 0 < summary["grad_norm_distilled"] < float("inf"), summary
  # ... and psi's ascent raised it, by moving its frequencies.
  assert summary["psi_ncfd_after"] > 1.1 * summary["psi_ncfd_before"], summary
  assert summary["mean_freq_norm_after"] != pytest.approx(summary["mean_freq_norm_before"],
                                                          rel=0.05), summary
  # The gradient's temporaries grow with F in one block, and stay flat in blocks.
  whole, blocks = summary["grad_temp_mb_whole"], summary["grad_temp_mb_blocks"]
  assert whole[-1] > 8 * whole[0] and blocks[-1] < 1.5 * blocks[0], summary


@pytest.mark.slow
def test_ncfd_tour_runs_and_shows_its_claims(tmp_path):
  summary, probe = run_notebook(tmp_path)
  assert probe["executable"] == sys.executable
  assert Path(probe["package"]).resolve().is_relative_to(REPO)
  _check_summary(summary)
  # The notebook reads Fashion-MNIST where the Debian package puts it, else generates data.
  expects_idx = idx.find_idx_files(["/usr/share/datasets/fashion-mnist"]) is not None
  assert summary["data_source"].startswith("Fashion-MNIST") == expects_idx, summary


@pytest.mark.slow
def test_ncfd_tour_on_generated_data(tmp_path):
  summary, _ = run_notebook(tmp_path, ("FORCE_SYNTHETIC = False", "FORCE_SYNTHETIC = True"))
  assert summary["data_source"].startswith("generated"), summary
  _check_summary(summary)


def test_notebook_is_stored_with_its_outputs():
  """A reader on the web sees the figures: every code cell ran, in order, in one
  session (`bash launch/notebook.sh`), and what it stored shows its claims."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
  for cell in code:
    assert cell.outputs, cell.source[:60]
    assert not any(out.output_type == "error" for out in cell.outputs), cell.source[:60]
  figures = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
  assert len(figures) >= 4  # data, loss curve + images, terms by scale, psi's histogram
  _check_summary(_stdout_json(code[-1]))
