"""The accuracy study on Fashion-MNIST: `python -m ncfm_jax.study --out=DIR [--group=...]`.

Runs the CLI once per study cell, each in its own workdir under DIR, sharing one
pretrained pool (copied from the first run: pretraining does not depend on the
distillation settings), then writes `DIR/<group>.md` tables and `DIR/results.json`.
Re-running resumes: finished cells are read back from their metrics.json.

Groups (paper counterparts in brackets):
  methods   ipc x {random real, DM (mmd), NCFM without psi, NCFM with psi}  [Table 1/5]
  alpha     ipc 10, NCFM, alpha in {0.001, 0.1, 0.5, 0.9, 0.999}, beta = 1 - alpha [Fig. 5]
  freqs     ipc 10, NCFM, F in {16, 64, 256, 1024, 4096}                  [Fig. 6]
  crossarch ipc 10, NCFM, evaluated on ConvNet, AlexNet, VGG-11, ResNet-18 [Table 4]
The budget is the config's (`--config`, default the CPU preset `fashion_mnist.py:quick`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "DM (mmd)": ["--config.distill.loss=mmd"],
    "NCFM w/o psi": ["--config.distill.sampler=gaussian"],
    "NCFM": [],
}


def cells(group: str, ipcs) -> list[tuple[str, str, list[str]]]:
  """(cell name, row label, CLI overrides) of a group."""
  out = []
  if group == "methods":
    for ipc in ipcs:
      for label, flags in METHODS.items():
        name = f"methods_ipc{ipc}_{label.split()[0].lower()}{'_nopsi' if 'w/o' in label else ''}"
        out.append((name, f"{ipc} | {label}", [f"--config.distill.ipc={ipc}", *flags]))
  elif group == "alpha":
    for alpha in (0.001, 0.1, 0.5, 0.9, 0.999):
      out.append((f"alpha_{alpha}", f"alpha {alpha}",
                  [f"--config.distill.alpha={alpha}", f"--config.distill.beta={1 - alpha:.3f}"]))
  elif group == "freqs":
    for freqs in (16, 64, 256, 1024, 4096):
      out.append((f"freqs_{freqs}", f"F {freqs}", [f"--config.distill.num_freqs={freqs}"]))
  elif group == "crossarch":
    out.append(("crossarch", "NCFM (ConvNet-distilled)",
                ["--config.eval.archs=['convnet','alexnet','vgg11','resnet18']"]))
  else:
    raise ValueError(f"unknown --group {group!r}")
  return out


def run_cell(out_dir: str, config: str, name: str, flags: list[str], pool_from: str | None,
             with_baselines: bool) -> dict:
  workdir = os.path.join(out_dir, name)
  if pool_from and not os.path.exists(os.path.join(workdir, "pool")):
    os.makedirs(workdir, exist_ok=True)
    shutil.copytree(os.path.join(pool_from, "pool"), os.path.join(workdir, "pool"))
    shutil.copy(os.path.join(pool_from, "pool_accuracy.json"), workdir)
  command = [sys.executable, "-m", "ncfm_jax.main", f"--config={config}",
             f"--workdir={workdir}", *flags,
             f"--config.eval.baselines={with_baselines}"]
  print("$", " ".join(command), flush=True)
  subprocess.run(command, cwd=ROOT, check=True)
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def _cell(result: dict | None) -> str:
  if not result:
    return "-"
  return f"{result['mean']:.1f} +- {result['std']:.1f}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ncfm_jax.study", description=__doc__)
  parser.add_argument("--out", required=True, help="study directory")
  parser.add_argument("--config", default="configs/fashion_mnist.py:quick")
  parser.add_argument("--group", default="methods,alpha,freqs,crossarch")
  parser.add_argument("--ipcs", default="1,10,50")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  ipcs = [int(i) for i in args.ipcs.split(",")]
  results_path = os.path.join(args.out, "results.json")
  results = json.load(open(results_path)) if os.path.exists(results_path) else {}
  pool_from = None
  for group in args.group.split(","):
    rows = []
    for name, label, flags in cells(group, ipcs):
      # The NCFM cell of each ipc also evaluates the random-real baseline.
      with_baselines = group == "methods" and label.endswith("| NCFM")
      metrics = run_cell(args.out, args.config, name, flags, pool_from, with_baselines)
      pool_from = pool_from or os.path.join(args.out, name)
      results[name] = metrics
      with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
      evals = metrics.get("eval", {})
      if group == "crossarch":
        rows.append(f"| {label} | " + " | ".join(
            _cell(evals.get(a)) for a in ("convnet", "alexnet", "vgg11", "resnet18")) + " |")
      else:
        rows.append(f"| {label} | {_cell(evals.get('convnet'))} |")
        if with_baselines:
          ipc = metrics["ipc"]
          rows.append(f"| {ipc} | random real | "
                      f"{_cell(metrics.get('baseline_random_real', {}).get('convnet'))} |")
    header = {"crossarch": "| setting | ConvNet | AlexNet | VGG-11 | ResNet-18 |\n| --- | --- | --- | --- | --- |",
              "methods": "| ipc | method | ConvNet test accuracy (%) |\n| --- | --- | --- |"}.get(
                  group, "| setting | ConvNet test accuracy (%) |\n| --- | --- |")
    table = f"{header}\n" + "\n".join(rows) + "\n"
    with open(os.path.join(args.out, f"{group}.md"), "w") as f:
      f.write(f"config {args.config}\n\n{table}")
    print(table, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
